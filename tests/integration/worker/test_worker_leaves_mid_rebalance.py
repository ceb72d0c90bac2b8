"""A worker's consumer closed while its group rebalances still leaves the group (real broker).

librdkafka 2.16 postpones an unsubscribe while the member's JoinGroup is in flight, and a close in that
state, holding no partition, sends no LeaveGroup ("consumer is terminating, skipping rejoin"): the
coordinator completes the join with the closed member in it, and the group carries it until its
`session.timeout.ms` (45 s) runs out. In the rolling-update e2e test that stalled the whole group for 45 s.
`GroupConsumer.close` polls until the group is left, then closes.

Here the group's one partition belongs to a member that rejoins slowly (a 6 s heartbeat), so the rebalance
a newcomer starts stays open while the worker's consumer, holding nothing, waits in its JoinGroup; it is
closed then. Without the wait the group keeps three members for ~45 s (measured: 51 s)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from lagpilot_worker.consumer import GroupConsumer
from support import wait_for

pytestmark = pytest.mark.integration

COOPERATIVE = {"partition.assignment.strategy": "cooperative-sticky", "enable.auto.commit": False}


@contextmanager
def polling(settings: dict[str, Any], topic: str) -> Iterator[set[int]]:
    """A plain consumer polling in a thread; yields the partitions it owns, kept up to date."""
    owned: set[int] = set()
    consumer = Consumer(settings)
    stop = threading.Event()

    def assigned(_consumer: Any, partitions: list[TopicPartition]) -> None:
        owned.update(tp.partition for tp in partitions)

    def revoked(_consumer: Any, partitions: list[TopicPartition]) -> None:
        owned.difference_update(tp.partition for tp in partitions)

    consumer.subscribe([topic], on_assign=assigned, on_revoke=revoked)

    def run() -> None:
        while not stop.is_set():
            consumer.poll(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield owned
    finally:
        stop.set()
        thread.join(10)
        consumer.close()


def members(admin: AdminClient, group: str) -> int:
    return len(admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=10).members)


def test_a_consumer_closed_in_its_join_holding_nothing_leaves_the_group(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str]) -> None:
    topic, group = create_topic("leave-mid-join", partitions=1), unique_name("g")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    base = {"bootstrap.servers": kafka_bootstrap, "group.id": group, **COOPERATIVE}
    # The partition's owner hears of a rebalance only at its next heartbeat, up to 6 s later.
    with polling({**base, "heartbeat.interval.ms": 6000}, topic) as slow:
        wait_for(lambda: slow == {0}, 30, "the slow member owning the partition")
        assigned: list[list[int]] = []
        worker = GroupConsumer({**base, "heartbeat.interval.ms": 300}, [topic],
                               on_assign=lambda tps: assigned.append([tp.partition for tp in tps]),
                               on_revoke=lambda tps: None, on_lost=lambda tps: None,
                               on_commit_error=lambda err, tps: None, on_commit_ack=lambda tps: None)

        def join_state() -> str | None:
            worker.fetch(1, 0.05)  # serves its callbacks and statistics
            return worker.join_state()

        wait_for(lambda: join_state() == "steady" and bool(assigned) and not any(assigned), 30,
                 "the worker's consumer in, holding nothing")
        assert members(admin, group) == 2
        with polling({**base, "heartbeat.interval.ms": 300}, topic):
            wait_for(lambda: join_state() == "wait-join", 15, "the worker's consumer waiting in its JoinGroup",
                     interval=0.05, max_interval=0.05)
            closed_at = time.monotonic()
            worker.close()
            # Left: the slow member and the newcomer are the group, well before 45 s would have removed a
            # member that did not leave (the close itself waits for the slow member's rejoin, up to 6 s).
            wait_for(lambda: members(admin, group) == 2, 15, "the group without the closed consumer")
            assert time.monotonic() - closed_at < 20

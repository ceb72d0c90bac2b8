"""The DLQ circuit breaker on the real broker: a handler that fails everything trips it after the
configured count, the DLQ holds exactly that many, and nothing is committed past them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from worker_testkit import Topics, committed_offsets, http_get, metric, produce, read_topic, running_worker

from lagpilot_contract import naming
from lagpilot_worker.breaker import BreakerConfig
from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError
from support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(kafka_bootstrap)
    yield made
    made.delete_all()


@pytest.mark.parametrize("ordering", [OrderingMode.KEY, OrderingMode.UNORDERED])
def test_failing_handler_trips_the_breaker_after_the_configured_count(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics, ordering: OrderingMode) -> None:
    source = create_topic("bad-deploy", partitions=1)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    produce(kafka_bootstrap, source, [(f"k{i % 7}".encode(), f"{i}".encode()) for i in range(200)])
    limit = 12
    calls: list[int] = []

    def handler(record: Record) -> None:
        calls.append(record.offset)
        raise PermanentError("bad deploy")

    config = WorkerConfig(
        dead_letter_enabled=True,
        bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], ordering=ordering, pool_size=4,
        http_port=0, http_host="127.0.0.1", commit_interval_seconds=0.2,
        breaker=BreakerConfig(max_consecutive=limit, window=1000, max_ratio_percent=100, cooldown_seconds=0))
    with running_worker(config, handler) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: metric(port, "lagpilot_worker_breaker_open", {"topic": source, "partition": "0"}) == 1,
                 60, "the breaker to open")
        status, body = http_get(port, "/readyz")
        assert status == 503 and "circuit breaker" in body
        # Let several commit intervals and fetch rounds pass: nothing more may reach the DLQ.
        time.sleep(2)
        records = read_topic(kafka_bootstrap, dlq)
        committed = committed_offsets(kafka_bootstrap, group, source, 1)[0]
        assert metric(port, "lagpilot_worker_messages_dead_lettered_total", {"kind": "permanent"}) == limit
        lag = metric(port, "lagpilot_worker_partition_lag", {"topic": source, "partition": "0"})
        assert lag is not None and lag >= 200 - limit
        calls_when_open = len(calls)
    assert len(records) == limit
    dead_offsets = sorted(int(r.header("lagpilot.original.offset") or -1) for r in records)
    # Nothing committed past a record that was neither handled nor dead-lettered.
    assert committed is not None and committed <= min(set(range(200)) - set(dead_offsets))
    # The partition stopped: once the breaker opened, no more work started. What ran is bounded by
    # the work items out at the time (each stops after `limit` dead letters in a row).
    assert calls_when_open <= limit * (2 * 4 + 1) < 200
    assert len(calls) == calls_when_open
    # After a graceful stop the commit is still not past them.
    final = committed_offsets(kafka_bootstrap, group, source, 1)[0]
    assert final == committed


def test_single_partition_run_commits_exactly_up_to_the_breaker(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    """Partition ordering makes the outcome exact: offsets 0..N-1 dead-lettered, N committed."""
    source = create_topic("bad-deploy", partitions=1)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    produce(kafka_bootstrap, source, [(b"k", f"{i}".encode()) for i in range(100)])
    limit = 9

    def handler(record: Record) -> None:
        raise PermanentError("bad deploy")

    config = WorkerConfig(
        dead_letter_enabled=True,
        bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], ordering=OrderingMode.PARTITION,
        pool_size=4, http_port=None, commit_interval_seconds=0.2,
        breaker=BreakerConfig(max_consecutive=limit, window=1000, max_ratio_percent=100, cooldown_seconds=0))
    with running_worker(config, handler):
        wait_for(lambda: len(read_topic(kafka_bootstrap, dlq)) >= limit, 60, "dead letters")
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, 1)[0] == limit, 30,
                 f"offset {limit} committed")
        time.sleep(2)
        assert len(read_topic(kafka_bootstrap, dlq)) == limit
        assert committed_offsets(kafka_bootstrap, group, source, 1)[0] == limit
    assert [int(r.header("lagpilot.original.offset") or -1) for r in read_topic(kafka_bootstrap, dlq)] == list(
        range(limit))
    assert committed_offsets(kafka_bootstrap, group, source, 1)[0] == limit


def test_half_open_probe_closes_the_breaker_once_the_handler_recovers(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    source = create_topic("outage", partitions=1)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    produce(kafka_bootstrap, source, [(b"k", f"{i}".encode()) for i in range(50)])
    outage = {"on": True}
    handled: list[int] = []

    def handler(record: Record) -> None:
        if outage["on"]:
            raise PermanentError("downstream rejects everything")
        handled.append(record.offset)

    config = WorkerConfig(
        dead_letter_enabled=True,
        bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], ordering=OrderingMode.PARTITION,
        pool_size=2, http_port=0, http_host="127.0.0.1", commit_interval_seconds=0.2,
        breaker=BreakerConfig(max_consecutive=3, window=1000, max_ratio_percent=100, cooldown_seconds=2))
    with running_worker(config, handler) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: metric(port, "lagpilot_worker_breaker_open", {"topic": source, "partition": "0"}) == 1,
                 60, "the breaker to open")
        outage["on"] = False          # the dependency recovers; the held record is probed after the cooldown
        wait_for(lambda: metric(port, "lagpilot_worker_breaker_open", {"topic": source, "partition": "0"}) == 0,
                 30, "the breaker to close after a successful probe")
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, 1)[0] == 50, 30, "everything committed")
        assert http_get(port, "/readyz")[0] == 200
    assert [int(r.header("lagpilot.original.offset") or -1) for r in read_topic(kafka_bootstrap, dlq)] == [0, 1, 2]
    assert handled == list(range(3, 50))       # the held record first, then the rest, in order

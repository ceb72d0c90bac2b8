"""status.produceRatePerSecond and status.consumeRatePerSecond on a real run: records produced and
offsets committed at a known pace on the real broker, read back from the status the real operator
(kopf) writes."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from operator_testkit import FAST, OperatorProcess, apply_kcg, create_deployment, poll_time, status_of

from lagpilot_operator.core.observations import (
    DEFAULT_CONSUME_RATE_WINDOW_SECONDS,
    DEFAULT_PRODUCE_RATE_WINDOW_SECONDS,
)
from support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
TICK_SECONDS = 0.25
PRODUCED_PER_TICK = 10   # 40 msg/s
COMMITTED_PER_TICK = 5   # 20 msg/s
BACKLOG = 500            # per partition: the commits never catch up with the end during the run


class Pacer(threading.Thread):
    """Every tick: produce PRODUCED_PER_TICK records and move the group's committed offsets forward by
    COMMITTED_PER_TICK, spread over the partitions; ticks are scheduled from the start time. Each tick
    is logged with the wall-clock time at which both were acknowledged by the broker, so the test
    knows the pace that really happened (a loaded machine can delay ticks)."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        # Not subscribed: commits explicit offsets as the group's only (simple) committer.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.stopping = threading.Event()
        self.committed = [0] * PARTITIONS
        self.log: list[tuple[float, int, int]] = [(time.time(), 0, 0)]  # (time, produced, committed) totals
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start, ticks = time.monotonic(), 0
            while not self.stopping.is_set():
                for i in range(PRODUCED_PER_TICK):
                    self.producer.produce(self.topic, value=b"x", partition=i % PARTITIONS)
                assert self.producer.flush(10) == 0
                for i in range(COMMITTED_PER_TICK):
                    self.committed[(ticks * COMMITTED_PER_TICK + i) % PARTITIONS] += 1
                self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in enumerate(self.committed)],
                                     asynchronous=False)
                ticks += 1
                self.log.append((time.time(), ticks * PRODUCED_PER_TICK, ticks * COMMITTED_PER_TICK))
                self.stopping.wait(max(0.0, start + ticks * TICK_SECONDS - time.monotonic()))
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.consumer.close()

    def total_at(self, moment: float, column: int) -> int:
        """Produced (column 1) or committed (column 2) records acknowledged by `moment`."""
        return max((entry[column] for entry in self.log if entry[0] <= moment), default=0)

    def rate(self, end: float, window: float, column: int) -> float:
        return (self.total_at(end, column) - self.total_at(end - window, column)) / window


@pytest.mark.slow
def test_status_rates_follow_the_real_produce_and_commit_pace(stack: Any, namespace: str, operator: OperatorProcess,
                                                              create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-rates", partitions=PARTITIONS), unique_name("g")
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})
    for i in range(BACKLOG * PARTITIONS):
        producer.produce(topic, value=b"x", partition=i % PARTITIONS)
    assert producer.flush(30) == 0
    create_deployment(stack, namespace, "worker", 1)
    apply_kcg(stack, namespace, "rates", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": "worker"}, "replicas": {"min": 1, "max": 2}, **FAST})
    wait_for(lambda: "totalLag" in status_of(stack, namespace, "rates"), 30, "the first reconcile")

    pacer = Pacer(stack.kafka_bootstrap, topic, group)
    pacer.start()
    try:
        # Both windows full of paced samples: the consume window (30 s) plus a poll or two.
        started = time.monotonic()
        wait_for(lambda: pacer.error is None and time.monotonic() - started > DEFAULT_CONSUME_RATE_WINDOW_SECONDS + 4,
                 DEFAULT_CONSUME_RATE_WINDOW_SECONDS + 20, "the rate windows to fill")
        readings: list[tuple[float, float, float]] = []  # (produce, consume, operator's poll time)
        last = 0.0

        def three_polls() -> bool:
            nonlocal last
            assert pacer.error is None, pacer.error
            status = status_of(stack, namespace, "rates")
            if poll_time(status) > last:
                last = poll_time(status)
                readings.append((status["produceRatePerSecond"], status["consumeRatePerSecond"], last))
            return len(readings) >= 3

        wait_for(three_polls, 30, "three reconciles while the pace holds")
    finally:
        pacer.stopping.set()
        pacer.join(30)
    assert pacer.error is None, pacer.error
    for produced, consumed, polled in readings:
        # What the broker acknowledged over each of the operator's windows, ending at its poll. The
        # operator's window starts at its last sample before that (up to a 2 s poll earlier) and the
        # pacer moves in 0.25 s ticks: a few percent apart at a steady pace. 15 % catches a wrong sum,
        # window or unit; the nominal pace (40 and 20 msg/s) is what the pacer aims at.
        expected_produce = pacer.rate(polled, DEFAULT_PRODUCE_RATE_WINDOW_SECONDS, 1)
        expected_consume = pacer.rate(polled, DEFAULT_CONSUME_RATE_WINDOW_SECONDS, 2)
        assert expected_produce >= 10 and expected_consume >= 5, "too slow a pace to tell a rate from noise"
        assert produced == pytest.approx(expected_produce, rel=0.15), (readings, expected_produce)
        assert consumed == pytest.approx(expected_consume, rel=0.15), (readings, expected_consume)

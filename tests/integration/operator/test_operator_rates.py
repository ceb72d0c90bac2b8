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

from lagpilot_operator.observations import DEFAULT_CONSUME_RATE_WINDOW_SECONDS
from support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
TICK_SECONDS = 0.25
PRODUCED_PER_TICK = 10   # 40 msg/s
COMMITTED_PER_TICK = 5   # 20 msg/s
BACKLOG = 500            # per partition: the commits never catch up with the end during the run


class Pacer(threading.Thread):
    """Every tick: produce PRODUCED_PER_TICK records and move the group's committed offsets forward by
    COMMITTED_PER_TICK, spread over the partitions. Ticks are scheduled from the start time, so a late
    tick is caught up and the average pace is exact whatever the machine's load."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        # Not subscribed: commits explicit offsets as the group's only (simple) committer.
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.stopping = threading.Event()
        self.committed = [0] * PARTITIONS
        self.ticks = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            start = time.monotonic()
            while not self.stopping.is_set():
                for i in range(PRODUCED_PER_TICK):
                    self.producer.produce(self.topic, value=b"x", partition=i % PARTITIONS)
                self.producer.poll(0)
                for i in range(COMMITTED_PER_TICK):
                    self.committed[(self.ticks * COMMITTED_PER_TICK + i) % PARTITIONS] += 1
                self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in enumerate(self.committed)],
                                     asynchronous=False)
                self.ticks += 1
                self.stopping.wait(max(0.0, start + self.ticks * TICK_SECONDS - time.monotonic()))
        except BaseException as exc:  # reported by the test thread
            self.error = exc
        finally:
            self.producer.flush(30)
            self.consumer.close()


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
        readings: list[tuple[float, float]] = []
        last = 0.0

        def three_polls() -> bool:
            nonlocal last
            assert pacer.error is None, pacer.error
            status = status_of(stack, namespace, "rates")
            if poll_time(status) > last:
                last = poll_time(status)
                readings.append((status["produceRatePerSecond"], status["consumeRatePerSecond"]))
            return len(readings) >= 3

        wait_for(three_polls, 30, "three reconciles while the pace holds")
    finally:
        pacer.stopping.set()
        pacer.join(30)
    assert pacer.error is None, pacer.error
    produce_rate = PRODUCED_PER_TICK / TICK_SECONDS
    consume_rate = COMMITTED_PER_TICK / TICK_SECONDS
    for produced, consumed in readings:
        # The operator's windows start at a poll (2 s apart) and the pacer ticks every 0.25 s, so a window
        # holds up to a tick more or less than its span: a few percent. 15 % catches a wrong sum or unit.
        assert produced == pytest.approx(produce_rate, rel=0.15), readings
        assert consumed == pytest.approx(consume_rate, rel=0.15), readings

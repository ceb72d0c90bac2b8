"""Lag a person can read, on the real broker: time lag accuracy, and a stuck partition through the operator."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from test_operator_loop import FAST, Operator, condition, deployment, kcg, status_of

from lagpilot_operator.core.timelag import TimeLagTracker
from lagpilot_operator.kafka import kafka_lag
from support import metric_value, wait_for

pytestmark = pytest.mark.integration
SAMPLE_INTERVAL = 1.0


def record_timestamp(bootstrap: str, topic: str, partition: int, offset: int) -> float:
    """The produce time (CreateTime, seconds) of one record: the truth the estimate is checked against."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "timelag-truth", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        message = consumer.poll(10)
        assert message is not None and message.error() is None and message.offset() == offset
        return float(message.timestamp()[1]) / 1000
    finally:
        consumer.close()


@pytest.mark.slow
def test_time_lag_estimate_is_within_one_sampling_interval(kafka_bootstrap: str, create_topic: Any,
                                                           unique_name: Any) -> None:
    topic, group = create_topic("timelag", partitions=1), unique_name("timelag")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 0})
    tracker = TimeLagTracker()
    # The operator's own sampling path: read_lag every SAMPLE_INTERVAL while traffic flows at a known pace
    # (20 msg/s, with a 3 s pause in the middle so the produce rate is not uniform).
    started = time.monotonic()
    next_sample = started
    produced = 0
    while time.monotonic() - started < 12:
        now = time.monotonic()
        if not 5 <= now - started < 8:
            producer.produce(topic, value=str(produced).encode())
            produced += 1
            producer.poll(0)
        if now >= next_sample:
            producer.flush(5)
            tracker.add(kafka_lag.read_lag(admin, kafka_bootstrap, group, [topic]))
            next_sample += SAMPLE_INTERVAL
        time.sleep(0.05)  # paces production at ~20 msg/s (the workload itself, not synchronisation)
    producer.flush(10)
    committed_offset = produced // 3  # somewhere in the first phase
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, 0, committed_offset)], asynchronous=False)
    consumer.close()

    sample = kafka_lag.read_lag(admin, kafka_bootstrap, group, [topic])
    tracker.add(sample)
    offsets = sample.partitions[0]
    assert offsets.committed == committed_offset and offsets.end_offset == produced
    estimated = tracker.time_lag(offsets, sample.time)
    truth = sample.time - record_timestamp(kafka_bootstrap, topic, 0, committed_offset)
    assert truth > 5, "the committed record is several seconds old"
    assert abs(estimated - truth) <= SAMPLE_INTERVAL, f"estimated {estimated:.2f}s, true {truth:.2f}s"


@pytest.mark.slow
def test_blocked_partition_is_stalled_excluded_and_reported(stack: Any, namespace: str, create_topic: Any,
                                                            unique_name: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(Path(__file__).parents[2] / "crds"))
    topic, group = create_topic("stuck", partitions=2), unique_name("stuck")
    stop = threading.Event()

    def produce() -> None:
        producer = Producer({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5})
        while not stop.is_set():
            for partition in (0, 1):
                producer.produce(topic, value=b"x", partition=partition)
            producer.poll(0)
            stop.wait(0.05)
        producer.flush(10)

    def consume() -> None:
        """A group member stuck on partition 1: after its first record there, it commits partition 0 only."""
        consumer = Consumer({"bootstrap.servers": stack.kafka_bootstrap, "group.id": group,
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        committed_one = False
        while not stop.is_set():
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            if message.partition() == 0 or not committed_one:
                consumer.commit(message=message, asynchronous=True)
                committed_one = committed_one or message.partition() == 1
        consumer.close()

    threads = [threading.Thread(target=produce, daemon=True), threading.Thread(target=consume, daemon=True)]
    for thread in threads:
        thread.start()
    monkeypatch.setenv("LAGPILOT_VERDICT_WINDOW_SECONDS", "8")
    operator = Operator(stack, namespace, tmp_path)
    operator.start()
    try:
        deployment(stack, namespace, "stuck-worker", 1)
        kcg(stack, namespace, "stuck", {
            "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
            "scaleTargetRef": {"name": "stuck-worker"}, "replicas": {"min": 1, "max": 4},
            "lag": {"pollIntervalSeconds": 2}, "policy": {"mode": "drainTime", "scaleUp": FAST["policy"]["scaleUp"]}})
        status = wait_for(lambda: condition(s := status_of(stack, namespace, "stuck"), "PartitionsStuck")
                          .get("status") == "True" and s, 60, "PartitionsStuck=True")
        stuck = condition(status, "PartitionsStuck")
        assert f"{topic}-1 (STALLED)" in stuck["message"] and f"{topic}-0" not in stuck["message"]
        verdicts = {p["partition"]: p.get("verdict") for p in status["topPartitions"]}
        assert verdicts[1] == "STALLED" and verdicts.get(0) != "STALLED"
        assert f"{topic}-1" in status["lastDecision"], status["lastDecision"]
        events = json.loads(stack.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
        assert any(e["reason"] == "PartitionsStuck" and f"{topic}-1" in e["message"] for e in events)
        assert metric_value(operator.metrics(), "lagpilot_consumergroup_partition_verdict", {
            "name": "stuck", "namespace": namespace, "partition": "1", "topic": topic, "verdict": "STALLED"}) == 1
        printed = stack.kubectl("get", "kcg", "stuck", "-n", namespace).stdout.splitlines()
        header, row = printed[0].split(), printed[1].split()
        assert header[:3] == ["NAME", "LAG", "TIMELAG"] and row[0] == "stuck", printed
        # Partition 1 stalls while records keep arriving: its time lag, the column's maximum, is above 0.
        assert float(row[header.index("TIMELAG")]) > 0, printed
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        operator.stop()

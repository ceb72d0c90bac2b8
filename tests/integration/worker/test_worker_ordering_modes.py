"""Ordering per mode on the real broker: what runs one after another, and what overlaps."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from worker_testkit import produce, running_worker

from lagpilot_worker.config import GroupProtocol, WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.record import Record
from support import wait_for

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Call:
    key: bytes | None
    partition: int
    offset: int
    start: float
    end: float


class Recorder:
    """A handler that sleeps a random few ms and records when each call ran."""

    def __init__(self, seed: int) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._rng = random.Random(seed)

    def __call__(self, record: Record) -> None:
        start = time.monotonic()
        with self._lock:
            delay = self._rng.uniform(0.002, 0.015)
        time.sleep(delay)
        with self._lock:
            self.calls.append(Call(record.key, record.partition, record.offset, start, time.monotonic()))


def overlapping(calls: list[Call], same: Callable[[Call, Call], bool]) -> int:
    """Pairs of calls that ran at the same time and satisfy `same`."""
    ordered = sorted(calls, key=lambda c: c.start)
    count = 0
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if b.start >= a.end:
                break
            if same(a, b):
                count += 1
    return count


def run_mode(kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
             mode: OrderingMode, group_protocol: str) -> list[Call]:
    topic = create_topic("order", partitions=2)
    keys = [f"key-{k}".encode() for k in range(12)]
    records = [(keys[i % len(keys)], f"{i}".encode()) for i in range(240)]
    produce(kafka_bootstrap, topic, records)
    recorder = Recorder(seed=7)
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=unique_name("g"), topics=[topic],
                          ordering=mode, pool_size=8, http_port=None, dead_letter_enabled=False,
                          group_protocol=GroupProtocol(group_protocol))
    with running_worker(config, recorder):
        wait_for(lambda: len(recorder.calls) >= len(records), 60, "every record handled")
    assert sorted((c.partition, c.offset) for c in recorder.calls) == sorted(
        {(c.partition, c.offset) for c in recorder.calls}), "a record was handled twice without a crash"
    assert len(recorder.calls) == len(records)
    return recorder.calls


def in_offset_order_without_overlap(calls: list[Call]) -> bool:
    ordered = sorted(calls, key=lambda c: c.start)
    return all(a.offset < b.offset and a.end <= b.start for a, b in itertools.pairwise(ordered))


def test_key_mode_orders_each_key_and_overlaps_keys(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                   unique_name: Callable[[str], str], group_protocol: str) -> None:
    calls = run_mode(kafka_bootstrap, create_topic, unique_name, OrderingMode.KEY, group_protocol)
    by_key: dict[bytes | None, list[Call]] = defaultdict(list)
    for call in calls:
        by_key[call.key].append(call)
    for key, key_calls in by_key.items():
        assert in_offset_order_without_overlap(key_calls), f"key {key!r} ran out of order or overlapped"
    # Different keys of one partition ran at the same time (not just different partitions).
    assert overlapping(calls, lambda a, b: a.partition == b.partition and a.key != b.key) > 0


def test_partition_mode_orders_each_partition(kafka_bootstrap: str, create_topic: Callable[..., str],
                                              unique_name: Callable[[str], str], group_protocol: str) -> None:
    calls = run_mode(kafka_bootstrap, create_topic, unique_name, OrderingMode.PARTITION, group_protocol)
    for partition in (0, 1):
        assert in_offset_order_without_overlap([c for c in calls if c.partition == partition])
    assert overlapping(calls, lambda a, b: a.partition != b.partition) > 0


def test_unordered_mode_overlaps_within_a_partition(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                    unique_name: Callable[[str], str], group_protocol: str) -> None:
    calls = run_mode(kafka_bootstrap, create_topic, unique_name, OrderingMode.UNORDERED, group_protocol)
    assert overlapping(calls, lambda a, b: a.partition == b.partition and a.key == b.key) > 0

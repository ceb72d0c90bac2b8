"""The offset map on the real broker: a commit carries the records finished above a slow one, the
next owner skips them; a map that does not fit is left out (counted); metadata that is not a map is
ignored (the records run again), never a crash."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, TopicPartition
from worker_testkit import metric, produce, running_worker

from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.offset_map import decode
from lagpilot_worker.record import Record
from lagpilot_worker.runtime import Worker
from support import wait_for

pytestmark = pytest.mark.integration

COUNT = 20


def config(bootstrap: str, group: str, topic: str, **overrides: object) -> WorkerConfig:
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap, "group_id": group, "topics": [topic], "pool_size": 4,
        # One record per work item: the slow record never holds a faster one back in its slot.
        "max_messages_per_item": 1, "commit_interval_seconds": 0.1, "http_host": "127.0.0.1", "http_port": 0,
        "dead_letter_enabled": False, "shutdown_timeout_seconds": 1.0}
    settings.update(overrides)
    return WorkerConfig(**settings)  # type: ignore[arg-type]


def committed(bootstrap: str, group: str, topic: str) -> tuple[int, str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout=15)
        return tp.offset, tp.metadata or ""
    finally:
        consumer.close()


def run_with_first_record_stuck(bootstrap: str, group: str, topic: str, ran: list[str],
                                **overrides: object) -> Worker:
    """A worker whose handler blocks on record "0" until it has stopped: every later record
    finishes, the committed offset stays at 0. Returns the stopped worker."""
    gate = threading.Event()

    def handle(record: Record) -> None:
        if record.value == b"0":
            gate.wait(30)
            return
        ran.append(record.value.decode())

    worker = Worker(config(bootstrap, group, topic, **overrides), handle)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.wait_started(30)
        wait_for(lambda: len(ran) == COUNT - 1, 60, "every record but the stuck one handled")
        wait_for(lambda: committed(bootstrap, group, topic)[0] == 0, 30, "offset 0 committed")
        worker.stop()
        # The shutdown abandons the stuck record after its 1 s deadline and commits what finished.
        assert worker.wait_finished(30)
    finally:
        worker.stop()
        gate.set()
        thread.join(30)
    assert worker.error is None
    return worker


def second_run(bootstrap: str, group: str, topic: str) -> tuple[list[str], Callable[[str], float | None]]:
    ran: list[str] = []
    values: dict[str, float | None] = {}
    names = ("lagpilot_worker_offset_map_skipped_records_total", "lagpilot_worker_offset_map_ignored_total")
    with running_worker(config(bootstrap, group, topic), lambda r: ran.append(r.value.decode())) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: committed(bootstrap, group, topic)[0] == COUNT, 60, "every offset committed")
        values.update({name: metric(port, name) for name in names})
    return ran, values.get


def test_next_owner_skips_what_the_map_says_is_done(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                    unique_name: Callable[[str], str]) -> None:
    topic = create_topic("omap", partitions=1)
    group = unique_name("g")
    produce(kafka_bootstrap, topic, [(f"k{i}".encode(), str(i).encode()) for i in range(COUNT)])
    first: list[str] = []
    run_with_first_record_stuck(kafka_bootstrap, group, topic, first)
    offset, metadata = committed(kafka_bootstrap, group, topic)
    done_map = decode(metadata, offset)
    assert offset == 0 and done_map is not None
    assert [o for o in range(COUNT) if o in done_map] == list(range(1, COUNT))
    ran, value = second_run(kafka_bootstrap, group, topic)
    assert ran == ["0"], "the second worker ran a record the first one had finished"
    assert value("lagpilot_worker_offset_map_skipped_records_total") == COUNT - 1


def test_map_over_the_limit_commits_plain_and_counts_it(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                        unique_name: Callable[[str], str]) -> None:
    topic = create_topic("omap", partitions=1)
    group = unique_name("g")
    produce(kafka_bootstrap, topic, [(f"k{i}".encode(), str(i).encode()) for i in range(COUNT)])
    first: list[str] = []
    # The smallest map (tag, offset, two runs) is 4 bytes, 8 base64 characters.
    worker = run_with_first_record_stuck(kafka_bootstrap, group, topic, first, offset_metadata_max_bytes=7)
    overflows = worker.metrics.registry.get_sample_value("lagpilot_worker_offset_map_overflow_total")
    assert overflows is not None and overflows >= 1
    assert committed(kafka_bootstrap, group, topic) == (0, "")
    ran, value = second_run(kafka_bootstrap, group, topic)
    assert sorted(ran, key=int) == [str(i) for i in range(COUNT)], "without a map everything runs again"
    assert value("lagpilot_worker_offset_map_skipped_records_total") == 0


def test_metadata_that_is_not_a_map_is_ignored(kafka_bootstrap: str, create_topic: Callable[..., str],
                                               unique_name: Callable[[str], str]) -> None:
    topic = create_topic("omap", partitions=1)
    group = unique_name("g")
    produce(kafka_bootstrap, topic, [(f"k{i}".encode(), str(i).encode()) for i in range(COUNT)])
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        # Another tool's metadata on the committed offset.
        consumer.commit(offsets=[TopicPartition(topic, 0, 0, metadata="not a map!")], asynchronous=False)
    finally:
        consumer.close()
    assert committed(kafka_bootstrap, group, topic) == (0, "not a map!")
    ran, value = second_run(kafka_bootstrap, group, topic)
    assert sorted(ran, key=int) == [str(i) for i in range(COUNT)]
    assert value("lagpilot_worker_offset_map_ignored_total") == 1
    assert value("lagpilot_worker_offset_map_skipped_records_total") == 0

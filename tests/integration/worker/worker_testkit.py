"""Helpers for the worker's integration tests: real Kafka, real worker (thread or CLI subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.poolsize import PoolSizeSource
from lagpilot_worker.record import Record
from lagpilot_worker.runtime import Worker
from lagpilot_worker.share_runtime import ShareWorker
from support import metric_value, wait_for

REPO = Path(__file__).resolve().parents[3]


def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]],
            headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    errors: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value in records:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": delivered}
        if headers:
            kwargs["headers"] = headers
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0, "records still unsent"
    assert not errors, errors


@dataclass
class ReadRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    timestamp: tuple[int, int]

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name]
        assert len(values) <= 1, f"header {name} appears {len(values)} times"
        return None if not values or values[0] is None else values[0].decode()


def read_topic(bootstrap: str, topic: str, timeout: float = 30) -> list[ReadRecord]:
    """Every record currently in `topic` (all partitions, from the start to the high watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        ends: dict[int, int] = {}
        assignment = []
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                ends[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        if not assignment:
            return []
        consumer.assign(assignment)
        records: list[ReadRecord] = []
        remaining = dict(ends)
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                if message.error() is not None:
                    continue
                partition = message.partition()
                assert partition is not None
                records.append(ReadRecord(topic, partition, message.offset() or 0, message.key(), message.value(),
                                          list(message.headers() or []), message.timestamp()))
                if (message.offset() or 0) + 1 >= remaining.get(partition, 0):
                    remaining.pop(partition, None)
        assert not remaining, f"could not read {topic} to its end: {remaining}"
        return records
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        found = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}
    finally:
        consumer.close()


class Topics:
    """Topics with exact names (DLQ and retry tiers follow the group's name), deleted afterwards."""

    def __init__(self, bootstrap: str) -> None:
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.created: list[str] = []

    def create(self, name: str, partitions: int = 1) -> str:
        self.admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=60)
        self.created.append(name)
        wait_for(lambda: (t := self.admin.list_topics(name, timeout=10).topics.get(name)) is not None
                 and t.error is None and len(t.partitions) == partitions, 30, f"topic {name}")
        return name

    def delete_all(self) -> None:
        if self.created:
            for future in self.admin.delete_topics(self.created, operation_timeout=30).values():
                try:
                    future.result(timeout=60)
                except Exception as exc:
                    print(f"cleanup: {exc}")


def assert_each_record_ran_once_in_order_and_committed(
        bootstrap: str, group: str, topic: str, partitions: int,
        seen: dict[tuple[int, bytes | None], list[int]], count: int) -> None:
    """`seen`: (partition, key) -> offsets in the order the handler ran them. Waits until the group
    has committed past the last offset of every partition, then checks each record ran exactly once
    and each lane (key, or partition) in offset order."""
    ends = {p: 1 + max(o for (part, _), offsets in seen.items() if part == p for o in offsets)
            for p in range(partitions)}
    wait_for(lambda: committed_offsets(bootstrap, group, topic, partitions) == ends, 30, "every offset committed")
    assert sum(len(offsets) for offsets in seen.values()) == count, "a record ran twice or not at all"
    for lane, offsets in seen.items():
        assert offsets == sorted(offsets), f"{lane} ran out of order"


W = TypeVar("W", Worker, ShareWorker)


@contextmanager
def _running(worker: W) -> Iterator[W]:
    """`worker` in a background thread; stopped gracefully (and checked for errors) on exit."""
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)  # tests look for this name
    thread.start()
    assert worker.wait_started(30), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive(), "worker did not stop"
    assert worker.error is None, f"worker failed: {worker.error!r}"


@contextmanager
def running_worker(config: WorkerConfig, handler: Callable[[Record], Any],
                   pool_size_source: PoolSizeSource | None = None) -> Iterator[Worker]:
    with _running(Worker(config, handler, pool_size_source=pool_size_source)) as worker:
        yield worker


@contextmanager
def running_share_worker(config: WorkerConfig, handler: Callable[[Record], Any],
                         pool_size_source: PoolSizeSource | None = None) -> Iterator[ShareWorker]:
    with _running(ShareWorker(config, handler, pool_size_source=pool_size_source)) as worker:
        yield worker


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def metric(port: int, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample's value from /metrics (its labels must include the given ones)."""
    status, text = http_get(port, "/metrics")
    assert status == 200
    return metric_value(text, name, labels)


@dataclass
class CliWorker:
    """`lagpilot-worker` as a subprocess, logging JSON lines to a file."""

    args: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_offset: int = field(default=0)

    def start(self) -> CliWorker:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", "lagpilot_worker.cli", *self.args], cwd=self.cwd,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            for line in handle.read().decode(errors="replace").splitlines():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    entries.append({"raw": line})
        return entries

    def http_port(self) -> int:
        def port() -> int | None:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.logs()[-20:]}")
            for entry in self.logs():
                if entry.get("message") == "worker started" and entry.get("http_port"):
                    return int(entry["http_port"])
            return None

        return wait_for(port, 60, "the worker's HTTP port in its logs")

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)

    def stop_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def cli_env(extra_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH", "")]))
    env.pop("LAGPILOT_POOL_CONFIGMAP", None)
    # hack/stack.py's port overrides (LAGPILOT_KAFKA_PORT, LAGPILOT_KAFKA_SCRAM_PORT, ...), set when the
    # tests run against a second stack, share the worker's LAGPILOT_KAFKA_ prefix: the worker would read
    # them as librdkafka settings ("port", "scram.port") and refuse to start.
    for name in [n for n in env if n.startswith("LAGPILOT_KAFKA_") and n.endswith("_PORT")]:
        env.pop(name)
    return env

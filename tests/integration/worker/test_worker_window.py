"""The in-flight window on the real broker: a record counts against it until a commit covering it is
acknowledged by the broker. When the window is full and only such an answer would free it, the worker
commits synchronously; it does not pause every partition to wait for the answer (librdkafka fetches a
resumed partition again only about a second after the resume, so a fast handler with a small window
would then stall about a second at every fill)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from worker_testkit import produce, running_worker

from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.record import Record
from support import wait_for

pytestmark = pytest.mark.integration

RECORDS = 20_000
WINDOW = 200


def test_a_full_window_waits_for_the_commit_answer_without_stalling(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str]) -> None:
    """A no-op handler fills a window of 200 in far less than a commit round trip, a hundred times over.
    Stalling a second at each fill would take well over the minute allowed; waiting for the answer
    takes a round trip each."""
    topic = create_topic("window", partitions=4)
    produce(kafka_bootstrap, topic, [(f"k{i % 1000}".encode(), str(i).encode()) for i in range(RECORDS)])
    lock = threading.Lock()
    seen: set[str] = set()

    def handle(record: Record) -> None:
        with lock:
            seen.add(record.value.decode())

    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=unique_name("g"), topics=[topic],
                          pool_size=4, max_uncommitted=WINDOW, http_port=None, dead_letter_enabled=False)
    with running_worker(config, handle) as worker:
        samples: list[float] = []

        def all_seen() -> bool:
            samples.append(worker.metrics.registry.get_sample_value("lagpilot_worker_uncommitted_messages") or 0.0)
            return len(seen) == RECORDS

        wait_for(all_seen, 60, f"all {RECORDS} records processed", interval=0.05)
        waits = worker.metrics.registry.get_sample_value("lagpilot_worker_window_commit_waits_total") or 0.0
    assert waits > 0, "the window never filled with records awaiting a commit answer"
    assert max(samples) <= WINDOW, f"{max(samples)} records in flight, more than the window of {WINDOW}"

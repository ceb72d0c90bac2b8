"""What a slot reports for a work item: successes, retries in place, poison pills, tier hand-offs,
the early stop on a run of dead letters, and cancellation. Real confluent_kafka.Message objects."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Message

from lagpilot_contract import headers as h
from lagpilot_worker.dlq import FailureInfo, failure_headers
from lagpilot_worker.metrics import WorkerMetrics
from lagpilot_worker.ordering import Segment
from lagpilot_worker.processing import Job, JobResult, Processor
from lagpilot_worker.record import Record
from lagpilot_worker.retry import (
    DeadLetter,
    PermanentError,
    RetryLaterError,
    RetryPolicy,
    SendToRetryTier,
    TransientError,
)


@dataclass
class FakePartition:
    revoked: bool = False
    halted: bool = False
    tier: int = 0


def message(offset: int, value: bytes = b"v", headers: list[tuple[str, bytes]] | None = None,
            topic: str = "orders") -> Message:
    return Message(topic=topic, partition=3, offset=offset, key=b"k", value=value, headers=headers,
                   timestamp=(1, int(time.time() * 1000) - 1500))


def run(handler: Callable[[Record], Any], messages: list[Message], *, policy: RetryPolicy | None = None,
        partition: FakePartition | None = None, deserializer: Callable[[bytes | None], Any] | None = None,
        run_limit: int | None = None, metrics: WorkerMetrics | None = None) -> JobResult:
    results: deque[JobResult] = deque()
    metrics = metrics or WorkerMetrics()
    processor = Processor(handler, deserializer=deserializer, classifier=None,
                          policy=policy or RetryPolicy(backoff_initial_seconds=0.001, jitter=0),
                          processing=metrics.processing, end_to_end=metrics.end_to_end, results=results,
                          wake=threading.Event(), stopping=threading.Event(), dead_letter_run_limit=run_limit)
    processor.run_job(Job([Segment(partition or FakePartition(), messages, [])]))
    [result] = results
    return result


def test_successes_and_metrics() -> None:
    seen: list[tuple[str, int, bytes | None]] = []
    metrics = WorkerMetrics()
    result = run(lambda r: seen.append((r.topic, r.offset, r.value)), [message(i) for i in range(5)],
                 metrics=metrics)
    assert result.segments == [(5, None)] and result.handled == 5
    assert seen == [("orders", i, b"v") for i in range(5)]
    counts, _ = metrics.processing.snapshot()
    latency, latency_sum = metrics.end_to_end.snapshot()
    assert sum(counts) == 5 and sum(latency) == 5
    assert 1.0 < latency_sum / 5 < 60          # produced 1.5 s before: end-to-end, not handler time


def test_transient_failure_retried_in_place_then_succeeds() -> None:
    attempts: list[int] = []

    def flaky(record: Record) -> None:
        attempts.append(record.attempt)
        if record.attempt < 3:
            raise TransientError("timeout")

    result = run(flaky, [message(0)], policy=RetryPolicy(attempts_in_place=3, backoff_initial_seconds=0.01,
                                                         jitter=0))
    assert attempts == [1, 2, 3]
    assert result.segments == [(1, None)]
    assert (result.failed_attempts, result.retries_in_place) == (2, 2)


def test_unknown_exception_exhausts_in_place_then_goes_to_the_next_tier() -> None:
    def broken(record: Record) -> None:
        raise ValueError("nope")

    result = run(broken, [message(0)], policy=RetryPolicy(attempts_in_place=2, backoff_initial_seconds=0.001,
                                                          jitter=0, tier_delays_seconds=(5.0,)))
    [(handled, failures)] = result.segments
    assert handled == 1 and failures is not None
    [failure] = failures
    assert failure.action == SendToRetryTier(1, 5.0) and failure.attempts == 2
    assert failure.info.exception_class == "ValueError" and failure.info.message == "nope"


def test_retry_later_skips_retry_in_place_and_permanent_goes_to_dlq() -> None:
    def handler(record: Record) -> None:
        raise RetryLaterError("later") if record.offset == 0 else PermanentError("never")

    result = run(handler, [message(0), message(1)], policy=RetryPolicy(tier_delays_seconds=(1.0,)))
    [(handled, failures)] = result.segments
    assert handled == 2 and failures is not None
    assert [(f.index, f.action, f.attempts) for f in failures] == [
        (0, SendToRetryTier(1, 1.0), 1), (1, DeadLetter(h.FAILURE_PERMANENT), 1)]
    assert result.retries_in_place == 0


def test_poison_pill_never_reaches_the_handler() -> None:
    import json

    seen: list[object] = []
    result = run(seen.append, [message(0, b'{"a": 1}'), message(1, b"{oops"), message(2, b"[]")],
                 deserializer=lambda raw: json.loads(raw or b"null"))
    [(handled, failures)] = result.segments
    assert handled == 3 and failures is not None
    [failure] = failures
    assert failure.index == 1 and failure.action == DeadLetter(h.FAILURE_POISON_PILL)
    assert failure.info.exception_class == "json.decoder.JSONDecodeError"
    assert [getattr(r, "value", None) for r in seen] == [{"a": 1}, []]  # type: ignore[attr-defined]


def test_a_run_of_dead_letters_stops_the_segment() -> None:
    calls: list[int] = []

    def handler(record: Record) -> None:
        calls.append(record.offset)
        raise PermanentError("bad deploy")

    result = run(handler, [message(i) for i in range(50)], run_limit=5)
    [(handled, failures)] = result.segments
    assert handled == 5 and calls == [0, 1, 2, 3, 4] and failures is not None and len(failures) == 5


def test_successes_break_the_run() -> None:
    result = run(lambda r: (_ for _ in ()).throw(PermanentError("x")) if r.offset % 2 else None,
                 [message(i) for i in range(20)], run_limit=3)
    assert result.segments[0][0] == 20


@pytest.mark.parametrize("flag", ["revoked", "halted"])
def test_revoked_or_halted_partition_stops_and_abandons_retries(flag: str) -> None:
    partition = FakePartition()
    calls: list[int] = []

    def handler(record: Record) -> None:
        calls.append(record.offset)
        setattr(partition, flag, True)
        raise TransientError("slow dependency")

    started = time.monotonic()
    result = run(handler, [message(i) for i in range(3)], partition=partition,
                 policy=RetryPolicy(attempts_in_place=5, backoff_initial_seconds=5, jitter=0))
    assert time.monotonic() - started < 1        # did not sit out the 5 s backoff
    assert calls == [0] and result.segments == [(0, None)]


def test_record_from_a_retry_tier_reports_its_origin() -> None:
    headers = [(h.ORIGINAL_TOPIC, b"orders"), (h.ORIGINAL_PARTITION, b"7"), (h.ORIGINAL_OFFSET, b"1234"),
               (h.ORIGINAL_TIMESTAMP, b"1700000000000"), (h.ATTEMPTS, b"3"), (h.RETRY_TIER, b"1"),
               ("own", b"kept")]
    seen: list[Record] = []
    run(seen.append, [message(9, headers=headers, topic="g.retry.1")], partition=FakePartition(tier=1))
    [record] = seen
    assert (record.topic, record.partition, record.offset, record.timestamp_ms) == ("orders", 7, 1234,
                                                                                   1700000000000)
    assert (record.source_topic, record.source_offset, record.retry_tier, record.attempt) == ("g.retry.1", 9, 1, 4)
    assert record.headers == [("own", b"kept")]


def test_failure_headers_keep_the_first_origin_and_replace_bookkeeping() -> None:
    retried = message(9, headers=[("own", b"1"), (h.ORIGINAL_TOPIC, b"orders"), (h.ORIGINAL_OFFSET, b"5"),
                                  (h.ATTEMPTS, b"2"), (h.RETRY_TIER, b"1"), (h.RETRY_DUE, b"1")],
                      topic="g.retry.1")
    info = FailureInfo("mod.Err", "m" * 5000, "t" * 20000)
    headers = failure_headers(retried, group_id="g", worker_id="w", failure=info, attempts=4,
                              kind=h.FAILURE_RETRIES_EXHAUSTED)
    names = [k for k, _ in headers]
    assert names.count(h.ATTEMPTS) == 1 and h.RETRY_TIER not in names and h.RETRY_DUE not in names
    assert h.header_text(headers, h.ORIGINAL_TOPIC) == "orders"
    assert h.header_text(headers, h.ORIGINAL_OFFSET) == "5"
    assert h.header_text(headers, h.ATTEMPTS) == "4"
    assert headers[0] == ("own", b"1")
    assert len(h.header_text(headers, h.EXCEPTION_MESSAGE) or "") == h.MESSAGE_LIMIT_BYTES
    assert len(h.header_text(headers, h.EXCEPTION_STACKTRACE) or "") == h.STACKTRACE_LIMIT_BYTES

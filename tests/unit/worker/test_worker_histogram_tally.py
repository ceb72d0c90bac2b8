"""A slot tallies its histogram observations in runs per bucket; the result must be exactly what
observing every record one by one gives (counts per bucket, sums), whatever the sequence."""

from __future__ import annotations

import threading
import time
from collections import deque

import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_worker.metrics import LATENCY_BUCKETS, PROCESSING_BUCKETS, HistogramRecorder, WorkerMetrics
from lagpilot_worker.ordering import Segment
from lagpilot_worker.processing import Job, JobResult, Processor
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError, RetryPolicy

BEGAN = 1000.0          # the fake perf_counter at the start of the item
WALL = 1_700_000_000.0  # the fake time.time() at the start of the item

# Durations and ages on, just below and just above the bucket bounds (`le` buckets), and far out.
durations = st.sampled_from([0.0, *PROCESSING_BUCKETS, *(b * 0.999 for b in PROCESSING_BUCKETS),
                             *(b * 1.001 for b in PROCESSING_BUCKETS), 100.0])
ages_ms = st.sampled_from([0, -5, 3, *(int(b * 1000) for b in LATENCY_BUCKETS),
                           *(int(b * 1000) + 1 for b in LATENCY_BUCKETS), 10_000_000])


class FakeClock:
    def __init__(self) -> None:
        self.now = BEGAN

    def perf_counter(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(durations, ages_ms, st.booleans()), min_size=1, max_size=60))
def test_tallied_histograms_equal_observing_each_record(records: list[tuple[float, int, bool]]) -> None:
    clock = FakeClock()
    # produced = (item start + age) in wall-clock ms; a non-positive timestamp means "unknown".
    messages = [Message(topic="t", partition=0, offset=i, key=b"k", value=b"v",
                        timestamp=(1, int(WALL * 1000) - age if age != -5 else -1))
                for i, (_, age, _) in enumerate(records)]
    plan = {i: (duration, fails) for i, (duration, _, fails) in enumerate(records)}

    def handler(record: Record) -> None:
        duration, fails = plan[record.offset]
        clock.now += duration
        if fails:
            raise PermanentError("no")

    expected_processing = HistogramRecorder(PROCESSING_BUCKETS)
    expected_latency = HistogramRecorder(LATENCY_BUCKETS)
    previous = BEGAN
    now = BEGAN
    for message, (duration, _, fails) in zip(messages, records, strict=True):
        now = now + duration
        expected_processing.observe(now - previous)    # the same float arithmetic as the slot
        previous = now
        produced = message.timestamp()[1]
        if not fails and produced > 0:
            expected_latency.observe(now + (WALL - BEGAN) - produced * 0.001)

    metrics = WorkerMetrics()
    results: deque[JobResult] = deque()
    processor = Processor(handler, deserializer=None, classifier=None, policy=RetryPolicy(),
                          processing=metrics.processing, end_to_end=metrics.end_to_end, results=results,
                          wake=threading.Event(), stopping=threading.Event())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "perf_counter", clock.perf_counter)
        patch.setattr(time, "time", lambda: WALL)
        processor.run_job(Job([Segment(_Partition(), messages, [])]))
    [result] = results
    assert result.handled == len(records)
    for histogram, expected in ((metrics.processing, expected_processing), (metrics.end_to_end, expected_latency)):
        counts, total = histogram.snapshot()
        assert counts == expected.counts
        assert total == pytest.approx(expected.total, rel=1e-9, abs=1e-9)


class _Partition:
    revoked = False
    halted = False
    tier = 0

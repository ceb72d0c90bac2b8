"""Metric names as docs/design.md fixes them; the lock-free histograms sum their threads."""

from __future__ import annotations

import threading

from prometheus_client import generate_latest

from lagpilot_worker.metrics import WorkerMetrics
from support import metric_samples, metric_value

DESIGN_NAMES = [
    "lagpilot_worker_messages_consumed_total", "lagpilot_worker_messages_processed_total",
    "lagpilot_worker_messages_failed_total", "lagpilot_worker_messages_retried_total",
    "lagpilot_worker_messages_dead_lettered_total", "lagpilot_worker_in_flight", "lagpilot_worker_pool_size",
    "lagpilot_worker_partition_lag", "lagpilot_worker_processing_duration_seconds_bucket",
    "lagpilot_worker_end_to_end_latency_seconds_bucket", "lagpilot_worker_rebalances_total",
    "lagpilot_worker_breaker_open", "lagpilot_worker_offset_map_skipped_records_total",
    "lagpilot_worker_offset_map_overflow_total", "lagpilot_worker_offset_map_ignored_total",
    "lagpilot_worker_revoked_in_flight_records_total", "lagpilot_worker_revoked_abandoned_records_total",
]


def test_design_metric_names_are_exposed() -> None:
    metrics = WorkerMetrics()
    metrics.retried.labels("in-place").inc()
    metrics.dead_lettered.labels("permanent").inc()
    metrics.partition_lag.labels("t", "0").set(5)
    metrics.breaker_open.labels("t", "0").set(1)
    names = {sample.name for sample in metric_samples(generate_latest(metrics.registry).decode())}
    assert set(DESIGN_NAMES) <= names, sorted(set(DESIGN_NAMES) - names)
    metrics.write_stalled.labels("t", "0").set(1)
    metrics.forget_partition("t", 0)
    left = [s for s in metric_samples(generate_latest(metrics.registry).decode()) if s.labels.get("partition") == "0"]
    assert left == []


def test_thread_local_histograms_add_up() -> None:
    metrics = WorkerMetrics()

    def observe() -> None:
        recorder = metrics.processing.recorder()
        for value in (0.0001, 0.003, 0.2, 100.0):
            recorder.observe(value)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts, total = metrics.processing.snapshot()
    assert sum(counts) == 16 and counts[-1] == 4          # 100 s is above every bound: +Inf only
    assert abs(total - 4 * 100.2031) < 1e-6
    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "lagpilot_worker_processing_duration_seconds_bucket", {"le": "+Inf"}) == 16
    assert metric_value(text, "lagpilot_worker_processing_duration_seconds_count") == 16

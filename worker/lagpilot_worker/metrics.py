"""Prometheus metrics of a worker (names as in docs/design.md, prefix `lagpilot_worker_`)."""

from __future__ import annotations

import contextlib
import threading
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

PREFIX = "lagpilot_worker_"

PROCESSING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REBALANCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class HistogramRecorder:
    """One thread's share of a histogram: plain ints, no lock.

    prometheus_client's Histogram takes a lock per observation (about 1 µs); at hundreds of
    thousands of messages per second that alone would halve the throughput of a no-op handler.
    Each slot thread owns a recorder, and the collector sums them at scrape time.
    """

    __slots__ = ("bounds", "counts", "lower", "total", "upper")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)   # last bucket: above the highest bound (+Inf)
        self.total = 0.0
        # Bucket i holds lower[i] < value <= upper[i] (Prometheus `le` buckets): lets a hot loop
        # test "same bucket as the last value" with two comparisons instead of a search.
        self.lower = (float("-inf"), *bounds)
        self.upper = (*bounds, float("inf"))

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class ThreadLocalHistogram(Collector):
    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(buckets)
        self._recorders: list[HistogramRecorder] = []
        self._local = threading.local()
        self._lock = threading.Lock()

    def recorder(self) -> HistogramRecorder:
        """The calling thread's recorder (created on first use)."""
        found: HistogramRecorder | None = getattr(self._local, "recorder", None)
        if found is None:
            found = HistogramRecorder(self.bounds)
            with self._lock:
                self._recorders.append(found)
            self._local.recorder = found
        return found

    def snapshot(self) -> tuple[list[int], float]:
        counts = [0] * (len(self.bounds) + 1)
        total = 0.0
        with self._lock:
            recorders = list(self._recorders)
        for recorder in recorders:
            for index, value in enumerate(list(recorder.counts)):
                counts[index] += value
            total += recorder.total
        return counts, total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        counts, total = self.snapshot()
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], buckets, total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)


class WorkerMetrics:
    """All metrics of one worker, in its own registry (several workers can share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(f"{PREFIX}messages_consumed", "Records fetched (source and retry topics).",
                                registry=r)
        self.processed = Counter(f"{PREFIX}messages_processed", "Records the handler finished successfully.",
                                 registry=r)
        self.failed = Counter(f"{PREFIX}messages_failed",
                              "Failed attempts: handler calls that raised, and records that could not be "
                              "deserialized.", registry=r)
        self.retried = Counter(f"{PREFIX}messages_retried",
                               "Retries: in place (after backoff) and hand-offs to a retry tier topic.",
                               ["kind"], registry=r)
        self.dead_lettered = Counter(f"{PREFIX}messages_dead_lettered",
                                     "Records written to the dead-letter topic (acknowledged).",
                                     ["kind"], registry=r)
        self.rebalances = Counter(f"{PREFIX}rebalances", "Partition assignments received from the group.",
                                  registry=r)
        # A few observations per rebalance: prometheus_client's locked Histogram is cheap enough here.
        self.rebalance_seconds = Histogram(
            f"{PREFIX}rebalance_seconds",
            "This member's time in a rebalance, by what started it: join (subscribe to first assignment), "
            "revoke (partitions revoked to the assignment that ends the rebalance), lost (partitions lost "
            "to the next assignment).", ["reason"], buckets=REBALANCE_BUCKETS, registry=r)
        self.partitions_gained = Counter(f"{PREFIX}partitions_gained",
                                         "Partitions assigned to this member by rebalances.", registry=r)
        self.partitions_lost = Counter(f"{PREFIX}partitions_lost",
                                       "Partitions taken from this member: revoke (handed over, finished work "
                                       "committed) or lost (session expired or fenced, nothing committed).",
                                       ["reason"], registry=r)
        self.commits = Counter(f"{PREFIX}commits", "Offset commits sent.", registry=r)
        self.window_commit_waits = Counter(
            f"{PREFIX}window_commit_waits",
            "Synchronous commits made because the in-flight window was full and only the broker's answer "
            "to a commit would free it (often: the window is small for the throughput and commit round trip).",
            registry=r)
        self.offset_map_overflows = Counter(
            f"{PREFIX}offset_map_overflow",
            "Partition commits sent without an offset map because the map of records finished above "
            "the committed offset did not fit offset.metadata.max.bytes (those records replay after a "
            "crash or hand-over).", registry=r)
        self.offset_map_skipped = Counter(
            f"{PREFIX}offset_map_skipped_records",
            "Records not handled because the committed offset map says an earlier owner finished them.",
            registry=r)
        self.offset_map_ignored = Counter(
            f"{PREFIX}offset_map_ignored",
            "Committed metadata read at assignment that was not a valid offset map (the records replay).",
            registry=r)
        self.revoked_in_flight = Counter(
            f"{PREFIX}revoked_in_flight_records",
            "Records of revoked partitions in flight (handler calls running, dead-letter writes unacknowledged) "
            "when the revocation or the shutdown began: at most these can run again on the next owner.",
            registry=r)
        self.revoked_abandoned = Counter(
            f"{PREFIX}revoked_abandoned_records",
            "Records of revoked partitions still in flight when the revoke or shutdown bound ran out: handled "
            "here, not committed, they run again on the next owner.", registry=r)
        self.revoke_commit_refused = Counter(
            f"{PREFIX}revoke_commit_refused_records",
            "Records of revoked partitions not covered by a stored commit because the broker refused the final "
            "commit (the group was rebalancing again): they run again on the next owner.", registry=r)
        self.write_errors = Counter(f"{PREFIX}dead_letter_write_errors",
                                    "Failed writes to the dead-letter or retry topics (they are retried).",
                                    registry=r)
        self.write_stalled = Gauge(f"{PREFIX}dead_letter_write_stalled",
                                   "1 while the partition is paused because a write of its failed records to the "
                                   "dead-letter or a retry topic failed past the retry bound (still retried).",
                                   ["topic", "partition"], registry=r)
        self.in_flight = Gauge(f"{PREFIX}in_flight", "Work items running now: busy slots, and the poll thread "
                                "while it runs one itself.", registry=r)
        self.pool_size = Gauge(f"{PREFIX}pool_size", "Concurrent slots of the pool (target).", registry=r)
        self.inline_execution = Gauge(f"{PREFIX}inline_execution",
                                      "1 while work items run on the poll thread (a handler too fast for a "
                                      "thread hand-off), 0 while they go to the slots.", registry=r)
        self.uncommitted = Gauge(f"{PREFIX}uncommitted_messages",
                                 "Records fetched and not covered by a commit the broker acknowledged (the "
                                 "in-flight window): what a crash now would deliver again, at most.", registry=r)
        self.assigned_partitions = Gauge(f"{PREFIX}assigned_partitions", "Partitions assigned to this worker.",
                                         registry=r)
        self.paused_partitions = Gauge(f"{PREFIX}paused_partitions", "Assigned partitions not being fetched.",
                                       registry=r)
        self.partition_lag = Gauge(f"{PREFIX}partition_lag",
                                   "High watermark minus the lowest unfinished offset, as this worker sees it.",
                                   ["topic", "partition"], registry=r)
        self.breaker_open = Gauge(f"{PREFIX}breaker_open",
                                  "1 while the partition's dead-letter circuit breaker is open or half-open.",
                                  ["topic", "partition"], registry=r)
        self.processing = ThreadLocalHistogram(f"{PREFIX}processing_duration_seconds",
                                               "Handler time per record, including retries in place.",
                                               PROCESSING_BUCKETS)
        self.end_to_end = ThreadLocalHistogram(f"{PREFIX}end_to_end_latency_seconds",
                                               "From the record's timestamp to the end of its handling.",
                                               LATENCY_BUCKETS)
        r.register(self.processing)
        r.register(self.end_to_end)

    def forget_partition(self, topic: str, partition: int) -> None:
        for gauge in (self.partition_lag, self.breaker_open, self.write_stalled):
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))

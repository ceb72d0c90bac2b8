"""The operator's own Prometheus metrics (names in docs/design.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from lagpilot_operator.core.observations import PartitionKey
from lagpilot_operator.core.verdicts import Verdict

RESOURCE = ("namespace", "name")
PARTITION = (*RESOURCE, "topic", "partition")

PARTITION_LAG = Gauge("lagpilot_consumergroup_lag", "Offset lag per partition (end minus committed offset).",
                      PARTITION)
TOTAL_LAG = Gauge("lagpilot_consumergroup_total_lag", "Offset lag of the whole group, as the decision used it.",
                  RESOURCE)
TIME_LAG = Gauge("lagpilot_consumergroup_time_lag_seconds",
                 "Estimated seconds between now and the produce time of the oldest unconsumed message.", PARTITION)
MAX_TIME_LAG = Gauge("lagpilot_consumergroup_max_time_lag_seconds", "Largest per-partition time lag.", RESOURCE)
# One series per partition, for its current verdict (1), not one per verdict with zeros: a fleet's
# /metrics has a series per partition and series, and four zeros per partition were most of it (at 1,000
# groups and 10,000 partitions, a whole scrape was 11.9 MB and 4 s of the operator's CPU).
VERDICT = Gauge("lagpilot_consumergroup_partition_verdict",
                "1, labelled with the partition's current verdict (OK, LAGGING, STALLED, STOPPED, REWOUND).",
                (*PARTITION, "verdict"))
PRODUCE_RATE = Gauge("lagpilot_consumergroup_produce_rate", "Messages produced per second to the group's topics.",
                     RESOURCE)
CONSUME_RATE = Gauge("lagpilot_consumergroup_consume_rate", "Messages consumed (committed) per second.", RESOURCE)
DESIRED_REPLICAS = Gauge("lagpilot_desired_replicas", "Replicas the last decision asked for.", RESOURCE)
CURRENT_REPLICAS = Gauge("lagpilot_current_replicas", "Replicas the target Deployment has.", RESOURCE)
MAX_REPLICAS = Gauge("lagpilot_replicas_max", "spec.replicas.max: alerts compare it with the desired replicas.",
                     RESOURCE)
POOL_SIZE = Gauge("lagpilot_pool_size", "Pool size per pod published to the workers.", RESOURCE)
DECISIONS = Counter("lagpilot_scale_decisions_total", "Decisions that changed replicas or pool, by direction.",
                    (*RESOURCE, "direction"))
RECONCILE_SECONDS = Histogram("lagpilot_reconcile_duration_seconds", "Duration of one reconcile of one resource.",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILE_ERRORS = Counter("lagpilot_reconcile_errors_total", "Reconciles that hit an error, by kind.",
                           (*RESOURCE, "kind"))
# Per cluster, not per resource: one read serves every resource on a cluster (cluster_observer). The
# cluster is named by its bootstrap servers, never by credentials; `request` is metadata, list_offsets,
# offset_fetch or describe_groups.
KAFKA_ADMIN_REQUESTS = Counter("lagpilot_kafka_admin_requests_total",
                               "Kafka admin calls made to read lag, per cluster and kind of request.",
                               ("cluster", "request"))
# How long one read of a cluster took; `groups`: all (every group on it) or woken (the groups a probe of the
# log ends woke: a targeted read). With paced polls alone, a lag change reaches the decisions at most one
# interval plus this (and the decisions queued before) after it happened; with probes (on by default), a
# probe period plus the probe and a woken read when it moves the lag past the early-poll bar
# (core/early_poll).
KAFKA_CLUSTER_READ_SECONDS = Histogram("lagpilot_kafka_cluster_read_duration_seconds",
                                       "Duration of one lag read of a Kafka cluster, per cluster and groups read "
                                       "(all, or those a probe woke).",
                                       ("cluster", "groups"), buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30))
# How long one probe of a cluster's log ends took (cluster_observer), and what it got: `answered` (every
# partition of the last read), `partial` (some missing: the paced read reports them), `failed` (none: a
# timeout, a refused request; after an error raised, no more probes until the next paced read).
KAFKA_LAG_PROBE_SECONDS = Histogram("lagpilot_kafka_lag_probe_duration_seconds",
                                    "Duration of one probe of a Kafka cluster's log ends between two paced reads, "
                                    "per cluster and outcome.", ("cluster", "outcome"),
                                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5))
# Polls a probe of the log ends brought forward, per cluster: resources whose lag it showed above their bar
# (0 with probes off, LAGPILOT_EARLY_POLLS=false).
EARLY_POLLS = Counter("lagpilot_early_polls_total",
                      "Polls brought forward by a probe of the log ends between two paced reads that showed the "
                      "group's lag risen.",
                      ("cluster",))
# Where a poll read its target Deployment and pool ConfigMap: `watch` (kube/watch_cache) or `api` (a GET).
KUBE_READS = Counter("lagpilot_kube_reads_total",
                     "Reads of a target Deployment or pool ConfigMap, from the operator's watch or the API server.",
                     ("kind", "via"))
# Sharding (LAGPILOT_SHARDS > 1): this replica's shard Leases, and how often it took one over.
SHARDS_HELD = Gauge("lagpilot_shards_held", "Shard Leases this operator replica holds (sharding on).")
SHARD_TAKEOVERS = Counter("lagpilot_shard_takeovers_total",
                          "Shard Leases this replica acquired (free, released or expired ones).")
FENCED_RECONCILES = Counter("lagpilot_fenced_reconciles_total",
                            "Reconciles stopped before writing: the shard's term ended or a newer holder wrote.")
# Why a status was written (`writes.status_write_reason`: `first`, `refresh`, or the status field that changed
# enough): what drives a fleet's API writes. Not per resource, so a fleet of thousands adds a few series.
STATUS_WRITES = Counter("lagpilot_status_writes_total", "Status patches written, by the field that made it news.",
                        ("reason",))
DLQ_MESSAGES = Gauge("lagpilot_dlq_messages", "Records held in a dead-letter or retry topic.", (*RESOURCE, "topic"))


def export_rates(namespace: str, name: str, produce: float | None, consume: float | None) -> None:
    """The produce and consume rates the status reports; no series while a rate is not measured yet."""
    for gauge, value in ((PRODUCE_RATE, produce), (CONSUME_RATE, consume)):
        if value is None:
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        else:
            gauge.labels(namespace, name).set(value)


class _Written:
    """One series' child and the value last written to it (`PartitionSeries.export` writes a changed one)."""

    __slots__ = ("child", "value")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.value: float | None = None


class PartitionSeries:
    """One resource's per-partition series (lag, time lag, verdict), their children kept between polls.

    `labels()` checks and looks up its label values on every call (a few microseconds): a 1,000-partition
    group made 7,000 such calls per poll (lag, time lag and then five verdict series of each partition).
    Here each series is looked up once, and written only when its value changed (the resource's reconciles
    are its only writer): an idle or caught-up partition's lag and time lag stay as they are, and a
    partition's verdict series is replaced when its verdict changes.
    """

    def __init__(self, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self._lag: dict[PartitionKey, _Written] = {}
        self._time_lag: dict[PartitionKey, _Written] = {}
        self._verdict: dict[PartitionKey, Verdict] = {}
        """The verdict last exported per partition."""

    def _labels(self, key: PartitionKey) -> tuple[str, str, str, str]:
        return (self.namespace, self.name, key[0], str(key[1]))

    def export(self, lags: Iterable[tuple[PartitionKey, int]], time_lags: Mapping[PartitionKey, float],
               verdicts: Mapping[PartitionKey, Verdict]) -> None:
        """Every partition's lag; the time lag and verdict of those that have one."""
        lag_series, time_lag_series, exported = self._lag, self._time_lag, self._verdict
        verdicts_changed = verdicts != exported  # usually not: then no partition's verdict series is looked at
        for key, lag in lags:
            # The lag and time-lag writes are spelled out alike rather than through one helper: this loop
            # runs for every partition on every poll, and b9387d8 took the call per series out of it.
            written = lag_series.get(key)
            if written is None:
                written = lag_series[key] = _Written(PARTITION_LAG.labels(*self._labels(key)))
            if written.value != lag:
                written.child.set(lag)
                written.value = lag
            time_lag = time_lags.get(key)
            if time_lag is not None:
                written = time_lag_series.get(key)
                if written is None:
                    written = time_lag_series[key] = _Written(TIME_LAG.labels(*self._labels(key)))
                if written.value != time_lag:
                    written.child.set(time_lag)
                    written.value = time_lag
            if not verdicts_changed:
                continue
            verdict = verdicts.get(key)
            before = exported.get(key)
            if verdict is not None and before != verdict:
                labels = self._labels(key)
                if before is not None:
                    VERDICT.remove(*labels, before.value)
                VERDICT.labels(*labels, verdict.value).set(1)
                exported[key] = verdict


_PARTITION_SERIES: dict[tuple[str, str], PartitionSeries] = {}


def partition_series(namespace: str, name: str) -> PartitionSeries:
    """The resource's `PartitionSeries` (made on first use; `forget_resource` drops it)."""
    found = _PARTITION_SERIES.get((namespace, name))
    if found is None:
        found = _PARTITION_SERIES[(namespace, name)] = PartitionSeries(namespace, name)
    return found


def serve(port: int, address: str = "0.0.0.0") -> None:
    start_http_server(port, addr=address)


def _label_sets(metric: Gauge | Counter, label_names: tuple[str, ...], namespace: str,
                name: str) -> set[tuple[str, ...]]:
    """The label values of `metric`'s series that belong to one resource (read through collect())."""
    found: set[tuple[str, ...]] = set()
    for family in metric.collect():
        for sample in family.samples:
            if sample.labels.get("namespace") == namespace and sample.labels.get("name") == name:
                found.add(tuple(sample.labels[label] for label in label_names))
    return found


def forget_resource(namespace: str, name: str) -> None:
    """Drop every series of a deleted resource so /metrics does not report ghosts."""
    _PARTITION_SERIES.pop((namespace, name), None)
    for metric, label_names in ((PARTITION_LAG, PARTITION), (TIME_LAG, PARTITION), (VERDICT, (*PARTITION, "verdict")),
                                (DLQ_MESSAGES, (*RESOURCE, "topic")), (DECISIONS, (*RESOURCE, "direction")),
                                (RECONCILE_ERRORS, (*RESOURCE, "kind"))):
        for values in _label_sets(metric, label_names, namespace, name):
            with contextlib.suppress(KeyError):   # a reconcile running meanwhile may have removed it
                metric.remove(*values)
    for gauge in (TOTAL_LAG, MAX_TIME_LAG, PRODUCE_RATE, CONSUME_RATE, DESIRED_REPLICAS, CURRENT_REPLICAS,
                  MAX_REPLICAS, POOL_SIZE):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)

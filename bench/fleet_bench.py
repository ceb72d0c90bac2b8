"""A fleet on one operator process, or on N sharded replicas: many KafkaConsumerGroups over several Kafka
clusters (issue 17).

By default 1,000 KafkaConsumerGroups over 3 Kafka clusters with 10,000 partitions in all (one topic per
group, the partitions spread evenly), a 5 s polling interval, the real apiserver and real brokers: the
local stack's broker plus `--clusters - 1` single-node KRaft brokers this bench starts itself
(`e2e.node_backend.PrivateBroker`, the broker-outage scenario's recipe) and stops by pid at the end.

Each group's offsets are committed at 0 (admin API) and every partition gets one record, so the lag is
real; a steady low produce (`--produce-per-partition` records/s per partition) keeps it moving. Nobody
consumes, so every lag and time lag grows (a young fleet of stopped groups); with `--keep-up` the bench
commits every group's offsets at the log end once per interval, as consumers that keep up would (the
groups still have no members), so the lags stay within one interval's records. Scale
targets are Deployments created paused (`spec.paused`) whose Pods select no node: the operator reads
and writes their scale like any Deployment's (its ready replicas are 0 either way), but a paused
Deployment gets no ReplicaSet, so no Pod object is ever made and the controller-manager and scheduler
do no work the operator did not cause. The operator never looks at `spec.paused` of a Deployment.

The operator runs as its own process (`kopf run --standalone --namespace <the bench's namespace>`, as
the operator integration tests run it), so it sees nothing of other users of the stack; its CPU
(utime + stime of every thread) and RSS come from /proc/<pid>. One run:

1. the namespace, the CRD of the version measured, the Deployments and KafkaConsumerGroups;
2. `--noise-seconds` of the apiserver's write counters with no operator running (other users of a
   shared stack write to the same kinds; that rate is reported beside the operator's);
3. the operator starts; once every resource has reconciled once and kopf has handled every creation
   (its last-handled-configuration annotation on each), `--warmup` s more;
4. the steady window (`--duration` s): operator CPU / polls (the sum of its
   `lagpilot_reconcile_duration_seconds_count`), RSS (median of 1 s samples; the peak is VmHWM over
   the whole run; `rss_mib_max_sampled_by_phase`: the highest 1 s sample of the first round, the
   warmup, the window and the lag change, to see where the peak comes from), API writes/s (deltas
   of the apiserver's `apiserver_request_total` for POST, PUT, PATCH and DELETE on the kinds the
   operator writes: kafkaconsumergroups and their status, deployments and their scale, events,
   configmaps; cluster-wide, so minus the noise rate),
   and the exact changes to objects in the bench's namespace (watch events of kafkaconsumergroups,
   deployments, events, configmaps and leases there: writes that changed something, no other user's),
   Kafka requests/s (`lagpilot_kafka_admin_requests_total`; versions without it report null);
5. the quiet window: the steady produce stops and (`--keep-up`) every group's offsets are committed at
   the log end once more; once every group has scaled down to its idle size (minutes: the scale-down
   window, then its steps) and two intervals more, `--quiet-seconds` s of API writes with nothing changing
   (and why the operator patched each status);
6. the lag change: the steady produce stops, after two intervals every resource's
   `lagpilot_consumergroup_total_lag` is read, `--burst` records go to every partition of every topic
   at once, and the operator's metrics are read every 0.5 s until each resource's lag grew by its
   partitions x burst: the seconds from the acknowledgement of its group's last burst record to each
   resource seeing it (the clusters produced to side by side);
   `--bursts` times, each at another instant of the clusters' reads, with per cluster the read that
   carried the burst (its start and length, the decisions after it);
7. the operator stops (SIGTERM, by pid), the finalizers are released and the namespace deleted.

`--also-with NAME=VALUE` (repeatable) runs this checkout's operator a second time, labelled `head-also`,
with those settings in its environment (`LAGPILOT_EARLY_POLLS=false`: one setting measured on and off).
`--compare REV` runs that commit's operator first (installed from a `git archive` into a temporary
venv, as bench/runtime_compare_bench.py does; its own CRD applied), then this checkout's, on the same
topics and brokers. Progress goes to stdout as JSON lines; the last line is the summary.

    source .stack/env; .venv/bin/python bench/fleet_bench.py [--quick] [--compare fb31b65]
    ... --groups 1000 --clusters 3 --partitions 10000 --interval 5 --duration 120

`--replicas N` (N > 1) runs N operator processes sharing the fleet through shard Leases, as the chart's
`shards: N` does: each gets LAGPILOT_SHARDS=N, LAGPILOT_SHARD_IDENTITY=op-<i>, the Leases in the bench's
namespace (LAGPILOT_SHARD_NAMESPACE, LAGPILOT_SHARD_LEASE_PREFIX=lagpilot), the metrics port
`--metrics-port` + i (or a free one) and a log folder of its own (<tmp>/<version>/op-<i>). Step 3 then
waits until every shard Lease is held and each replica holds its share (`shards_balanced`), and a
resource counts as polled when the replica holding its shard reports its lag: the replicas' /metrics
are merged by shard owner (`merge_metrics`; a replica keeps the gauge of a resource whose shard moved
away). The steady window reports CPU, polls, RSS and Kafka requests per replica (`per_replica`) and
summed at the top level under the same names as one replica's: CPU per poll is the summed CPU over the
summed polls, `rss_mib_steady_median` the sum of the replicas' medians, `rss_mib_peak` the sum of their
VmHWM. The namespace's change count includes the Lease renewals (`leases`). The lag change is read from
each resource's shard owner; `all_seen_seconds_by_replica` gives each replica's slowest resource.
With `--compare REV`, REV's operator must shard too (otherwise the Lease wait times out).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests", REPO / "tests" / "integration" / "operator", REPO / "bench"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

# The kinds the operator writes (apiserver_request_total's group and resource labels).
WRITTEN_KINDS = {("lagpilot.io", "kafkaconsumergroups"), ("apps", "deployments"), ("", "events"),
                 ("events.k8s.io", "events"), ("", "configmaps")}
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE"}


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# -- the fleet (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    name: str          # the KafkaConsumerGroup's and its Deployment's name
    cluster: str       # bootstrap servers
    topic: str
    group_id: str
    partitions: int


def plan_fleet(groups: int, clusters: list[str], partitions: int, prefix: str) -> list[Group]:
    """`groups` groups spread round-robin over `clusters`, `partitions` spread evenly (the first ones
    one more when it does not divide), one topic per group."""
    if partitions < groups:
        raise ValueError(f"{partitions} partitions cannot give each of {groups} groups one")
    base, rest = divmod(partitions, groups)
    return [Group(name=f"{prefix}-{i:04d}", cluster=clusters[i % len(clusters)], topic=f"{prefix}-{i:04d}",
                  group_id=f"{prefix}-group-{i:04d}", partitions=base + (1 if i < rest else 0))
            for i in range(groups)]


def write_counts(metrics_text: str) -> dict[str, float]:
    """apiserver_request_total of the write verbs on the kinds the operator writes, by
    'VERB group/resource[/subresource]'."""
    counts: dict[str, float] = {}
    lines = "\n".join(line for line in metrics_text.splitlines() if line.startswith("apiserver_request_total{"))
    for family in text_string_to_metric_families(lines):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("verb") not in WRITE_VERBS or (labels.get("group", ""), labels.get("resource")) not in \
                    WRITTEN_KINDS:
                continue
            kind = f"{labels['verb']} {labels.get('group') or 'core'}/{labels['resource']}"
            if labels.get("subresource"):
                kind += f"/{labels['subresource']}"
            counts[kind] = counts.get(kind, 0.0) + sample.value
    return counts


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after
            if after.get(key, 0.0) - before.get(key, 0.0) > 0}


@dataclass
class OperatorMetrics:
    polls: float = 0.0                                          # reconciles so far, all resources
    errors: float = 0.0                                         # reconciles that hit an error
    total_lag: dict[str, float] = field(default_factory=dict)   # resource name -> lag its decision used
    kafka_requests: float | None = None                         # None: the version has no such metric
    status_writes: dict[str, float] = field(default_factory=dict)  # reason -> status patches (versions with it)
    cluster_reads: dict[str, tuple[float, float]] = field(default_factory=dict)  # bootstrap -> reads, seconds
    # (reads of every group on the cluster; the targeted reads of the groups a probe woke are counted apart)
    woken_reads: float = 0.0
    probes: dict[str, tuple[float, float]] = field(default_factory=dict)  # outcome -> probes, seconds
    early_polls: float | None = None                            # None: the version brings no poll forward


def parse_operator_metrics(text: str) -> OperatorMetrics:
    # The reconcile histogram has no labels (one count for all resources); the lag gauge has a series
    # per resource from its first poll on.
    wanted = ("lagpilot_reconcile_duration_seconds_count", "lagpilot_consumergroup_total_lag{",
              "lagpilot_kafka_admin_requests_total{", "lagpilot_reconcile_errors_total{",
              "lagpilot_status_writes_total{", "lagpilot_kafka_cluster_read_duration_seconds_count{",
              "lagpilot_kafka_cluster_read_duration_seconds_sum{",
              "# TYPE lagpilot_kafka_cluster_read_duration_seconds ",
              "# TYPE lagpilot_reconcile_duration_seconds ", "# TYPE lagpilot_consumergroup_total_lag ",
              "# TYPE lagpilot_kafka_admin_requests_total ", "# TYPE lagpilot_reconcile_errors_total ",
              "# TYPE lagpilot_status_writes_total ", "lagpilot_early_polls_total{",
              "# TYPE lagpilot_early_polls_total ", "lagpilot_kafka_lag_probe_duration_seconds_count{",
              "lagpilot_kafka_lag_probe_duration_seconds_sum{", "# TYPE lagpilot_kafka_lag_probe_duration_seconds ")
    found = OperatorMetrics()
    lines = "\n".join(line for line in text.splitlines() if line.startswith(wanted))
    for family in text_string_to_metric_families(lines):
        if family.name == "lagpilot_early_polls":  # a version with early polls: 0 until one wakes somebody
            found.early_polls = found.early_polls or 0.0
        for sample in family.samples:
            if sample.name == "lagpilot_reconcile_duration_seconds_count":
                found.polls += sample.value
            elif sample.name == "lagpilot_reconcile_errors_total":
                found.errors += sample.value
            elif sample.name == "lagpilot_consumergroup_total_lag":
                found.total_lag[sample.labels["name"]] = sample.value
            elif sample.name == "lagpilot_kafka_admin_requests_total":
                found.kafka_requests = (found.kafka_requests or 0.0) + sample.value
            elif sample.name == "lagpilot_early_polls_total":
                found.early_polls = (found.early_polls or 0.0) + sample.value
            elif sample.name == "lagpilot_status_writes_total":
                reason = sample.labels["reason"]
                found.status_writes[reason] = found.status_writes.get(reason, 0.0) + sample.value
            elif sample.name.startswith("lagpilot_kafka_lag_probe_duration_seconds_"):
                count, seconds = found.probes.get(sample.labels["outcome"], (0.0, 0.0))
                found.probes[sample.labels["outcome"]] = (count + sample.value, seconds) \
                    if sample.name.endswith("_count") else (count, seconds + sample.value)
            elif sample.name.startswith("lagpilot_kafka_cluster_read_duration_seconds_") and \
                    sample.labels.get("groups", "all") == "woken":  # versions with probes: targeted reads
                if sample.name.endswith("_count"):
                    found.woken_reads += sample.value
            elif sample.name.startswith("lagpilot_kafka_cluster_read_duration_seconds_"):
                reads, seconds = found.cluster_reads.get(sample.labels["cluster"], (0.0, 0.0))
                found.cluster_reads[sample.labels["cluster"]] = (
                    (sample.value, seconds) if sample.name.endswith("_count") else (reads, sample.value))
    return found


def early_polls_between(before: OperatorMetrics, after: OperatorMetrics) -> int | None:
    """Polls brought forward (by probes; by between reads before) from one scrape to the next (None: none ever)."""
    if after.early_polls is None:
        return None
    return int(after.early_polls - (before.early_polls or 0.0))


def probes_between(before: OperatorMetrics, after: OperatorMetrics) -> dict[str, dict[str, float]]:
    """Per outcome, the probes between two scrapes and their mean duration (versions with probes)."""
    found = {}
    for outcome, (count, seconds) in after.probes.items():
        had = before.probes.get(outcome, (0.0, 0.0))
        if count > had[0]:
            found[outcome] = {"probes": int(count - had[0]),
                              "mean_seconds": round((seconds - had[1]) / (count - had[0]), 3)}
    return found


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# -- several replicas (pure) -----------------------------------------------------------------------


def shards_balanced(holders: dict[int, str], identities: list[str], shards: int) -> bool:
    """Every shard's Lease is held by one of `identities`, and each holds its fair share
    (`shards.target_count`: S // N each, the first S % N in sorted order one more): the keepers are done
    handing shards over, so who serves which resource stays put while the bench measures."""
    from lagpilot_operator.kube.shards import target_count

    if set(holders) != set(range(shards)) or not set(holders.values()) <= set(identities):
        return False
    held = {identity: 0 for identity in identities}
    for holder in holders.values():
        held[holder] += 1
    return all(held[identity] == target_count(identity, identities, shards) for identity in identities)


def owners(names: Iterable[str], namespace: str, shards: int, holders: dict[int, str]) -> dict[str, str]:
    """resource name -> the identity holding its shard (`shards.shard_of`, what the keeper gates on);
    resources of an unheld shard are left out."""
    from lagpilot_operator.kube.shards import shard_of

    found = {}
    for name in names:
        holder = holders.get(shard_of(namespace, name, shards), "")
        if holder:
            found[name] = holder
    return found


def merge_metrics(per_replica: dict[str, OperatorMetrics], owner: dict[str, str] | None) -> OperatorMetrics:
    """The replicas' /metrics as one operator's: counters summed (Kafka requests None only when no
    replica has the metric), and each resource's lag from the replica that holds its shard (`owner`).
    A replica keeps the lag gauge of a resource it served before its shard moved away (the operator
    drops series only when the resource is deleted), so a plain union could report a stale value;
    `owner` None (one replica) takes every series as it is."""
    merged = OperatorMetrics()
    for identity, found in per_replica.items():
        merged.polls += found.polls
        merged.errors += found.errors
        if found.kafka_requests is not None:
            merged.kafka_requests = (merged.kafka_requests or 0.0) + found.kafka_requests
        if found.early_polls is not None:
            merged.early_polls = (merged.early_polls or 0.0) + found.early_polls
        merged.woken_reads += found.woken_reads
        for outcome, (count, seconds) in found.probes.items():
            had = merged.probes.get(outcome, (0.0, 0.0))
            merged.probes[outcome] = (had[0] + count, had[1] + seconds)
        for name, lag in found.total_lag.items():
            if owner is None or owner.get(name) == identity:
                merged.total_lag[name] = lag
        for reason, count in found.status_writes.items():
            merged.status_writes[reason] = merged.status_writes.get(reason, 0.0) + count
        for cluster, (reads, seconds) in found.cluster_reads.items():
            had = merged.cluster_reads.get(cluster, (0.0, 0.0))
            merged.cluster_reads[cluster] = (had[0] + reads, had[1] + seconds)
    return merged


def all_seen_by_replica(seen: dict[str, float], owner: dict[str, str],
                        identities: list[str]) -> dict[str, float | None]:
    """Per replica, the seconds until the last of its resources saw the lag change (None: one never did)."""
    found: dict[str, float | None] = {}
    for identity in identities:
        mine = [name for name, holder in owner.items() if holder == identity]
        found[identity] = (round(max(seen[name] for name in mine), 1) if mine and all(name in seen for name in mine)
                           else None)
    return found


@dataclass(frozen=True)
class ReplicaWindow:
    """One replica's share of the steady window."""

    identity: str
    cpu_seconds: float
    polls: float
    errors: float
    kafka_requests: float | None     # in the window; None: the version has no such metric
    rss_kib_steady_median: float | None
    rss_kib_peak: float | None       # VmHWM, read once the run's lag change is over
    resources: int                   # the fleet's resources whose shard it holds
    shards_held: int


def replica_report(replica: ReplicaWindow, window: float) -> dict[str, Any]:
    """One replica's numbers: `fleet_totals` of that replica alone, with who it is and what it holds."""
    totals = fleet_totals([replica], window)
    totals.setdefault("rss_mib_peak", None)  # a replica's report names its peak even before it is read
    return {"identity": replica.identity, "resources": replica.resources, "shards_held": replica.shards_held,
            **totals}


def fleet_totals(replicas: list[ReplicaWindow], window: float) -> dict[str, Any]:
    """The replicas together: CPU, polls, errors and Kafka requests summed, CPU per poll = the summed
    CPU over the summed polls (not a mean of the replicas' ratios), RSS summed (steady: the sum of each
    replica's median; peak: the sum of each one's VmHWM, which need not fall at the same moment). With
    one replica these are that replica's numbers."""
    cpu = sum(r.cpu_seconds for r in replicas)
    polls = sum(r.polls for r in replicas)
    medians = [r.rss_kib_steady_median for r in replicas]
    peaks = [r.rss_kib_peak for r in replicas]
    requests = [r.kafka_requests for r in replicas]
    totals = {
        "polls": int(polls),
        "polls_per_second": round(polls / window, 2),
        "reconcile_errors": int(sum(r.errors for r in replicas)),
        "cpu_seconds": round(cpu, 2),
        "cpu_cores": round(cpu / window, 3),
        "cpu_ms_per_poll": round(1000 * cpu / polls, 2) if polls else None,
        "rss_mib_steady_median": (round(sum(m for m in medians if m is not None) / 1024, 1)
                                  if all(m is not None for m in medians) else None),
        "kafka_requests_per_second": (round(sum(r for r in requests if r is not None) / window, 2)
                                      if all(r is not None for r in requests) else None),
    }
    if all(peak is not None for peak in peaks):     # left out until the peaks are read
        totals["rss_mib_peak"] = round(sum(p for p in peaks if p is not None) / 1024, 1)
    return totals


# -- Kafka side ------------------------------------------------------------------------------------


def by_cluster(fleet: list[Group]) -> dict[str, list[Group]]:
    clusters: dict[str, list[Group]] = {}
    for group in fleet:
        clusters.setdefault(group.cluster, []).append(group)
    return clusters


def create_topics(fleet: list[Group]) -> None:
    for cluster, groups in by_cluster(fleet).items():
        admin = AdminClient({"bootstrap.servers": cluster})
        for start in range(0, len(groups), 100):
            futures = admin.create_topics([NewTopic(g.topic, g.partitions, 1) for g in groups[start:start + 100]],
                                          operation_timeout=120)
            for future in futures.values():
                future.result(timeout=180)


def delete_topics(fleet: list[Group]) -> None:
    for cluster, groups in by_cluster(fleet).items():
        admin = AdminClient({"bootstrap.servers": cluster})
        for future in admin.delete_topics([g.topic for g in groups], operation_timeout=120).values():
            try:
                future.result(timeout=180)
            except Exception as exc:  # cleanup goes on; the error is printed
                emit(event="topic_delete_failed", error=str(exc))


def commit_offsets(fleet: list[Group], timeout: float = 180) -> None:
    """Each group's committed offset 0 on every partition of its topic (a new topic's partitions need
    leaders first: failed groups are tried again)."""
    pending = list(fleet)
    deadline = time.monotonic() + timeout
    while pending:
        failed: list[Group] = []
        for cluster, groups in by_cluster(pending).items():
            admin = AdminClient({"bootstrap.servers": cluster})
            futures = {g: admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
                g.group_id, [TopicPartition(g.topic, p, 0) for p in range(g.partitions)])])[g.group_id]
                for g in groups}
            for group, future in futures.items():
                try:
                    future.result(timeout=60)
                except Exception:  # no leader yet: tried again below
                    failed.append(group)
        if failed and time.monotonic() > deadline:
            raise RuntimeError(f"{len(failed)} groups could not commit their offsets, e.g. {failed[0]}")
        pending = failed
        if pending:
            time.sleep(1)


def produce_to_every_partition(fleet: list[Group], per_partition: int) -> dict[str, float]:
    """`per_partition` records to every partition of the fleet; per group, when its last record was
    acknowledged (monotonic): the instant its lag change was whole. The clusters are produced to side by
    side, a thread each, so one cluster's burst does not wait for another's (one after another, the
    last cluster's records came seconds after the first's at full size)."""
    acknowledged: dict[str, float] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def produce(cluster: str, groups: list[Group]) -> None:
        producer = Producer({"bootstrap.servers": cluster, "linger.ms": 20, "acks": "all"})
        for group in groups:
            def delivered(error: Any, _message: Any, name: str = group.name) -> None:
                now = time.monotonic()
                with lock:
                    if error is not None:
                        failures.append(f"{name}: {error}")
                    else:
                        acknowledged[name] = max(acknowledged.get(name, now), now)

            for partition in range(group.partitions):
                for _ in range(per_partition):
                    producer.produce(group.topic, value=b"x", partition=partition, on_delivery=delivered)
                    producer.poll(0)
        if producer.flush(120) != 0:
            with lock:
                failures.append(f"records to {cluster} not acknowledged within 120 s")

    threads = [threading.Thread(target=produce, args=(cluster, groups), name=f"burst-{cluster}")
               for cluster, groups in by_cluster(fleet).items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} burst records failed, e.g. {failures[0]}")
    return acknowledged


class SteadyProducer(threading.Thread):
    """`rate` records/s over every partition of the fleet, round-robin; pause()/resume() between phases."""

    def __init__(self, fleet: list[Group], rate: float) -> None:
        super().__init__(daemon=True)
        self.targets = [(g.cluster, g.topic, p) for g in fleet for p in range(g.partitions)]
        self.rate = rate
        self.producers = {cluster: Producer({"bootstrap.servers": cluster, "linger.ms": 50})
                          for cluster in by_cluster(fleet)}
        self.running = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        index, period = 0, 1.0 / self.rate if self.rate > 0 else 0.0
        while not self.stopped.is_set():
            if not self.running.wait(0.2) or period == 0.0:
                continue
            cluster, topic, partition = self.targets[index % len(self.targets)]
            index += 1
            self.producers[cluster].produce(topic, value=b"s", partition=partition)
            self.producers[cluster].poll(0)
            self.stopped.wait(period)

    def pause(self) -> None:
        self.running.clear()
        for producer in self.producers.values():
            producer.flush(60)

    def resume(self) -> None:
        self.running.set()

    def stop(self) -> None:
        self.pause()
        self.stopped.set()


class KeepingUp(threading.Thread):
    """`--keep-up`: every group's consumers keep up. Once per `interval` each cluster's log-end offsets are read
    (one ListOffsets call for all its partitions) and every group's offsets are committed there (the admin
    API; the groups have no members), as consumers that drain all and commit once per interval would: the
    lag stays at the records of the last interval at most. pause()/resume() as the producer's."""

    def __init__(self, fleet: list[Group], interval: float) -> None:
        super().__init__(daemon=True)
        self.groups = by_cluster(fleet)
        self.admins = {cluster: AdminClient({"bootstrap.servers": cluster}) for cluster in self.groups}
        self.interval = interval
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.round_lock = threading.Lock()  # held for a round: pause() waits for it, a round checks `running` in it
        self.rounds = 0
        self.failures: list[str] = []  # a cluster's round that failed (its groups then fell behind for a round)

    def run(self) -> None:
        while not self.stopped.is_set():
            if not self.running.wait(0.2):
                continue
            started = time.monotonic()
            with self.round_lock:
                if not self.running.is_set():  # paused between the wait and the lock: no round after pause()
                    continue
                for cluster, groups in self.groups.items():
                    try:
                        commit_at_log_end(self.admins[cluster], groups)
                    except Exception as exc:  # reported in the summary, not a dead thread measured as keeping up
                        self.failures.append(f"{cluster}: {exc}")
                self.rounds += 1
            self.stopped.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def pause(self) -> None:
        """No commit after this returns (a round under way is waited for)."""
        self.running.clear()
        with self.round_lock:
            pass

    def resume(self) -> None:
        self.running.set()

    def stop(self) -> None:
        self.pause()
        self.stopped.set()


def commit_at_log_end(admin: AdminClient, groups: list[Group], timeout: float = 30) -> None:
    """Each group's committed offsets at its partitions' log ends, read once for all the groups."""
    partitions = [TopicPartition(g.topic, p) for g in groups for p in range(g.partitions)]
    ends = {(tp.topic, tp.partition): tp.offset for tp in end_offsets(admin, partitions, timeout)}
    futures = [admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
        g.group_id, [TopicPartition(g.topic, p, ends[(g.topic, p)]) for p in range(g.partitions)])])[g.group_id]
        for g in groups]
    for future in futures:
        future.result(timeout=timeout)


def end_offsets(admin: AdminClient, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
    answers = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout)
    return [TopicPartition(tp.topic, tp.partition, future.result(timeout=timeout).offset)
            for tp, future in answers.items()]


@dataclass
class Traffic:
    """What moves the fleet's offsets: the steady producer and, with `--keep-up`, the consumers' commits."""

    producer: SteadyProducer
    keeper: KeepingUp | None = None

    def pause(self) -> None:
        self.producer.pause()
        if self.keeper is not None:
            self.keeper.pause()

    def resume(self) -> None:
        self.producer.resume()
        if self.keeper is not None:
            self.keeper.resume()

    def start(self) -> None:
        self.producer.start()
        if self.keeper is not None:
            self.keeper.start()
        self.resume()

    def stop(self) -> None:
        self.producer.stop()
        if self.keeper is not None:
            self.keeper.stop()


# -- Kubernetes side -------------------------------------------------------------------------------


def scale_target(name: str) -> dict[str, Any]:
    """A paused Deployment whose Pods select no node: the operator scales it, no Pod is ever made."""
    from support import pending_deployment

    deployment: dict[str, Any] = pending_deployment(name, 1)
    deployment["spec"]["paused"] = True
    return deployment


def resource(group: Group, interval: float) -> dict[str, Any]:
    return {"apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup", "metadata": {"name": group.name},
            "spec": {"kafka": {"bootstrapServers": group.cluster}, "groupId": group.group_id, "topics": [group.topic],
                     "scaleTargetRef": {"name": group.name}, "replicas": {"min": 1, "max": 10},
                     "lag": {"pollIntervalSeconds": interval}, "deadLetter": {"enabled": False}}}


def create_resources(api: Any, namespace: str, fleet: list[Group], interval: float) -> None:
    apps, custom = client.AppsV1Api(api), client.CustomObjectsApi(api)

    def create(group: Group) -> None:
        apps.create_namespaced_deployment(namespace, scale_target(group.name))
        custom.create_namespaced_custom_object("lagpilot.io", "v1alpha1", namespace, "kafkaconsumergroups",
                                               resource(group, interval))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, fleet))


class _ApiHolder:
    """What support.release_finalizers asks of a stack: an API client."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def api(self) -> Any:
        return self._api


def delete_namespace(api: Any, namespace: str) -> None:
    from support import release_finalizers

    release_finalizers(_ApiHolder(api), namespace)
    try:
        client.CoreV1Api(api).delete_namespace(namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise


def kubectl(*args: str) -> str:
    return subprocess.run([str(Path(os.environ["LAGPILOT_BIN_DIR"]) / "kubectl"), *args], check=True,
                          capture_output=True, text=True).stdout


def apiserver_writes() -> dict[str, float]:
    return write_counts(kubectl("get", "--raw", "/metrics"))


# The collections the operator writes in its namespace (events.k8s.io's Events are the core ones).
WATCHED = {"kafkaconsumergroups": "/apis/lagpilot.io/v1alpha1/namespaces/{ns}/kafkaconsumergroups",
           "deployments": "/apis/apps/v1/namespaces/{ns}/deployments",
           "events": "/api/v1/namespaces/{ns}/events", "configmaps": "/api/v1/namespaces/{ns}/configmaps",
           # Sharded replicas renew their shard and member Leases here (none with one replica).
           "leases": "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"}


class ChangeCounter:
    """Watches of the bench's namespace counting the changes to each kind: every write that changed an
    object is one watch event, whoever else writes to the cluster. The lines are counted, not parsed,
    so the bench's own CPU stays small."""

    def __init__(self, api: Any, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.counts = dict.fromkeys(WATCHED, 0)
        self.responses: list[Any] = []
        self.threads: list[threading.Thread] = []
        self.closed = threading.Event()
        self.ended_early: set[str] = set()
        """Kinds whose watch the API server ended before `stop`: their counts stop there."""

    def start(self) -> None:
        for kind, path in WATCHED.items():
            url = path.format(ns=self.namespace)
            listed = self._get(url, [("limit", 1)]).read()
            version = json.loads(listed)["metadata"]["resourceVersion"]
            response = self._get(url, [("watch", "true"), ("resourceVersion", version)]).response
            self.responses.append(response)
            thread = threading.Thread(target=self._count, args=(kind, response), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _get(self, path: str, query: list[tuple[str, Any]]) -> Any:
        request = self.api.param_serialize("GET", path, query_params=query, auth_settings=["BearerToken"])
        return self.api.call_api(*request)

    def _count(self, kind: str, response: Any) -> None:
        # One line per event; the apiserver sends each event as it happens, in its own chunk. The stream
        # ends when stop() closes it, or when the API server does: counted until then.
        with contextlib.suppress(Exception):
            for chunk in response.read_chunked(decode_content=False):
                if not self.closed.is_set():
                    self.counts[kind] += chunk.count(b"\n")
        if not self.closed.is_set():
            self.ended_early.add(kind)

    def stop(self) -> dict[str, int]:
        self.closed.set()
        counts = dict(self.counts)
        for response in self.responses:
            # Unblocks the thread reading it; a stream the API server ended is back in the pool already.
            with contextlib.suppress(RuntimeError):
                response.shutdown()
            response.release_conn()
        return counts


# -- the operator process --------------------------------------------------------------------------


@dataclass(frozen=True)
class Version:
    label: str
    kopf: Path
    crds: Path
    pythonpath: str | None     # this checkout's sources first; None for an installed older version
    env: tuple[tuple[str, str], ...] = ()
    """Set in the operators' environment on top of the bench's (`--also-with`)."""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime, every thread


def memory_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples = pid, []  # type: ignore[var-annotated]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            try:
                self.samples.append((time.monotonic(), memory_kib(self.pid, "VmRSS")))
            except OSError:
                return

    def between(self, start: float, end: float) -> list[int]:
        return [rss for at, rss in self.samples if start <= at <= end]


LEASE_PREFIX = "lagpilot"
"""The shard Leases' set (LAGPILOT_SHARD_LEASE_PREFIX); they live in the bench's namespace and go with it."""


@dataclass
class Replica:
    """One operator process of a run: its shard identity, process (metrics port, log) and RSS samples."""

    identity: str
    process: Any            # operator_testkit.OperatorProcess
    sampler: RssSampler | None = None

    @property
    def pid(self) -> int:
        assert self.process.process is not None
        return int(self.process.process.pid)

    def check_alive(self) -> None:
        code = self.process.process.poll() if self.process.process is not None else None
        if code is not None:
            raise RuntimeError(f"operator replica {self.identity} exited with {code}; log in {self.process.log_dir}")


def start_operators(version: Version, namespace: str, replicas: int, log_dir: Path, metrics_port: int) -> list[Replica]:
    """The operator processes of one run. More than one: each gets the shard settings (LAGPILOT_SHARDS =
    the replicas, one shard each as the chart runs them; its identity op-<i>; the shard Leases in the
    bench's namespace), its own metrics port (metrics_port + i, or a free one) and its own log folder."""
    from operator_testkit import OperatorProcess

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if version.pythonpath:
        env["PYTHONPATH"] = version.pythonpath
    env.update(version.env)
    started: list[Replica] = []
    for i in range(replicas):
        identity = f"op-{i}"
        replica_env = dict(env)
        if replicas > 1:
            replica_env.update({"LAGPILOT_SHARDS": str(replicas), "LAGPILOT_SHARD_IDENTITY": identity,
                                "LAGPILOT_SHARD_NAMESPACE": namespace, "LAGPILOT_SHARD_LEASE_PREFIX": LEASE_PREFIX})
        folder = log_dir if replicas == 1 else log_dir / identity
        folder.mkdir(parents=True, exist_ok=True)
        process = OperatorProcess(replica_env, namespace, folder, kopf=version.kopf,
                                  metrics_port=metrics_port + i if metrics_port else None)
        try:
            process.start()
        except Exception:
            stop_operators(started)
            raise
        started.append(Replica(identity, process))
    return started


def stop_operators(replicas: list[Replica]) -> None:
    """SIGTERM to every replica at once (each by its pid), then wait for each: stopped one by one, the
    others would take over each stopping replica's shards in turn."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(replicas))) as pool:
        list(pool.map(lambda replica: replica.process.stop(), replicas))
    for replica in replicas:
        if replica.sampler is not None:
            replica.sampler.done.set()


def shard_holders(api: Any, namespace: str) -> dict[int, str]:
    """shard -> holderIdentity ("" when released) of the run's shard Leases."""
    leases = client.CoordinationV1Api(api).list_namespaced_lease(
        namespace, label_selector=f"lagpilot.io/lease-set={LEASE_PREFIX},lagpilot.io/lease-role=shard").items
    found: dict[int, str] = {}
    for lease in leases:
        name = lease.metadata.name if lease.metadata else None
        if name:     # <prefix>-shard-<i>
            found[int(name.rsplit("-", 1)[1])] = (lease.spec.holder_identity or "") if lease.spec else ""
    return found


SCRAPED = ("lagpilot_reconcile_duration_seconds_count", "lagpilot_consumergroup_total_lag",
           "lagpilot_kafka_admin_requests_total", "lagpilot_reconcile_errors_total", "lagpilot_status_writes_total",
           "lagpilot_kafka_cluster_read_duration_seconds_count", "lagpilot_kafka_cluster_read_duration_seconds_sum",
           "lagpilot_early_polls_total", "lagpilot_kafka_lag_probe_duration_seconds_count",
           "lagpilot_kafka_lag_probe_duration_seconds_sum")
"""The series the bench reads, asked for by name (prometheus_client's `name[]`): the whole exposition of a
1,000-resource fleet has a series per partition (tens of thousands of lines), and making it every second
during the lag change would take CPU from the operator being measured. `full_scrape` measures it once."""


def scrape(port: int) -> OperatorMetrics:
    query = urllib.parse.urlencode([("name[]", name) for name in SCRAPED])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?{query}", timeout=30) as response:
        return parse_operator_metrics(response.read().decode())


def full_scrape(replica: Replica) -> dict[str, Any]:
    """One whole /metrics as Prometheus scrapes it: its size, wall time and the operator's CPU for it."""
    cpu, started = cpu_seconds(replica.pid), time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{replica.process.metrics_port}/metrics", timeout=60) as response:
        size = len(response.read())
    return {"bytes": size, "seconds": round(time.monotonic() - started, 3),
            "operator_cpu_seconds": round(cpu_seconds(replica.pid) - cpu, 3)}


def scrape_all(replicas: list[Replica]) -> dict[str, OperatorMetrics]:
    return {replica.identity: scrape(replica.process.metrics_port) for replica in replicas}


class Fleet:
    """What the bench reads of the replicas as one operator: /metrics merged by shard owner."""

    def __init__(self, replicas: list[Replica], namespace: str, names: set[str], api: Any) -> None:
        self.replicas, self.namespace, self.names, self.api = replicas, namespace, names, api
        self.owner: dict[str, str] | None = None if len(replicas) == 1 else {}
        self.holders: dict[int, str] = {}

    def read_owners(self) -> dict[int, str]:
        """Who holds each shard now; the resources' owners follow (one replica: none to read)."""
        if self.owner is not None:
            self.holders = shard_holders(self.api, self.namespace)
            self.owner = owners(self.names, self.namespace, len(self.replicas), self.holders)
        return self.holders

    def balanced(self) -> bool:
        if self.owner is None:
            return True
        return shards_balanced(self.read_owners(), [r.identity for r in self.replicas], len(self.replicas))

    def metrics(self) -> OperatorMetrics:
        return merge_metrics(scrape_all(self.replicas), self.owner)

    def resources_of(self, identity: str) -> int:
        return len(self.names) if self.owner is None else sum(1 for o in self.owner.values() if o == identity)

    def shards_of(self, identity: str) -> int:
        return 0 if self.owner is None else sum(1 for h in self.holders.values() if h == identity)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 2.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start


# -- one run ---------------------------------------------------------------------------------------


def run_version(version: Version, fleet: list[Group], traffic: Traffic, api: Any,
                args: argparse.Namespace, work: Path) -> dict[str, Any]:
    namespace = f"{args.prefix}-{version.label}-{uuid.uuid4().hex[:5]}"
    names = {g.name for g in fleet}
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(version.crds))
    # Polled, not `kubectl wait` (it fails at once on a CRD with no conditions yet: e2e/harness.apply_crd).
    wait_until(lambda: kubectl("get", "crd", "kafkaconsumergroups.lagpilot.io", "-o",
                               "jsonpath={.status.conditions[?(@.type=='Established')].status}") == "True",
               60, "the CRD to be Established", 0.5)
    client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
    result: dict[str, Any] = {"version": version.label, "namespace": namespace,
                              **({"env": dict(version.env)} if version.env else {})}
    replicas: list[Replica] = []
    try:
        started = time.monotonic()
        create_resources(api, namespace, fleet, args.interval)
        result["create_seconds"] = round(time.monotonic() - started, 1)

        def deployments_observed() -> bool:
            """The deployment controller has written every fresh Deployment's status once, so its
            catching up is not counted among the namespace's changes in the window."""
            found = client.AppsV1Api(api).list_namespaced_deployment(namespace).items
            return len(found) == len(fleet) and all(
                d.status is not None and (d.status.observed_generation or 0) >= (d.metadata.generation or 1)
                for d in found)

        wait_until(deployments_observed, 600, "the deployment controller to observe every Deployment", 2)
        emit(event="resources_created", **result)

        noise_before, noise_start = apiserver_writes(), time.monotonic()
        time.sleep(args.noise_seconds)
        noise = deltas(noise_before, apiserver_writes())
        noise_rate = sum(noise.values()) / (time.monotonic() - noise_start)

        replicas = start_operators(version, namespace, args.replicas, work / version.label, args.metrics_port)
        for replica in replicas:
            replica.sampler = RssSampler(replica.pid)
            replica.sampler.start()
        launched = time.monotonic()
        operators = Fleet(replicas, namespace, names, api)

        def balanced() -> bool:
            for replica in replicas:
                replica.check_alive()
            return operators.balanced()

        # Several replicas: the first to start takes every shard and hands them over as the others join;
        # the measuring starts once each holds its share (its shard Lease), and "every resource polled"
        # counts a resource when the replica holding its shard has its lag (union over the replicas).
        shards_seconds = wait_until(balanced, args.warmup_timeout, "every replica to hold its shard Lease", 1)

        def every_resource_polled() -> bool:
            for replica in replicas:
                replica.check_alive()
            # The holders as they are now: a shard can change hands again after the replicas first stood
            # balanced (under load, a renewal late), and the owners read then would wait for good on
            # a replica that no longer serves those resources.
            operators.read_owners()
            try:
                return names <= set(operators.metrics().total_lag)
            except OSError:
                return False     # a metrics server is not up yet

        first_round = shards_seconds + wait_until(every_resource_polled, args.warmup_timeout,
                                                  "every resource's first reconcile", 5)
        polled_at = time.monotonic()
        # kopf's own first writes to each resource (its finalizer, then the annotation that records the spec it
        # handled) trail the first polls under load: until every resource carries that annotation they land in
        # whatever window comes next (1,563 of a steady window's 2,598 writes in one run).
        handled_seconds = wait_until(lambda: kopf_handled(api, namespace, len(fleet)), args.warmup_timeout,
                                     "kopf's handling of every resource's creation", 5)
        emit(event="first_round", version=version.label, seconds=round(first_round, 1),
             replicas=len(replicas), shards_balanced_seconds=round(shards_seconds, 1),
             creations_handled_after_seconds=round(handled_seconds, 1))
        time.sleep(args.warmup)

        # The steady window: counters read outside the CPU interval, so their scrape is not charged.
        holders0 = dict(operators.read_owners())
        metrics0 = scrape_all(replicas)
        changes = ChangeCounter(api, namespace)
        changes.start()
        api0, t0 = apiserver_writes(), time.monotonic()
        cpu0 = {r.identity: cpu_seconds(r.pid) for r in replicas}
        time.sleep(args.duration)
        cpu1 = {r.identity: cpu_seconds(r.pid) for r in replicas}
        t1 = time.monotonic()
        changed = changes.stop()
        api1, metrics1 = apiserver_writes(), scrape_all(replicas)
        holders1 = dict(operators.read_owners())
        window = t1 - t0
        writes = deltas(api0, api1)
        write_rate = sum(writes.values()) / window

        def share(replica: Replica) -> ReplicaWindow:
            before, after = metrics0[replica.identity], metrics1[replica.identity]
            assert replica.sampler is not None
            steady_rss = replica.sampler.between(t0, t1)
            return ReplicaWindow(
                identity=replica.identity, cpu_seconds=cpu1[replica.identity] - cpu0[replica.identity],
                polls=after.polls - before.polls, errors=after.errors - before.errors,
                kafka_requests=(after.kafka_requests - before.kafka_requests
                                if after.kafka_requests is not None and before.kafka_requests is not None else None),
                rss_kib_steady_median=statistics.median(steady_rss) if steady_rss else None, rss_kib_peak=None,
                resources=operators.resources_of(replica.identity), shards_held=operators.shards_of(replica.identity))

        shares = [share(replica) for replica in replicas]
        totals = fleet_totals(shares, window)
        status_writes = deltas(merge_metrics(metrics0, None).status_writes, merge_metrics(metrics1, None).status_writes)
        cpu = totals["cpu_seconds"]
        result.update({
            "window_seconds": round(window, 1),
            **{key: totals[key] for key in ("polls", "polls_per_second")},
            "polls_per_second_asked": round(len(fleet) / args.interval, 2),
            **{key: totals[key] for key in ("reconcile_errors", "cpu_seconds", "cpu_cores", "cpu_ms_per_poll")},
            "resources_per_core_at_interval": int(args.interval * totals["polls"] / cpu) if cpu > 0 else None,
            "rss_mib_steady_median": totals["rss_mib_steady_median"],
            "api_writes_per_second": round(write_rate, 2),
            "api_writes_by_kind": {k: int(v) for k, v in sorted(writes.items())},
            "api_writes_per_second_without_operator": round(noise_rate, 2),
            "api_writes_without_operator_by_kind": {k: int(v) for k, v in sorted(noise.items())},
            "namespace_changes_per_second": round(sum(changed.values()) / window, 3),
            "namespace_changes_by_kind": changed,
            "namespace_watches_ended_early": sorted(changes.ended_early),
            "kafka_requests_per_second": totals["kafka_requests_per_second"],
            # Polls brought forward (lag risen past the bar: a probe, earlier a between read) in a window with no burst.
            "early_polls_in_window": early_polls_between(merge_metrics(metrics0, None), merge_metrics(metrics1, None)),
            "probes_in_window": probes_between(merge_metrics(metrics0, None), merge_metrics(metrics1, None)),
            # Why each status patch in the window was written (versions with lagpilot_status_writes_total).
            "status_writes_by_reason": {k: int(v) for k, v in sorted(status_writes.items(), key=lambda kv: -kv[1])},
            "first_round_seconds": round(first_round, 1),
            "operator_replicas": len(replicas),
            "shards": len(replicas) if len(replicas) > 1 else None,
            "shards_balanced_seconds": round(shards_seconds, 1),
            "shard_holders_unchanged_in_window": holders0 == holders1,
        })
        result["full_metrics_scrape"] = full_scrape(replicas[0])
        emit(event="steady", **result)
        result["quiet"] = quiet_window(fleet, traffic, replicas, api, namespace, args)
        emit(event="quiet", **result["quiet"])
        result["lag_change"] = lag_change(fleet, traffic, operators, args)
        peaks = {r.identity: memory_kib(r.pid, "VmHWM") for r in replicas}
        # Where the peak comes from: the highest 1 s sample of each phase (summed over the replicas).
        phases = {"first_round": (launched, polled_at), "warmup": (polled_at, t0), "steady": (t0, t1),
                  "lag_change": (t1, time.monotonic())}
        result["rss_mib_max_sampled_by_phase"] = {
            phase: round(sum(max(r.sampler.between(*span), default=0) for r in replicas if r.sampler) / 1024, 1)
            for phase, span in phases.items()}
        shares = [dataclasses.replace(s, rss_kib_peak=float(peaks[s.identity])) for s in shares]
        result["rss_mib_peak"] = fleet_totals(shares, window)["rss_mib_peak"]
        result["per_replica"] = [replica_report(s, window) for s in shares]
        result["operator_seconds"] = round(time.monotonic() - launched, 1)
        emit(event="run_done", **result)
        return result
    finally:
        stop_operators(replicas)
        delete_namespace(api, namespace)
        traffic.resume()


def listed_resources(api: Any, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.CustomObjectsApi(api).list_namespaced_custom_object(
        "lagpilot.io", "v1alpha1", namespace, "kafkaconsumergroups")["items"]
    return items


def kopf_handled(api: Any, namespace: str, count: int) -> bool:
    """kopf has handled every resource's creation: it carries the annotation kopf writes last
    (`<prefix>/last-handled-configuration`)."""
    listed = listed_resources(api, namespace)
    return len(listed) == count and all(
        any(key.endswith("/last-handled-configuration") for key in (item["metadata"].get("annotations") or {}))
        for item in listed)


def at_idle_size(api: Any, namespace: str, count: int) -> bool:
    """Every resource's status shows its idle size: `replicas.min` replicas (1 in the bench's spec) of the
    smallest pool (the default `pool.min`, 1)."""
    listed = listed_resources(api, namespace)
    return len(listed) == count and all(
        (item.get("status") or {}).get("desiredReplicas") == item["spec"]["replicas"]["min"]
        and (item.get("status") or {}).get("poolSize") == 1 for item in listed)


def quiet_window(fleet: list[Group], traffic: Traffic, replicas: list[Replica], api: Any, namespace: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Nothing changes: the producer stops and, with `--keep-up`, every group's offsets are committed at the log
    end once more (no lag, no time lag). The groups, idle now, scale down to their idle size (after the
    scale-down window, by its steps: minutes); once every one is there and two more intervals have passed (the
    last steps' writes), the API writes are counted for `--quiet-seconds` s, with why the operator patched each
    status. Without `--keep-up` the backlogs stay and their time lags grow: a change, written (paced)."""
    traffic.pause()
    if traffic.keeper is not None:
        for cluster, groups in by_cluster(fleet).items():
            commit_at_log_end(traffic.keeper.admins[cluster], groups)
    stopped = time.monotonic()
    if traffic.keeper is not None:
        wait_until(lambda: at_idle_size(api, namespace, len(fleet)), args.quiet_settle_timeout,
                   "every resource at its idle size", 10)
    time.sleep(2 * args.interval)
    settled = time.monotonic() - stopped
    metrics0, api0, t0 = merge_metrics(scrape_all(replicas), None), apiserver_writes(), time.monotonic()
    time.sleep(args.quiet_seconds)
    metrics1, api1, t1 = merge_metrics(scrape_all(replicas), None), apiserver_writes(), time.monotonic()
    writes = deltas(api0, api1)
    return {"seconds": round(t1 - t0, 1), "settled_seconds": round(settled, 1), "keep_up": traffic.keeper is not None,
            "polls": int(metrics1.polls - metrics0.polls),
            "api_writes_per_second": round(sum(writes.values()) / (t1 - t0), 2),
            "api_writes_by_kind": {k: int(v) for k, v in sorted(writes.items()) if v},
            "status_writes_by_reason": {k: int(v) for k, v in sorted(deltas(
                metrics0.status_writes, metrics1.status_writes).items(), key=lambda kv: -kv[1]) if v},
            "basis": "apiserver_request_total deltas of the kinds the operator writes (cluster-wide), over the "
                     "window; status_writes_by_reason from lagpilot_status_writes_total"}


def lag_change(fleet: list[Group], traffic: Traffic, operators: Fleet,
               args: argparse.Namespace) -> dict[str, Any]:
    """`--bursts` lag changes, one after another (`one_burst`), each at another instant of the clusters'
    reads: a burst's wait for its cluster's next read is anything from 0 to one interval. Over them: the
    slowest burst to reach every resource, and per cluster and burst, whether the first read that started
    after the burst carried it and how soon after that read's start every resource on the cluster decided.
    The producer and the consumers' commits (`--keep-up`) stop first."""
    traffic.pause()
    time.sleep(2 * args.interval + 1)    # every resource read the lag once the steady produce stopped
    bursts = []
    for index in range(args.bursts):
        if index:  # another instant of the reads than the last burst's, which came right after a read
            time.sleep(args.interval * (1 + index / args.bursts))
        bursts.append(one_burst(fleet, operators, args))
        emit(event="burst", index=index, **bursts[-1])
    return over_bursts(bursts)


def over_bursts(bursts: list[dict[str, Any]]) -> dict[str, Any]:
    """The bursts' reports (`one_burst`) in one: the slowest, and per cluster and burst the read that carried it."""
    all_seen = [burst["all_seen_seconds"] for burst in bursts]
    carried = [cluster for burst in bursts for cluster in burst["seen_seconds_by_cluster"].values()
               if "read_started" in cluster]
    return {
        "bursts": len(bursts),
        "all_seen_seconds": None if None in all_seen else max(all_seen),
        "all_seen_seconds_each_burst": all_seen,
        "p50_seconds_each_burst": [burst["p50_seconds"] for burst in bursts],
        "within_one_interval": all(burst["within_one_interval"] for burst in bursts),
        # None with several replicas: each reads every cluster at its own instants (not attributed).
        "every_change_carried_by_the_first_read_after_it":
            not any(cluster["missed_a_read_started_after_burst"] for cluster in carried) if carried else None,
        "read_start_to_last_decision_seconds_max":
            max((round(cluster["read_seconds"] + cluster["decided_within_seconds_after_read"], 2)
                 for cluster in carried), default=None),
        "each_burst": bursts,
    }


def one_burst(fleet: list[Group], operators: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds from a burst to every partition until each resource's decision sees its lag grow by it
    (several replicas: read from the replica holding the resource's shard)."""
    holders = dict(operators.read_owners())
    metrics_before = operators.metrics()
    baseline = metrics_before.total_lag
    wanted = {g.name: baseline.get(g.name, 0.0) + g.partitions * args.burst for g in fleet}
    from seed_bench import machine_busy_seconds

    writes0 = apiserver_writes()
    sent = time.monotonic()
    operator_cpu0, machine_busy0 = sum(cpu_seconds(r.pid) for r in operators.replicas), machine_busy_seconds()
    group_acknowledged = produce_to_every_partition(fleet, args.burst)
    acknowledged = max(group_acknowledged.values())
    clusters = by_cluster(fleet)
    cluster_acknowledged = {cluster: max(group_acknowledged[g.name] for g in members)
                            for cluster, members in clusters.items()}
    seen: dict[str, float] = {}
    # Each cluster's reads that ended after the burst: (end, duration), seconds from its acknowledgement
    # (a read ends when lagpilot_kafka_cluster_read_duration_seconds_count moves). With one replica only:
    # several replicas each read every cluster at instants of their own, and their counts are summed.
    reads_after: dict[str, list[tuple[float, float]]] = {}
    last_reads = operators.metrics().cluster_reads
    deadline = acknowledged + args.lag_change_timeout
    while len(seen) < len(fleet) and time.monotonic() < deadline:
        scraped = operators.metrics()
        now = time.monotonic()
        for name, target in wanted.items():
            if name not in seen and scraped.total_lag.get(name, 0.0) >= target:
                seen[name] = round(now - group_acknowledged[name], 2)
        for cluster, (reads, seconds) in scraped.cluster_reads.items():
            had = last_reads.get(cluster, (0.0, 0.0))
            if reads > had[0]:
                reads_after.setdefault(cluster, []).append(
                    (round(now - cluster_acknowledged[cluster], 2), round((seconds - had[1]) / (reads - had[0]), 2)))
        last_reads = scraped.cluster_reads
        time.sleep(0.5)
    # The CPU the burst went through on: the operator's (all replicas), and the whole machine's (brokers,
    # producer, apiserver and all), from the first record sent to the last resource that showed it.
    burst_seconds = time.monotonic() - sent
    operator_cpu = sum(cpu_seconds(r.pid) for r in operators.replicas) - operator_cpu0
    machine_busy = machine_busy_seconds() - machine_busy0
    times = list(seen.values())
    writes = deltas(writes0, apiserver_writes())
    metrics_after = operators.metrics()
    found: dict[str, Any] = {
             "burst_records_per_partition": args.burst, "produce_seconds": round(acknowledged - sent, 2),
             "early_polls": early_polls_between(metrics_before, metrics_after),
             # Reads of the groups a probe woke (versions with probes), on every cluster together.
             "woken_reads": int(metrics_after.woken_reads - metrics_before.woken_reads),
             # Probes of the log ends while the burst went through, per outcome: how many, their mean seconds.
             "probes": probes_between(metrics_before, metrics_after),
             # Why the operator patched statuses while the burst went through (versions with the counter).
             "status_writes_by_reason": {k: int(v) for k, v in sorted(deltas(
                 metrics_before.status_writes, metrics_after.status_writes).items()) if v},
             "api_writes_by_kind": {k: int(v) for k, v in sorted(writes.items()) if v},
             "resources_seen": len(seen), "resources": len(fleet),
             "all_seen_seconds": round(max(times), 1) if len(seen) == len(fleet) else None,
             "p50_seconds": round(percentile(times, 0.5), 1) if times else None,
             "p99_seconds": round(percentile(times, 0.99), 1) if times else None,
             "within_one_interval": bool(times) and len(seen) == len(fleet) and max(times) <= args.interval,
             # Cores busy from the first record sent until the last resource showed the burst: the operator
             # (one replica is one Python process: about 1.0 is all its GIL gives), and the machine of
             # os.cpu_count() cores.
             "operator_cpu_cores": round(operator_cpu / burst_seconds, 2),
             "machine_cpu_cores_busy": round(machine_busy / burst_seconds, 2), "machine_cores": os.cpu_count(),
             "basis": "per resource, from the acknowledgement of its group's last burst record to "
                      "lagpilot_consumergroup_total_lag showing the whole burst, read every 0.5 s (clusters produced "
                      "side by side); per cluster, the read that carried the change: the last one ended by the time "
                      "its last resource showed it, times from the cluster's last acknowledgement (ends and "
                      "durations from lagpilot_kafka_cluster_read_duration_seconds; with one replica only)"}

    def last_seen_since_cluster_acknowledged(cluster: str, members: list[Group]) -> float:
        return max(seen[g.name] + group_acknowledged[g.name] - cluster_acknowledged[cluster] for g in members)

    found["seen_seconds_by_cluster"] = {
        cluster: {"first": min(ts), "p50": round(percentile(ts, 0.5), 1), "last": max(ts),
                  **(read_that_carried(reads_after.get(cluster, []), last_seen_since_cluster_acknowledged(
                      cluster, [g for g in members if g.name in seen])) if operators.owner is None else {})}
        for cluster, members in clusters.items() if (ts := [seen[g.name] for g in members if g.name in seen])}
    if operators.owner is not None:
        found["shard_holders_unchanged"] = holders == operators.read_owners()
        found["all_seen_seconds_by_replica"] = all_seen_by_replica(seen, operators.owner,
                                                                   [r.identity for r in operators.replicas])
    return found


def read_that_carried(reads: list[tuple[float, float]], seen: float) -> dict[str, Any]:
    """Of a cluster's reads after the burst ((end, duration), seconds from its acknowledgement), the last one
    ended when its last resource showed the change: when it started and ended, and the decisions after it.
    `missed_a_read_started_after_burst`: an earlier read had started after the burst and did not carry it."""
    ended = [(end, duration) for end, duration in reads if end <= seen]
    if not ended:
        return {}
    end, duration = ended[-1]
    started_after = [e - d for e, d in reads if e - d >= 0]
    return {"read_started": round(end - duration, 2), "read_seconds": duration,
            "decided_within_seconds_after_read": round(seen - end, 2),
            "missed_a_read_started_after_burst": bool(started_after) and min(started_after) < end - duration - 0.5}


# -- brokers, versions, main ----------------------------------------------------------------------


def start_brokers(count: int, work: Path, port_base: int) -> list[Any]:
    """`count` extra single-node KRaft brokers (the stack's recipe, each its own folder and ports)."""
    from e2e.node_backend import PrivateBroker

    brokers = []
    try:
        for i in range(count):
            ports = ({name: port_base + 10 * i + j for j, name in enumerate(PrivateBroker.LISTENERS)}
                     if port_base else None)
            brokers.append(PrivateBroker(work / f"broker-{i}", None, ports).start())
    except Exception:
        for broker in brokers:
            broker.stop()
        raise
    return brokers


def broker_resources(brokers: Iterable[Any]) -> list[dict[str, Any]]:
    """Each extra broker's JVM: open file descriptors, memory maps and RSS (what thousands of partitions need)."""
    found = []
    for broker in brokers:
        pid = int((broker.stack_dir / "pids" / "kafka.pid").read_text()) if (
            broker.stack_dir / "pids" / "kafka.pid").exists() else None
        if pid is None:
            continue
        found.append({"bootstrap": broker.bootstrap, "open_fds": sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
                      "memory_maps": len(Path(f"/proc/{pid}/maps").read_text().splitlines()),
                      "rss_mib": round(memory_kib(pid, "VmRSS") / 1024, 1)})
    return found


def versions(args: argparse.Namespace, work: Path) -> list[Version]:
    head = Version("head", Path(sys.executable).parent / "kopf", REPO / "crds",
                   os.pathsep.join(str(REPO / part) for part in ("operator", "worker", "contract")))
    if args.also_with:
        setting = tuple((name, value) for name, _, value in (item.partition("=") for item in args.also_with))
        return [head, dataclasses.replace(head, label="head-also", env=setting)]
    if not args.compare:
        return [head]
    from runtime_compare_bench import install

    commit = subprocess.run(["git", "rev-parse", "--short", args.compare], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.strip()
    python = Path(args.before_python) if args.before_python else None
    if python is None:
        started = time.monotonic()
        python = install(commit, work / "before", extras="operator")
        emit(event="installed", commit=commit, seconds=round(time.monotonic() - started, 1))
    crds = work / "before-crds"
    crds.mkdir(exist_ok=True)
    listed = subprocess.run(["git", "ls-tree", "--name-only", commit, "crds/"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout.split()
    for path in listed:
        (crds / Path(path).name).write_bytes(subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO,
                                                            check=True, capture_output=True).stdout)
    return [Version(f"before-{commit}", python.parent / "kopf", crds, None), head]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=3, help="Kafka clusters: the stack's broker and N-1 extra")
    parser.add_argument("--partitions", type=int, default=10000, help="partitions of all groups' topics together")
    parser.add_argument("--interval", type=float, default=5.0, help="each resource's lag.pollIntervalSeconds")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of the steady window")
    parser.add_argument("--warmup", type=float, default=30.0,
                        help="seconds after every resource reconciled once, before the window")
    parser.add_argument("--warmup-timeout", type=float, default=900.0)
    parser.add_argument("--noise-seconds", type=float, default=20.0,
                        help="seconds of apiserver writes counted with no operator running")
    parser.add_argument("--produce-per-partition", type=float, default=0.02,
                        help="steady records/s per partition (0.02: one record per group's topic and 5 s poll "
                             "at the default sizes)")
    parser.add_argument("--keep-up", action="store_true",
                        help="every group's consumers keep up: its offsets are committed at the log end once per "
                             "interval (without it nobody consumes and every lag grows)")
    parser.add_argument("--quiet-settle-timeout", type=float, default=900.0,
                        help="seconds the idle groups may take to reach their idle size before the quiet window")
    parser.add_argument("--quiet-seconds", type=float, default=60.0,
                        help="seconds of the quiet window: API writes when nothing changes")
    parser.add_argument("--burst", type=int, default=3, help="records to every partition for the lag change")
    parser.add_argument("--bursts", type=int, default=3,
                        help="lag changes one after another, each at another instant of the clusters' reads")
    parser.add_argument("--lag-change-timeout", type=float, default=120.0)
    parser.add_argument("--replicas", type=int, default=1,
                        help="operator replicas; more than 1 shards the fleet between them (LAGPILOT_SHARDS = "
                             "replicas, replica i's metrics on --metrics-port + i)")
    parser.add_argument("--compare", metavar="REV", help="run REV's operator first, then this checkout's")
    parser.add_argument("--also-with", metavar="NAME=VALUE", action="append",
                        help="run this checkout's operator again (labelled head-also) with NAME=VALUE in its "
                             "environment (repeatable; instead of --compare)")
    parser.add_argument("--before-python", help="an interpreter with REV's operator installed (skips the install)")
    parser.add_argument("--prefix", default="fleet-bench", help="namespaces, topics and groups start with it")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="the operator's metrics port, replica i's PORT+i (0: free ones)")
    parser.add_argument("--broker-port-base", type=int, default=0,
                        help="extra broker i listens on BASE+10i..BASE+10i+4 (0: free ports)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (venv, broker logs)")
    parser.add_argument("--quick", action="store_true",
                        help="50 groups, 500 partitions, 60 s window, 15 s warm-up: a few minutes")
    args = parser.parse_args()
    if any("=" not in item for item in args.also_with or ()):
        parser.error("--also-with takes NAME=VALUE")
    if args.also_with and args.compare:
        parser.error("--also-with and --compare are alternatives")
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    if args.quick:
        args.groups, args.partitions, args.duration, args.warmup = 50, 500, 60.0, 15.0

    from support import api_client

    api = api_client(os.environ["KUBECONFIG"])
    work = Path(tempfile.mkdtemp(prefix=f"{args.prefix}-"))
    run_versions = versions(args, work)
    brokers: list[Any] = []
    fleet: list[Group] = []
    traffic: Traffic | None = None
    started = time.monotonic()
    try:
        brokers = start_brokers(args.clusters - 1, work, args.broker_port_base)
        clusters = [os.environ["KAFKA_BOOTSTRAP_SERVERS"], *(b.bootstrap for b in brokers)]
        fleet = plan_fleet(args.groups, clusters, args.partitions, f"{args.prefix}-{uuid.uuid4().hex[:5]}")
        create_topics(fleet)
        commit_offsets(fleet)
        produce_to_every_partition(fleet, 1)
        emit(event="fleet_ready", groups=len(fleet), clusters=clusters, partitions=sum(g.partitions for g in fleet),
             seconds=round(time.monotonic() - started, 1), brokers=broker_resources(brokers))
        traffic = Traffic(SteadyProducer(fleet, args.produce_per_partition * sum(g.partitions for g in fleet)),
                          KeepingUp(fleet, args.interval) if args.keep_up else None)
        traffic.start()
        runs = {}
        for version in run_versions:
            run_started = time.monotonic()
            runs[version.label] = run_version(version, fleet, traffic, api, args, work)
            runs[version.label]["run_seconds"] = round(time.monotonic() - run_started, 1)
        summary = {"bench": "fleet", "groups": len(fleet), "clusters": len(clusters),
                   "partitions": sum(g.partitions for g in fleet), "interval_seconds": args.interval,
                   "window_seconds": args.duration, "replicas": args.replicas, "keep_up": args.keep_up,
                   "keeper_rounds": traffic.keeper.rounds if traffic.keeper is not None else None,
                   "keeper_failures": traffic.keeper.failures[:10] if traffic.keeper is not None else None,
                   "runs": runs,
                   "brokers": broker_resources(brokers), "total_seconds": round(time.monotonic() - started, 1),
                   "basis": "operator process CPU (all threads; several replicas: summed) / reconciles in the steady "
                            "window (summed); API writes "
                            "counted cluster-wide by the apiserver for the kinds the operator writes (noise from "
                            "other users of the stack measured without the operator beside it)"}
        print(json.dumps(summary), flush=True)
        return 0
    finally:
        if traffic is not None:
            traffic.stop()
        if fleet:    # the extra brokers' topics go with their brokers
            delete_topics([g for g in fleet if g.cluster == os.environ["KAFKA_BOOTSTRAP_SERVERS"]])
        for broker in brokers:
            broker.stop()
        if args.keep:
            emit(event="kept", folder=str(work))
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

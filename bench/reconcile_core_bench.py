"""CPU of one reconcile's own work, offline: no Kafka, no Kubernetes (issue 17).

`bench/operator_bench.py` measures a whole reconcile on the live stack (the Kafka admin calls and the
Kubernetes calls included). This bench measures what the operator's Python does around those calls, on
a synthetic group of 1, 100 and 1,000 partitions polled every 5 s on a synthetic clock:

* the cluster read's parsing (`cluster_observer.read_cluster` over a fake AdminClient whose answers are
  built before each poll's clock starts, shaped as confluent-kafka returns them: TopicPartition lists,
  one ListOffsets answer per offset kind, a group description), the coalescing observer and
  `cluster_reads.sample_for`;
* the real `reconcile.reconcile` from there on: spec and conditions, history, time lags, verdicts,
  the policy's decision, the status, the write rules (`writes.status_write_reason`) and the Prometheus
  series (per partition included).

Faked, and only there: `kube_io`'s calls (Deployment read, scale, pool ConfigMap, status patch) and the
AdminClient. The Kubernetes fakes and the blocking-call threads (`asyncio.to_thread`) are still paid for,
as in the operator.

The group: `--partitions` partitions of one topic, each with its own produce rate (some idle), consumed
by the Deployment's replicas x pool slots at `--slot-rate` msg/s each, spread over the partitions; the
consumers commit every poll; 1 % of the partitions get stuck (their committed offset stops) after a
third of the polls. The members of the group are the Deployment's replicas; scale decisions change them.
The status the reconcile wrote is handed back as the next poll's body (what the watch delivers, a JSON
copy), outside the measured time.

CPU is `time.process_time()` (every thread of the process) around each reconcile. The first `--warmup`
polls are not counted: the time-lag tables (60 points) and, before issue 17's cuts, the history (600 s)
fill up within the first 120 polls at 5 s.

    .venv/bin/python bench/reconcile_core_bench.py [--sizes 1,100,1000] [--polls 200] [--warmup 120]

Prints one JSON line per size (`cpu_ms_min`, `cpu_ms_p50`, `cpu_ms_p90`, `cpu_ms_mean`, `read_ms_p50`: the cluster
read's parsing alone, and `digest`: a hash of every status written and of the final per-partition
series, to tell that a change kept the results) and, last, one JSON object with `cpu_ms_p50` per size and
the load average (on a shared machine the other work shows in the numbers; `cpu_ms_min` shows it least).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from confluent_kafka import ConsumerGroupType, TopicPartition
from prometheus_client import REGISTRY

from lagpilot_operator import reconcile
from lagpilot_operator.collector import tune_collector
from lagpilot_operator.kafka import cluster_observer, kafka_lag
from lagpilot_operator.kafka.cluster_reads import ClusterRead, Wanted
from lagpilot_operator.kafka.heap_trim import HeapTrimmer
from lagpilot_operator.kube import kube_io

INTERVAL = 5.0
EPOCH = 1_700_000_000.0
NAMESPACE = "bench"
BOOTSTRAP = "kafka.bench:9092"


def done(value: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return future


class Group:
    """The synthetic group's offsets, moved one poll at a time (deterministic: seeded)."""

    def __init__(self, partitions: int, polls: int, slot_rate: float, seed: int = 17) -> None:
        rng = random.Random(seed + partitions)
        self.topic = f"orders-{partitions}"
        self.group = f"orders-{partitions}-workers"
        self.partitions = partitions
        # msg/s per partition: a quarter idle, the rest uneven (a few hot partitions).
        self.rates = [0.0 if rng.random() < 0.25 else rng.choice((1.0, 2.0, 5.0, 10.0, 30.0)) * rng.uniform(0.5, 1.5)
                      for _ in range(partitions)]
        self.start = [rng.randrange(0, 1_000) for _ in range(partitions)]
        self.end = [s + rng.randrange(0, 50_000) for s in self.start]
        self.committed: list[int | None] = [e - rng.randrange(0, 200) for e in self.end]
        for p in rng.sample(range(partitions), max(0, partitions // 200)):
            self.committed[p] = None  # never committed
        stuck = max(1, partitions // 100) if partitions >= 10 else 0
        self.stuck = set(rng.sample(range(partitions), stuck))
        self.stuck_from = polls // 3
        self.slot_rate = slot_rate
        self.rng = rng

    def advance(self, poll: int, replicas: int, pool: int) -> None:
        """One interval of producing and consuming: the slots' capacity goes to the partitions in
        proportion to their backlog (a stuck or never-committed partition takes none)."""
        for p in range(self.partitions):
            self.end[p] += int(self.rates[p] * INTERVAL * self.rng.uniform(0.7, 1.3))
        moving = [p for p in range(self.partitions)
                  if self.committed[p] is not None and not (p in self.stuck and poll >= self.stuck_from)]
        backlog = {p: self.end[p] - (self.committed[p] or 0) for p in moving}
        total = sum(backlog.values())
        capacity = replicas * pool * self.slot_rate * INTERVAL * self.rng.uniform(0.9, 1.1)
        share = 1.0 if total <= capacity else capacity / total
        for p in moving:
            self.committed[p] = (self.committed[p] or 0) + int(backlog[p] * share)


class FakeAdmin:
    """The AdminClient calls `read_cluster` makes, answered from the group's offsets as confluent-kafka
    answers them; `prepare` builds the answers before the poll's clock starts."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.metadata = SimpleNamespace(topics={group.topic: SimpleNamespace(
            error=None, partitions={p: None for p in range(group.partitions)})})
        self.members = 1
        self._committed: Any = None
        self._ends: dict[TopicPartition, Any] = {}
        self._starts: dict[TopicPartition, Any] = {}

    def prepare(self, members: int) -> None:
        g = self.group
        self.members = members
        self._committed = SimpleNamespace(topic_partitions=[
            TopicPartition(g.topic, p, c if c is not None else -1001) for p, c in enumerate(g.committed)])
        self._ends = {TopicPartition(g.topic, p): SimpleNamespace(offset=e) for p, e in enumerate(g.end)}
        self._starts = {TopicPartition(g.topic, p): SimpleNamespace(offset=s) for p, s in enumerate(g.start)}

    def list_topics(self, timeout: float) -> Any:
        return self.metadata

    def list_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> dict[str, Any]:
        return {requests[0].group_id: done(self._committed)}

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Any]:
        found = SimpleNamespace(members=[object()] * self.members, type=ConsumerGroupType.CONSUMER)
        return {group: done(found) for group in groups}

    def send_list_offsets(self, partitions: list[TopicPartition], request: concurrent.futures.Future[Any],
                          request_timeout: float) -> None:
        """confluent-kafka's C `list_offsets` as `kafka_lag._list_offsets` calls it: one answer for the
        whole call, keyed by TopicPartition (-1: latest, -2: earliest)."""
        request.set_result(self._ends if partitions[0].offset == -1 else self._starts)

    @staticmethod
    def install() -> None:
        """`kafka_lag._list_offsets` takes its C path (one future per call) for this fake, as for a client."""
        setattr(kafka_lag, "AdminClient", FakeAdmin)  # noqa: B010
        setattr(kafka_lag, "_AdminClientImpl", SimpleNamespace(list_offsets=FakeAdmin.send_list_offsets))  # noqa: B010


class FakeClients:
    """`kafka_lag.AdminClientPool`'s calls, all to the one fake admin."""

    def __init__(self, admin: FakeAdmin) -> None:
        self.admin = admin

    def get(self, settings: Any, owner: Any = None) -> Any:
        return self.admin

    def discard(self, settings: Any) -> None:
        return None

    def release(self, owner: Any) -> None:
        return None


class Observers(cluster_observer.ClusterObservers):
    """The real coalescing observers, reading on the synthetic clock (the read's time is the poll's)."""

    def __init__(self, clients: Any, clock: Callable[[], float], read_cpu: list[float]) -> None:
        super().__init__(clients, gather_seconds=0.0, trimmer=HeapTrimmer(None))
        self._clock, self._read_cpu = clock, read_cpu

    def _reader(self, settings: dict[str, str]) -> Callable[[Wanted], ClusterRead]:
        reader = super()._reader(settings)

        def read(wanted: Wanted) -> ClusterRead:
            started = time.process_time()
            found = replace(reader(wanted), time=self._clock() - 0.05)
            self._read_cpu.append(time.process_time() - started)
            return found

        return read


class FakeKube:
    """The Deployment, its pool ConfigMap and the resource's status, in memory."""

    def __init__(self, name: str, group: Group) -> None:
        self.replicas, self.pool = 1, 8
        self.written: dict[str, Any] | None = None
        self.writes = 0
        self.container = {"name": "worker", "image": "registry.invalid/worker:1",
                          "env": [{"name": "LAGPILOT_GROUP_ID", "value": group.group},
                                  {"name": "LAGPILOT_TOPICS", "value": group.topic},
                                  {"name": "LAGPILOT_BOOTSTRAP_SERVERS", "value": BOOTSTRAP}]}
        self.name = name

    def install(self) -> None:
        for call in ("read_target", "scale_target", "publish_pool_size", "patch_status"):
            setattr(kube_io, call, getattr(self, call))

    def read_target(self, namespace: str, name: str) -> kube_io.TargetScale:
        return kube_io.TargetScale(name=name, spec_replicas=self.replicas, ready_replicas=self.replicas,
                                   containers=(self.container,), resource_version=str(self.writes))

    def scale_target(self, namespace: str, name: str, replicas: int) -> None:
        self.replicas = replicas

    def publish_pool_size(self, kcg: dict[str, Any], pool: int, reason: str, updated_at: str,
                          known: Any = None) -> None:
        self.pool = pool

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.written, self.writes = status, self.writes + 1


def body_for(name: str, group: Group) -> dict[str, Any]:
    return {"apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1},
            "spec": {"kafka": {"bootstrapServers": BOOTSTRAP}, "groupId": group.group, "topics": [group.topic],
                     "scaleTargetRef": {"name": name}, "replicas": {"min": 1, "max": 10}}}


def partition_series_digest(name: str) -> str:
    digest = hashlib.sha256()
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.labels.get("name") == name and "partition" in sample.labels:
                digest.update(repr((sample.name, sorted(sample.labels.items()), sample.value)).encode())
    return digest.hexdigest()


async def run_size(partitions: int, polls: int, warmup: int, slot_rate: float,
                   profile: Any = None) -> dict[str, Any]:
    name = f"bench-{partitions}"
    group = Group(partitions, polls, slot_rate)
    admin = FakeAdmin(group)
    FakeAdmin.install()
    kube = FakeKube(name, group)
    kube.install()
    clock = [EPOCH]
    read_cpu: list[float] = []
    shared = reconcile.Shared(admin_clients=FakeClients(admin))  # type: ignore[arg-type]
    object.__setattr__(shared, "cluster_reads", Observers(shared.admin_clients, lambda: clock[0], read_cpu))
    state = reconcile.ResourceState()
    body = body_for(name, group)
    events: list[tuple[str, str, str]] = []
    digest = hashlib.sha256()
    cpus: list[float] = []
    counted_reads: list[float] = []

    def emit(kind: str, reason: str, message: str) -> None:
        events.append((kind, reason, message))

    for poll in range(polls):
        group.advance(poll, kube.replicas, kube.pool)
        admin.prepare(kube.replicas)
        clock[0] = EPOCH + poll * INTERVAL
        reads_before = len(read_cpu)
        if profile is not None and poll >= warmup:
            profile.enable()
        started = time.process_time()
        status = await reconcile.reconcile(body, state, shared, emit, now=clock[0])
        cpu = time.process_time() - started
        await state.status.settle(5)  # the write, in the background, before the next poll's watch copy
        if profile is not None:
            profile.disable()
        if poll >= warmup:
            cpus.append(cpu)
            counted_reads.extend(read_cpu[reads_before:])
        digest.update(json.dumps(status, sort_keys=True).encode())
        if kube.written is not None:
            body["status"] = json.loads(json.dumps(kube.written))  # the watch's copy of what was written
    digest.update(partition_series_digest(name).encode())
    digest.update(json.dumps(events).encode())
    cpus.sort()
    return {"partitions": partitions, "polls": polls, "counted": len(cpus),
            "cpu_ms_min": round(cpus[0] * 1000, 3), "cpu_ms_p50": round(statistics.median(cpus) * 1000, 3),
            "cpu_ms_p90": round(cpus[int(len(cpus) * 0.9)] * 1000, 3),
            "cpu_ms_mean": round(statistics.fmean(cpus) * 1000, 3),
            "read_ms_p50": round(statistics.median(counted_reads) * 1000, 3) if counted_reads else None,
            "status_writes": kube.writes, "replicas": kube.replicas, "pool": kube.pool, "events": len(events),
            "digest": digest.hexdigest()[:16]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,100,1000", help="partition counts, comma-separated")
    parser.add_argument("--polls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=120, help="polls not counted (the history fills up)")
    parser.add_argument("--slot-rate", type=float, default=20.0, help="msg/s one consumer slot processes")
    parser.add_argument("--profile", help="write a cProfile of the counted polls of the largest size here")
    parser.add_argument("--default-gc", action="store_true",
                        help="CPython's collector as it comes, not as the operator runs it (collector.tune_collector)")
    args = parser.parse_args()
    if not args.default_gc:
        tune_collector()  # what the operator's start-up does
    if args.warmup >= args.polls:
        parser.error("--warmup must be below --polls")
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, float] = {}
    for size in sizes:
        profile = None
        if args.profile and size == max(sizes):
            import cProfile

            profile = cProfile.Profile()
        result = asyncio.run(run_size(size, args.polls, args.warmup, args.slot_rate, profile))
        if profile is not None:
            profile.dump_stats(args.profile)
        print(json.dumps(result), flush=True)
        results[str(size)] = result["cpu_ms_p50"]
    print(json.dumps({"cpu_ms_p50": results, "collector": "default" if args.default_gc else "operator",
                      "load_average_1m": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

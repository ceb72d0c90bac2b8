"""The end-to-end harness: watches that record every scale, KafkaConsumerGroup manifests and the
scenario's parts. Shared by the e2e fixtures (e2e/conftest.py) and bench/loop_bench.py.

Nothing here is a test double: the Pods run in containers on a real node (e2e/node_backend.py, or
kind), the operator is installed from its Helm chart (e2e/pods.py), and Kafka and the Kubernetes
control plane are the real ones.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.chaos import repeated_runs
from e2e.loadgen import Ledger, LoadGenerator, LoadResult, Profile
from e2e.pods import ChartOperator
from support import metric_samples, unique_name, wait_for

REPO = Path(__file__).resolve().parent.parent
E2E_DIR = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent

KCG_GROUP = "lagpilot.io"
KCG_VERSION = "v1alpha1"
KCG_PLURAL = "kafkaconsumergroups"
KCG_API_VERSION = f"{KCG_GROUP}/{KCG_VERSION}"
HANDLER = "handlers:handle"   # e2e/handlers.py, in /app of the e2e worker image


# --- watching what the operator does ---------------------------------------------------------------------


@dataclass
class ReplicaChange:
    time: float
    replicas: int


@dataclass
class StatusSnapshot:
    time: float
    status: dict[str, Any]

    def condition(self, kind: str) -> str | None:
        for item in self.status.get("conditions") or []:
            if item.get("type") == kind:
                return str(item.get("status"))
        return None


@dataclass
class GroupWatch:
    """Every change of the worker Deployment's `spec.replicas` and of the group's status, as they happen.

    Kubernetes watches, not polling: a scale-down and back within a second is still seen, which is
    what "never scaled to zero while blind" needs.
    """

    api: client.ApiClient
    namespace: str
    kcg_name: str
    replicas: list[ReplicaChange] = field(default_factory=list)
    statuses: list[StatusSnapshot] = field(default_factory=list)
    deployment_name: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _watches: list[watch.Watch] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> GroupWatch:
        for target, name in ((self._watch_deployments, "deployments"), (self._watch_group, "kcg")):
            thread = threading.Thread(target=self._forever, args=(target,), name=f"watch-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in list(self._watches):
            w.stop()  # type: ignore[no-untyped-call]
        for thread in self._threads:
            thread.join(timeout=5)

    def _forever(self, target: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                target()
            except Exception:
                self._stop.wait(0.5)

    def _owned_by_group(self, obj: Any) -> bool:
        owners = obj.metadata.owner_references or []
        return any(o.kind == "KafkaConsumerGroup" and o.name == self.kcg_name for o in owners)

    def _watch_deployments(self) -> None:
        apps = client.AppsV1Api(self.api)
        w = watch.Watch()  # type: ignore[no-untyped-call]
        self._watches.append(w)
        for event in w.stream(  # type: ignore[no-untyped-call]
                apps.list_namespaced_deployment, self.namespace, timeout_seconds=60):
            if self._stop.is_set():
                w.stop()  # type: ignore[no-untyped-call]
                return
            obj = event["object"]
            if self.deployment_name is None and self._owned_by_group(obj):
                self.deployment_name = obj.metadata.name
            if obj.metadata.name != self.deployment_name or event["type"] == "DELETED":
                continue
            value = int(obj.spec.replicas or 0)
            with self._lock:
                if not self.replicas or self.replicas[-1].replicas != value:
                    self.replicas.append(ReplicaChange(time.time(), value))

    def _watch_group(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        w = watch.Watch()  # type: ignore[no-untyped-call]
        self._watches.append(w)
        for event in w.stream(  # type: ignore[no-untyped-call]
                custom.list_namespaced_custom_object, KCG_GROUP, KCG_VERSION, self.namespace,
                              KCG_PLURAL, field_selector=f"metadata.name={self.kcg_name}", timeout_seconds=60):
            if self._stop.is_set():
                w.stop()  # type: ignore[no-untyped-call]
                return
            obj = event["object"]
            status = obj.get("status") or {}
            with self._lock:
                if not self.statuses or self.statuses[-1].status != status:
                    self.statuses.append(StatusSnapshot(time.time(), status))

    # -- reading ------------------------------------------------------------------------------------

    @property
    def current_replicas(self) -> int | None:
        with self._lock:
            return self.replicas[-1].replicas if self.replicas else None

    @property
    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.statuses[-1].status) if self.statuses else {}

    def replica_history(self, since: float = 0.0) -> list[ReplicaChange]:
        """Changes after `since`, preceded by the value in effect at `since`."""
        with self._lock:
            before = [c for c in self.replicas if c.time <= since]
            after = [c for c in self.replicas if c.time > since]
        return ([ReplicaChange(since, before[-1].replicas)] if before else []) + after

    def status_history(self, since: float = 0.0) -> list[StatusSnapshot]:
        with self._lock:
            return [s for s in self.statuses if s.time >= since]

    def growth_times(self, since: float = 0.0) -> list[float]:
        """When the operator grew the group after `since`, from its status (replicas and pool of one decision
        together): more replicas, or a bigger pool that is more capacity. A consolidation to fewer, bigger pods
        (2 x 3 -> 1 x 4) is no growth."""
        with self._lock:
            statuses = list(self.statuses)  # the one in effect at `since` too: it is what the first one grew from
        shapes = [(s.time, int(s.status.get("desiredReplicas") or 0), int(s.status.get("poolSize") or 0))
                  for s in statuses]
        return [after[0] for before, after in itertools.pairwise(shapes)
                if after[0] > since and grew(before[1:], after[1:])]

    def max_replicas(self, since: float = 0.0) -> int:
        return max((c.replicas for c in self.replica_history(since)), default=0)

    def min_replicas(self, since: float = 0.0) -> int | None:
        history = self.replica_history(since)
        return min(c.replicas for c in history) if history else None

    def max_status(self, key: str, since: float = 0.0) -> float:
        return max((float(s.status.get(key) or 0) for s in self.status_history(since)), default=0.0)

    def direction_changes(self, since: float = 0.0) -> int:
        """How often the replica count turned around (up then down, or down then up)."""
        values = [c.replicas for c in self.replica_history(since)]
        directions = [1 if b > a else -1 for a, b in itertools.pairwise(values) if b != a]
        return sum(1 for a, b in itertools.pairwise(directions) if a != b)

    def describe(self, since: float = 0.0) -> str:
        """Replica timeline and last decision, for assertion messages."""
        start = since or (self.replicas[0].time if self.replicas else time.time())
        timeline = ", ".join(f"+{c.time - start:.0f}s:{c.replicas}" for c in self.replica_history(since))
        status = self.status
        return (f"replicas [{timeline}]; pool {status.get('poolSize')}; lag {status.get('totalLag')}; "
                f"last decision: {status.get('lastDecision')!r}")

    def decisions(self, since: float = 0.0) -> str:
        """Every change of the operator's decision after `since`: when, replicas x pool, lag, and why."""
        lines, last = [], None
        for snapshot in self.status_history(since):
            status = snapshot.status
            seen = (status.get("desiredReplicas"), status.get("poolSize"), status.get("lastDecision"))
            if seen != last and status.get("lastDecision"):
                lines.append(f"  +{snapshot.time - since:5.1f}s {seen[0]}x{seen[1]} lag {status.get('totalLag')}: "
                             f"{seen[2]}")
                last = seen
        return "\n".join(lines)


def grew(before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Whether the shape (replicas, pool) `after` grew the group: more replicas, or a bigger pool that is more
    capacity. A consolidation to fewer, bigger pods (2 x 3 -> 1 x 4) is no growth."""
    (r0, p0), (r1, p1) = before, after
    return r1 > r0 or (p1 > p0 and r1 * p1 > r0 * p0)


@contextlib.contextmanager
def watching(api: client.ApiClient, namespace: str, kcg_name: str) -> Iterator[GroupWatch]:
    group_watch = GroupWatch(api, namespace, kcg_name).start()
    try:
        yield group_watch
    finally:
        group_watch.stop()


# --- manifests -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupSpec:
    """The knobs the scenarios turn; everything else takes short, test-friendly values."""

    name: str
    topic: str
    group_id: str
    bootstrap: str                         # as the operator reaches Kafka
    container: dict[str, Any]              # the worker container (backend-specific image/command)
    replicas_min: int = 1
    replicas_max: int = 4
    pool_min: int = 1
    pool_initial: int = 1
    pool_max: int = 4
    poll_seconds: int = 2
    mode: str = "drainTime"
    target_drain_seconds: int = 20
    lag_per_consumer: int = 50
    allow_idle_consumers: bool = False
    scale_up: Mapping[str, int] = field(default_factory=lambda: {
        "stabilizationSeconds": 0, "maxStepPercent": 100, "minStep": 4, "periodSeconds": 2})
    scale_down: Mapping[str, int] = field(default_factory=lambda: {
        "stabilizationSeconds": 15, "maxStepPercent": 100, "minStep": 1, "periodSeconds": 2})
    dead_letter: Mapping[str, Any] | None = None
    fallback: Mapping[str, Any] | None = None
    pod_spec_extra: Mapping[str, Any] = field(default_factory=dict)   # the worker chart's ServiceAccount, security
    extra_spec: Mapping[str, Any] = field(default_factory=dict)


def kcg_manifest(spec: GroupSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kafka": {"bootstrapServers": spec.bootstrap},
        "groupId": spec.group_id,
        "topics": [spec.topic],
        "template": {
            "metadata": {"labels": {"app": spec.name}},
            "spec": {
                "selector": {"matchLabels": {"app": spec.name}},
                "template": {
                    "metadata": {"labels": {"app": spec.name}},
                    "spec": {"containers": [spec.container], "terminationGracePeriodSeconds": 20,
                             **spec.pod_spec_extra},
                },
            },
        },
        "replicas": {"min": spec.replicas_min, "max": spec.replicas_max},
        "pool": {"min": spec.pool_min, "max": spec.pool_max, "initial": spec.pool_initial},
        "lag": {"source": "kafka", "pollIntervalSeconds": spec.poll_seconds},
        "policy": {
            "mode": spec.mode,
            "drainTime": {"targetDrainSeconds": spec.target_drain_seconds, "headroomPercent": 20},
            "lagThreshold": {"lagPerConsumer": spec.lag_per_consumer,
                             "allowIdleConsumers": spec.allow_idle_consumers},
            "scaleUp": dict(spec.scale_up),
            "scaleDown": dict(spec.scale_down),
        },
    }
    if spec.dead_letter is not None:
        body["deadLetter"] = dict(spec.dead_letter)
    if spec.fallback is not None:
        body["fallback"] = dict(spec.fallback)
    body.update(spec.extra_spec)
    return {"apiVersion": KCG_API_VERSION, "kind": "KafkaConsumerGroup",
            "metadata": {"name": spec.name}, "spec": body}


def worker_env(*, bootstrap: str, processed_topic: str, cost_ms: int, extra: Mapping[str, str] | None = None,
               ) -> list[dict[str, Any]]:
    """Env of the e2e worker container (the operator adds the group, topics and pool-size contract)."""
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LAGPILOT_HANDLER": HANDLER,
        "LAGPILOT_VALUE_DESERIALIZER": "json",
        "LAGPILOT_COMMIT_INTERVAL_SECONDS": "1",
        "LAGPILOT_SHUTDOWN_TIMEOUT_SECONDS": "10",
        "LAGPILOT_LOG_LEVEL": "warning",
        "E2E_PROCESSED_TOPIC": processed_topic,
        "E2E_COST_MS": str(cost_ms),
        **(extra or {}),
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    env.append({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    return env


# --- backends: where the pods run and how faults are injected --------------------------------------------

CRD_FILE = REPO / "crds" / "kafkaconsumergroups.lagpilot.io.yaml"
CRD_NAME = "kafkaconsumergroups.lagpilot.io"


def apply_crd(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    """Server-side apply (other runs apply the same file concurrently), then wait until it is served."""
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=lagpilot-e2e", "-f", str(CRD_FILE))
    # Polled, not `kubectl wait --for=condition=Established`: on a CRD another run created a moment ago,
    # before the apiserver's controller set any condition, kubectl 1.34's wait fails at once
    # (".status.conditions accessor error: <nil>") instead of waiting; it failed one lane's setup so.
    wait_for(lambda: kubectl("get", "crd", CRD_NAME, "-o",
                             "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                             check=False).stdout == "True", 60, f"the CRD {CRD_NAME} to be Established")


# --- one scenario ----------------------------------------------------------------------------------------


@dataclass
class Group:
    """A KafkaConsumerGroup the scenario created, with the watch that records what the operator did."""

    spec: GroupSpec
    namespace: str
    processed_topic: str
    watch: GroupWatch

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class Scenario:
    """Everything one scenario uses; cleaned up by the `scenario` fixture whatever happens."""

    backend: Any
    namespace: str
    work_dir: Path
    make_topic: Callable[..., str]
    operator: ChartOperator
    groups: list[Group] = field(default_factory=list)
    ledgers: list[Ledger] = field(default_factory=list)
    loads: list[LoadGenerator] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return str(self.backend.kafka_bootstrap)

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result: subprocess.CompletedProcess[str] = self.backend.kubectl(*args, **kwargs)
        return result

    def apply(self, manifest: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-n", self.namespace, "-f", "-", input_text=yaml.safe_dump(manifest),
                            check=check)

    def create_group(self, *, topic: str, cost_ms: int = 20, worker_extra_env: dict[str, str] | None = None,
                     dead_letter: dict[str, Any] | None = None,
                     before_apply: Callable[[str], object] | None = None, **spec_fields: Any) -> Group:
        """A KafkaConsumerGroup in template mode running the e2e handler, and a watch on it.

        `before_apply(group_id)` runs before the resource exists (so before any worker joins the group):
        broker-side group configs go there."""
        name = unique_name("grp")
        if before_apply is not None:
            before_apply(name)
        processed = self.make_topic(f"{name}-processed", 4)
        extra = {"LAGPILOT_GROUP_ID": name, "LAGPILOT_TOPICS": topic, **(worker_extra_env or {})}
        if dead_letter is None:
            extra.setdefault("LAGPILOT_DEAD_LETTER", "false")
        env = worker_env(bootstrap=self.backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=cost_ms,
                         extra=extra)
        spec = GroupSpec(name=name, topic=topic, group_id=name, bootstrap=self.backend.pod_kafka_bootstrap,
                         container=self.backend.worker_container(env), pod_spec_extra=self.backend.pod_spec_extra(),
                         dead_letter=dead_letter, **spec_fields)
        group_watch = GroupWatch(self.backend.api, self.namespace, name).start()
        group = Group(spec, self.namespace, processed, group_watch)
        self.groups.append(group)
        self.apply(kcg_manifest(spec))
        return group

    def ledger(self, topic: str) -> Ledger:
        ledger = Ledger(self.bootstrap, topic).start()
        self.ledgers.append(ledger)
        return ledger

    def load(self, topic: str, profile: Profile | str, **kwargs: Any) -> LoadGenerator:
        generator = LoadGenerator(self.bootstrap, topic, profile, **kwargs).start()
        self.loads.append(generator)
        return generator

    def worker_pods(self, group: Group) -> list[str]:
        core = client.CoreV1Api(self.backend.api)
        pods = core.list_namespaced_pod(self.namespace, label_selector=f"app={group.name}")
        return [pod.metadata.name for pod in pods.items if pod.status.phase == "Running"]

    def worker_counters(self, group: Group) -> str:
        """Each running worker Pod's own account (its /metrics, read through the Pod's address): records
        consumed and processed, rebalances and their time, partitions, commits, the in-flight window.
        What a scenario prints when the group's lag is not what it expected: the workers' side of it."""
        wanted = ("messages_consumed_total", "messages_processed_total", "rebalances_total",
                  "rebalance_seconds_sum", "partitions_gained_total", "partitions_lost_total",
                  "commits_total", "window_commit_waits_total", "revoked_in_flight_records_total",
                  "assigned_partitions", "paused_partitions", "uncommitted_messages", "pool_size")
        core = client.CoreV1Api(self.backend.api)
        rows = []
        for pod in core.list_namespaced_pod(self.namespace, label_selector=f"app={group.name}").items:
            if pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            try:
                text = urllib3.PoolManager().request("GET", f"http://{pod.status.pod_ip}:8080/metrics",
                                                     timeout=5.0).data.decode()
            except urllib3.exceptions.HTTPError as exc:
                rows.append(f"{pod.metadata.name}: /metrics unreadable ({exc})")
                continue
            values: dict[str, float] = {}
            for sample in metric_samples(text):  # summed over labels (partition, rebalance reason)
                short = sample.name.removeprefix("lagpilot_worker_")
                if short in wanted:
                    values[short] = values.get(short, 0.0) + float(sample.value)
            restarts = sum(int(s.restart_count) for s in pod.status.container_statuses or [])
            rows.append(f"{pod.metadata.name} (restarts {restarts}): " + ", ".join(
                f"{key.removesuffix('_total')} {values[key]:g}" for key in wanted if key in values))
        return "\n".join(rows) or "no running worker Pod"

    def ready_pods(self, group: Group) -> int:
        """Ready replicas of the group's Deployment (polled: read in process, not by a kubectl process)."""
        deployment = group.watch.deployment_name
        if deployment is None:
            return 0
        try:
            found = client.AppsV1Api(self.backend.api).read_namespaced_deployment_status(deployment, self.namespace)
        except (ApiException, urllib3.exceptions.HTTPError):
            return 0  # not created yet, or the API server busy: the caller polls again
        return int(found.status.ready_replicas or 0)

    def wait_ready(self, group: Group, count: int = 1, timeout: float = 60) -> None:
        wait_for(lambda: self.ready_pods(group) >= count, timeout, f"{count} ready worker pod(s) of {group.name}")

    def diagnostics(self) -> str:
        parts = [f"operator log (tail):\n{self.operator.log_tail()}"]
        for group in self.groups:
            parts.append(f"group {group.name}: {group.watch.describe()}")
        # What the kubelet and the controllers say (probe failures, restarts, scheduling): the Pods' side.
        events = self.kubectl("get", "events", "-n", self.namespace, "--sort-by=.lastTimestamp", check=False)
        parts.append("events (last 40):\n" + "\n".join(events.stdout.splitlines()[-40:]))
        return "\n".join(parts)


def finish_load(load: LoadGenerator, timeout: float = 180) -> LoadResult:
    result = load.join(timeout)
    assert not result.failed, f"{len(result.failed)} messages were never acknowledged by the broker"
    return result


def end_load_after(load: LoadGenerator, seconds: float) -> LoadResult:
    """Keep the load running `seconds` longer, then end it and return what it produced.

    A fault scenario's load is sized to outlast its fault; once the fault is over and the group has been
    seen processing again for `seconds`, the rest of a fixed-length load would only be waited out."""
    phase(seconds)
    load.stop()
    return finish_load(load)


def phase(seconds: float) -> None:
    """Let a fixed-duration phase of a scenario pass (the load runs meanwhile); never used to synchronise."""
    threading.Event().wait(seconds)


def read_entries(bootstrap: str, topic: str, expected_records: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Every ledger entry the e2e handler wrote to `topic` (JSON values), read from the beginning."""
    import json

    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("e2e-entries"),
                         "enable.auto.commit": False})
    entries: list[dict[str, Any]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout
        while len(entries) < expected_records and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                value = message.value()
                if message.error() is None and value:
                    entries.append(json.loads(value))
    finally:
        consumer.close()
    return entries


def duplicate_report(entries: list[dict[str, Any]]) -> str:
    """Where duplicates came from: same worker twice (a retry, a replay after restart) or two workers (a
    partition that moved), and how far apart in time, for the scenario's output."""
    same_worker = moved = 0
    gaps: list[float] = []
    for seen in repeated_runs(entries):
        for first, again in itertools.pairwise(seen):
            if first.get("worker") == again.get("worker"):
                same_worker += 1
            else:
                moved += 1
            gaps.append((int(again.get("processedMs") or 0) - int(first.get("processedMs") or 0)) / 1000)
    if not gaps:
        return "no duplicates"
    gaps.sort()
    return (f"{len(gaps)} duplicates: {moved} on another worker (partition moved), {same_worker} on the same "
            f"worker; gap median {gaps[len(gaps) // 2]:.1f}s, max {gaps[-1]:.1f}s")

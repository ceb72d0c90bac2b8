"""The whole loop, side by side: Lagpilot's drainTime and lagThreshold policies against a KEDA-equivalent one.

Same trace, real Kafka, real control plane, real node: worker Pods run the e2e worker image in containers
on the local stack's node (e2e/node_backend.py), the operator is `helm install`ed from charts/lagpilot
(one per policy run, in the run's namespace):

* drainTime / lagThreshold: a KafkaConsumerGroup in template mode; the operator scales the Deployment
  and publishes the pool size (CRD defaults except the bounds below).
* keda: the same worker Deployment created here, one consumer slot per pod (a KEDA-scaled consumer is
  single-threaded), driven by a bench-only control loop running `lagpilot_operator.core.keda` (KEDA's Kafka
  scaler + the HPA algorithm, pure code) on lag read through the operator's own Kafka admin reader
  (`lagpilot_operator.kafka.kafka_lag.read_lag`): metric every 30 s (pollingInterval), HPA sync every 15 s,
  300 s scale-down stabilization, max(4 pods, 100 %) per 15 s up.

Measured per run (same definitions as `lagpilot simulate`):
* time to drain: from the burst's start until, after it ended, the true backlog (produced minus
  processed, from the ledger) is at most one second of the following rate;
* peak lag: the largest true backlog;
* p99 end-to-end latency: processed time minus produce time (record timestamp), first processing of
  each message, from the ledger entries the e2e handler writes;
* pod-seconds: the Deployment's spec.replicas integrated over the trace;
* duplicates: records processed more than once (from the ledger), beside what the workers' logs (the
  kubelet's log files, copied while the Pods exist: e2e/pods.py PodRecorder) say was in
  flight when partitions were revoked or a worker stopped (`in_flight_at_revocations`: handler calls running and
  dead-letter writes unacknowledged, the most a hand-over may repeat), what was still running when the revoke or
  shutdown bound ran out (`abandoned_at_revocations`: these do repeat), and the records new owners skipped
  because the committed offset map said an earlier owner had finished them (`skipped_by_offset_map`);
* worker Pod create -> Running: median and max over the run's worker Pods;
* reaction: from the first message of the burst to the Deployment's replicas changing
  (`reaction_seconds`), and to the first capacity change of any kind, pool or replicas
  (`capacity_reaction_seconds`; for KEDA the two are the same).

Run (the stack with its node, env from .stack/env; the bench runs `hack/stack.py up` itself, which reuses
what runs and builds this checkout's images if they are new):

    source .stack/env && .venv/bin/python bench/loop_bench.py [--quick]

Progress is printed as JSON lines; the last line is one JSON object with `drain_speedup_vs_keda`,
`pod_seconds_ratio_vs_keda`, `reaction_seconds` and the per-policy numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402
from e2e.harness import (  # noqa: E402
    GroupSpec,
    GroupWatch,
    kcg_manifest,
    read_entries,
    worker_env,
)
from e2e.loadgen import Ledger, LoadGenerator, steps  # noqa: E402
from e2e.node_backend import NodeBackend  # noqa: E402
from e2e.pods import ChartOperator  # noqa: E402
from kubernetes import client  # noqa: E402

from lagpilot_operator.core import keda  # noqa: E402
from lagpilot_operator.kafka.kafka_lag import AdminClientPool, LagReadError, read_lag  # noqa: E402
from support import unique_name, wait_for  # noqa: E402

POLICIES = ("drainTime", "lagThreshold", "keda")


@dataclass(frozen=True)
class BenchConfig:
    partitions: int = 8
    cost_ms: int = 50                # one slot: 20 msg/s; one consumer per partition: 160 msg/s at most
    base_rate: float = 10.0
    burst_rate: float = 400.0
    before_seconds: float = 20.0
    burst_seconds: float = 60.0
    after_seconds: float = 150.0
    replicas_max: int = 8
    pool_min: int = 1
    pool_initial: int = 2
    pool_max: int = 16
    lag_threshold: int = 100         # KEDA lagThreshold and Lagpilot's lagPerConsumer, the same
    drain_overtime_seconds: float = 300.0

    @property
    def duration(self) -> float:
        return self.before_seconds + self.burst_seconds + self.after_seconds

    def profile(self) -> Any:
        return steps([(self.before_seconds, self.base_rate), (self.burst_seconds, self.burst_rate),
                      (self.after_seconds, self.base_rate)])


QUICK = BenchConfig(before_seconds=15, burst_seconds=40, after_seconds=60, drain_overtime_seconds=180)


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# --- the KEDA-equivalent control loop ----------------------------------------------------------------------


class KedaLoop:
    """KEDA's operator (metric every pollingInterval, 0↔1 activation) and the HPA (sync every 15 s) in one
    thread, on lag read with the operator's admin reader, scaling the real Deployment."""

    def __init__(self, api: client.ApiClient, namespace: str, deployment: str, bootstrap: str, group: str,
                 topic: str, config: keda.KedaConfig) -> None:
        self.apps = client.AppsV1Api(api)
        self.namespace, self.deployment = namespace, deployment
        self.bootstrap, self.group, self.topic = bootstrap, group, topic
        self.config = config
        self.admin = AdminClientPool().get({"bootstrap.servers": bootstrap})
        self.state = keda.KedaState()
        self.reasons: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keda-loop", daemon=True)

    def start(self) -> KedaLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _replicas(self) -> int:
        scale = self.apps.read_namespaced_deployment_scale(self.deployment, self.namespace)
        return int(scale.spec.replicas or 0) if scale.spec else 0

    def _scale(self, replicas: int, reason: str) -> None:
        self.apps.patch_namespaced_deployment_scale(self.deployment, self.namespace, {"spec": {"replicas": replicas}})
        self.reasons.append((time.time(), reason))

    def _run(self) -> None:
        config = self.config
        next_poll = next_sync = time.time()
        while not self._stop.is_set():
            now = time.time()
            if now >= next_poll:
                next_poll += config.polling_interval_seconds
                try:
                    sample = read_lag(self.admin, self.bootstrap, self.group, [self.topic])
                except LagReadError:
                    sample = None  # KEDA keeps its last metric; the HPA holds
                self.state = keda.poll(config, self.state, sample, now)
                current = self._replicas()
                act = keda.activation(config, self.state, current, now)
                if act is not None and act.replicas != current:
                    self._scale(act.replicas, act.reason)
            if now >= next_sync:
                next_sync += config.hpa_sync_seconds
                current = self._replicas()
                decision = keda.hpa_sync(config, self.state, current, now)
                self.state = decision.state
                if decision.replicas != current:
                    self._scale(decision.replicas, decision.reason)
            self._stop.wait(max(0.0, min(next_poll, next_sync) - time.time()))


# --- one run ---------------------------------------------------------------------------------------------


@dataclass
class Sampler:
    """Every half second: (time, messages handed to the producer, distinct ids processed)."""

    load: LoadGenerator
    ledger: Ledger
    points: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, name="sampler", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.points.append((time.time(), self.load.sent, len(self.ledger.counts)))
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()


def pod_seconds(history: list[tuple[float, int]], start: float, end: float) -> float:
    """Integral of a step function given as (time, value) changes, over [start, end]."""
    total = 0.0
    for index, (t, value) in enumerate(history):
        t_next = history[index + 1][0] if index + 1 < len(history) else end
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += value * (hi - lo)
    return total


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def hand_over_counts(pod_logs: list[Path]) -> dict[str, int]:
    """Revocations and shutdowns of the workers and the records in flight at them, from their JSON logs."""
    counts = {"revocations": 0, "shutdowns": 0, "in_flight_at_revocations": 0, "abandoned_at_revocations": 0,
              "skipped_by_offset_map": 0}
    for path in pod_logs:
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("message")
            if message == "partitions revoked":
                counts["revocations"] += 1
                counts["in_flight_at_revocations"] += int(entry.get("in_flight_records") or 0)
                counts["abandoned_at_revocations"] += int(entry.get("abandoned_records") or 0)
            elif message == "stopping: finishing the records in hand":
                counts["shutdowns"] += 1
                counts["in_flight_at_revocations"] += int(entry.get("in_flight_records") or 0)
            elif message == "shutdown deadline reached: abandoned work will be delivered again":
                counts["abandoned_at_revocations"] += int(entry.get("abandoned_records") or 0)
            elif message == "offset maps read: records finished by an earlier owner are skipped":
                counts["skipped_by_offset_map"] += sum(int(v) for v in (entry.get("records") or {}).values())
    return counts


def create_to_running(seconds: list[float]) -> dict[str, Any]:
    return {"worker_pods": len(seconds),
            "pod_create_to_running_median_seconds": round(statistics.median(seconds), 2) if seconds else None,
            "pod_create_to_running_max_seconds": round(max(seconds), 2) if seconds else None}


def run_policy(policy: str, cfg: BenchConfig, backend: NodeBackend, work_dir: Path) -> dict[str, Any]:
    namespace = unique_name("bench")
    backend.kubectl("create", "namespace", namespace)
    wait_for(lambda: backend.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0, 30,
             "default service account")
    backend.prepare_namespace(namespace)
    # Before any Pod exists: it times every worker Pod's start and copies the workers' output while they run.
    recorder = backend.pod_recorder(namespace, work_dir / "pods").start()
    admin = AdminClient({"bootstrap.servers": backend.kafka_bootstrap})
    name = unique_name(policy.lower())
    topic, processed = f"{name}-in", f"{name}-processed"
    for t in (topic, processed):
        admin.create_topics([NewTopic(t, cfg.partitions, 1)])[t].result(timeout=60)
    wait_for(lambda: all((m := admin.list_topics(t, timeout=10).topics.get(t)) is not None and m.error is None
                         and len(m.partitions) == cfg.partitions for t in (topic, processed)), 30, "topics")
    # Info level: the hand-over counts below are read from the workers' "partitions revoked" and
    # "stopping" log lines (the e2e default, warning, leaves them out).
    extra = {"LAGPILOT_GROUP_ID": name, "LAGPILOT_TOPICS": topic, "LAGPILOT_DEAD_LETTER": "false",
             "LAGPILOT_LOG_LEVEL": "info"}
    operator: ChartOperator | None = None
    keda_loop: KedaLoop | None = None
    if policy == "keda":
        extra["LAGPILOT_POOL_SIZE"] = "1"
        env = worker_env(bootstrap=backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=cfg.cost_ms,
                         extra=extra)
        deployment = name
        labels = {"app": name}
        manifest: dict[str, Any] = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment},
                    "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                             "template": {"metadata": {"labels": labels},
                                          "spec": {"containers": [backend.worker_container(env)],
                                                   "terminationGracePeriodSeconds": 20,
                                                   **backend.pod_spec_extra()}}}}
        backend.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(manifest))
        watch = GroupWatch(backend.api, namespace, name, deployment_name=deployment).start()
    else:
        env = worker_env(bootstrap=backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=cfg.cost_ms,
                         extra=extra)
        spec = GroupSpec(name=name, topic=topic, group_id=name, bootstrap=backend.pod_kafka_bootstrap,
                         container=backend.worker_container(env), pod_spec_extra=backend.pod_spec_extra(),
                         replicas_min=1, replicas_max=cfg.replicas_max, pool_min=cfg.pool_min,
                         pool_initial=cfg.pool_initial, pool_max=cfg.pool_max, mode=policy,
                         lag_per_consumer=cfg.lag_threshold)
        manifest = kcg_manifest(spec)
        # CRD defaults for everything the bench does not need to set: polling 5 s, drain target 60 s,
        # scale-up +max(4, 100 %) per 5 s, scale-down after 120 s by 25 % per 30 s.
        for key in ("lag", "policy"):
            manifest["spec"].pop(key)
        manifest["spec"]["policy"] = {"mode": policy, "lagThreshold": {"lagPerConsumer": cfg.lag_threshold}}
        operator = backend.operator(namespace, work_dir / f"operator-{policy}.log")
        operator.start()
        watch = GroupWatch(backend.api, namespace, name).start()
        backend.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(manifest))
    apps = client.AppsV1Api(backend.api)

    def ready() -> bool:
        deployment_name = watch.deployment_name
        if deployment_name is None:
            return False
        status = apps.read_namespaced_deployment_status(deployment_name, namespace).status
        return status is not None and bool(status.ready_replicas)

    wait_for(ready, 90, f"the {policy} worker pod to be ready")
    ledger = Ledger(backend.kafka_bootstrap, processed).start()
    load = LoadGenerator(backend.kafka_bootstrap, topic, cfg.profile(), key_space=256).start()
    sampler = Sampler(load, ledger).start()
    if policy == "keda":
        keda_config = keda.KedaConfig(lag_threshold=cfg.lag_threshold, min_replicas=1, max_replicas=cfg.replicas_max)
        keda_loop = KedaLoop(backend.api, namespace, str(watch.deployment_name), backend.kafka_bootstrap, name,
                             topic, keda_config).start()
    emit(event="run_started", policy=policy, namespace=namespace, trace=cfg.profile().description)
    try:
        result = load.join(cfg.duration + 120)
        accounting = ledger.wait_for(result.ids, cfg.drain_overtime_seconds)
        sampler.stop()
        start = result.started_at
        burst_start = start + cfg.before_seconds
        burst_end = burst_start + cfg.burst_seconds
        end = start + cfg.duration
        points = sampler.points
        backlog = [(t, sent - done) for t, sent, done in points]
        threshold = max(1.0, cfg.base_rate)
        drained_at = next((t for t, b in backlog if t >= burst_end and b <= threshold), None)
        replicas = [(c.time, c.replicas) for c in watch.replica_history(start)]
        first_replica_change = next((t for t, _ in replicas if t > burst_start), None)
        if policy == "keda":
            first_capacity_change = first_replica_change
        else:
            pools = [(s.time, s.status.get("poolSize")) for s in watch.status_history(start)]
            initial_pool = next((p for t, p in pools if t <= burst_start and p), cfg.pool_initial)
            pool_change = next((t for t, p in pools if t > burst_start and p and p != initial_pool), None)
            candidates = [t for t in (first_replica_change, pool_change) if t is not None]
            first_capacity_change = min(candidates) if candidates else None
        entries = read_entries(backend.kafka_bootstrap, processed, ledger.records)
        first_seen: dict[str, float] = {}
        for entry in entries:
            latency = (int(entry["processedMs"]) - int(entry["producedMs"])) / 1000
            ident = str(entry["id"])
            if ident not in first_seen or latency < first_seen[ident]:
                first_seen[ident] = latency
        summary: dict[str, Any] = {
            "policy": policy,
            "produced": result.produced,
            "processed": accounting.processed,
            "missing": len(accounting.missing),
            "duplicates": accounting.duplicates,
            # Pods still running write on; what they logged until now covers every hand-over of the run.
            **hand_over_counts(recorder.log_files()),
            "time_to_drain_seconds": round(drained_at - burst_start, 1) if drained_at else None,
            "peak_lag": max((b for _, b in backlog), default=0),
            "p99_latency_seconds": round(quantile(list(first_seen.values()), 0.99), 2),
            "pod_seconds": round(pod_seconds(replicas, start, end), 1),
            "max_replicas": max((r for _, r in replicas), default=0),
            "max_pool": 1 if policy == "keda" else int(watch.max_status("poolSize", start)),
            "reaction_seconds": round(first_replica_change - burst_start, 1) if first_replica_change else None,
            "capacity_reaction_seconds": (round(first_capacity_change - burst_start, 1)
                                          if first_capacity_change else None),
            "replica_timeline": [[round(t - start, 1), r] for t, r in replicas],
            **create_to_running(recorder.create_to_running()),
        }
        emit(event="run_finished", **summary)
        return summary
    finally:
        sampler.stop()
        load.stop()
        if keda_loop is not None:
            keda_loop.stop()
        ledger.stop()
        watch.stop()
        if operator is not None:
            # The group goes while its operator runs (kopf's finalizer), then the operator, then the rest.
            backend.kubectl("delete", "kcg", name, "-n", namespace, "--timeout=60s", check=False, timeout=90)
            operator.stop()
        recorder.stop()
        backend.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        admin.delete_topics([topic, processed])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter trace (about 8 minutes for the three runs)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of "
                                                                       f"{', '.join(POLICIES)}")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy operator and pod logs here")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else BenchConfig()
    policies = [p for p in args.policies.split(",") if p]
    if unknown := set(policies) - set(POLICIES):
        parser.error(f"unknown policies: {sorted(unknown)}")
    work_dir = Path(tempfile.mkdtemp(prefix="lagpilot-loop-bench-"))
    # `stack.py up` with the node: reuses the running stack, and gives this checkout's images.
    backend = NodeBackend.from_stack_up(work_dir)
    emit(event="bench_started", config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
         trace=cfg.profile().description, policies=policies)
    backend.start()
    results: dict[str, dict[str, Any]] = {}
    try:
        for policy in policies:
            results[policy] = run_policy(policy, cfg, backend, work_dir)
    finally:
        backend.stop()
        if args.keep_logs is not None:
            shutil.copytree(work_dir, args.keep_logs, dirs_exist_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    final: dict[str, Any] = {"trace": cfg.profile().description, "policies": results}
    lead, base = results.get("drainTime"), results.get("keda")

    def ratio(numerator: Any, denominator: Any) -> float | None:
        return round(numerator / denominator, 2) if numerator is not None and denominator else None

    final["drain_speedup_vs_keda"] = ratio(base and base["time_to_drain_seconds"],
                                           lead and lead["time_to_drain_seconds"])
    final["pod_seconds_ratio_vs_keda"] = ratio(lead and lead["pod_seconds"], base and base["pod_seconds"])
    final["reaction_seconds"] = lead and lead["reaction_seconds"]
    final["capacity_reaction_seconds"] = lead and lead["capacity_reaction_seconds"]
    final["lag_threshold_drain_speedup_vs_keda"] = ratio(
        base and base["time_to_drain_seconds"], results.get("lagThreshold", {}).get("time_to_drain_seconds"))
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole loop, side by side: Lagpilot's drainTime and lagThreshold policies against the real KEDA.

Same trace, real Kafka, real control plane, real node: worker Pods run the e2e worker image in containers
on the local stack's node (e2e/node_backend.py), one run after another in one invocation, each in a
namespace, topic and consumer group of its own:

* drainTime / lagThreshold: a KafkaConsumerGroup in template mode; the operator (`helm install`ed from
  charts/lagpilot into the run's namespace) scales the Deployment and publishes the pool size (CRD
  defaults except the bounds).
* keda-pool-1 / keda-pool-4 / keda-pool-16: the real KEDA (`hack/stack.py keda-up`: KEDA's operator and
  metrics adapter as host processes, the APIService through the apiserver's aggregation layer; the
  real kube-controller-manager's HPA scales), a `ScaledObject` with the `kafka` trigger on the same
  worker Deployment, same image and handler, the worker's pool fixed at 1, 4 and 16 slots. KEDA's
  defaults (pollingInterval 30, cooldownPeriod 300, HPA defaults: sync 15 s, scale-up max(4 pods,
  100 %) per 15 s, 300 s scale-down stabilization), minReplicaCount 1, maxReplicaCount = partitions,
  `lagThreshold` = Lagpilot's lagPerConsumer x the pool (see `keda_lag_threshold`). KEDA runs only
  during its three runs (`keda-down` after them removes its APIService).

Measured per run (same definitions as `lagpilot simulate`):
* time to drain: from the burst's start until, after it ended, the true backlog (produced minus
  processed, from the ledger) is at most one second of the following rate;
* peak lag: the largest true backlog;
* p50 / p99 / p99.9 end-to-end latency: processed time minus produce time (record timestamp), first
  processing of each message, from the ledger entries the e2e handler writes;
* pod-seconds: the Deployment's spec.replicas integrated over the trace; slot-seconds: replicas x the
  pool (the operator's published pool for Lagpilot, the fixed one for KEDA) integrated the same way;
* rebalances: rounds of partition assignment/revocation across the group (the workers' log lines,
  grouped when less than `REBALANCE_GAP_SECONDS` apart), beside the revocations themselves;
* lost (`missing`) and duplicates: records never processed / processed more than once (from the ledger),
  beside what the workers' logs (the kubelet's log files, copied while the Pods exist: e2e/pods.py
  PodRecorder) say was in flight when partitions were revoked or a worker stopped
  (`in_flight_at_revocations`), what was still running when the revoke or shutdown bound ran out
  (`abandoned_at_revocations`: these do repeat), and the records new owners skipped because the
  committed offset map said an earlier owner had finished them (`skipped_by_offset_map`);
* replicas timeline (seconds from the trace's start, spec.replicas), the true backlog every 5 s and,
  for KEDA, the HPA's view (the external metric's value and the desired replicas) at every HPA
  status change: what the model's calibration replays;
* worker Pod create -> Running: median and max over the run's worker Pods;
* reaction: from the first message of the burst to the Deployment's replicas changing
  (`reaction_seconds`), and to the first capacity change of any kind, pool or replicas
  (`capacity_reaction_seconds`; for KEDA the two are the same).

The summary (`comparison`): for each Lagpilot policy and each KEDA run, the ratios of p50/p99/p99.9
latency, pod-seconds, slot-seconds and drain time (Lagpilot / KEDA: below 1 is Lagpilot's advantage),
and where each Lagpilot policy stands against KEDA's Pareto frontier in (pod-seconds, p99 latency).

Run (the stack with its node and LAGPILOT_AGGREGATION=1; KEDA built by `hack/stack.py keda`):

    source .stack/env && .venv/bin/python bench/loop_bench.py [--quick] [--stack-env .stack/env]

Without `--stack-env` the bench runs `hack/stack.py up` itself (reuses what runs, builds this
checkout's images if they are new). Progress is printed as JSON lines; the last line is one JSON object
with the per-run numbers and the comparison.
"""

from __future__ import annotations

import argparse
import datetime
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
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

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

from real_keda import (  # noqa: E402
    KEDA_DEFAULTS,
    LAG_PER_SLOT,
    HpaRecorder,
    keda_lag_threshold,
    node_backend,
    pod_seconds,
    run_in_order,
    scaled_object,
    start_scaling,
    stop_scaling,
    worker_deployment,
)
from support import unique_name, wait_for  # noqa: E402


@dataclass(frozen=True)
class RunSpec:
    """One run of the invocation: a Lagpilot policy, or the real KEDA with the worker's pool fixed."""

    name: str
    scaler: str                 # "lagpilot" or "keda"
    policy: str | None = None   # Lagpilot's policy mode
    pool: int | None = None     # KEDA: the worker's fixed pool (slots per pod)


RUNS = (
    RunSpec("drainTime", "lagpilot", policy="drainTime"),
    RunSpec("lagThreshold", "lagpilot", policy="lagThreshold"),
    RunSpec("keda-pool-1", "keda", pool=1),
    RunSpec("keda-pool-4", "keda", pool=4),
    RunSpec("keda-pool-16", "keda", pool=16),
)
RUN_NAMES = tuple(run.name for run in RUNS)
REBALANCE_GAP_SECONDS = 5.0


@dataclass(frozen=True)
class BenchConfig:
    partitions: int = 8
    cost_ms: int = 50                # one slot: 20 msg/s (the handler waits, like an I/O call)
    base_rate: float = 10.0
    burst_rate: float = 400.0
    before_seconds: float = 20.0
    burst_seconds: float = 60.0
    after_seconds: float = 150.0
    replicas_max: int = 8            # = partitions: Lagpilot's replicas.max and KEDA's maxReplicaCount
    pool_min: int = 1
    pool_initial: int = 2
    pool_max: int = 16
    lag_threshold: int = LAG_PER_SLOT  # Lagpilot's lagPerConsumer (per slot); KEDA's per pod is this x pool
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


# --- measurements (pure) -----------------------------------------------------------------------------------


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


def product_history(replicas: list[tuple[float, int]], pools: list[tuple[float, int]],
                    initial_pool: int) -> list[tuple[float, int]]:
    """replicas x pool as one step function, from the two step functions' changes (time-ordered);
    `initial_pool` is the pool before its first change."""
    events = sorted([(t, "r", v) for t, v in replicas] + [(t, "p", v) for t, v in pools], key=lambda e: e[0])
    current_replicas, current_pool = 0, initial_pool
    product: list[tuple[float, int]] = []
    for t, kind, value in events:
        if kind == "r":
            current_replicas = value
        else:
            current_pool = value
        product.append((t, current_replicas * current_pool))
    return product


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def rebalance_rounds(times: list[float], gap: float = REBALANCE_GAP_SECONDS) -> int:
    """Group rebalances from the members' assignment and revocation log times: one round makes every
    member log within seconds, so events closer than `gap` to the previous one are the same round."""
    rounds, previous = 0, None
    for t in sorted(times):
        if previous is None or t - previous > gap:
            rounds += 1
        previous = t
    return rounds


def parse_log_time(value: Any) -> float | None:
    """The worker's RFC 3339 UTC log time (logs.JsonFormatter), as a Unix time."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None


def hand_over_counts(pod_logs: list[Path]) -> dict[str, int]:
    """Revocations and shutdowns of the workers, the records in flight at them, and the group's
    rebalance rounds, from their JSON logs."""
    counts = {"revocations": 0, "shutdowns": 0, "in_flight_at_revocations": 0, "abandoned_at_revocations": 0,
              "skipped_by_offset_map": 0}
    moves: list[float] = []
    for path in pod_logs:
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("message")
            if message in ("partitions assigned", "partitions revoked"):
                t = parse_log_time(entry.get("time"))
                if t is not None:
                    moves.append(t)
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
    counts["rebalances"] = rebalance_rounds(moves)
    return counts


def create_to_running(seconds: list[float]) -> dict[str, Any]:
    return {"worker_pods": len(seconds),
            "pod_create_to_running_median_seconds": round(statistics.median(seconds), 2) if seconds else None,
            "pod_create_to_running_max_seconds": round(max(seconds), 2) if seconds else None}


def latency_quantiles(latencies: list[float]) -> dict[str, float]:
    return {"p50_latency_seconds": round(quantile(latencies, 0.50), 3),
            "p99_latency_seconds": round(quantile(latencies, 0.99), 3),
            "p999_latency_seconds": round(quantile(latencies, 0.999), 3)}


def downsample(points: list[tuple[float, int]], start: float, step: float) -> list[list[float]]:
    """The last value of every `step`-second window, as [seconds from start, value]."""
    out: list[list[float]] = []
    next_t = start
    for t, value in points:
        if t >= next_t:
            out.append([round(t - start, 1), value])
            next_t = t + step
    return out


# --- the comparison (pure) ----------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is at least as good as b on both axes (lower is better) and better on one."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def frontier_position(point: tuple[float, float], others: list[tuple[float, float]]) -> str:
    """Where `point` stands against the Pareto frontier of `others` (lower is better on both axes):
    "behind" if one of them dominates it, "beyond" if it dominates one of the frontier's points (and
    none dominates it), else "on" (a trade-off the frontier already offers, or a point on it)."""
    frontier = [o for o in others if not any(dominates(p, o) for p in others)]
    if any(dominates(o, point) for o in frontier):
        return "behind"
    if any(dominates(point, o) for o in frontier):
        return "beyond"
    return "on"


def comparison(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For each Lagpilot policy against each KEDA run: latency, pod-seconds, slot-seconds and drain
    time ratios (Lagpilot / KEDA), and the policy's place against KEDA's Pareto frontier in
    (pod-seconds, p99 latency). Every pair is given; none is singled out."""
    keda_runs = {name: r for name, r in results.items() if r.get("scaler") == "keda"}
    lagpilot_runs = {name: r for name, r in results.items() if r.get("scaler") == "lagpilot"}

    def point(r: dict[str, Any]) -> tuple[float, float]:
        return (float(r["pod_seconds"]), float(r["p99_latency_seconds"]))

    keda_points = [point(r) for r in keda_runs.values()]
    keda_frontier = sorted(name for name, r in keda_runs.items()
                           if not any(dominates(p, point(r)) for p in keda_points))
    out: dict[str, Any] = {"axes": ["pod_seconds", "p99_latency_seconds"], "keda_frontier": keda_frontier,
                           "policies": {}}
    for name, lead in lagpilot_runs.items():
        against = {}
        for keda_name, base in keda_runs.items():
            against[keda_name] = {
                key: ratio(lead.get(metric), base.get(metric)) for key, metric in (
                    ("p50_latency_ratio", "p50_latency_seconds"),
                    ("p99_latency_ratio", "p99_latency_seconds"),
                    ("p999_latency_ratio", "p999_latency_seconds"),
                    ("pod_seconds_ratio", "pod_seconds"),
                    ("slot_seconds_ratio", "slot_seconds"),
                    ("drain_time_ratio", "time_to_drain_seconds"))}
        out["policies"][name] = {
            "vs_keda": against,
            "pareto_position": frontier_position(point(lead), keda_points) if keda_points else None,
        }
    return out


# --- one run ---------------------------------------------------------------------------------------------


def create_namespace(backend: NodeBackend, prefix: str) -> str:
    namespace = str(unique_name(prefix))
    backend.kubectl("create", "namespace", namespace)
    wait_for(lambda: backend.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0, 30,
             "default service account")
    backend.prepare_namespace(namespace)
    return namespace


def run_one(run: RunSpec, cfg: BenchConfig, backend: NodeBackend, work_dir: Path, prefix: str) -> dict[str, Any]:
    namespace = create_namespace(backend, f"{prefix}-bench")
    # Before any Pod exists: it times every worker Pod's start and copies the workers' output while they run.
    recorder = backend.pod_recorder(namespace, work_dir / run.name / "pods").start()
    admin = AdminClient({"bootstrap.servers": backend.kafka_bootstrap})
    name = unique_name(f"{prefix}-{run.name}".lower())
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
    hpa: HpaRecorder | None = None
    run_config: dict[str, Any]
    if run.scaler == "keda":
        assert run.pool is not None
        extra["LAGPILOT_POOL_SIZE"] = str(run.pool)
        env = worker_env(bootstrap=backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=cfg.cost_ms,
                         extra=extra)
        deployment = name
        manifest = worker_deployment(deployment, backend.worker_container(env), backend.pod_spec_extra())
        backend.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(manifest))
        watch = GroupWatch(backend.api, namespace, name, deployment_name=deployment).start()
        # The KEDA operator is a host process: it reaches the broker on the loopback listener.
        scaled = scaled_object(name=name, deployment=deployment, bootstrap=backend.kafka_bootstrap, group=name,
                               topic=topic, lag_threshold=keda_lag_threshold(cfg.lag_threshold, run.pool),
                               min_replicas=1, max_replicas=cfg.partitions)
        run_config = {"scaled_object": scaled["spec"], "keda_defaults": KEDA_DEFAULTS, "pool": run.pool}
    else:
        assert run.policy is not None
        env = worker_env(bootstrap=backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=cfg.cost_ms,
                         extra=extra)
        spec = GroupSpec(name=name, topic=topic, group_id=name, bootstrap=backend.pod_kafka_bootstrap,
                         container=backend.worker_container(env), pod_spec_extra=backend.pod_spec_extra(),
                         replicas_min=1, replicas_max=cfg.replicas_max, pool_min=cfg.pool_min,
                         pool_initial=cfg.pool_initial, pool_max=cfg.pool_max, mode=run.policy,
                         lag_per_consumer=cfg.lag_threshold)
        manifest = kcg_manifest(spec)
        # CRD defaults for everything the bench does not need to set: polling 5 s, drain target 60 s,
        # scale-up +max(4, 100 %) per 5 s, scale-down after 120 s by 25 % per 30 s.
        for key in ("lag", "policy"):
            manifest["spec"].pop(key)
        manifest["spec"]["policy"] = {"mode": run.policy, "lagThreshold": {"lagPerConsumer": cfg.lag_threshold}}
        run_config = {"kafka_consumer_group": manifest["spec"]}
        operator = backend.operator(namespace, work_dir / run.name / "operator.log")
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

    ledger: Ledger | None = None
    load: LoadGenerator | None = None
    sampler: Sampler | None = None
    try:
        wait_for(ready, 90, f"the {run.name} worker pod to be ready")
        if run.scaler == "keda":
            hpa = start_scaling(backend, namespace, scaled)
        ledger = Ledger(backend.kafka_bootstrap, processed).start()
        load = LoadGenerator(backend.kafka_bootstrap, topic, cfg.profile(), key_space=256).start()
        sampler = Sampler(load, ledger).start()
        emit(event="run_started", run=run.name, namespace=namespace, trace=cfg.profile().description)
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
        if run.scaler == "keda":
            assert run.pool is not None
            first_capacity_change = first_replica_change
            slots = [(t, r * run.pool) for t, r in replicas]
            max_pool = run.pool
        else:
            pools = [(s.time, int(p)) for s in watch.status_history(start) if (p := s.status.get("poolSize"))]
            initial_pool = next((p for t, p in pools if t <= burst_start), cfg.pool_initial)
            pool_change = next((t for t, p in pools if t > burst_start and p != initial_pool), None)
            candidates = [t for t in (first_replica_change, pool_change) if t is not None]
            first_capacity_change = min(candidates) if candidates else None
            slots = product_history(replicas, pools, initial_pool)
            max_pool = int(watch.max_status("poolSize", start))
        entries = read_entries(backend.kafka_bootstrap, processed, ledger.records)
        first_seen: dict[str, float] = {}
        for entry in entries:
            latency = (int(entry["processedMs"]) - int(entry["producedMs"])) / 1000
            ident = str(entry["id"])
            if ident not in first_seen or latency < first_seen[ident]:
                first_seen[ident] = latency
        summary: dict[str, Any] = {
            "run": run.name,
            "scaler": run.scaler,
            "config": run_config,
            "produced": result.produced,
            "processed": accounting.processed,
            "missing": len(accounting.missing),
            "duplicates": accounting.duplicates,
            # Pods still running write on; what they logged until now covers every hand-over of the run.
            **hand_over_counts(recorder.log_files()),
            "time_to_drain_seconds": round(drained_at - burst_start, 1) if drained_at else None,
            "peak_lag": max((b for _, b in backlog), default=0),
            **latency_quantiles(list(first_seen.values())),
            "pod_seconds": round(pod_seconds(replicas, start, end), 1),
            "slot_seconds": round(pod_seconds(slots, start, end), 1),
            "max_replicas": max((r for _, r in replicas), default=0),
            "max_pool": max_pool,
            "reaction_seconds": round(first_replica_change - burst_start, 1) if first_replica_change else None,
            "capacity_reaction_seconds": (round(first_capacity_change - burst_start, 1)
                                          if first_capacity_change else None),
            "replica_timeline": [[round(t - start, 1), r] for t, r in replicas],
            "slot_timeline": [[round(t - start, 1), s] for t, s in slots],
            "backlog_timeline": downsample(backlog, start, 5.0),
            **create_to_running(recorder.create_to_running()),
        }
        if hpa is not None:
            summary["hpa_timeline"] = hpa.timeline(start)
        emit(event="run_finished", **{k: v for k, v in summary.items()
                                      if not k.endswith("_timeline") and k != "config"})
        return summary
    finally:
        if sampler is not None:
            sampler.stop()
        if load is not None:
            load.stop()
        if hpa is not None:
            hpa.stop()
        if ledger is not None:
            ledger.stop()
        watch.stop()
        if operator is not None:
            # The group goes while its operator runs (kopf's finalizer), then the operator, then the rest.
            backend.kubectl("delete", "kcg", name, "-n", namespace, "--timeout=60s", check=False, timeout=90)
            operator.stop()
        if run.scaler == "keda":
            stop_scaling(backend, namespace, name)
        recorder.stop()
        backend.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        admin.delete_topics([topic, processed])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter trace (115 s instead of 230 s)")
    parser.add_argument("--runs", "--policies", dest="runs", default=",".join(RUN_NAMES),
                        help=f"comma-separated subset of {', '.join(RUN_NAMES)}, run in the order given")
    parser.add_argument("--stack-env", type=Path, default=None,
                        help="use the stack these `export` lines describe (e.g. .stack/env) as it runs, "
                             "instead of `hack/stack.py up`")
    parser.add_argument("--name-prefix", default="bench",
                        help="prefix of the runs' namespaces, topics and consumer groups")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy operator and pod logs here")
    parser.add_argument("--out", type=Path, default=None, help="also write the final JSON object here")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else BenchConfig()
    chosen = [r for r in args.runs.split(",") if r]
    if unknown := set(chosen) - set(RUN_NAMES):
        parser.error(f"unknown runs: {sorted(unknown)}")
    by_name = {run.name: run for run in RUNS}
    runs = [by_name[name] for name in dict.fromkeys(chosen)]  # in the order given
    work_dir = Path(tempfile.mkdtemp(prefix="lagpilot-loop-bench-"))
    backend = node_backend(args.stack_env, work_dir)
    began = time.time()
    emit(event="bench_started", config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
         trace=cfg.profile().description, runs=[r.name for r in runs])
    backend.start()
    results: dict[str, dict[str, Any]] = {}

    def one(run: RunSpec) -> None:
        results[run.name] = run_one(run, cfg, backend, work_dir, args.name_prefix)

    try:
        run_in_order(runs, lambda r: r.scaler == "keda", backend.stack_dir, one)
    finally:
        backend.stop()
        if args.keep_logs is not None:
            shutil.copytree(work_dir, args.keep_logs, dirs_exist_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    final: dict[str, Any] = {
        "trace": cfg.profile().description,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "wall_seconds": round(time.time() - began, 1),
        "runs": results,
        "comparison": comparison(results),
    }
    text = json.dumps(final)
    if args.out is not None:
        args.out.write_text(json.dumps(final, indent=1) + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

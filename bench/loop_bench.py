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

Per run, for a look at capacity per Pod (issue 15: does the policy move capacity to Pods when a Pod's
slots stop adding throughput?):
* `shape_periods`: each replicas x pool the run held, with the messages finished per second in all and per
  working Pod (ledger entries by Pod name), the cores per Pod (their cgroups) and the backlog at both ends;
* `decision_timeline`: every decision the operator published (status `lastDecision`, the shape it asked
  for, the lag and rates it read, its memory's pool ceiling and per-Pod drain), `decisions_that_changed_shape`
  the ones that changed replicas or pool, `cpu_bound_found_seconds` when (from the burst's start) a reason
  first said a bigger pool drained no more ("CPU-bound, more capacity goes to pods");
* `pod_rate_timeline` / `pod_cores_timeline`: msg/s and cores of each worker Pod every 5 s;
* `worker_cpu`: the Pod CPU limit, the workers' CPU per message (the handler's burn plus the runtime's;
  `burn_seen` is false when it is far below `--cpu-ms`: an e2e image without E2E_CPU_MS), the cores of
  workers, operator, broker, this process and the rest of the machine during the burst, and each Pod's
  CFS quota and throttling as the kernel reports them;
* `simulated`: what `lagpilot simulate` expects of the same trace, spec and cost (shape timeline, reasons).

Scenarios (`--scenario`):
* `burst` (default): the trace above, a handler that waits `--io-ms` (50) a message, no Pod CPU limit, all
  five runs.
* `cpu`: issue 15's check on the real loop. The handler burns `--cpu-ms` (5) of CPU a message under the
  GIL (e2e/handlers.py `E2E_CPU_MS`) and waits nothing more than its ledger write; each worker Pod is
  limited to `--pod-cpu-limit` (250m: one Pod finishes at most ~50 msg/s whatever its pool); 10 msg/s for
  30 s, `--burst-rate` (120) for 120 s, 10 for 60 s; pool 1..16 from 1, replicas 1..8, 8 partitions;
  drainTime only (`--runs` adds others). The burst needs 0.6 cores of handler CPU: 3-4 Pods. `--simulate`
  prints what the model expects (the pool grows 1 → 3 → 7 → 14 on one Pod, then "pool 7→14 raised a
  pod's drain only 49.6→49.6 msg/s with work waiting: CPU-bound, more capacity goes to pods of pool ≤ 7"
  and 4 Pods of pool 7) without a stack.

The summary (`comparison`): for each Lagpilot policy and each KEDA run, the ratios of p50/p99/p99.9
latency, pod-seconds, slot-seconds and drain time (Lagpilot / KEDA: below 1 is Lagpilot's advantage),
and where each Lagpilot policy stands against KEDA's Pareto frontier in (pod-seconds, p99 latency).

Run (the stack with its node and LAGPILOT_AGGREGATION=1; KEDA built by `hack/stack.py keda`):

    source .stack/env && .venv/bin/python bench/loop_bench.py [--quick] [--stack-env .stack/env]
    source .stack/env && .venv/bin/python bench/loop_bench.py --scenario cpu     # issue 15, ~6-8 min
    .venv/bin/python bench/loop_bench.py --scenario cpu --simulate                # the model's expectation

Without `--stack-env` the bench runs `hack/stack.py up` itself (reuses what runs, builds this
checkout's images if they are new). Progress is printed as JSON lines; the last line is one JSON object
with the per-run numbers and the comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
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

from lagpilot_operator.core import simulate  # noqa: E402
from lagpilot_operator.core.policy import PolicyConfig  # noqa: E402
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
from seed_bench import Monitor, broker_pid, cores_used, summarize_cores  # noqa: E402
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
    scenario: str = "burst"
    partitions: int = 8
    cost_ms: int = 50                # one slot: 20 msg/s (the handler waits, like an I/O call: `--io-ms`)
    cpu_ms: float = 0.0              # then CPU under the GIL before the wait (e2e handler's E2E_CPU_MS)
    pod_cpu_limit: str | None = None     # the worker container's limits.cpu (e.g. "250m"); None: the chart's (none)
    pod_cpu_request: str | None = None   # its requests.cpu; None: the chart's, at most the limit
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
# Issue 15's real-loop check: a CPU-bound handler in Pods with a CPU limit. 5 ms of CPU a message in a Pod
# limited to 250m: one Pod finishes at most ~50 msg/s (less the runtime's own CPU) whatever its pool, so the
# burst's 120 msg/s (0.6 cores of handler CPU in all, what the 2-core machine can spare beside Kafka and the
# control plane) needs 3-4 Pods. Pool 1..16 from 1: the pool grows unread to 4 x pool.initial, then the
# policy reads a bigger pool and, seeing a Pod drain no more at it, moves capacity to Pods (see `--simulate`).
CPU_BOUND = BenchConfig(scenario="cpu", cost_ms=0, cpu_ms=5.0, base_rate=10.0, burst_rate=120.0,
                        before_seconds=30.0, burst_seconds=120.0, after_seconds=60.0, pool_initial=1,
                        pod_cpu_limit="250m", drain_overtime_seconds=180.0)
SCENARIOS = {"burst": BenchConfig(), "cpu": CPU_BOUND}
SCENARIO_RUNS = {"burst": RUN_NAMES, "cpu": ("drainTime",)}   # the runs a scenario makes unless --runs says
WORKER_COMMIT_INTERVAL_SECONDS = 1.0   # e2e.harness.worker_env's LAGPILOT_COMMIT_INTERVAL_SECONDS
# The words of the operator's reason when a bigger pool drained no more (decision_steps._read_growth): the
# moment the policy found the Pods CPU-bound and sent capacity to Pods.
CPU_BOUND_FOUND = "CPU-bound, more capacity goes to pods"


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


def shape_history(replicas: list[tuple[float, int]], pools: list[tuple[float, int]],
                  initial_pool: int) -> list[tuple[float, int, int]]:
    """(time, replicas, pool) at each change of either, from the two step functions' changes (time-ordered);
    `initial_pool` is the pool before its first change."""
    events = sorted([(t, "r", v) for t, v in replicas] + [(t, "p", v) for t, v in pools], key=lambda e: e[0])
    current_replicas, current_pool = 0, initial_pool
    shapes: list[tuple[float, int, int]] = []
    for t, kind, value in events:
        if kind == "r":
            current_replicas = value
        else:
            current_pool = value
        # The pool's series has a point per status write: a repeat is no change of shape.
        if not shapes or shapes[-1][1:] != (current_replicas, current_pool):
            shapes.append((t, current_replicas, current_pool))
    return shapes


def product_history(replicas: list[tuple[float, int]], pools: list[tuple[float, int]],
                    initial_pool: int) -> list[tuple[float, int]]:
    """replicas x pool as one step function (`shape_history`'s product)."""
    return [(t, r * p) for t, r, p in shape_history(replicas, pools, initial_pool)]


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


# --- CPU-bound Pods: the worker's CPU limit, the operator's decisions, what each Pod did (pure) --------------


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores: "250m" -> 0.25, "1" -> 1.0, "1.5" -> 1.5."""
    text = quantity.strip()
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    if not value > 0:
        raise ValueError(f"CPU quantity {quantity!r} must be > 0")
    return value


def container_resources(base: dict[str, Any], limit: str | None, request: str | None) -> dict[str, Any]:
    """The worker container's resources with `limit` as limits.cpu and `request` as requests.cpu (a copy;
    `base`, the chart's, is shared). Without a request, the chart's request is kept, at most the limit:
    8 Pods requesting a 250m limit each would ask for the node's 2 cores and leave some Pending."""
    out = {key: dict(value) for key, value in base.items()}
    if limit is not None:
        cpu_cores(limit)  # refuses a malformed limit here, not as a Pod the apiserver turns down
        out.setdefault("limits", {})["cpu"] = limit
    requests = out.setdefault("requests", {})
    if request is not None:
        requests["cpu"] = request
    elif limit is not None and (requests.get("cpu") is None or cpu_cores(str(requests["cpu"])) > cpu_cores(limit)):
        requests["cpu"] = limit
    if not requests:
        del out["requests"]
    if limit is not None and cpu_cores(str(requests.get("cpu", limit))) > cpu_cores(limit):
        raise ValueError(f"CPU request {requests['cpu']} is above the limit {limit}")
    return out


def decision_timeline(snapshots: list[tuple[float, dict[str, Any]]], start: float) -> list[dict[str, Any]]:
    """The operator's decisions as published in the group's status, in order: each time the reason or the
    shape it asked for changed, seconds from `start`, the shape (desiredReplicas x poolSize), the lag and
    rates it read, the pool ceiling and per-Pod drain its memory holds, and the reason."""
    out: list[dict[str, Any]] = []
    last: tuple[Any, ...] | None = None
    for t, status in snapshots:
        reason = status.get("lastDecision")
        seen = (status.get("desiredReplicas"), status.get("poolSize"), reason)
        if not reason or seen == last:
            continue
        last = seen
        memory = status.get("policyMemory") or {}
        out.append({"t": round(t - start, 1), "replicas": seen[0], "pool": seen[1], "lag": status.get("totalLag"),
                    "produce_rate": status.get("produceRatePerSecond"),
                    "consume_rate": status.get("consumeRatePerSecond"),
                    "pool_ceiling": memory.get("poolCeiling"), "pod_rate": memory.get("podRate"),
                    "reason": reason})
    return out


def shape_changes(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The decisions that changed replicas or pool (the first one counts as a change)."""
    out: list[dict[str, Any]] = []
    for decision in decisions:
        if not out or (out[-1]["replicas"], out[-1]["pool"]) != (decision["replicas"], decision["pool"]):
            out.append(decision)
    return out


def pod_rates(entries: list[dict[str, Any]], start: float, step: float = 5.0) -> dict[str, list[list[float]]]:
    """msg/s each worker Pod finished in each `step`-second window, from the ledger entries (their `worker`,
    the Pod's name, and `processedMs`): first processings and repeats alike, the work the Pod did. Each
    Pod's windows run from its first to its last, empty ones as 0."""
    counts: dict[str, dict[int, int]] = {}
    for entry in entries:
        index = math.floor((int(entry["processedMs"]) / 1000 - start) / step)
        per_pod = counts.setdefault(str(entry["worker"]), {})
        per_pod[index] = per_pod.get(index, 0) + 1
    return {pod: [[round(i * step, 1), round(per_pod.get(i, 0) / step, 2)]
                  for i in range(min(per_pod), max(per_pod) + 1)]
            for pod, per_pod in sorted(counts.items())}


def cores_timeline(samples: list[tuple[float, float]], start: float, step: float = 5.0) -> list[list[float]]:
    """Cores used in each `step`-second window, from (time, cumulative CPU seconds) samples of one cgroup:
    [seconds from start at the window's end, cores]."""
    kept: list[tuple[float, float]] = []
    for t, cpu in samples:
        if not kept or t - kept[-1][0] >= step:
            kept.append((t, cpu))
    return [[round(t1 - start, 1), round((c1 - c0) / (t1 - t0), 3)]
            for (t0, c0), (t1, c1) in itertools.pairwise(kept) if t1 > t0]


def value_at(points: list[tuple[float, int]], t: float) -> int | None:
    """The value of a sampled series at `t`: the last sample at or before it (None before the first)."""
    before = [value for time_, value in points if time_ <= t]
    return before[-1] if before else None


def shape_periods(shapes: list[tuple[float, int, int]], entries: list[dict[str, Any]],
                  backlog: list[tuple[float, int]], pod_cpu: dict[str, list[tuple[float, float]]],
                  start: float, end: float, settle: float = 5.0) -> list[dict[str, Any]]:
    """What each shape (replicas x pool, held from one change to the next) did, measured from `settle`
    seconds after it began (new Pods start, a pool change reaches the workers) to its end: the messages
    finished per second in all and per working Pod (the Pods that finished any), the cores per Pod (their
    cgroups: `pod_cpu`, by Pod name), and the true backlog at both ends. A rate says what the shape *can*
    do only while work waited (the backlog stayed up). Shapes held less than 2 x `settle` are left out."""
    out: list[dict[str, Any]] = []
    for index, (t0, replicas, pool) in enumerate(shapes):
        t1 = shapes[index + 1][0] if index + 1 < len(shapes) else end
        t0, t1 = max(t0, start), min(t1, end)
        if t1 - t0 < 2 * settle:
            continue
        lo = t0 + settle
        done = [e for e in entries if lo <= int(e["processedMs"]) / 1000 < t1]
        pods = sorted({str(e["worker"]) for e in done})
        rate = len(done) / (t1 - lo)
        cores = [cores_used([s for s in pod_cpu.get(pod, []) if lo <= s[0] <= t1]) for pod in pods]
        out.append({"from": round(t0 - start, 1), "to": round(t1 - start, 1), "replicas": replicas, "pool": pool,
                    "msgs_per_s": round(rate, 1), "pods_working": len(pods),
                    "msgs_per_s_per_pod": round(rate / len(pods), 1) if pods else None,
                    "cores_per_pod": round(statistics.fmean(cores), 3) if cores else None,
                    "backlog_from": value_at(backlog, lo), "backlog_to": value_at(backlog, t1)})
    return out


def cpu_ms_per_message(pod_cpu: dict[str, list[tuple[float, float]]], messages: int) -> float | None:
    """The worker Pods' CPU (first to last sample of each cgroup) per message they finished, in ms: the
    handler's burn plus the runtime's own work. Far below `cpu_ms` says the Pods ran an image without it."""
    if messages <= 0:
        return None
    seconds = sum(samples[-1][1] - samples[0][1] for samples in pod_cpu.values() if len(samples) >= 2)
    return round(1000 * seconds / messages, 2)


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


# --- the manifest, and what the simulator expects of it ---------------------------------------------------


def lagpilot_manifest(cfg: BenchConfig, policy: str, *, name: str, topic: str, bootstrap: str,
                      container: dict[str, Any], pod_spec_extra: dict[str, Any]) -> dict[str, Any]:
    """The run's KafkaConsumerGroup: template mode, the bench's bounds, CRD defaults for everything the
    bench does not need to set (polling 5 s, drain target 60 s, scale-up +max(4, 100 %) per 5 s,
    scale-down after 120 s by 25 % per 30 s)."""
    spec = GroupSpec(name=name, topic=topic, group_id=name, bootstrap=bootstrap, container=container,
                     pod_spec_extra=pod_spec_extra, replicas_min=1, replicas_max=cfg.replicas_max,
                     pool_min=cfg.pool_min, pool_initial=cfg.pool_initial, pool_max=cfg.pool_max, mode=policy,
                     lag_per_consumer=cfg.lag_threshold)
    manifest = kcg_manifest(spec)
    for key in ("lag", "policy"):
        manifest["spec"].pop(key)
    manifest["spec"]["policy"] = {"mode": policy, "lagThreshold": {"lagPerConsumer": cfg.lag_threshold}}
    return manifest


def simulated(cfg: BenchConfig, policy: str) -> dict[str, Any]:
    """What `lagpilot simulate` expects of this run: the same trace, group spec, partitions and commit
    interval, a message costing `cpu_ms` of CPU plus `cost_ms` of waiting, a Pod getting its CPU limit
    (one core without one: the GIL). Its shape timeline and reasons are what the real run should reproduce."""
    manifest = lagpilot_manifest(cfg, policy, name="sim", topic="sim", bootstrap="sim:9092", container={},
                                 pod_spec_extra={})
    config = PolicyConfig.from_spec(manifest["spec"])
    pod_cpu = cpu_cores(cfg.pod_cpu_limit) if cfg.pod_cpu_limit is not None else simulate.WorldModel.pod_cpu
    model = simulate.WorldModel(partitions=cfg.partitions, message_cost_seconds=(cfg.cpu_ms + cfg.cost_ms) / 1000,
                                cpu_seconds=cfg.cpu_ms / 1000, pod_cpu=pod_cpu,
                                commit_interval_seconds=WORKER_COMMIT_INTERVAL_SECONDS)
    trace = simulate.parse_trace([{"seconds": cfg.before_seconds, "rate": cfg.base_rate},
                                  {"seconds": cfg.burst_seconds, "rate": cfg.burst_rate},
                                  {"seconds": cfg.after_seconds, "rate": cfg.base_rate}], cfg.scenario)
    result = simulate.run(trace, model, simulate.LagpilotController(policy, config))
    shapes: list[list[float]] = []
    for point in result.points:
        if not shapes or shapes[-1][1:] != [point.replicas, point.pool]:
            shapes.append([round(point.time, 1), point.replicas, point.pool])
    return {"model": {"cpu_seconds": model.cpu_seconds, "io_seconds": model.io_seconds, "pod_cpu": pod_cpu,
                      "pod_msgs_per_s_max": round(pod_cpu / model.cpu_seconds, 1) if model.cpu_seconds else None,
                      "commit_interval_seconds": model.commit_interval_seconds},
            **result.summary.to_dict(),
            "shape_timeline": shapes,
            "reasons": [[round(t, 1), reason] for t, reason in result.reasons],
            # Seconds into the burst, as the measured run's.
            "cpu_bound_found_seconds": next((round(t - cfg.before_seconds, 1) for t, reason in result.reasons
                                             if CPU_BOUND_FOUND in reason), None)}


def format_simulated(policy: str, expected: dict[str, Any]) -> str:
    shapes = " ".join(f"{t:g}s:{r}x{p}" for t, r, p in expected["shape_timeline"])
    reasons = "\n".join(f"  {t:6.1f} s  {reason}" for t, reason in expected["reasons"])
    return (f"{policy} (simulated): {shapes}\n{reasons}\n  peak lag {expected['peak_lag']:,}, p99 "
            f"{expected['p99_latency_seconds']} s, pod-seconds {expected['pod_seconds']}, max "
            f"{expected['max_replicas']} replicas, max pool {expected['max_pool']}")


# --- one run ---------------------------------------------------------------------------------------------


def pod_cgroup_cpu(uid: str) -> dict[str, float | None] | None:
    """A Pod's CPU limit as the kernel enforces it (cgroup v1 `cpu` controller, the kubelet's cgroupfs
    driver: cfs_quota / cfs_period, None without a quota) and its throttling so far; None once it is gone."""
    for path in (*CGROUP_CPU.glob(f"*/pod{uid}"), CGROUP_CPU / f"pod{uid}"):
        try:
            quota = int((path / "cpu.cfs_quota_us").read_text())
            period = int((path / "cpu.cfs_period_us").read_text())
            stat = dict(line.split() for line in (path / "cpu.stat").read_text().splitlines())
        except (OSError, ValueError):
            continue
        return {"quota_cores": round(quota / period, 3) if quota > 0 else None,
                "periods": int(stat.get("nr_periods", 0)), "throttled_periods": int(stat.get("nr_throttled", 0)),
                "throttled_seconds": round(int(stat.get("throttled_time", 0)) / 1e9, 2)}
    return None


CGROUP_CPU = Path("/sys/fs/cgroup/cpu/kubepods")


def worker_cgroups(backend: NodeBackend, namespace: str, prefix: str) -> dict[str, Any]:
    """`pod_cgroup_cpu` of each worker Pod (name starting with `prefix`) that runs now."""
    try:
        pods = client.CoreV1Api(backend.api).list_namespaced_pod(namespace).items
    except Exception as exc:  # the run's numbers stand without it
        return {"error": str(exc)[:200]}
    return {p.metadata.name: pod_cgroup_cpu(p.metadata.uid) for p in pods
            if p.metadata and p.metadata.name and p.metadata.uid and p.metadata.name.startswith(prefix)}


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
    if cfg.cpu_ms > 0:
        extra["E2E_CPU_MS"] = f"{cfg.cpu_ms:g}"

    def container(env: list[dict[str, Any]]) -> dict[str, Any]:
        worker = backend.worker_container(env)
        if cfg.pod_cpu_limit is not None or cfg.pod_cpu_request is not None:
            worker["resources"] = container_resources(worker.get("resources") or {}, cfg.pod_cpu_limit,
                                                      cfg.pod_cpu_request)
        return worker

    operator: ChartOperator | None = None
    hpa: HpaRecorder | None = None
    run_config: dict[str, Any]
    if run.scaler == "keda":
        assert run.pool is not None
        extra["LAGPILOT_POOL_SIZE"] = str(run.pool)
        env = worker_env(bootstrap=backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=cfg.cost_ms,
                         extra=extra)
        deployment = name
        manifest = worker_deployment(deployment, container(env), backend.pod_spec_extra())
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
        manifest = lagpilot_manifest(cfg, run.policy, name=name, topic=topic, bootstrap=backend.pod_kafka_bootstrap,
                                     container=container(env), pod_spec_extra=backend.pod_spec_extra())
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
    monitor: Monitor | None = None
    try:
        wait_for(ready, 90, f"the {run.name} worker pod to be ready")
        if run.scaler == "keda":
            hpa = start_scaling(backend, namespace, scaled)
        ledger = Ledger(backend.kafka_bootstrap, processed).start()
        load = LoadGenerator(backend.kafka_bootstrap, topic, cfg.profile(), key_space=256).start()
        sampler = Sampler(load, ledger).start()
        # Every second, each Pod's CPU from its cgroup (and the broker's, this process's, the machine's).
        monitor = Monitor(lambda: load.sent if load else 0, lambda: len(ledger.counts) if ledger else 0, watch,
                          client.CoreV1Api(backend.api), namespace, broker_pid(backend), default_pool=run.pool).start()
        emit(event="run_started", run=run.name, namespace=namespace, trace=cfg.profile().description)
        result = load.join(cfg.duration + 120)
        accounting = ledger.wait_for(result.ids, cfg.drain_overtime_seconds)
        sampler.stop()
        monitor.stop()
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
            shapes = [(t, r, run.pool) for t, r in replicas]
            slots = [(t, r * run.pool) for t, r in replicas]
            max_pool = run.pool
        else:
            pools = [(s.time, int(p)) for s in watch.status_history(start) if (p := s.status.get("poolSize"))]
            initial_pool = next((p for t, p in pools if t <= burst_start), cfg.pool_initial)
            pool_change = next((t for t, p in pools if t > burst_start and p != initial_pool), None)
            candidates = [t for t in (first_replica_change, pool_change) if t is not None]
            first_capacity_change = min(candidates) if candidates else None
            shapes = shape_history(replicas, pools, initial_pool)
            slots = product_history(replicas, pools, initial_pool)
            max_pool = int(watch.max_status("poolSize", start))
        entries = read_entries(backend.kafka_bootstrap, processed, ledger.records)
        first_seen: dict[str, float] = {}
        for entry in entries:
            latency = (int(entry["processedMs"]) - int(entry["producedMs"])) / 1000
            ident = str(entry["id"])
            if ident not in first_seen or latency < first_seen[ident]:
                first_seen[ident] = latency
        workers = f"{watch.deployment_name}-"
        pod_cpu = {name.removeprefix("pod/"): samples for name, samples in monitor.cpu.items()
                   if name.startswith(f"pod/{workers}")}
        decisions = decision_timeline([(s.time, s.status) for s in watch.status_history(start)], start)
        cpu_bound_at = next((d["t"] for d in decisions if CPU_BOUND_FOUND in d["reason"]), None)
        per_message = cpu_ms_per_message(pod_cpu, len(entries))
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
            # Capacity per Pod: what each shape drained, and whether the policy saw a Pod's slots stop adding.
            "shape_periods": shape_periods(shapes, entries, backlog, pod_cpu, start, end),
            "cpu_bound_found_seconds": (round(cpu_bound_at - cfg.before_seconds, 1) if cpu_bound_at is not None
                                        else None),
            "decisions_that_changed_shape": [[d["t"], d["replicas"], d["pool"], d["reason"]]
                                             for d in shape_changes(decisions)],
            "worker_cpu": {
                "limit": cfg.pod_cpu_limit, "handler_cpu_ms": cfg.cpu_ms, "cpu_ms_per_message": per_message,
                # Far below the handler's burn: the Pods ran an e2e image without E2E_CPU_MS (a stale stack).
                "burn_seen": None if cfg.cpu_ms <= 0 or per_message is None else per_message >= 0.8 * cfg.cpu_ms,
                "cores_in_burst": summarize_cores(monitor.cores_between(burst_start, burst_end),
                                                  str(watch.deployment_name)),
                "pods_at_end": worker_cgroups(backend, namespace, workers),
            },
            "decision_timeline": decisions,
            "pod_rate_timeline": pod_rates(entries, start),
            "pod_cores_timeline": {pod: cores_timeline(samples, start) for pod, samples in sorted(pod_cpu.items())},
        }
        if run.scaler == "lagpilot":
            assert run.policy is not None
            summary["simulated"] = simulated(cfg, run.policy)
        if hpa is not None:
            summary["hpa_timeline"] = hpa.timeline(start)
        emit(event="run_finished", **{k: v for k, v in summary.items()
                                      if not k.endswith("_timeline") and k not in ("config", "simulated")})
        return summary
    finally:
        if sampler is not None:
            sampler.stop()
        if monitor is not None:
            monitor.stop()
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


def bench_config(scenario: str, *, quick: bool = False, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """The scenario's config (`--quick`: the burst's shorter trace) with the flags given on top of it
    (`BenchConfig` field names; a `pod_cpu_limit` of "none" removes the scenario's limit)."""
    if quick and scenario != "burst":
        raise ValueError("--quick shortens the burst scenario only")
    changes = dict(overrides or {})
    if str(changes.get("pod_cpu_limit", "")).lower() == "none":
        changes["pod_cpu_limit"] = None
    cfg = dataclasses.replace(QUICK if quick else SCENARIOS[scenario], **changes)
    for quantity in (cfg.pod_cpu_limit, cfg.pod_cpu_request):
        if quantity is not None:
            cpu_cores(quantity)
    if cfg.cpu_ms < 0 or cfg.cost_ms < 0 or cfg.cpu_ms + cfg.cost_ms <= 0:
        raise ValueError("a message must cost something: --cpu-ms and --io-ms >= 0, not both 0")
    container_resources({}, cfg.pod_cpu_limit, cfg.pod_cpu_request)  # a request above the limit is refused
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="burst",
                        help="burst: 400 msg/s of 50 ms waits, all five runs (the default); cpu: 120 msg/s of "
                             "5 ms CPU in Pods limited to 250m, drainTime only (issue 15's real-loop check)")
    parser.add_argument("--quick", action="store_true", help="shorter burst trace (115 s instead of 230 s)")
    parser.add_argument("--runs", "--policies", dest="runs", default=None,
                        help=f"comma-separated subset of {', '.join(RUN_NAMES)}, run in the order given "
                             "(default: the scenario's: all for burst, drainTime for cpu)")
    parser.add_argument("--cpu-ms", type=float, default=None, dest="cpu_ms", metavar="MS",
                        help="CPU per message under the GIL, ms (E2E_CPU_MS; burst 0, cpu 5)")
    parser.add_argument("--io-ms", type=int, default=None, dest="cost_ms", metavar="MS",
                        help="waiting per message after the CPU, ms (E2E_COST_MS; burst 50, cpu 0)")
    parser.add_argument("--pod-cpu-limit", default=None, dest="pod_cpu_limit", metavar="CPU",
                        help='the worker container\'s limits.cpu, e.g. "250m" (burst: none; cpu: 250m; "none" '
                             "removes it)")
    parser.add_argument("--pod-cpu-request", default=None, dest="pod_cpu_request", metavar="CPU",
                        help="its requests.cpu (default: the worker chart's 100m, at most the limit)")
    parser.add_argument("--burst-rate", type=float, default=None, dest="burst_rate", metavar="MSGS_PER_S",
                        help="msg/s during the burst (burst 400, cpu 120)")
    parser.add_argument("--simulate", action="store_true",
                        help="print what `lagpilot simulate` expects of the Lagpilot runs (shapes and reasons) "
                             "and stop: no stack needed")
    parser.add_argument("--stack-env", type=Path, default=None,
                        help="use the stack these `export` lines describe (e.g. .stack/env) as it runs, "
                             "instead of `hack/stack.py up` (which builds this checkout's e2e image: the cpu "
                             "scenario needs its E2E_CPU_MS)")
    parser.add_argument("--name-prefix", default="bench",
                        help="prefix of the runs' namespaces, topics and consumer groups")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy operator and pod logs here")
    parser.add_argument("--out", type=Path, default=None, help="also write the final JSON object here")
    args = parser.parse_args(argv)
    overrides = {key: getattr(args, key) for key in ("cpu_ms", "cost_ms", "pod_cpu_limit", "pod_cpu_request",
                                                     "burst_rate") if getattr(args, key) is not None}
    try:
        cfg = bench_config(args.scenario, quick=args.quick, overrides=overrides)
    except ValueError as exc:
        parser.error(str(exc))
    chosen = [r for r in (args.runs or ",".join(SCENARIO_RUNS[args.scenario])).split(",") if r]
    if unknown := set(chosen) - set(RUN_NAMES):
        parser.error(f"unknown runs: {sorted(unknown)}")
    by_name = {run.name: run for run in RUNS}
    runs = [by_name[name] for name in dict.fromkeys(chosen)]  # in the order given
    if args.simulate:
        expected = {run.name: simulated(cfg, run.policy) for run in runs if run.policy is not None}
        print(f"trace {cfg.profile().description}; {cfg.partitions} partitions; {cfg.cpu_ms:g} ms CPU + "
              f"{cfg.cost_ms} ms waiting a message; Pod CPU limit {cfg.pod_cpu_limit or 'none (1 core: the GIL)'}; "
              f"replicas 1..{cfg.replicas_max}, pool {cfg.pool_min}..{cfg.pool_max} (initial {cfg.pool_initial})",
              file=sys.stderr)
        for name, result in expected.items():
            print(format_simulated(name, result), file=sys.stderr)
        print(json.dumps({"config": dataclasses.asdict(cfg), "simulated": expected}), flush=True)
        return 0
    work_dir = Path(tempfile.mkdtemp(prefix="lagpilot-loop-bench-"))
    backend = node_backend(args.stack_env, work_dir)
    began = time.time()
    emit(event="bench_started", config=dataclasses.asdict(cfg),
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
        "config": dataclasses.asdict(cfg),
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

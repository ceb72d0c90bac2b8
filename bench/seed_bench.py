"""The seed articles' headline load on the real loop: 12,000 msg/s of 1.2 KB JSON into 32 partitions,
each record validated against a schema, P99 end-to-end latency at most 200 ms, no backlog.

Real Kafka, real control plane, real node, as bench/loop_bench.py: worker Pods run the e2e worker image
in containers on the stack's node with the `handlers:handle_seed` handler (e2e/handlers.py: pydantic
`SeedOrder.model_validate_json` of the raw record, then `--io-ms` (2) of waiting, then a ledger entry);
the operator is `helm install`ed from charts/lagpilot into the run's namespace and scales a
KafkaConsumerGroup with the drainTime policy and `targetTimeLag: 200ms` (CRD defaults otherwise).

Two modes:

* `--mode headline` (default): `--base-rate` (800 msg/s) for `--base-seconds` (120), then `--rate`
  (12,000) for `--high-seconds` (300), so the operator has to scale up. Reported: produce and consume
  rates, end-to-end latency (record timestamp at produce -> handler done) p50/p99/p99.9 per minute of
  produce time, replicas x pool over time, CPU per worker Pod (its cgroup on the node), the backlog when
  producing stops and after `--drain-seconds`, lost and duplicates; and whether the goal held: P99 <= the
  target in every minute from `--settle-seconds` (60) after the high phase began, no backlog, nothing lost.
* `--mode search`: the highest rate at which P99 <= the target holds on this machine. One group, one
  operator; steps of `--step-seconds` (90) at one rate each, judged on the last `--judge-seconds` (45) of
  the step (the operator has the first part to scale). A step passes when the producer kept its rate
  (>= 95 %), the judged P99 is within the target, and every message was processed within
  `--drain-grace-seconds` (15) of the step's end. Rates: from `--search-start` doubling until a step
  fails, then bisection (geometric) until the passing and failing rates are within `--search-resolution`
  (15 %). Each step also says which process ran out of CPU (`bottleneck`).

CPU, sampled every second from /proc and the node's cgroups (cgroup v1 cpuacct, the kubelet's cgroupfs
driver): this bench process (the producer, and the ledger reader and watches beside it), the broker
(the stack's kafka.pid), the operator Pod and each worker Pod, and the machine (/proc/stat). The machine
is shared with whatever else runs on it: the machine's total says how much was left for the bench.

What scales the workers (`--policy`, comma-separated: the runs go one after another on the same load, each
in a namespace, topic and group of its own):

* `lagpilot` (the default): the operator and KafkaConsumerGroup above (drainTime, `targetTimeLag: 200ms`).
* `keda-pool-8`: the real KEDA (bench/real_keda.py, the same code bench/loop_bench.py runs it with): a
  Deployment of the same worker image, handler and env with the worker's pool fixed at 8 slots, and a
  ScaledObject with the `kafka` trigger on it, KEDA's defaults as a user leaves them (pollingInterval 30,
  cooldownPeriod 300, the HPA's: sync 15 s, scale-up max(4 pods, 100 %) per 15 s, 300 s scale-down
  stabilization), minReplicaCount 1, maxReplicaCount = partitions, `lagThreshold` = `--keda-lag-per-slot`
  (100, loop_bench's lag per slot) x 8 = 800 per replica. KEDA runs (`hack/stack.py keda-up`) only while
  its runs do; it needs the stack started with LAGPILOT_AGGREGATION=1 and KEDA built (`hack/stack.py keda`).

With `--mode headline`, each run's per-minute latency table (with replicas x pool) and a side-by-side
summary of the runs (p50/p99/p99.9 and replicas x pool per minute; pod-seconds and slot-seconds over the
produce window, lost, duplicates, backlog at the end) are printed to stderr as Markdown, and are in the
final JSON (`runs`, `side_by_side`).

Run (the stack with its node, env from .stack/env; without `--stack-env` the bench runs `hack/stack.py up`
itself, which reuses what runs and builds this checkout's images if they are new):

    source .stack/env && .venv/bin/python bench/seed_bench.py [--quick] [--mode search]
        [--policy lagpilot,keda-pool-8] [--stack-env .stack/env]

Progress is printed as JSON lines; the last line is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from confluent_kafka import KafkaError, Message, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: E402
from e2e.harness import GroupSpec, GroupWatch, kcg_manifest, worker_env  # noqa: E402
from e2e.loadgen import Ledger, LoadGenerator, LoadResult, steps  # noqa: E402
from e2e.node_backend import NodeBackend  # noqa: E402
from kubernetes import client  # noqa: E402

from lagpilot_operator.core.observations import partition_lag  # noqa: E402
from lagpilot_operator.kafka.kafka_lag import AdminClientPool, LagReadError, read_lag  # noqa: E402
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

PREFIX = "bench"  # with unique_name: every run gets namespaces, topics and groups of its own
SEED_HANDLER = "handlers:handle_seed"
MESSAGE_BYTES = 1200


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# --- the messages (pure) ---------------------------------------------------------------------------------

_FIRST = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie")
_LAST = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lamport")
_CITIES = ("Lyon", "Porto", "Gent", "Turku", "Brno", "Aarhus", "Graz", "Utrecht")
_PRODUCTS = ("kettle", "lamp", "desk", "chair", "mug", "shelf", "rug", "clock", "vase", "stool")
ID_PLACEHOLDER = "\x00id\x00"
TS_PLACEHOLDER = 1_700_000_000_000   # 13 digits, as every epoch-ms until 2286


def seed_order(rng: random.Random, ident: str, ts_ms: int, size: int = MESSAGE_BYTES) -> dict[str, Any]:
    """One order event that validates against e2e/handlers.py's SeedOrder; `notes` pads its compact JSON
    to `size` bytes (when the rest is shorter)."""
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    lines: list[dict[str, Any]] = [
        {"sku": f"SKU-{rng.randrange(10**6):06d}", "name": f"{rng.choice(_PRODUCTS)} {rng.choice(_CITIES)}",
         "quantity": rng.randint(1, 5), "unit_price_cents": rng.randint(100, 20_000)}
        for _ in range(rng.randint(3, 6))]
    order: dict[str, Any] = {
        "id": ident, "ts": ts_ms, "event": rng.choice(("order.created", "order.paid", "order.shipped")),
        "currency": rng.choice(("EUR", "USD", "GBP")),
        "customer": {"id": f"c-{rng.randrange(10**6):06d}", "name": f"{first} {last}",
                     "email": f"{first.lower()}.{last.lower()}@example.org",
                     "address": {"street": f"{rng.randint(1, 300)} {rng.choice(_LAST)} Street",
                                 "city": rng.choice(_CITIES), "postcode": f"{rng.randrange(10**5):05d}",
                                 "country": rng.choice(("FR", "PT", "BE", "FI", "CZ", "DK", "AT", "NL"))}},
        "lines": lines,
        "total_cents": sum(line["quantity"] * line["unit_price_cents"] for line in lines),
        "notes": "",
    }
    short = size - len(encode(order))
    order["notes"] = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(max(0, short)))
    return order


def encode(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class SeedMessages:
    """`count` distinct order bodies rendered once; each message is one of them with its id and timestamp
    spliced in, so producing 12,000 a second costs no JSON encoding. Bodies are exactly `size` bytes
    for ids of `id_length` characters."""

    def __init__(self, *, count: int = 64, size: int = MESSAGE_BYTES, id_length: int = 20, seed: int = 7) -> None:
        rng = random.Random(seed)
        self._parts: list[tuple[bytes, bytes, bytes]] = []
        for _ in range(count):
            rendered = encode(seed_order(rng, "x" * id_length, TS_PLACEHOLDER, size))
            id_field = b'"id":"' + b"x" * id_length + b'"'
            ts_field = b'"ts":' + str(TS_PLACEHOLDER).encode()
            head, _, rest = rendered.partition(id_field)
            middle, _, tail = rest.partition(ts_field)
            self._parts.append((head + b'"id":"', b'"' + middle + b'"ts":', tail))

    def render(self, seq: int, ident: str, ts_ms: int) -> bytes:
        head, middle, tail = self._parts[seq % len(self._parts)]
        return head + ident.encode() + middle + str(ts_ms).encode() + tail


class SeedLoadGenerator(LoadGenerator):
    """The e2e load generator's pacing and accounting, with 1.2 KB order events as the values."""

    def __init__(self, *args: Any, messages: SeedMessages, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages = messages

    def _produce(self, producer: Producer, seq: int, on_delivery: Callable[[KafkaError | None, Message], None],
                 ) -> bool:
        ident = self.message_id(seq)
        value = self.messages.render(seq, ident, int(time.time() * 1000))
        while True:
            try:
                producer.produce(self.topic, value=value, on_delivery=on_delivery)   # no key: spread over all
                return True
            except BufferError:  # local queue full: serve deliveries, then retry the same message
                producer.poll(0.05)
                if self._stop.is_set():
                    return False


# --- latency (pure) ----------------------------------------------------------------------------------------


@dataclass
class Latencies:
    """Per id, the first processing's (produced ms, processed ms) from the ledger entries; a callable the
    Ledger uses as its `id_of`, so latencies are read live, in the one pass over the ledger topic."""

    first: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __call__(self, key: bytes | None, value: bytes | None) -> str | None:
        if not value:
            return None
        try:
            entry = json.loads(value)
            ident, produced, processed = str(entry["id"]), int(entry["producedMs"]), int(entry["processedMs"])
        except (ValueError, KeyError, TypeError):
            return None
        seen = self.first.get(ident)
        if seen is None or processed < seen[1]:
            self.first[ident] = (produced, processed)
        return ident

    def between(self, start_ms: int, end_ms: int) -> list[float]:
        """Latencies in seconds of the messages produced in [start_ms, end_ms)."""
        return [(done - made) / 1000 for made, done in list(self.first.values()) if start_ms <= made < end_ms]


def quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank q-quantile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class MinuteRow:
    minute: int            # minutes since the run's start, by produce time
    messages: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


def latency_by_minute(first: Mapping[str, tuple[int, int]], start_ms: int, end_ms: int) -> list[MinuteRow]:
    """End-to-end latency quantiles per minute of produce time over [start_ms, end_ms); a minute without
    a processed message has no row (a minute whose messages were all lost shows up as missing, not here)."""
    buckets: dict[int, list[int]] = {}
    for produced, processed in first.values():
        if start_ms <= produced < end_ms:
            buckets.setdefault((produced - start_ms) // 60_000, []).append(processed - produced)
    rows = []
    for minute in sorted(buckets):
        values = sorted(buckets[minute])
        rows.append(MinuteRow(minute, len(values), float(quantile(values, 0.5)), float(quantile(values, 0.99)),
                              float(quantile(values, 0.999)), float(values[-1])))
    return rows


def minutes_over_target(rows: Iterable[MinuteRow], from_minute: int, target_ms: float) -> list[int]:
    """The minutes from `from_minute` on whose P99 exceeded the target."""
    return [row.minute for row in rows if row.minute >= from_minute and row.p99_ms > target_ms]


def first_judged_minute(high_start_s: float, settle_s: float) -> int:
    """The first whole minute (since the run's start) that begins after the scale-up had `settle_s` to settle."""
    return math.ceil((high_start_s + settle_s) / 60 - 1e-9)


# --- the rate search (pure) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepVerdict:
    passed: bool
    reason: str


def judge_step(*, planned_rate: float, achieved_rate: float, p99_s: float, target_s: float, unprocessed: int,
               min_rate_share: float = 0.95) -> StepVerdict:
    """Did the loop sustain this rate? The producer kept it, the judged P99 is within target, and nothing
    was left unprocessed after the grace period."""
    if achieved_rate < min_rate_share * planned_rate:
        return StepVerdict(False, f"producer reached {achieved_rate:.0f} of {planned_rate:.0f} msg/s")
    if unprocessed > 0:
        return StepVerdict(False, f"{unprocessed} messages still unprocessed after the grace period")
    if p99_s > target_s:
        return StepVerdict(False, f"p99 {p99_s * 1000:.0f} ms > {target_s * 1000:.0f} ms")
    return StepVerdict(True, f"p99 {p99_s * 1000:.0f} ms <= {target_s * 1000:.0f} ms at {achieved_rate:.0f} msg/s")


@dataclass(frozen=True)
class RateSearch:
    """Doubling until a rate fails, then geometric bisection between the best pass and the lowest fail."""

    start: float
    maximum: float
    resolution: float = 0.15          # stop when lowest fail / best pass <= 1 + resolution
    passed: tuple[float, ...] = ()
    failed: tuple[float, ...] = ()

    def record(self, rate: float, verdict: StepVerdict) -> RateSearch:
        if verdict.passed:
            return RateSearch(self.start, self.maximum, self.resolution, (*self.passed, rate), self.failed)
        return RateSearch(self.start, self.maximum, self.resolution, self.passed, (*self.failed, rate))

    @property
    def best(self) -> float | None:
        return max(self.passed) if self.passed else None

    def next_rate(self) -> float | None:
        """The next rate to try, or None when the search is done."""
        best, worst = self.best, (min(self.failed) if self.failed else None)
        if best is None and worst is None:
            return self.start
        if worst is None:
            assert best is not None
            return None if best >= self.maximum else min(self.maximum, best * 2)
        if best is None:
            # Even the lowest rate failed: halve it, down to a floor of one msg/s.
            return None if worst <= 1 else max(1.0, worst / 2)
        if worst <= best * (1 + self.resolution):
            return None
        return round(math.sqrt(best * worst))


# --- CPU (pure analysis; the reading is below) -----------------------------------------------------------


def cores_used(samples: Sequence[tuple[float, float]]) -> float:
    """Mean cores over (wall seconds, cumulative CPU seconds) samples of one process or cgroup."""
    if len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return 0.0
    return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])


def bottleneck(cores: Mapping[str, float], machine_busy: float, machine_cores: int,
               single_threaded: Iterable[str] = ("producer",), saturated_share: float = 0.9) -> str:
    """Which process ran out of CPU: a single-threaded one at about one core (Python's GIL: this bench's
    producer), else, when the machine was about fully busy, the largest user (`others`, when given, is
    the rest of a shared machine); else none."""
    for name in single_threaded:
        if cores.get(name, 0.0) >= saturated_share:
            return f"{name} (~1 core: its Python thread is saturated)"
    if machine_busy >= saturated_share * machine_cores:
        top = max(cores, key=lambda name: cores[name], default=None)
        return (f"the machine ({machine_busy:.2f} of {machine_cores} cores busy); largest user: {top} "
                f"({cores[top]:.2f} cores)" if top else "the machine")
    return "none (CPU left over)"


# --- CPU reading ---------------------------------------------------------------------------------------------

CGROUP_CPUACCT = Path("/sys/fs/cgroup/cpuacct/kubepods")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS   # utime + stime


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def pod_cpu_seconds(uid: str) -> float | None:
    """A Pod's CPU from its cgroup (kubepods/<qos>/pod<uid> or kubepods/pod<uid>), None once it is gone."""
    for path in (*CGROUP_CPUACCT.glob(f"*/pod{uid}/cpuacct.usage"), CGROUP_CPUACCT / f"pod{uid}" / "cpuacct.usage"):
        try:
            return int(path.read_text()) / 1e9
        except OSError:
            continue
    return None


@dataclass
class Monitor:
    """Every second: produced, processed, replicas x pool, and the CPU of each process that matters."""

    load: Callable[[], int]
    processed: Callable[[], int]
    watch: GroupWatch
    core: client.CoreV1Api
    namespace: str
    broker_pid: int | None
    default_pool: int | None = None     # the pool when the group's status names none (KEDA: the fixed pool)
    points: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    _pods: dict[str, str] = field(default_factory=dict)          # uid -> name
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Monitor:
        threading.Thread(target=self._run, name="seed-monitor", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            now = time.time()
            if tick % 5 == 0:
                # A missed listing only delays a new Pod's first sample.
                with contextlib.suppress(Exception):
                    pods = self.core.list_namespaced_pod(self.namespace).items
                    self._pods.update({p.metadata.uid: p.metadata.name for p in pods
                                       if p.metadata and p.metadata.uid and p.metadata.name})
            readings: dict[str, float | None] = {"producer": process_cpu_seconds(os.getpid()),
                                                 "machine": machine_busy_seconds()}
            if self.broker_pid is not None:
                readings["broker"] = process_cpu_seconds(self.broker_pid)
            for uid, name in list(self._pods.items()):
                readings[f"pod/{name}"] = pod_cpu_seconds(uid)
            for name, seconds in readings.items():
                if seconds is not None:
                    self.cpu.setdefault(name, []).append((now, seconds))
            status = self.watch.status
            self.points.append({"t": now, "sent": self.load(), "processed": self.processed(),
                                "replicas": self.watch.current_replicas,
                                "pool": status.get("poolSize") or self.default_pool})
            tick += 1
            self._stop.wait(max(0.0, 1.0 - (time.time() - now)))

    def cores_between(self, start: float, end: float) -> dict[str, float]:
        """Mean cores per process over [start, end]; worker Pods as `pod/<name>`, the operator's Pod too."""
        result = {}
        for name, samples in self.cpu.items():
            window = [s for s in samples if start <= s[0] <= end]
            if len(window) >= 2:
                result[name] = round(cores_used(window), 3)
        return result


def summarize_cores(cores: Mapping[str, float], worker_prefix: str) -> dict[str, float]:
    """Cores per part: the worker Pods (named `<worker_prefix>-...`) summed as `workers`, the run's other
    Pods (the operator's) as `operator`, the processes as they are, and `others`: what the rest of the
    machine used (other work on a shared machine), the machine's busy time minus all of the above."""
    named: dict[str, float] = {}
    for name, value in cores.items():
        if name.startswith(f"pod/{worker_prefix}-"):
            named["workers"] = round(named.get("workers", 0.0) + value, 3)
        elif name.startswith("pod/"):
            named["operator"] = round(named.get("operator", 0.0) + value, 3)
        elif name != "machine":
            named[name] = value
    if "machine" in cores:
        named["others"] = round(max(0.0, cores["machine"] - sum(named.values())), 3)
    return named


# --- runs side by side (pure) -------------------------------------------------------------------------------


def capacity_seconds(timeline: Sequence[Sequence[Any]], end_s: float) -> dict[str, float]:
    """Pod-seconds (the Deployment's replicas) and slot-seconds (replicas x pool) over [0, end_s] of a
    capacity timeline ([seconds, replicas, pool] at each change); an unknown value counts as 0."""
    replicas = [(float(t), int(r or 0)) for t, r, _ in timeline]
    slots = [(float(t), int(r or 0) * int(pool or 0)) for t, r, pool in timeline]
    return {"pod_seconds": round(pod_seconds(replicas, 0.0, end_s), 1),
            "slot_seconds": round(pod_seconds(slots, 0.0, end_s), 1)}


def capacity_in_minute(timeline: Sequence[Sequence[Any]], minute: int) -> str:
    """replicas x pool during the minute: the value in effect when it began, then each change within it
    (`1x4→1x8`); `?` before anything was seen."""
    begin, end = minute * 60.0, (minute + 1) * 60.0
    before = [row for row in timeline if row[0] <= begin]
    during = [row for row in timeline if begin < row[0] < end]
    shown = ([before[-1]] if before else []) + during
    return "→".join(f"{row[1]}x{row[2]}" for row in shown) or "?"


TOTALS = ("produced", "lost", "duplicates", "pod_seconds", "slot_seconds", "backlog_when_producing_stopped",
          "seconds_to_drain_after_producing_stopped", "committed_lag_at_end", "high_phase_p99_ms",
          "minutes_over_target", "goal_met")


def side_by_side(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The headline runs of one invocation, minute by minute of produce time (p50/p99/p99.9 and replicas x
    pool of each) and in totals (pod-seconds, lost, duplicates, backlog, ...); a minute a run has no row
    for is None for it."""
    minutes = sorted({row["minute"] for run in runs.values() for row in run["latency_per_minute"]})
    table = []
    for minute in minutes:
        entry: dict[str, Any] = {"minute": minute}
        for policy, run in runs.items():
            row = next((r for r in run["latency_per_minute"] if r["minute"] == minute), None)
            entry[policy] = None if row is None else {
                "messages": row["messages"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"],
                "p999_ms": row["p999_ms"], "capacity": capacity_in_minute(run["capacity_timeline"], minute)}
        table.append(entry)
    return {"policies": list(runs), "minutes": table,
            "totals": {policy: {key: run.get(key) for key in TOTALS} for policy, run in runs.items()}}


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.1f}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def minute_table(run: Mapping[str, Any]) -> str:
    """One headline run's per-minute latency table (Markdown), replicas x pool beside each minute."""
    lines = [f"{run['policy']}: {run['profile']}",
             "| minute | messages | p50 ms | p99 ms | p99.9 ms | max ms | replicas x pool |",
             "|---|---|---|---|---|---|---|"]
    for row in run["latency_per_minute"]:
        cells = [row["minute"], row["messages"], row["p50_ms"], row["p99_ms"], row["p999_ms"], row["max_ms"]]
        lines.append("| " + " | ".join(_number(c) for c in cells)
                     + f" | {capacity_in_minute(run['capacity_timeline'], row['minute'])} |")
    return "\n".join(lines)


def side_by_side_table(side: Mapping[str, Any]) -> str:
    """`side_by_side` as two Markdown tables: per minute, then the totals."""
    policies = side["policies"]
    head = "| minute | " + " | ".join(f"{p} p50 / p99 / p99.9 ms | {p} replicas x pool" for p in policies) + " |"
    lines = [head, "|---|" + "---|---|" * len(policies)]
    for entry in side["minutes"]:
        cells = []
        for policy in policies:
            row = entry[policy]
            cells += (["-", "-"] if row is None else
                      [" / ".join(_number(row[k]) for k in ("p50_ms", "p99_ms", "p999_ms")), row["capacity"]])
        lines.append(f"| {entry['minute']} | " + " | ".join(cells) + " |")
    lines += ["", "| | " + " | ".join(policies) + " |", "|---|" + "---|" * len(policies)]
    for key in TOTALS:
        lines.append(f"| {key} | " + " | ".join(_number(side["totals"][p][key]) for p in policies) + " |")
    return "\n".join(lines)


# --- the scaler under test: the policy hook -------------------------------------------------------------


@dataclass
class RunContext:
    backend: NodeBackend
    namespace: str
    name: str                   # group id and the scaled object's name
    topic: str
    env: list[dict[str, Any]]   # the worker container's env (handler, ledger topic, I/O cost)
    args: argparse.Namespace
    work_dir: Path


@dataclass
class ScalerRun:
    """What a policy set up: the watch that sees the worker Deployment's replicas (and, for Lagpilot, the
    group's status with its pool size), how to take it down, the pool to count when the status names
    none (Lagpilot's initial pool until the operator publishes one; KEDA's fixed pool), what was
    configured (for the JSON), and for KEDA the recorder of its HPA."""

    watch: GroupWatch
    stop: Callable[[], None]
    pool: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    hpa: HpaRecorder | None = None


def lagpilot_scaler(ctx: RunContext) -> ScalerRun:
    """A KafkaConsumerGroup in template mode, drainTime with the latency target, CRD defaults otherwise."""
    backend, args = ctx.backend, ctx.args
    spec = GroupSpec(name=ctx.name, topic=ctx.topic, group_id=ctx.name, bootstrap=backend.pod_kafka_bootstrap,
                     container=backend.worker_container(ctx.env), pod_spec_extra=backend.pod_spec_extra(),
                     replicas_min=1, replicas_max=args.replicas_max, pool_min=1, pool_initial=args.pool_initial,
                     pool_max=args.pool_max)
    manifest = kcg_manifest(spec)
    for key in ("lag", "policy"):
        manifest["spec"].pop(key)
    manifest["spec"]["policy"] = {"mode": "drainTime", "drainTime": {"targetTimeLag": args.target_time_lag}}
    config = {"kafka_consumer_group": {k: v for k, v in manifest["spec"].items() if k != "template"}}
    operator = backend.operator(ctx.namespace, ctx.work_dir / "operator.log")
    operator.start()
    watch = GroupWatch(backend.api, ctx.namespace, ctx.name).start()
    backend.kubectl("apply", "-n", ctx.namespace, "-f", "-", input_text=yaml.safe_dump(manifest))

    def stop() -> None:
        watch.stop()
        # The group goes while its operator runs (kopf's finalizer), then the operator.
        backend.kubectl("delete", "kcg", ctx.name, "-n", ctx.namespace, "--timeout=60s", check=False, timeout=90)
        operator.stop()

    return ScalerRun(watch, stop, pool=args.pool_initial, config=config)


def keda_scaler(pool: int) -> Callable[[RunContext], ScalerRun]:
    """The real KEDA (bench/real_keda.py, as bench/loop_bench.py runs it): a Deployment of the same worker
    container and handler with the pool fixed at `pool` (LAGPILOT_POOL_SIZE; the group and topic in its
    env, where Lagpilot's operator would put them), and a ScaledObject with the kafka trigger on it:
    KEDA's defaults (pollingInterval 30, cooldownPeriod 300, the HPA's), minReplicaCount 1,
    maxReplicaCount = partitions, lagThreshold = `--keda-lag-per-slot` (100, loop_bench's) x the pool."""

    def start(ctx: RunContext) -> ScalerRun:
        backend, args = ctx.backend, ctx.args
        extra = {"LAGPILOT_GROUP_ID": ctx.name, "LAGPILOT_TOPICS": ctx.topic, "LAGPILOT_POOL_SIZE": str(pool)}
        env = [*ctx.env, *({"name": k, "value": v} for k, v in extra.items())]
        manifest = worker_deployment(ctx.name, backend.worker_container(env), backend.pod_spec_extra())
        backend.kubectl("apply", "-n", ctx.namespace, "-f", "-", input_text=yaml.safe_dump(manifest))
        watch = GroupWatch(backend.api, ctx.namespace, ctx.name, deployment_name=ctx.name).start()
        apps = client.AppsV1Api(backend.api)

        def ready() -> bool:
            status = apps.read_namespaced_deployment_status(ctx.name, ctx.namespace).status
            return status is not None and bool(status.ready_replicas)

        # As loop_bench: KEDA takes over once the first worker runs. The KEDA operator is a host
        # process: it reaches the broker on the loopback listener.
        try:
            wait_for(ready, 120, "the first worker pod to be ready")
        except BaseException:
            watch.stop()
            raise
        scaled = scaled_object(name=ctx.name, deployment=ctx.name, bootstrap=backend.kafka_bootstrap,
                               group=ctx.name, topic=ctx.topic,
                               lag_threshold=keda_lag_threshold(args.keda_lag_per_slot, pool),
                               min_replicas=1, max_replicas=args.partitions)
        try:
            hpa = start_scaling(backend, ctx.namespace, scaled)
        except BaseException:
            watch.stop()
            raise

        def stop() -> None:
            hpa.stop()
            watch.stop()
            stop_scaling(backend, ctx.namespace, ctx.name)

        config = {"scaled_object": scaled["spec"], "keda_defaults": KEDA_DEFAULTS, "pool": pool,
                  "lag_per_slot": args.keda_lag_per_slot}
        return ScalerRun(watch, stop, pool=pool, config=config, hpa=hpa)

    return start


# `--policy A,B` runs POLICIES[A], then POLICIES[B], each on the same load in a namespace, topic and group
# of its own; the KEDA ones between one `keda-up` and `keda-down`.
POLICIES: dict[str, Callable[[RunContext], ScalerRun]] = {"lagpilot": lagpilot_scaler, "keda-pool-8": keda_scaler(8)}


def uses_keda(policy: str) -> bool:
    return policy.startswith("keda-")


def parse_policies(text: str, known: Iterable[str]) -> list[str]:
    """`--policy`'s comma-separated names, in the order given, each once; an unknown name is an error."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise ValueError("no policy given")
    if unknown := [name for name in names if name not in set(known)]:
        raise ValueError(f"unknown policies {unknown}; known: {', '.join(sorted(known))}")
    return names


# --- one run ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    ctx: RunContext
    scaler: ScalerRun
    ledger: Ledger
    latencies: Latencies
    admin: AdminClient
    processed_topic: str


def set_up(args: argparse.Namespace, backend: NodeBackend, work_dir: Path, policy: str) -> Setup:
    namespace = unique_name(f"{PREFIX}-seed")
    backend.kubectl("create", "namespace", namespace)
    admin = AdminClient({"bootstrap.servers": backend.kafka_bootstrap})
    name = unique_name(f"{PREFIX}-seed-{policy}")
    topic, processed = f"{name}-in", f"{name}-processed"
    scaler: ScalerRun | None = None
    try:
        wait_for(lambda: backend.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
                 30, "default service account")
        backend.prepare_namespace(namespace)
        for t in (topic, processed):
            admin.create_topics([NewTopic(t, args.partitions, 1)])[t].result(timeout=60)
        wait_for(lambda: all((m := admin.list_topics(t, timeout=10).topics.get(t)) is not None and m.error is None
                             and len(m.partitions) == args.partitions for t in (topic, processed)), 30, "topics")
        env = worker_env(bootstrap=backend.pod_kafka_bootstrap, processed_topic=processed, cost_ms=args.io_ms,
                         extra={"LAGPILOT_HANDLER": SEED_HANDLER, "LAGPILOT_VALUE_DESERIALIZER": "bytes",
                                "LAGPILOT_DEAD_LETTER": "false",
                                "LAGPILOT_COMMIT_INTERVAL_SECONDS": str(args.commit_interval_seconds)})
        work_dir.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(backend, namespace, name, topic, env, args, work_dir)
        scaler = POLICIES[policy](ctx)
        apps = client.AppsV1Api(backend.api)

        def ready() -> bool:
            assert scaler is not None
            deployment = scaler.watch.deployment_name
            if deployment is None:
                return False
            status = apps.read_namespaced_deployment_status(deployment, namespace).status
            return status is not None and bool(status.ready_replicas)

        wait_for(ready, 120, "the first worker pod to be ready")
    except BaseException:
        # The shared stack keeps no half-made run: what was made so far goes.
        if scaler is not None:
            scaler.stop()
        backend.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        admin.delete_topics([topic, processed])
        raise
    latencies = Latencies()
    ledger = Ledger(backend.kafka_bootstrap, processed, id_of=latencies).start()
    emit(event="run_ready", namespace=namespace, group=name, policy=policy)
    return Setup(ctx, scaler, ledger, latencies, admin, processed)


def tear_down(setup: Setup) -> None:
    setup.ledger.stop()
    setup.scaler.stop()
    setup.ctx.backend.kubectl("delete", "namespace", setup.ctx.namespace, "--wait=false", check=False)
    setup.admin.delete_topics([setup.ctx.topic, setup.processed_topic])


def broker_pid(backend: NodeBackend) -> int | None:
    try:
        return backend._broker_pid()
    except (OSError, ValueError, RuntimeError):
        return None


def committed_backlog(setup: Setup) -> int | None:
    """The group's lag as Kafka sees it (committed offsets), the operator's own reader."""
    bootstrap = setup.ctx.backend.kafka_bootstrap
    try:
        sample = read_lag(AdminClientPool().get({"bootstrap.servers": bootstrap}), bootstrap, setup.ctx.name,
                          [setup.ctx.topic])
    except LagReadError:
        return None
    return sum(partition_lag(p) for p in sample.partitions)


def capacity_timeline(points: Sequence[Mapping[str, Any]], start: float) -> list[list[Any]]:
    """[seconds, replicas, pool] at each change."""
    timeline: list[list[Any]] = []
    for point in points:
        row = [point["replicas"], point["pool"]]
        if not timeline or timeline[-1][1:] != row:
            timeline.append([round(point["t"] - start, 1), *row])
    return timeline


def rate_between(points: Sequence[Mapping[str, Any]], key: str, start: float, end: float) -> float:
    window = [p for p in points if start <= p["t"] <= end]
    if len(window) < 2:
        return 0.0
    return float((window[-1][key] - window[0][key]) / (window[-1]["t"] - window[0]["t"]))


def headline(args: argparse.Namespace, backend: NodeBackend, work_dir: Path, policy: str) -> dict[str, Any]:
    setup = set_up(args, backend, work_dir, policy)
    load = SeedLoadGenerator(backend.kafka_bootstrap, setup.ctx.topic,
                             steps([(args.base_seconds, args.base_rate), (args.high_seconds, args.rate)]),
                             messages=SeedMessages(), key_space=0)
    monitor = Monitor(lambda: load.sent, lambda: len(setup.latencies.first), setup.scaler.watch,
                      client.CoreV1Api(backend.api), setup.ctx.namespace, broker_pid(backend),
                      default_pool=setup.scaler.pool)
    try:
        monitor.start()
        load.start()
        emit(event="load_started", profile=load.profile.description)
        result: LoadResult = load.join(args.base_seconds + args.high_seconds + 300)
        load_end = time.time()
        backlog_at_end = result.produced - len(setup.latencies.first)
        accounting = setup.ledger.wait_for(result.ids, args.drain_seconds)
        drained_at = time.time() if accounting.complete else None
        monitor.stop()
        start = result.started_at
        high_start = start + args.base_seconds
        rows = latency_by_minute(setup.latencies.first, int(start * 1000), int(load_end * 1000))
        judged_from = first_judged_minute(args.base_seconds, args.settle_seconds)
        over = minutes_over_target(rows, judged_from, args.target_ms)
        cores = monitor.cores_between(high_start + args.settle_seconds, load_end)
        machine = cores.pop("machine", 0.0)
        processes = summarize_cores(cores | {"machine": machine}, setup.ctx.name)
        high_latencies = setup.latencies.between(int((high_start + args.settle_seconds) * 1000), int(load_end * 1000))
        capacity = capacity_timeline(monitor.points, start)
        summary: dict[str, Any] = {
            "mode": "headline", "policy": policy, "config": setup.scaler.config,
            "profile": load.profile.description,
            "partitions": args.partitions, "message_bytes": MESSAGE_BYTES, "io_ms": args.io_ms,
            "target_time_lag": args.target_time_lag,
            "produced": result.produced, "planned": result.planned, "dropped_by_producer": result.dropped,
            "produce_rate_high_phase": round(rate_between(monitor.points, "sent", high_start, load_end), 1),
            "consume_rate_high_phase": round(rate_between(monitor.points, "processed", high_start, load_end), 1),
            "processed": accounting.processed, "lost": len(accounting.missing), "duplicates": accounting.duplicates,
            "backlog_when_producing_stopped": backlog_at_end,
            "seconds_to_drain_after_producing_stopped": round(drained_at - load_end, 1) if drained_at else None,
            "committed_lag_at_end": committed_backlog(setup),
            "latency_per_minute": [row.__dict__ for row in rows],
            "judged_from_minute": judged_from,
            "minutes_over_target": over,
            "high_phase_p99_ms": round(quantile(high_latencies, 0.99) * 1000, 1),
            "goal_met": not over and accounting.complete and backlog_at_end <= args.rate * 1.0,
            "cpu_cores_high_phase": {"machine_busy": machine, **processes,
                                     "per_pod": {k: v for k, v in cores.items() if k.startswith("pod/")}},
            "bottleneck": bottleneck(processes, machine, os.cpu_count() or 1),
            "capacity_timeline": capacity,
            # Over the produce window [start, producing stopped]: the Deployment's replicas, and x the pool.
            **capacity_seconds(capacity, load_end - start),
            # What the operator decided and why (the group's status.lastDecision at each change).
            "decisions": setup.scaler.watch.decisions(start).splitlines(),
            "producer_lateness_s": result.lateness_summary(),
        }
        if setup.scaler.hpa is not None:
            summary["hpa_timeline"] = setup.scaler.hpa.timeline(start)
        emit(event="run_finished", **summary)
        return summary
    finally:
        monitor.stop()
        load.stop()
        tear_down(setup)


def search(args: argparse.Namespace, backend: NodeBackend, work_dir: Path, policy: str) -> dict[str, Any]:
    setup = set_up(args, backend, work_dir, policy)
    sent_before = 0
    current: list[LoadGenerator] = []
    monitor = Monitor(lambda: sent_before + (current[-1].sent if current else 0), lambda: len(setup.latencies.first),
                      setup.scaler.watch, client.CoreV1Api(backend.api), setup.ctx.namespace, broker_pid(backend),
                      default_pool=setup.scaler.pool)
    state = RateSearch(args.search_start, args.rate, args.search_resolution)
    steps_done: list[dict[str, Any]] = []
    run_start = time.time()
    try:
        monitor.start()
        while (rate := state.next_rate()) is not None:
            load = SeedLoadGenerator(backend.kafka_bootstrap, setup.ctx.topic, steps([(args.step_seconds, rate)]),
                                     messages=SeedMessages(), key_space=0)
            current.append(load)
            load.start()
            result = load.join(args.step_seconds + 120)
            step_end = time.time()
            accounting = setup.ledger.wait_for(result.ids, args.drain_grace_seconds)
            sent_before += load.sent
            judged_start = result.started_at + args.step_seconds - args.judge_seconds
            latencies = setup.latencies.between(int(judged_start * 1000), int(step_end * 1000))
            achieved = rate_between(monitor.points, "sent", judged_start, step_end)
            p99 = quantile(latencies, 0.99)
            verdict = judge_step(planned_rate=rate, achieved_rate=achieved, p99_s=p99,
                                 target_s=args.target_ms / 1000, unprocessed=len(accounting.missing))
            state = state.record(rate, verdict)
            cores = monitor.cores_between(judged_start, step_end)
            machine = cores.pop("machine", 0.0)
            processes = summarize_cores(cores | {"machine": machine}, setup.ctx.name)
            step = {"rate": rate, "passed": verdict.passed, "reason": verdict.reason,
                    "achieved_produce_rate": round(achieved, 1),
                    "consume_rate": round(rate_between(monitor.points, "processed", judged_start, step_end), 1),
                    "p50_ms": round(quantile(latencies, 0.5) * 1000, 1), "p99_ms": round(p99 * 1000, 1),
                    "p999_ms": round(quantile(latencies, 0.999) * 1000, 1),
                    "unprocessed": len(accounting.missing), "duplicates": accounting.duplicates,
                    "replicas": setup.scaler.watch.current_replicas,
                    "pool": setup.scaler.watch.status.get("poolSize") or setup.scaler.pool,
                    "cpu_cores": {"machine_busy": machine, **processes,
                                  "per_pod": {k: v for k, v in cores.items() if k.startswith("pod/")}},
                    "bottleneck": bottleneck(processes, machine, os.cpu_count() or 1)}
            steps_done.append(step)
            emit(event="step_finished", **step)
        summary = {"mode": "search", "policy": policy, "config": setup.scaler.config, "target_ms": args.target_ms,
                   "step_seconds": args.step_seconds, "judge_seconds": args.judge_seconds,
                   "max_sustained_rate": state.best, "lowest_failed_rate": min(state.failed, default=None),
                   "bottleneck_at_failure": next((s["bottleneck"] for s in steps_done if not s["passed"]), None),
                   "steps": steps_done, "capacity_timeline": capacity_timeline(monitor.points, run_start),
                   "decisions": setup.scaler.watch.decisions(run_start).splitlines(),
                   "wall_seconds": round(time.time() - run_start)}
        emit(event="search_finished", **{k: v for k, v in summary.items() if k != "steps"})
        return summary
    finally:
        monitor.stop()
        for generator in current:
            generator.stop()
        tear_down(setup)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("headline", "search"), default="headline")
    p.add_argument("--policy", "--policies", dest="policy", default="lagpilot",
                   help=f"what scales the workers, comma-separated, run one after another on the same load: "
                        f"{', '.join(POLICIES)}")
    p.add_argument("--keda-lag-per-slot", type=int, default=LAG_PER_SLOT,
                   help="KEDA's lagThreshold is this x the pool (bench/real_keda.py keda_lag_threshold)")
    p.add_argument("--stack-env", type=Path, default=None,
                   help="use the stack these `export` lines describe (e.g. .stack/env) as it runs, "
                        "instead of `hack/stack.py up`")
    p.add_argument("--out", type=Path, default=None, help="also write the final JSON object here")
    p.add_argument("--quick", action="store_true",
                   help="headline: 60 s base, 120 s high; search: 60 s steps judged on the last 30 s")
    p.add_argument("--rate", type=float, default=12_000.0, help="the high phase's msg/s (search: the ceiling)")
    p.add_argument("--base-rate", type=float, default=800.0)
    p.add_argument("--base-seconds", type=float, default=120.0)
    p.add_argument("--high-seconds", type=float, default=300.0)
    p.add_argument("--settle-seconds", type=float, default=60.0,
                   help="after the high phase begins, minutes are judged from the first that starts this much later")
    p.add_argument("--drain-seconds", type=float, default=120.0, help="wait for the backlog after producing stops")
    p.add_argument("--partitions", type=int, default=32)
    p.add_argument("--io-ms", type=int, default=2, help="the handler's simulated I/O per record")
    p.add_argument("--target-ms", type=float, default=200.0, help="the P99 goal")
    p.add_argument("--target-time-lag", default="200ms", help="the drainTime policy's targetTimeLag")
    p.add_argument("--commit-interval-seconds", type=float, default=1.0,
                   help="the workers' commit interval: the committed time lag the operator sees is at least "
                        "about this, so a 200 ms target needs it shorter")
    p.add_argument("--replicas-max", type=int, default=8)
    p.add_argument("--pool-initial", type=int, default=4)
    p.add_argument("--pool-max", type=int, default=64)
    p.add_argument("--search-start", type=float, default=400.0)
    p.add_argument("--search-resolution", type=float, default=0.15)
    p.add_argument("--step-seconds", type=float, default=90.0)
    p.add_argument("--judge-seconds", type=float, default=45.0)
    p.add_argument("--drain-grace-seconds", type=float, default=15.0)
    p.add_argument("--keep-logs", type=Path, default=None, help="copy the operator's log here")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.quick:
        defaults = p.parse_args([])
        for key, quick in (("base_seconds", 60.0), ("high_seconds", 120.0), ("step_seconds", 60.0),
                           ("judge_seconds", 30.0)):
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, quick)
    if args.judge_seconds > args.step_seconds:
        p.error("--judge-seconds must be at most --step-seconds")
    try:
        policies = parse_policies(args.policy, POLICIES)
    except ValueError as error:
        p.error(str(error))
    work_dir = Path(tempfile.mkdtemp(prefix="lagpilot-seed-bench-"))
    started = time.time()
    backend = node_backend(args.stack_env, work_dir)
    emit(event="bench_started", policies=policies,
         config={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
    backend.start()
    run = headline if args.mode == "headline" else search
    try:
        results = run_in_order(policies, uses_keda, backend.stack_dir,
                               lambda policy: run(args, backend, work_dir / policy, policy))
    finally:
        backend.stop()
        if args.keep_logs is not None:
            shutil.copytree(work_dir, args.keep_logs, dirs_exist_ok=True)
        shutil.rmtree(work_dir, ignore_errors=True)
    runs = dict(zip(policies, results, strict=True))
    final: dict[str, Any] = {"mode": args.mode, "policies": policies, "runs": runs}
    if args.mode == "headline":
        final["side_by_side"] = side_by_side(runs)
        for summary in runs.values():
            print(minute_table(summary) + "\n", file=sys.stderr, flush=True)
        print(side_by_side_table(final["side_by_side"]), file=sys.stderr, flush=True)
    final["wall_seconds"] = round(time.time() - started)
    if args.out is not None:
        args.out.write_text(json.dumps(final, indent=1) + "\n")
    print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

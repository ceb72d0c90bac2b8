"""`lagpilot simulate`: replay a traffic trace through Lagpilot's policies and a KEDA-equivalent one.

The engine (`run`, `compare`) is pure and deterministic; `main` reads files and prints.

The world model, in fixed ticks (default 0.5 s):

* Production: the trace's rate (msg/s), spread evenly over the partitions.
* Consumption: each pod that has joined the group works on its assigned partitions with `pool`
  slots. A message costs `cpu` seconds of CPU plus `io` seconds of waiting (`--cost cpu=2ms,io=20ms`;
  a bare number is all waiting, the model before CPU was modelled), and a pod may use at most
  `pod_cpu` cores (a Python handler that holds the GIL gets about one core however many slots it
  has). A pod then finishes min(pool / (cpu + io), pod_cpu / cpu) messages per second
  (`pod_throughput`): slots add throughput until the CPU is saturated, at pool = pod_cpu x
  (cpu + io) / cpu (`saturating_pool`), and nothing after. A message holds its slot
  max(cpu + io, busy slots x cpu / pod_cpu) seconds (waiting for the CPU counts in its latency).
  Records are assumed keyed (key ordering), so all slots of a pod are usable whatever its
  partition count; a pod shares its throughput between its partitions by backlog (water-filling).
  Pods beyond the partition count get no partitions.
* A new pod consumes only after `startup_seconds`; whenever the group's membership changes (a pod
  joins or leaves) all consumption stops for `rebalance_seconds` (eager rebalance). Pool changes are
  live: they apply `pool_apply_seconds` after the decision, without a rebalance.
* Consumers commit every `commit_interval_seconds` (librdkafka's auto-commit default is 5 s) and on
  every rebalance; policies see committed offsets, so lag includes up to one commit interval. With a
  `commit_trail` (default 0) the offsets they commit trail what they processed by that fraction of the
  partition's backlog: a worker that commits its lowest unfinished offset while its slots serve the
  keys in turn (key ordering) leaves its oldest record waiting longer than the backlog's average, with
  records finished above it that a lag reader counts as lag. Measured on the real worker by
  `lagpilot_operator.core.calibration` (about half the backlog at 16 slots, none at 4).
* Policies see offsets only when they poll: Lagpilot every `lag.pollIntervalSeconds` (default 5 s);
  the KEDA equivalent's HPA every 15 s (KEDA's metrics server reads the lag afresh for each HPA
  request; its own `pollingInterval`, 30 s, paces only activation from and to zero). Phases are set
  so each first poll after a change comes half an interval later (the average case): Lagpilot at
  2.5 + 5k s, KEDA polls at 15 + 30k s, HPA syncs at 7.5 + 15k s (a replay of a measured run sets
  `KedaController`'s phases from it: `lagpilot_operator.core.calibration`).
* A KEDA-scaled pod runs a fixed pool of `keda_pool` consumer threads, by default Lagpilot's
  `pool.initial`: what a KEDA user running a multi-threaded consumer configures (KEDA scales pods only,
  so the pool never changes). Its `maxReplicaCount` is `replicas.max` capped at the partition count,
  as KEDA's documentation advises.

Reported per policy: time to drain (from the start of the trace's first peak-rate segment until the
backlog, after that segment ends, is at most one second of the following rate), peak lag (the true
backlog, messages produced and not yet processed), p99 end-to-end latency (each processed message's
wait since it was produced, plus its time in a slot), and pod-seconds (pods existing, starting ones
included). Per tick, each point also carries the latency of the oldest message finished in it.

Traces: a list of {seconds, rate} segments (YAML/JSON), a list of {t_seconds, msgs_per_s} points, or
a CSV of `t_seconds,msgs_per_s` rows (a header line allowed; what Grafana or Prometheus export): each
point's rate holds until the next point's time, the last one for the median step.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import io
import json
import math
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from lagpilot_operator.core import keda
from lagpilot_operator.core.observations import LagHistory, LagSample, PartitionOffsets
from lagpilot_operator.core.policy import Mode, Observation, PolicyConfig, PolicyMemory, decide
from lagpilot_operator.core.timelag import TimeLagTracker
from lagpilot_operator.core.verdicts import evaluate as evaluate_verdicts

TOPIC = "sim"


# --- traces ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    seconds: float
    rate: float


@dataclass(frozen=True)
class Trace:
    name: str
    segments: tuple[Segment, ...]

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("a trace needs at least one segment")
        for segment in self.segments:
            if segment.seconds <= 0 or segment.rate < 0 or not math.isfinite(segment.rate):
                raise ValueError(f"bad segment {segment}: seconds must be > 0 and rate >= 0")

    @property
    def duration(self) -> float:
        return sum(s.seconds for s in self.segments)

    def boundaries(self) -> list[float]:
        """Start time of each segment, plus the end of the trace."""
        times = [0.0]
        for segment in self.segments:
            times.append(times[-1] + segment.seconds)
        return times

    def rate_at(self, time: float) -> float:
        starts = self.boundaries()
        index = bisect.bisect_right(starts, time) - 1
        return self.segments[min(max(index, 0), len(self.segments) - 1)].rate if time < starts[-1] else 0.0

    def peak(self) -> tuple[float, float, float | None]:
        """(start, end) of the first peak-rate segment and the rate after it (None: trace ends there)."""
        starts = self.boundaries()
        peak_rate = max(s.rate for s in self.segments)
        index = next(i for i, s in enumerate(self.segments) if s.rate == peak_rate)
        after = self.segments[index + 1].rate if index + 1 < len(self.segments) else None
        return starts[index], starts[index + 1], after

    def produced_until(self, time: float) -> float:
        """Messages produced (all partitions) from 0 to `time`."""
        total, start = 0.0, 0.0
        for segment in self.segments:
            end = start + segment.seconds
            if time <= start:
                break
            total += segment.rate * (min(time, end) - start)
            start = end
        return total

    def time_of(self, produced: float) -> float:
        """Inverse of `produced_until` (the time the `produced`-th message was produced)."""
        total, start = 0.0, 0.0
        for segment in self.segments:
            amount = segment.rate * segment.seconds
            if segment.rate > 0 and total + amount >= produced:
                return start + (produced - total) / segment.rate
            total += amount
            start += segment.seconds
        return start


def _sine_segments() -> tuple[Segment, ...]:
    return tuple(Segment(10.0, round(150 + 120 * math.sin(2 * math.pi * (i * 10 + 5) / 300), 1)) for i in range(90))


BUILTIN_TRACES: dict[str, Trace] = {
    # Quiet, then a 2-minute burst above what one consumer per partition can do (12 x 20 msg/s
    # at the default cost), then quiet long enough for every policy to scale back.
    "burst": Trace("burst", (Segment(60, 10), Segment(120, 500), Segment(720, 10))),
    "steady": Trace("steady", (Segment(600, 100),)),
    "sine": Trace("sine", _sine_segments()),
    "steps": Trace("steps", (*(Segment(120, r) for r in (20, 100, 200, 400, 200, 100)), Segment(240, 20))),
}


TIME_KEYS = ("t_seconds", "t")
RATE_KEYS = ("msgs_per_s", "rate")


def trace_from_points(points: Sequence[tuple[float, float]], name: str = "trace",
                      where: Sequence[str] | None = None) -> Trace:
    """Timestamped rates (time, msg/s) as a step function: each rate holds until the next time, the last
    for the median step between points (one point: 60 s). Times are relative to the first one (epoch
    seconds from a Prometheus export work as well as 0, 10, 20 ...). `where` names each point in errors."""
    if not points:
        raise ValueError("no data: a trace needs at least one (t_seconds, msgs_per_s) point")
    labels = list(where) if where is not None else [f"point {i}" for i in range(len(points))]
    for (time, rate), label in zip(points, labels, strict=True):
        if not (math.isfinite(time) and math.isfinite(rate)):
            raise ValueError(f"{label}: t_seconds and msgs_per_s must be finite numbers")
        if rate < 0:
            raise ValueError(f"{label}: msgs_per_s must be >= 0, got {rate:g}")
    steps = []
    for (before, _), (after, _), label in zip(points, points[1:], labels[1:], strict=False):
        if after <= before:
            raise ValueError(f"{label}: t_seconds must increase ({after:g} after {before:g})")
        steps.append(after - before)
    last = statistics.median(steps) if steps else 60.0
    return Trace(name, tuple(Segment(step, rate) for step, (_, rate) in zip([*steps, last], points, strict=True)))


def _number_or_time(text: str) -> float:
    """A number of seconds, or an ISO 8601 time (Grafana's CSV export writes those)."""
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_csv_trace(text: str, name: str = "trace") -> Trace:
    """`t_seconds,msgs_per_s` rows; a first line that is not numbers is a header. Errors name the line."""
    points: list[tuple[float, float]] = []
    where: list[str] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise ValueError(f"line {number}: expected 2 comma-separated values (t_seconds,msgs_per_s), "
                             f"got {len(cells)}")
        try:
            point = (_number_or_time(cells[0]), float(cells[1]))
        except ValueError as exc:
            if not points and not where and number == _first_line(text):
                continue  # the header
            raise ValueError(f"line {number}: {cells[0]!r},{cells[1]!r} is not a time and a rate") from exc
        points.append(point)
        where.append(f"line {number}")
    return trace_from_points(points, name, where)


def _first_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return 0


def parse_trace(data: object, name: str = "trace") -> Trace:
    """A list of {seconds, rate} mappings (or a mapping with such a list under `segments`), or a list of
    timestamped {t_seconds, msgs_per_s} points (`t` and `rate` also accepted; see trace_from_points)."""
    if isinstance(data, Mapping):
        data = data.get("segments")
    if not isinstance(data, list):
        raise ValueError("a trace is a list of {seconds, rate} segments (or {segments: [...]}) or of "
                         "{t_seconds, msgs_per_s} points")
    if data and isinstance(data[0], Mapping) and any(key in data[0] for key in TIME_KEYS):
        return _parse_points(data, name)
    segments = []
    for index, item in enumerate(data):
        if not isinstance(item, Mapping) or "seconds" not in item or "rate" not in item:
            raise ValueError(f"segment {index}: expected a mapping with 'seconds' and 'rate'")
        try:
            segments.append(Segment(float(item["seconds"]), float(item["rate"])))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"segment {index}: seconds and rate must be numbers") from exc
    return Trace(name, tuple(segments))


def _parse_points(data: list[object], name: str) -> Trace:
    points = []
    for index, item in enumerate(data):
        time_key = next((k for k in TIME_KEYS if isinstance(item, Mapping) and k in item), None)
        rate_key = next((k for k in RATE_KEYS if isinstance(item, Mapping) and k in item), None)
        if not isinstance(item, Mapping) or time_key is None or rate_key is None:
            raise ValueError(f"point {index}: expected a mapping with 't_seconds' and 'msgs_per_s'")
        try:
            points.append((float(item[time_key]), float(item[rate_key])))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"point {index}: t_seconds and msgs_per_s must be numbers") from exc
    return trace_from_points(points, name)


# --- the world ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldModel:
    partitions: int = 12
    message_cost_seconds: float = 0.05  # a message's time in a slot without CPU contention: cpu + io
    rebalance_seconds: float = 3.0
    startup_seconds: float = 5.0
    pool_apply_seconds: float = 1.0
    commit_interval_seconds: float = 5.0
    commit_trail: float = 0.0  # committed offsets trail the processed ones by this fraction of the backlog
    tick_seconds: float = 0.5
    cpu_seconds: float = 0.0  # the CPU part of message_cost_seconds (0: all waiting, slots are free)
    pod_cpu: float = 1.0      # cores a pod can use: a Python handler holding the GIL gets about one

    def __post_init__(self) -> None:
        if self.partitions < 1 or self.message_cost_seconds <= 0 or self.tick_seconds <= 0:
            raise ValueError("partitions >= 1, message cost > 0 and tick > 0 are required")
        if not 0 <= self.cpu_seconds <= self.message_cost_seconds:
            raise ValueError("the CPU part of a message's cost must be between 0 and the whole cost")
        if not self.pod_cpu > 0:
            raise ValueError("pod CPU must be > 0 cores")
        if not self.commit_trail >= 0:
            raise ValueError("the commit trail must be >= 0 (a fraction of the backlog)")

    @property
    def io_seconds(self) -> float:
        return self.message_cost_seconds - self.cpu_seconds

    @classmethod
    def with_cost(cls, cost: MessageCost, **fields: Any) -> WorldModel:
        return cls(message_cost_seconds=cost.total_seconds, cpu_seconds=cost.cpu_seconds, **fields)


@dataclass(frozen=True)
class MessageCost:
    """What one message costs a slot: CPU seconds plus waiting (I/O) seconds."""

    cpu_seconds: float = 0.0
    io_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.cpu_seconds + self.io_seconds


_COST_VALUE = re.compile(r"^([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)(ms|s)?$")


def _cost_seconds(text: str, where: str) -> float:
    match = _COST_VALUE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--cost {where}: {text!r} is not a duration (e.g. 20ms, 0.02 or 0.02s)")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def parse_cost(text: str) -> MessageCost:
    """`0.05`, `50ms` (all waiting, as before CPU was modelled), or `cpu=2ms,io=20ms` (either part may be
    left out: `cpu=5ms` is all CPU). Numbers without a unit are seconds."""
    if "=" not in text:
        return MessageCost(io_seconds=_cost_seconds(text, "value"))
    parts: dict[str, float] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ("cpu", "io"):
            raise ValueError(f"--cost: {item.strip()!r}: expected cpu=<duration> and/or io=<duration>")
        if key in parts:
            raise ValueError(f"--cost: {key} given twice")
        parts[key] = _cost_seconds(value, key)
    cost = MessageCost(cpu_seconds=parts.get("cpu", 0.0), io_seconds=parts.get("io", 0.0))
    if cost.total_seconds <= 0:
        raise ValueError("--cost: a message must cost more than 0 s")
    return cost


def pod_throughput(model: WorldModel, slots: float) -> float:
    """Messages per second one pod finishes with `slots` busy slots: each slot does 1 / (cpu + io), and
    all of them together at most pod_cpu / cpu (the CPU limit; a GIL-bound handler: one core)."""
    by_slots = slots / model.message_cost_seconds
    if model.cpu_seconds <= 0:
        return by_slots
    return min(by_slots, model.pod_cpu / model.cpu_seconds)


def saturating_pool(model: WorldModel) -> float:
    """The pool at which a pod's CPU saturates: more slots add no throughput (inf: never)."""
    if model.cpu_seconds <= 0:
        return math.inf
    return model.pod_cpu * model.message_cost_seconds / model.cpu_seconds


@dataclass
class _Pod:
    created: float
    ready_at: float
    joined: bool = False


class World:
    """The simulated group: partitions, pods, pool, commits. Mutable; one per policy run."""

    def __init__(self, model: WorldModel, trace: Trace, replicas: int, pool: int) -> None:
        self.model = model
        self.trace = trace
        self.time = 0.0
        n = model.partitions
        self.produced = [0.0] * n
        self.consumed = [0.0] * n
        self.committed = [0] * n
        self.pods = [_Pod(created=0.0, ready_at=0.0, joined=True) for _ in range(replicas)]
        self.pool = pool
        self.pending_pool: list[tuple[float, int]] = []
        self.rebalance_until = 0.0
        self.next_commit = model.commit_interval_seconds
        self.rebalances = 0
        self.pod_seconds = 0.0
        self.latencies: list[tuple[float, float]] = []  # (latency seconds, messages)
        self.tick_latency: float | None = None  # the oldest message finished in the last tick
        self._assignment = self._assign()

    # actions of the autoscaler ------------------------------------------------------------------

    def set_replicas(self, replicas: int) -> None:
        replicas = max(0, replicas)
        while len(self.pods) < replicas:
            self.pods.append(_Pod(created=self.time, ready_at=self.time + self.model.startup_seconds))
        left = False
        while len(self.pods) > replicas:
            left = self.pods.pop().joined or left  # newest first: starting pods go before working ones
        if left:
            self._rebalance()

    def set_pool(self, pool: int) -> None:
        self.pending_pool.append((self.time + self.model.pool_apply_seconds, pool))

    @property
    def desired_pool(self) -> int:
        return self.pending_pool[-1][1] if self.pending_pool else self.pool

    # what a poll sees -------------------------------------------------------------------------------

    def sample(self) -> LagSample:
        partitions = tuple(
            PartitionOffsets(TOPIC, p, math.floor(self.produced[p] + 1e-9), self.committed[p])
            for p in range(self.model.partitions)
        )
        return LagSample(self.time, partitions, members=self.members)

    @property
    def members(self) -> int:
        return sum(1 for pod in self.pods if pod.joined)

    @property
    def backlog(self) -> float:
        return sum(self.produced) - sum(self.consumed)

    @property
    def committed_lag(self) -> int:
        return sum(math.floor(pr + 1e-9) - c for pr, c in zip(self.produced, self.committed, strict=True))

    # one tick ------------------------------------------------------------------------------------

    def _assign(self) -> list[list[int]]:
        members = [pod for pod in self.pods if pod.joined]
        assignment: list[list[int]] = [[] for _ in members]
        if members:
            for partition in range(self.model.partitions):
                assignment[partition % len(members)].append(partition)
        return assignment

    def _commit(self) -> None:
        trail = self.model.commit_trail
        if trail <= 0:
            self.committed = [math.floor(c + 1e-9) for c in self.consumed]
            return
        # Behind what was processed by a fraction of the backlog; never behind what is committed already.
        self.committed = [max(c, math.floor(done - trail * (produced - done) + 1e-9))
                          for c, done, produced in zip(self.committed, self.consumed, self.produced, strict=True)]

    def _rebalance(self) -> None:
        self._commit()  # members commit what they finished when partitions are revoked
        self.rebalances += 1
        self.rebalance_until = max(self.rebalance_until, self.time + self.model.rebalance_seconds)
        self._assignment = self._assign()

    def step(self) -> None:
        model, dt, now = self.model, self.model.tick_seconds, self.time
        per_partition = self.trace.produced_until(now + dt) / model.partitions
        for p in range(model.partitions):
            self.produced[p] = per_partition
        while self.pending_pool and self.pending_pool[0][0] <= now:
            self.pool = self.pending_pool.pop(0)[1]
        joined = False
        for pod in self.pods:
            if not pod.joined and pod.ready_at <= now:
                pod.joined = joined = True
        if joined:
            self._rebalance()
        self.tick_latency = None
        if now >= self.rebalance_until:
            for partitions in self._assignment:
                waiting = sum(self.produced[p] - self.consumed[p] for p in partitions)
                # Slots with a message to work on this tick (every message a slot could start).
                busy = min(float(self.pool), waiting * model.message_cost_seconds / dt)
                capacity = pod_throughput(model, self.pool) * dt
                in_slot = max(model.message_cost_seconds, busy * model.cpu_seconds / model.pod_cpu)
                self._consume(partitions, capacity, now + dt, in_slot)
        self.time = now + dt
        if self.time >= self.next_commit - 1e-9:
            self._commit()
            self.next_commit += model.commit_interval_seconds
        self.pod_seconds += len(self.pods) * dt

    def _consume(self, partitions: list[int], capacity: float, done_at: float, in_slot: float) -> None:
        """Water-filling: equal shares, what a partition cannot use goes to the others."""
        waiting = sorted(partitions, key=lambda p: self.produced[p] - self.consumed[p])
        remaining = capacity
        for index, p in enumerate(waiting):
            share = remaining / (len(waiting) - index)
            amount = min(share, self.produced[p] - self.consumed[p])
            if amount <= 0:
                continue
            middle = (self.consumed[p] + amount / 2) * self.model.partitions
            wait = max(0.0, done_at - self.trace.time_of(middle) - self.model.tick_seconds / 2)
            self.latencies.append((wait + in_slot, amount))
            oldest = self.consumed[p] * self.model.partitions
            oldest_latency = max(0.0, done_at - self.trace.time_of(oldest) - self.model.tick_seconds / 2) + in_slot
            self.tick_latency = max(self.tick_latency or 0.0, oldest_latency)
            self.consumed[p] += amount
            remaining -= amount


# --- controllers -------------------------------------------------------------------------------------


class Controller(Protocol):
    name: str

    def initial(self) -> tuple[int, int]: ...

    def on_tick(self, world: World) -> None: ...


@dataclass
class LagpilotController:
    name: str
    config: PolicyConfig
    phase: float = -1.0  # default: half a poll interval
    history: LagHistory = field(default_factory=LagHistory)
    tracker: TimeLagTracker = field(default_factory=TimeLagTracker)
    memory: PolicyMemory = field(default_factory=PolicyMemory)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    _next: float | None = None

    def initial(self) -> tuple[int, int]:
        return max(1, self.config.replicas.min), self.config.pool.initial

    def on_tick(self, world: World) -> None:
        interval = float(self.config.poll_interval_seconds)
        if self._next is None:
            self._next = interval / 2 if self.phase < 0 else self.phase
        if world.time + 1e-9 < self._next:
            return
        self._next += interval
        sample = world.sample()
        self.history.add(sample)
        self.tracker.add(sample)
        reset = self.config.lag_threshold.offset_reset_policy
        observation = Observation.from_history(
            self.history,
            current_replicas=len(world.pods),
            current_pool=world.desired_pool,
            verdicts=evaluate_verdicts(self.history, offset_reset_policy=reset),
            time_lags=self.tracker.time_lags(sample, offset_reset_policy=reset),
            ready_replicas=world.members,
            # What the operator reads from the workers' Deployment (worker_config.declared_commit_interval).
            commit_interval_seconds=world.model.commit_interval_seconds,
        )
        decision = decide(self.config, observation, self.memory, world.time)
        self.memory = decision.memory
        if decision.replicas != len(world.pods) or decision.pool != world.desired_pool:
            self.reasons.append((world.time, decision.reason))
        if decision.pool != world.desired_pool:
            world.set_pool(decision.pool)
        if decision.replicas != len(world.pods):
            world.set_replicas(decision.replicas)


@dataclass
class KedaController:
    name: str
    config: keda.KedaConfig
    pool: int  # fixed consumer threads per pod: no default, so no caller gets the one-slot straw man by accident
    poll_phase: float = -1.0
    sync_phase: float = -1.0
    state: keda.KedaState = field(default_factory=keda.KedaState)
    reasons: list[tuple[float, str]] = field(default_factory=list)
    readings: list[tuple[float, int]] = field(default_factory=list)  # (time, metric) the HPA read at each sync
    _next_poll: float | None = None
    _next_sync: float | None = None

    def initial(self) -> tuple[int, int]:
        return max(1, self.config.min_replicas), self.pool

    def on_tick(self, world: World) -> None:
        config = self.config
        if self._next_poll is None or self._next_sync is None:
            self._next_poll = config.polling_interval_seconds / 2 if self.poll_phase < 0 else self.poll_phase
            self._next_sync = config.hpa_sync_seconds / 2 if self.sync_phase < 0 else self.sync_phase
        if world.time + 1e-9 >= self._next_poll:
            self._next_poll += config.polling_interval_seconds
            self.state = keda.poll(config, self.state, world.sample(), world.time)
            act = keda.activation(config, self.state, len(world.pods), world.time)
            if act is not None and act.replicas != len(world.pods):
                self.reasons.append((world.time, act.reason))
                world.set_replicas(act.replicas)
        if world.time + 1e-9 >= self._next_sync:
            self._next_sync += config.hpa_sync_seconds
            self.state = keda.hpa_metric_read(config, self.state, world.sample(), world.time)
            if self.state.metric is not None:
                self.readings.append((world.time, self.state.metric.metric))
            decision = keda.hpa_sync(config, self.state, len(world.pods), world.time)
            self.state = decision.state
            if decision.replicas != len(world.pods):
                self.reasons.append((world.time, decision.reason))
                world.set_replicas(decision.replicas)


# --- running and summarising -------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    time: float
    rate: float
    lag: float          # true backlog
    committed_lag: int  # what a lag exporter shows
    replicas: int
    pool: int
    latency: float | None = None  # end-to-end seconds of the oldest message finished in the tick


@dataclass(frozen=True)
class Summary:
    time_to_drain_seconds: float | None
    peak_lag: int
    p99_latency_seconds: float
    pod_seconds: float
    max_replicas: int
    max_pool: int
    rebalances: int
    unprocessed_at_end: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "time_to_drain_seconds": None if self.time_to_drain_seconds is None
            else round(self.time_to_drain_seconds, 1),
            "peak_lag": self.peak_lag,
            "p99_latency_seconds": round(self.p99_latency_seconds, 2),
            "pod_seconds": round(self.pod_seconds, 1),
            "max_replicas": self.max_replicas,
            "max_pool": self.max_pool,
            "rebalances": self.rebalances,
            "unprocessed_at_end": self.unprocessed_at_end,
        }


@dataclass(frozen=True)
class RunResult:
    name: str
    points: tuple[Point, ...]
    summary: Summary
    reasons: tuple[tuple[float, str], ...]


def weighted_quantile(values: Sequence[tuple[float, float]], quantile: float) -> float:
    """Quantile of (value, weight) pairs; 0 for no weight."""
    total = sum(w for _, w in values)
    if total <= 0:
        return 0.0
    running = 0.0
    for value, weight in sorted(values):
        running += weight
        if running >= quantile * total:
            return value
    return max(v for v, _ in values)


def run(trace: Trace, model: WorldModel, controller: Controller) -> RunResult:
    replicas, pool = controller.initial()
    world = World(model, trace, replicas, pool)
    points: list[Point] = []
    steps = math.ceil(trace.duration / model.tick_seconds - 1e-9)
    for _ in range(steps):
        controller.on_tick(world)
        world.step()
        points.append(Point(world.time, trace.rate_at(world.time - model.tick_seconds), world.backlog,
                            world.committed_lag, len(world.pods), world.pool, world.tick_latency))
    summary = _summarize(trace, world, points)
    reasons: list[tuple[float, str]] = getattr(controller, "reasons", [])
    return RunResult(controller.name, tuple(points), summary, tuple(reasons))


def _summarize(trace: Trace, world: World, points: Sequence[Point]) -> Summary:
    start, end, after = trace.peak()
    drain: float | None = None
    if after is not None:
        threshold = max(1.0, after * 1.0)
        for point in points:
            if point.time >= end and point.lag <= threshold:
                drain = point.time - start
                break
    return Summary(
        time_to_drain_seconds=drain,
        peak_lag=round(max((p.lag for p in points), default=0.0)),
        p99_latency_seconds=weighted_quantile(world.latencies, 0.99),
        pod_seconds=world.pod_seconds,
        max_replicas=max((p.replicas for p in points), default=0),
        max_pool=max((p.pool for p in points), default=0),
        rebalances=world.rebalances,
        unprocessed_at_end=round(world.backlog),
    )


def keda_config_for(config: PolicyConfig, *, partitions: int | None = None, polling: float = 30.0,
                    sync: float = 15.0, lag_threshold: int | None = None) -> keda.KedaConfig:
    """The ScaledObject a KEDA user would write for the same group and bounds.

    `maxReplicaCount` is `replicas.max` capped at `partitions` (when given): replicas beyond the
    partition count would sit idle, so a KEDA user sets it no higher.
    """
    threshold = config.lag_threshold
    max_replicas = config.replicas.max
    if partitions is not None and not threshold.allow_idle_consumers:
        max_replicas = max(1, min(max_replicas, partitions))
    return keda.KedaConfig(
        lag_threshold=lag_threshold or threshold.lag_per_consumer,
        activation_lag_threshold=threshold.activation_lag,
        allow_idle_consumers=threshold.allow_idle_consumers,
        offset_reset_policy=threshold.offset_reset_policy,
        exclude_persistent_lag=threshold.exclude_persistent_lag,
        min_replicas=config.replicas.min,
        max_replicas=max_replicas,
        polling_interval_seconds=polling,
        hpa_sync_seconds=sync,
    )


POLICY_NAMES = ("drainTime", "lagThreshold", "keda")


def compare(
    trace: Trace,
    model: WorldModel,
    config: PolicyConfig,
    *,
    keda_config: keda.KedaConfig | None = None,
    keda_pool: int | None = None,
    policies: Sequence[str] = POLICY_NAMES,
) -> dict[str, RunResult]:
    """Run each policy on the same trace and world model.

    The KEDA side defaults to a fixed pool of `pool.initial` slots per pod and `maxReplicaCount` =
    `replicas.max` capped at the partitions (keda_config_for).
    """
    pool = config.pool.initial if keda_pool is None else keda_pool
    factories: dict[str, Callable[[], Controller]] = {
        "drainTime": lambda: LagpilotController("drainTime", replace(config, mode=_mode("drainTime"))),
        "lagThreshold": lambda: LagpilotController("lagThreshold", replace(config, mode=_mode("lagThreshold"))),
        "keda": lambda: KedaController("keda", keda_config or keda_config_for(config, partitions=model.partitions),
                                       pool=pool),
    }
    results = {}
    for name in policies:
        if name not in factories:
            raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
        results[name] = run(trace, model, factories[name]())
    return results


def _mode(name: str) -> Mode:
    return "drainTime" if name == "drainTime" else "lagThreshold"


def comparison_json(results: Mapping[str, RunResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"policies": {name: r.summary.to_dict() for name, r in results.items()}}
    speedup: float | None = None
    ratio: float | None = None
    if "drainTime" in results and "keda" in results:
        ours, theirs = results["drainTime"].summary, results["keda"].summary
        if ours.time_to_drain_seconds and theirs.time_to_drain_seconds:
            speedup = round(theirs.time_to_drain_seconds / ours.time_to_drain_seconds, 2)
        if theirs.pod_seconds > 0:
            ratio = round(ours.pod_seconds / theirs.pod_seconds, 3)
    out["drain_speedup_vs_keda"] = speedup
    out["pod_seconds_ratio_vs_keda"] = ratio
    return out


# --- output ------------------------------------------------------------------------------------------


def format_table(results: Mapping[str, RunResult], step: float) -> str:
    names = list(results)
    header = f"{'time':>6} {'rate':>7}" + "".join(f" | {n[:12]:>12} {'lag':>8} {'rep':>4} {'pool':>4}" for n in names)
    lines = [header, "-" * len(header)]
    runs = [results[n].points for n in names]
    next_time = 0.0
    for index, point in enumerate(runs[0]):
        if point.time + 1e-9 < next_time:
            continue
        next_time += step
        row = f"{point.time:6.0f} {point.rate:7.0f}"
        for name, points in zip(names, runs, strict=True):
            p = points[index]
            row += f" | {'':>12} {p.lag:8.0f} {p.replicas:4d} {p.pool:4d}"
            del name
        lines.append(row)
    return "\n".join(lines)


def format_summary(results: Mapping[str, RunResult]) -> str:
    header = (f"{'policy':<13} {'drain s':>8} {'peak lag':>9} {'p99 lat s':>9} {'pod-s':>8} "
              f"{'max rep':>7} {'max pool':>8} {'rebal':>5}")
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        s = result.summary
        drain = "never" if s.time_to_drain_seconds is None else f"{s.time_to_drain_seconds:.0f}"
        lines.append(f"{name:<13} {drain:>8} {s.peak_lag:>9,} {s.p99_latency_seconds:>9.1f} {s.pod_seconds:>8,.0f} "
                     f"{s.max_replicas:>7} {s.max_pool:>8} {s.rebalances:>5}")
    return "\n".join(lines)


def load_config(path: Path) -> PolicyConfig:
    """spec.policy / replicas / pool / lag / fallback of a KafkaConsumerGroup YAML (first such document)."""
    with path.open() as handle:
        documents = [d for d in yaml.safe_load_all(handle) if d is not None]
    for document in documents:
        if (
            isinstance(document, Mapping)
            and isinstance(document.get("spec"), Mapping)
            and document.get("kind", "KafkaConsumerGroup") == "KafkaConsumerGroup"
        ):
            return PolicyConfig.from_spec(document["spec"])
    raise ValueError(f"{path}: no KafkaConsumerGroup document with a spec")


def load_trace(value: str) -> Trace:
    if value in BUILTIN_TRACES:
        return BUILTIN_TRACES[value]
    path = Path(value)
    if not path.exists():
        raise ValueError(f"trace {value!r}: not a built-in ({', '.join(BUILTIN_TRACES)}) nor a file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".csv":
            return parse_csv_trace(text, path.stem)
        return parse_trace(yaml.safe_load(text), path.stem)  # YAML is a superset of JSON
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lagpilot simulate",
        description="Replay a traffic trace through Lagpilot's drainTime and lagThreshold policies and a "
                    "KEDA-equivalent (Kafka scaler + HPA) side by side. The last line is one JSON object.",
    )
    parser.add_argument("--trace", default="burst",
                        help=f"built-in ({', '.join(BUILTIN_TRACES)}), a YAML/JSON file ([{{seconds, rate}}, ...] "
                             "or [{t_seconds, msgs_per_s}, ...]) or a .csv of t_seconds,msgs_per_s rows "
                             "(header line allowed)")
    parser.add_argument("--cost", default=str(WorldModel.message_cost_seconds),
                        help="what one message costs a slot: cpu=2ms,io=20ms (CPU plus waiting), or one duration "
                             "(0.05, 50ms: all waiting) (default %(default)s)")
    parser.add_argument("--pod-cpu", type=float, default=WorldModel.pod_cpu,
                        help="cores one pod can use for the CPU part of the cost (default %(default)s: a Python "
                             "handler holding the GIL; inf for no limit)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="draw lag, replicas x pool and end-to-end latency over time, one column per policy "
                             "(needs matplotlib: pip install 'lagpilot[plot]')")
    parser.add_argument("--partitions", type=int, default=WorldModel.partitions, help="default %(default)s")
    parser.add_argument("--config", type=Path, help="a KafkaConsumerGroup YAML: its spec.policy, replicas, pool "
                                                     "and lag.pollIntervalSeconds are used (default: CRD defaults)")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated subset of "
                        f"{', '.join(POLICY_NAMES)}")
    parser.add_argument("--table", action="store_true", help="print lag, replicas and pool over time")
    parser.add_argument("--table-step", type=float, default=15.0, help="seconds between table rows")
    parser.add_argument("--tick", type=float, default=WorldModel.tick_seconds, help="simulation step, seconds")
    parser.add_argument("--rebalance-seconds", type=float, default=WorldModel.rebalance_seconds)
    parser.add_argument("--startup-seconds", type=float, default=WorldModel.startup_seconds)
    parser.add_argument("--pool-delay", type=float, default=WorldModel.pool_apply_seconds,
                        help="seconds until a pool change reaches the workers")
    parser.add_argument("--commit-interval", type=float, default=WorldModel.commit_interval_seconds)
    parser.add_argument("--keda-polling", type=float, default=30.0, help="KEDA pollingInterval (metric refresh)")
    parser.add_argument("--keda-sync", type=float, default=15.0, help="HPA sync period")
    parser.add_argument("--keda-pool", type=int, help="consumer threads per KEDA-scaled pod, fixed "
                        "(default: the config's pool.initial)")
    parser.add_argument("--keda-lag-threshold", type=int, help="KEDA lagThreshold (default: lagPerConsumer)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        trace = load_trace(args.trace)
        config = load_config(args.config) if args.config else PolicyConfig()
        cost = parse_cost(args.cost)
        model = WorldModel(
            partitions=args.partitions,
            message_cost_seconds=cost.total_seconds,
            cpu_seconds=cost.cpu_seconds,
            pod_cpu=args.pod_cpu,
            rebalance_seconds=args.rebalance_seconds,
            startup_seconds=args.startup_seconds,
            pool_apply_seconds=args.pool_delay,
            commit_interval_seconds=args.commit_interval,
            tick_seconds=args.tick,
        )
        policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        keda_config = keda_config_for(config, partitions=model.partitions, polling=args.keda_polling,
                                      sync=args.keda_sync, lag_threshold=args.keda_lag_threshold)
        keda_pool = config.pool.initial if args.keda_pool is None else args.keda_pool
        if keda_pool < 1:
            raise ValueError("--keda-pool must be >= 1")
        results = compare(trace, model, config, keda_config=keda_config, keda_pool=keda_pool,
                          policies=policies)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"lagpilot simulate: {exc}", file=sys.stderr)
        return 2
    peak_start, peak_end, _ = trace.peak()
    print(f"trace {trace.name}: {trace.duration:.0f} s, peak {max(s.rate for s in trace.segments):,.0f} msg/s "
          f"from {peak_start:.0f} s to {peak_end:.0f} s; {model.partitions} partitions, "
          f"{_describe_cost(model)}; "
          f"replicas {config.replicas.min}..{config.replicas.max}, "
          f"pool {config.pool.min}..{config.pool.max} (initial {config.pool.initial}); KEDA pods run a fixed "
          f"{keda_pool} consumer thread{'s' if keda_pool != 1 else ''}, maxReplicaCount {keda_config.max_replicas}")
    if args.table:
        print(format_table(results, args.table_step))
        print()
    print(format_summary(results))
    if args.plot is not None:
        from lagpilot_operator.core import plot  # matplotlib is an optional extra

        try:
            plot.save(results, args.plot, title=f"trace {trace.name}: {_describe_cost(model)}")
        except (plot.PlotUnavailable, OSError) as exc:
            print(f"lagpilot simulate: {exc}", file=sys.stderr)
            return 2
        print(f"plot written to {args.plot}")
    print(json.dumps(comparison_json(results), sort_keys=True))
    return 0


def _describe_cost(model: WorldModel) -> str:
    if model.cpu_seconds <= 0:
        return f"{model.message_cost_seconds * 1000:g} ms/msg per slot"
    knee = saturating_pool(model)
    return (f"{model.cpu_seconds * 1000:g} ms CPU + {model.io_seconds * 1000:g} ms I/O per msg, "
            f"{model.pod_cpu:g} core{'s' if model.pod_cpu != 1 else ''} per pod "
            f"(slots stop adding throughput at pool {knee:.1f})")


if __name__ == "__main__":
    sys.exit(main())

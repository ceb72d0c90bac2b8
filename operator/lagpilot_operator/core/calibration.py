"""The KEDA model against the real KEDA: replay a loop-benchmark trace through `lagpilot simulate`'s
KEDA side and compare its replica timeline with the measured one. Pure: the measurement is a dict in
the shape `bench/loop_bench.py` prints (its last JSON line), reduced or whole.

Per KEDA run (a fixed pool, `lagThreshold` from the run's ScaledObject):

* replica-seconds over the trace (spec.replicas integrated from 0 to the trace's end, what the bench
  calls pod-seconds), real and model, and the model's relative error;
* each scale step (a change of the replica count after 0), real and model matched in order: time,
  replicas, and the time difference.

Bounds (issue 15): replica-seconds within 10 %, every step within one KEDA polling period (30 s);
whether each step is within one HPA sync period (15 s) is reported beside, for information.

The replay's timing follows the bench: the ScaledObject is created before the trace starts and the
bench starts the trace right after the HPA's first metric reading, so the model's HPA syncs at that
reading's time + 15 k s (the recorder polls the HPA every 2 s: up to 2 s late) and KEDA's operator
polls from the HPA's creation (its first event in `hpa_timeline`) every `pollingInterval`.

The world the replay runs in. Without a `MeasuredWorld` it is `lagpilot simulate`'s defaults (50 ms a
message, pods consuming 5 s after they are created, a 3 s stop of the whole group at each rebalance,
commits every 5 s of exactly what was processed). The real loop's world differs, and `observe` measures
how from a run's own timelines (never from its replica timeline, which is the answer):

* the worker's speed: one pod's consumption while it worked alone in the burst (production minus the
  backlog's growth), per slot: the e2e worker needs about 58 ms of a slot per message, not the
  handler's 50 (the ledger write and the hand-offs);
* a new pod's start to consuming: from a scale step, the extra consumption in the next 10+ s; the old
  members keep consuming meanwhile (cooperative-sticky assignment), no group-wide stop;
* what the HPA reads above the true backlog (`Reading.excess`): the worker commits its lowest
  unfinished offset every second, and with 16 slots serving the keys in turn (key ordering) its oldest
  record waits longer than the backlog's average, with finished records above it that KEDA's scaler
  counts as lag. While one pod's backlog grew it was 0.44-0.57 x the backlog at pool 16 and none at
  pool 4 (`Reading.excess_fraction`; the world's `commit_trail`);
* when the HPA read (the model's syncs are placed from the run's first reading).

`measure_world` pools these over several measurements into one world (the same for every run: no
per-run constants), replayed at a tick of 0.1 s. The commit trail at a pool enters as its mean over
the readings taken while the backlog grew (`CommitTrail.central`); its spread is noise the model
cannot predict (which side of the HPA's tolerance a reading lands), so `noise_bands` replays each run
over the trail's mean +/- 2 standard deviations as well and says which realizations reproduce it.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lagpilot_operator.core import simulate
from lagpilot_operator.core.keda import KedaConfig
from lagpilot_operator.core.policy import PolicyConfig

REPLICA_SECONDS_BOUND = 0.10
# KEDA's defaults, as the model has them: the pollingInterval (the bound on each step) and the
# HPA's sync period.
POLLING_PERIOD_SECONDS = KedaConfig.polling_interval_seconds
HPA_SYNC_SECONDS = KedaConfig.hpa_sync_seconds
# A measured world is replayed at this tick: the HPA's reads land within 0.1 s of the real ones.
REPLAY_TICK_SECONDS = 0.1
# The noise band of the commit trail: its mean +/- this many standard deviations, replayed in these steps.
NOISE_SIGMAS = 2.0
TRAIL_GRID_STEP = 0.01
# Around a reading, the group's consumption is production minus the backlog's slope over +/- this.
CONSUMPTION_HALF_WINDOW_SECONDS = 2.5
# A reading measures the commit trail while the burst runs, the backlog grows and holds at least this
# many seconds of the burst's rate.
BUILD_UP_BACKLOG_SECONDS = 1.0
# A step's start-to-consuming delay is read from the first backlog point at least this long after it.
START_DELAY_WINDOW_SECONDS = 10.0
# One pod works alone until this long after the first step (the new ones consume some 6 s later).
ALONE_AFTER_STEP_SECONDS = 5.0

Timeline = Sequence[tuple[float, int]]  # (seconds from the trace's start, replicas), changes in order



@dataclass(frozen=True)
class Step:
    real_time: float | None
    real_replicas: int | None
    model_time: float | None
    model_replicas: int | None

    @property
    def difference(self) -> float | None:
        """Model minus real, seconds (None: one side has no such step)."""
        if self.real_time is None or self.model_time is None:
            return None
        return self.model_time - self.real_time

    def within(self, seconds: float) -> bool:
        return self.difference is not None and abs(self.difference) <= seconds

    def to_dict(self) -> dict[str, Any]:
        difference = self.difference
        return {
            "real_seconds": self.real_time, "real_replicas": self.real_replicas,
            "model_seconds": self.model_time, "model_replicas": self.model_replicas,
            "difference_seconds": None if difference is None else round(difference, 1),
            "within_polling_period": self.within(POLLING_PERIOD_SECONDS),
            "within_hpa_sync": self.within(HPA_SYNC_SECONDS),
        }


@dataclass(frozen=True)
class RunCalibration:
    run: str
    pool: int
    lag_threshold: int
    real_timeline: tuple[tuple[float, int], ...]
    model_timeline: tuple[tuple[float, int], ...]
    real_replica_seconds: float
    model_replica_seconds: float
    steps: tuple[Step, ...]
    commit_trail: float | None = None   # the replay's commit trail (None: the simulator's default world)
    model_readings: tuple[tuple[float, int], ...] = ()   # (time, metric) the model's HPA read at each sync

    @property
    def replica_seconds_error(self) -> float:
        """(model - real) / real."""
        return (self.model_replica_seconds - self.real_replica_seconds) / self.real_replica_seconds

    @property
    def replica_seconds_ok(self) -> bool:
        return abs(self.replica_seconds_error) <= REPLICA_SECONDS_BOUND

    @property
    def steps_ok(self) -> bool:
        return all(step.within(POLLING_PERIOD_SECONDS) for step in self.steps)

    @property
    def passed(self) -> bool:
        return self.replica_seconds_ok and self.steps_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "pool": self.pool, "lag_threshold": self.lag_threshold,
            "commit_trail": self.commit_trail,
            "real_replica_seconds": round(self.real_replica_seconds, 1),
            "model_replica_seconds": round(self.model_replica_seconds, 1),
            "replica_seconds_error": round(self.replica_seconds_error, 4),
            "replica_seconds_within_10_percent": self.replica_seconds_ok,
            "steps": [step.to_dict() for step in self.steps],
            "steps_within_polling_period": self.steps_ok,
            "steps_within_hpa_sync": all(step.within(HPA_SYNC_SECONDS) for step in self.steps),
            "real_timeline": [list(point) for point in self.real_timeline],
            "model_timeline": [list(point) for point in self.model_timeline],
            "passed": self.passed,
        }


def integral(timeline: Timeline, end: float) -> float:
    """Replica-seconds of a step function from 0 to `end` (the value before the first change: 0)."""
    total = 0.0
    for (time, replicas), following in itertools.zip_longest(timeline, timeline[1:]):
        until = end if following is None else following[0]
        low, high = max(time, 0.0), min(until, end)
        if high > low:
            total += replicas * (high - low)
    return total


def scale_steps(timeline: Timeline) -> list[tuple[float, int]]:
    """The changes of the replica count after the trace's start."""
    steps = []
    for (_, before), (time, after) in itertools.pairwise(timeline):
        if after != before and time > 0:
            steps.append((time, after))
    return steps


def match_steps(real: Timeline, model: Timeline) -> tuple[Step, ...]:
    """Real and model steps paired in order; an unpaired step has None on the other side."""
    pairs = itertools.zip_longest(scale_steps(real), scale_steps(model))
    return tuple(Step(r[0] if r else None, r[1] if r else None, m[0] if m else None, m[1] if m else None)
                 for r, m in pairs)


def trace_of(config: Mapping[str, Any]) -> simulate.Trace:
    """The loop benchmark's trace: base rate, burst, base rate again."""
    return simulate.Trace("loop", (
        simulate.Segment(float(config["before_seconds"]), float(config["base_rate"])),
        simulate.Segment(float(config["burst_seconds"]), float(config["burst_rate"])),
        simulate.Segment(float(config["after_seconds"]), float(config["base_rate"])),
    ))


def model_timeline(result: simulate.RunResult, tick: float) -> tuple[tuple[float, int], ...]:
    """The simulated replica count as changes: a point's replicas were set at the start of its tick."""
    timeline: list[tuple[float, int]] = []
    for point in result.points:
        start = round(point.time - tick, 6)
        if not timeline or timeline[-1][1] != point.replicas:
            timeline.append((max(start, 0.0), point.replicas))
    return tuple(timeline)


def hpa_phases(run: Mapping[str, Any], polling: float, sync: float) -> tuple[float, float]:
    """(KEDA's first poll, the HPA's first sync) at or after the trace's start, from the HPA's readings."""
    readings = run.get("hpa_timeline") or []
    created = float(readings[0]["time"]) if readings else 0.0
    first_metric = next((float(r["time"]) for r in readings if r.get("metric_average_value") is not None), 0.0)
    poll = created % polling
    hpa = first_metric % sync
    return poll, hpa


def keda_runs(measurement: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    runs = measurement.get("runs") or {}
    return [(name, run) for name, run in runs.items()
            if run.get("scaler") == "keda" and run.get("replica_timeline")]


def lag_threshold_of(run: Mapping[str, Any]) -> int:
    return int(run["config"]["scaled_object"]["triggers"][0]["metadata"]["lagThreshold"])


# --- what the real world did, from a run's timelines ---------------------------------------------------


_QUANTITY_SUFFIXES = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}


def quantity(text: object) -> float:
    """A Kubernetes quantity as the HPA's status writes a metric: "1760", "2500m", "736334m"."""
    value = str(text).strip()
    if value and value[-1] in _QUANTITY_SUFFIXES:
        return float(value[:-1]) * _QUANTITY_SUFFIXES[value[-1]]
    return float(value)


def value_at(timeline: Sequence[Sequence[float]], time: float) -> float:
    """A sampled timeline ([time, value] points in order) at `time`: linear between points, flat outside."""
    if not timeline:
        raise ValueError("an empty timeline has no value")
    if time <= timeline[0][0]:
        return float(timeline[0][1])
    for (t0, v0), (t1, v1) in itertools.pairwise(timeline):
        if t0 <= time <= t1:
            return float(v0) if t1 == t0 else float(v0) + (float(v1) - float(v0)) * (time - t0) / (t1 - t0)
    return float(timeline[-1][1])


@dataclass(frozen=True)
class Reading:
    """One HPA reading of KEDA's metric, beside the true backlog at that moment."""

    time: float
    replicas: int          # the HPA's current replicas
    metric: float          # the external metric's total: its average value x the replicas
    backlog: float         # the true backlog (the bench's, produced minus processed), interpolated
    consumption: float     # msg/s the group processed around the reading
    production: float      # msg/s produced then
    capped: bool           # at partitions x lagThreshold, KEDA's cap: says nothing about the lag
    during_build_up: bool  # in the burst, with at least BUILD_UP_BACKLOG_SECONDS of it in backlog
    desired: int | None

    @property
    def excess(self) -> float:
        """What the HPA read above the true backlog (messages)."""
        return self.metric - self.backlog

    @property
    def excess_fraction(self) -> float | None:
        """The excess as a fraction of the backlog."""
        return self.excess / self.backlog if self.backlog > 0 else None

    @property
    def growing(self) -> bool:
        return self.consumption < self.production

    @property
    def measures_commit_trail(self) -> bool:
        return self.during_build_up and self.growing and not self.capped and self.excess_fraction is not None


@dataclass(frozen=True)
class StartDelay:
    """A scale step and how long its new pods took from the step to consuming."""

    time: float
    before: int
    after: int
    window: float          # seconds from the step to the backlog point it was read from
    seconds: float


@dataclass(frozen=True)
class RunObservation:
    """What one real KEDA run's world did: the quantities the model's world is made of."""

    measurement: str
    run: str
    pool: int
    lag_threshold: int
    single_pod_rate: float | None     # msg/s of one pod while it worked alone in the burst
    readings: tuple[Reading, ...]
    start_delays: tuple[StartDelay, ...]
    sync_phase: float                 # the HPA's syncs at this + 15 k s (from its first reading)

    @property
    def per_slot_rate(self) -> float | None:
        return None if self.single_pod_rate is None else self.single_pod_rate / self.pool

    @property
    def commit_trail_samples(self) -> tuple[float, ...]:
        return tuple(r.excess_fraction for r in self.readings
                     if r.measures_commit_trail and r.excess_fraction is not None)


def _consumed(trace: simulate.Trace, backlog: Sequence[Sequence[float]], start: float, end: float) -> float:
    """Messages processed from `start` to `end`: produced minus the backlog's growth."""
    return (trace.produced_until(end) - trace.produced_until(start)
            - (value_at(backlog, end) - value_at(backlog, start)))


def observe_run(measurement: str, name: str, run: Mapping[str, Any], bench_config: Mapping[str, Any]
                ) -> RunObservation:
    """Measure one KEDA run's world from its backlog timeline and HPA readings (not from its replicas'
    changes, except to know how many pods were working)."""
    trace = trace_of(bench_config)
    pool = int(run["config"]["pool"])
    threshold = lag_threshold_of(run)
    partitions = int(bench_config["partitions"])
    backlog: list[list[float]] = [[float(t), float(b)] for t, b in run.get("backlog_timeline") or []]
    replicas = [(float(t), int(r)) for t, r in run["replica_timeline"]]
    burst_start, burst_end, _ = trace.peak()
    burst_rate = float(bench_config["burst_rate"])
    steps = scale_steps(replicas)
    single: float | None = None
    alone_until = min(burst_end, steps[0][0] + ALONE_AFTER_STEP_SECONDS) if steps else burst_end
    alone = [p for p in backlog if burst_start <= p[0] <= alone_until]
    if len(alone) >= 2 and alone[-1][0] > alone[0][0]:
        single = _consumed(trace, backlog, alone[0][0], alone[-1][0]) / (alone[-1][0] - alone[0][0])
    readings = []
    half = CONSUMPTION_HALF_WINDOW_SECONDS
    for entry in run.get("hpa_timeline") or []:
        value, current = entry.get("metric_average_value"), entry.get("current_replicas")
        if value is None or not current or not backlog:
            continue
        time = float(entry["time"])
        metric = quantity(value) * int(current)
        readings.append(Reading(
            time=time, replicas=int(current), metric=metric, backlog=value_at(backlog, time),
            consumption=_consumed(trace, backlog, time - half, time + half) / (2 * half),
            production=trace.rate_at(time),
            capped=round(metric) == partitions * threshold,
            during_build_up=(burst_start <= time <= burst_end
                             and value_at(backlog, time) >= BUILD_UP_BACKLOG_SECONDS * burst_rate),
            desired=entry.get("desired_replicas")))
    delays = []
    if single is not None and single > 0:
        for index, (time, after) in enumerate(steps):
            before = replicas[[t for t, _ in replicas].index(time) - 1][1]
            following = steps[index + 1][0] if index + 1 < len(steps) else math.inf
            point = next((p for p in backlog if p[0] >= time + START_DELAY_WINDOW_SECONDS), None)
            if after <= before or point is None or point[0] >= following or point[1] < after * single:
                continue  # not a scale-up, or no point before the next step while there is work for all
            window = point[0] - time
            extra = _consumed(trace, backlog, time, point[0]) - before * single * window
            seconds = window - extra / ((after - before) * single)
            delays.append(StartDelay(time, before, after, round(window, 1), min(window, max(0.0, seconds))))
    _, sync_phase = hpa_phases(run, POLLING_PERIOD_SECONDS, HPA_SYNC_SECONDS)
    return RunObservation(measurement, name, pool, threshold, single, tuple(readings), tuple(delays), sync_phase)


def observe(measurement: Mapping[str, Any], label: str) -> list[RunObservation]:
    """Every KEDA run of a loop-benchmark result."""
    return [observe_run(label, name, run, measurement["config"]) for name, run in keda_runs(measurement)]


@dataclass(frozen=True)
class CommitTrail:
    """What the HPA reads above the true backlog at one pool, as a fraction of the backlog: the samples
    measured, their mean (the replay's value) and the noise band around it."""

    pool: int
    samples: tuple[float, ...]

    @property
    def central(self) -> float:
        return max(0.0, statistics.fmean(self.samples)) if self.samples else 0.0

    @property
    def spread(self) -> float:
        """The samples' standard deviation (0 below two samples)."""
        return statistics.stdev(self.samples) if len(self.samples) >= 2 else 0.0

    @property
    def band(self) -> tuple[float, float]:
        mean = statistics.fmean(self.samples) if self.samples else 0.0
        return (max(0.0, mean - NOISE_SIGMAS * self.spread), max(0.0, mean + NOISE_SIGMAS * self.spread))

    def grid(self, step: float) -> tuple[float, ...]:
        """The band on a lattice of `step` (its central value alone when the band is narrower)."""
        low, high = self.band
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        return tuple(round(i * step, 6) for i in range(first, last + 1)) or (round(self.central, 6),)

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool, "samples": [round(s, 3) for s in self.samples],
                "central": round(self.central, 3), "spread": round(self.spread, 3),
                "band": [round(b, 3) for b in self.band]}


@dataclass(frozen=True)
class MeasuredWorld:
    """The real loop's world, pooled over measurements: one for every run replayed."""

    seconds_per_message: float        # a slot's time per message (the handler's cost and the worker's own)
    start_to_consuming_seconds: float
    commit_trails: tuple[CommitTrail, ...]
    rebalance_seconds: float = 0.0    # cooperative-sticky: the members keep consuming while one joins
    tick_seconds: float = REPLAY_TICK_SECONDS
    sources: tuple[str, ...] = field(default=())

    def commit_trail(self, pool: int) -> CommitTrail:
        return next((c for c in self.commit_trails if c.pool == pool), CommitTrail(pool, ()))

    def world_model(self, partitions: int, commit_trail: float) -> simulate.WorldModel:
        # Commits every tick: the measured trail includes the staleness of the worker's 1 s commits.
        return simulate.WorldModel(
            partitions=partitions, message_cost_seconds=self.seconds_per_message,
            startup_seconds=self.start_to_consuming_seconds, rebalance_seconds=self.rebalance_seconds,
            commit_interval_seconds=self.tick_seconds, commit_trail=commit_trail, tick_seconds=self.tick_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"seconds_per_message": round(self.seconds_per_message, 5),
                "start_to_consuming_seconds": round(self.start_to_consuming_seconds, 2),
                "rebalance_seconds": self.rebalance_seconds, "tick_seconds": self.tick_seconds,
                "commit_trails": [c.to_dict() for c in self.commit_trails], "measured_from": list(self.sources)}


def measure_world(observations: Sequence[RunObservation]) -> MeasuredWorld:
    """One world from the observations of several runs (and measurements): the mean per-slot rate, the
    median start-to-consuming delay, and per pool the commit trail's samples."""
    rates = [o.per_slot_rate for o in observations if o.per_slot_rate is not None and o.per_slot_rate > 0]
    delays = [d.seconds for o in observations for d in o.start_delays]
    if not rates or not delays:
        raise ValueError("no per-slot rate or start delay to measure: not a loop benchmark with KEDA steps")
    pools = sorted({o.pool for o in observations})
    trails = tuple(CommitTrail(pool, tuple(s for o in observations if o.pool == pool for s in o.commit_trail_samples))
                   for pool in pools)
    sources = tuple(dict.fromkeys(o.measurement for o in observations))
    return MeasuredWorld(1 / statistics.fmean(rates), statistics.median(delays), trails, sources=sources)


# --- the replay ----------------------------------------------------------------------------------------


def calibrate_run(name: str, run: Mapping[str, Any], bench_config: Mapping[str, Any],
                  *, world: MeasuredWorld | None = None, commit_trail: float | None = None,
                  tick: float | None = None) -> RunCalibration:
    """Replay one KEDA run through the model: in the simulator's default world (`world` None: its defaults
    but partitions, cost and tick) or in a measured one, with the pool's central commit trail unless
    `commit_trail` is given."""
    scaled = run["config"]["scaled_object"]
    pool = int(run["config"]["pool"])
    lag_threshold = lag_threshold_of(run)
    defaults = run["config"].get("keda_defaults", {})
    polling = float(defaults.get("pollingInterval", POLLING_PERIOD_SECONDS))
    sync = float(defaults.get("hpaSyncPeriodSeconds", HPA_SYNC_SECONDS))
    trace = trace_of(bench_config)
    poll_phase, sync_phase = hpa_phases(run, polling, sync)
    partitions = int(bench_config["partitions"])
    trail: float | None = None
    if world is None:
        model = simulate.WorldModel(partitions=partitions, message_cost_seconds=float(bench_config["cost_ms"]) / 1000,
                                    tick_seconds=tick or simulate.WorldModel.tick_seconds)
    else:
        trail = world.commit_trail(pool).central if commit_trail is None else commit_trail
        model = world.world_model(partitions, trail)
        if tick is not None:
            model = replace(model, tick_seconds=tick, commit_interval_seconds=tick)
    config = replace(simulate.keda_config_for(PolicyConfig(), partitions=partitions, polling=polling,
                                              sync=sync, lag_threshold=lag_threshold),
                     min_replicas=int(scaled.get("minReplicaCount", 1)),
                     max_replicas=int(scaled.get("maxReplicaCount", partitions)),
                     cooldown_period_seconds=float(defaults.get("cooldownPeriod", 300)),
                     offset_reset_policy=scaled["triggers"][0]["metadata"].get("offsetResetPolicy", "latest"))
    controller = simulate.KedaController(name, config, pool=pool, poll_phase=poll_phase, sync_phase=sync_phase)
    result = simulate.run(trace, model, controller)
    real = tuple((float(t), int(r)) for t, r in run["replica_timeline"])
    modelled = model_timeline(result, model.tick_seconds)
    end = trace.duration
    return RunCalibration(name, pool, lag_threshold, real, modelled, integral(real, end), integral(modelled, end),
                          match_steps(real, modelled), trail,
                          tuple((round(t, 1), m) for t, m in controller.readings))


def calibrate(measurement: Mapping[str, Any], world: MeasuredWorld | None = None) -> list[RunCalibration]:
    """Every KEDA run of a loop-benchmark result (runs without a replica timeline are skipped)."""
    return [calibrate_run(name, run, measurement["config"], world=world) for name, run in keda_runs(measurement)]


@dataclass(frozen=True)
class NoiseBand:
    """One run replayed over its pool's commit-trail band: which realizations reproduce it."""

    run: str
    band: tuple[float, float]
    realizations: tuple[RunCalibration, ...]

    @property
    def reproducing(self) -> tuple[float, ...]:
        return tuple(r.commit_trail for r in self.realizations if r.passed and r.commit_trail is not None)

    @property
    def reproduced(self) -> bool:
        return bool(self.reproducing)

    def outcomes(self) -> list[tuple[tuple[tuple[float, int], ...], float, float, bool]]:
        """Runs of consecutive realizations with the same model steps: (steps, from, to, within bounds)."""
        groups: list[tuple[tuple[tuple[float, int], ...], float, float, bool]] = []
        for r in self.realizations:
            steps = tuple((round(t, 1), n) for t, n in scale_steps(r.model_timeline))
            trail = r.commit_trail or 0.0
            if groups and groups[-1][0] == steps and groups[-1][3] == r.passed:
                groups[-1] = (steps, groups[-1][1], trail, r.passed)
            else:
                groups.append((steps, trail, trail, r.passed))
        return groups

    def to_dict(self) -> dict[str, Any]:
        return {"band": [round(b, 3) for b in self.band], "realizations": len(self.realizations),
                "reproducing_commit_trails": list(self.reproducing), "reproduced": self.reproduced,
                "outcomes": [{"steps": [list(s) for s in steps], "commit_trail": [low, high], "passed": ok}
                             for steps, low, high, ok in self.outcomes()]}


def noise_bands(measurement: Mapping[str, Any], world: MeasuredWorld) -> list[NoiseBand]:
    """Every KEDA run replayed at each commit trail of its pool's band (in TRAIL_GRID_STEP steps)."""
    bands = []
    for name, run in keda_runs(measurement):
        trail = world.commit_trail(int(run["config"]["pool"]))
        realizations = tuple(calibrate_run(name, run, measurement["config"], world=world, commit_trail=value)
                             for value in trail.grid(TRAIL_GRID_STEP))
        bands.append(NoiseBand(name, trail.band, realizations))
    return bands


def summary(calibrations: Sequence[RunCalibration], bands: Sequence[NoiseBand] = ()) -> dict[str, Any]:
    """`passed`: every run's replay (the central commit excess) within the bounds. With noise bands,
    `reproduced_within_noise`: every run within the bounds at some commit trail of its band."""
    by_run = {b.run: b for b in bands}
    runs = {}
    for c in calibrations:
        runs[c.run] = c.to_dict()
        if c.run in by_run:
            runs[c.run]["noise_band"] = by_run[c.run].to_dict()
    out: dict[str, Any] = {
        "bounds": {"replica_seconds_error": REPLICA_SECONDS_BOUND, "step_seconds": POLLING_PERIOD_SECONDS,
                   "hpa_sync_seconds_for_information": HPA_SYNC_SECONDS},
        "runs": runs,
        "passed": bool(calibrations) and all(c.passed for c in calibrations),
    }
    if bands:
        out["reproduced_within_noise"] = all(b.reproduced for b in bands) and len(bands) == len(calibrations)
    return out


# --- printing ------------------------------------------------------------------------------------------


def format_table(calibrations: Sequence[RunCalibration]) -> str:
    """One line per run: replica-seconds real / model / error, then each step real -> model."""
    header = (f"{'run':<14} {'trail':>5} {'rep-s real':>10} {'model':>8} {'error':>7}  "
              f"steps (real s -> model s: difference)")
    lines = [header, "-" * len(header)]
    for c in calibrations:
        steps = "; ".join(_describe_step(step) for step in c.steps) or "none"
        verdict = "ok" if c.passed else "MISS"
        trail = "-" if c.commit_trail is None else f"{c.commit_trail:.2f}"
        lines.append(f"{c.run:<14} {trail:>5} {c.real_replica_seconds:>10,.0f} {c.model_replica_seconds:>8,.0f} "
                     f"{c.replica_seconds_error:>+7.1%}  {steps}  [{verdict}]")
    return "\n".join(lines)


def _describe_step(step: Step) -> str:
    def side(time: float | None, replicas: int | None) -> str:
        return "-" if time is None else f"{time:.1f} s ->{replicas}"

    difference = step.difference
    gap = "unmatched" if difference is None else f"{difference:+.1f} s"
    return f"{side(step.real_time, step.real_replicas)} / {side(step.model_time, step.model_replicas)}: {gap}"


def format_noise(bands: Sequence[NoiseBand]) -> str:
    """Per run: the commit-trail band and, for each stretch of it, the model's steps and the verdict."""
    lines = []
    for b in bands:
        parts = []
        for steps, low, high, ok in b.outcomes():
            described = ", ".join(f"->{n} at {t:.1f} s" for t, n in steps) or "no step"
            parts.append(f"{low:.2f}-{high:.2f}: {described} [{'ok' if ok else 'miss'}]")
        verdict = "reproduced" if b.reproduced else "NOT REPRODUCED"
        lines.append(f"{b.run:<14} band {b.band[0]:.2f}-{b.band[1]:.2f}  {'; '.join(parts)}  [{verdict}]")
    return "\n".join(lines)


def format_observations(observations: Sequence[RunObservation], world: MeasuredWorld | None = None,
                        cost_seconds: float = 0.05,
                        model_readings: Mapping[str, Sequence[tuple[float, int]]] | None = None) -> str:
    """What the real world did, per run, beside the simulator's defaults and the measured world; each HPA
    reading while there was work (metric or backlog at least 100) with the replay's reading at its
    nearest sync when `model_readings` (per run) are given."""
    default = simulate.WorldModel()
    lines = [f"{'run':<14} {'pool':>4}  one pod alone msg/s (per slot)  simulator / measured world  HPA syncs   "
             f"start -> consuming (window)"]
    for o in observations:
        rate = "-" if o.single_pod_rate is None else f"{o.single_pod_rate:7.1f} ({o.per_slot_rate:5.2f})"
        measured = "-" if world is None else f"{o.pool / world.seconds_per_message:5.0f}"
        delays = "; ".join(f"{d.before}->{d.after} at {d.time:.1f} s: {d.seconds:.1f} s ({d.window:.0f})"
                           for d in o.start_delays) or "-"
        lines.append(f"{o.run:<14} {o.pool:>4}  {rate:>30}  {o.pool / cost_seconds:9.0f} / {measured:>8}   "
                     f"{o.sync_phase:4.1f}+15k   {delays}")
    lines.append(f"  simulator: a new pod consumes {default.startup_seconds:g} s after the step and the whole group "
                 f"stops {default.rebalance_seconds:g} s at each join; commits every "
                 f"{default.commit_interval_seconds:g} s of what was processed")
    lines.append("HPA readings (metric = average value x replicas; excess = metric - true backlog, and its "
                 "fraction of it; * = a sample of the commit trail):")
    for o in observations:
        modelled = (model_readings or {}).get(o.run, ())
        for r in o.readings:
            if r.metric < 100 and r.backlog < 100:
                continue
            ratio = r.metric / (o.lag_threshold * r.replicas)
            fraction = "-" if r.excess_fraction is None else f"{r.excess_fraction:5.2f}"
            flag = "capped" if r.capped else ("*" if r.measures_commit_trail else "")
            model = ""
            if modelled:
                at, metric = min(modelled, key=lambda m: abs(m[0] - r.time))
                model = f"  model at {at:5.1f} s: {metric:7,}"
            lines.append(f"  {o.run:<14} {r.time:6.1f} s  {r.replicas} pods  metric {r.metric:7,.0f}  "
                         f"backlog {r.backlog:6,.0f}  excess {r.excess:6,.0f} ({fraction}; {r.consumption:3.0f}/s)  "
                         f"ratio {ratio:5.3f} -> {r.desired}{model}  {flag}")
    return "\n".join(lines)


def format_world(world: MeasuredWorld) -> str:
    lines = [f"measured world (from {', '.join(world.sources)}): {world.seconds_per_message * 1000:.1f} ms of a slot "
             f"per message; a new pod consumes {world.start_to_consuming_seconds:.1f} s after its step, the others "
             f"go on ({world.rebalance_seconds:g} s stop); replayed at a {world.tick_seconds:g} s tick"]
    for c in world.commit_trails:
        samples = ", ".join(f"{s:.3f}" for s in c.samples) or "none (every reading capped or no backlog)"
        lines.append(f"  commit trail at pool {c.pool}: {c.central:.3f} x the backlog (samples {samples}; "
                     f"band {c.band[0]:.3f}-{c.band[1]:.3f})")
    return "\n".join(lines)


def calibratable(measurement: Mapping[str, Any]) -> bool:
    """A loop-benchmark result that can be calibrated: a config with the trace and at least one KEDA run."""
    config = measurement.get("config")
    if not isinstance(config, Mapping):
        return False
    keys = ("before_seconds", "burst_seconds", "after_seconds", "base_rate", "burst_rate", "partitions", "cost_ms")
    return all(isinstance(config.get(k), int | float) and math.isfinite(config[k]) for k in keys) and bool(
        keda_runs(measurement))

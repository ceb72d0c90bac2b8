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
polls from the HPA's creation (its first event in `hpa_timeline`) every `pollingInterval`. Everything
else is `lagpilot simulate`'s world model with its defaults (its consumers commit at 5 k s, so with
syncs at 15 k s the model's HPA reads just-committed offsets: the least commit lag; the real workers'
commit timers run on their own clocks).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lagpilot_operator.core import simulate
from lagpilot_operator.core.keda import KedaConfig
from lagpilot_operator.core.policy import PolicyConfig

REPLICA_SECONDS_BOUND = 0.10
# KEDA's defaults, as the model has them: the pollingInterval (the bound on each step) and the
# HPA's sync period.
POLLING_PERIOD_SECONDS = KedaConfig.polling_interval_seconds
HPA_SYNC_SECONDS = KedaConfig.hpa_sync_seconds

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


def calibrate_run(name: str, run: Mapping[str, Any], bench_config: Mapping[str, Any],
                  *, tick: float = simulate.WorldModel.tick_seconds) -> RunCalibration:
    """Replay one KEDA run through the model (the world model's defaults but partitions, cost and tick)."""
    scaled = run["config"]["scaled_object"]
    pool = int(run["config"]["pool"])
    lag_threshold = int(scaled["triggers"][0]["metadata"]["lagThreshold"])
    defaults = run["config"].get("keda_defaults", {})
    polling = float(defaults.get("pollingInterval", POLLING_PERIOD_SECONDS))
    sync = float(defaults.get("hpaSyncPeriodSeconds", HPA_SYNC_SECONDS))
    trace = trace_of(bench_config)
    poll_phase, sync_phase = hpa_phases(run, polling, sync)
    world = simulate.WorldModel(partitions=int(bench_config["partitions"]),
                                message_cost_seconds=float(bench_config["cost_ms"]) / 1000, tick_seconds=tick)
    config = replace(simulate.keda_config_for(PolicyConfig(), partitions=world.partitions, polling=polling,
                                              sync=sync, lag_threshold=lag_threshold),
                     min_replicas=int(scaled.get("minReplicaCount", 1)),
                     max_replicas=int(scaled.get("maxReplicaCount", world.partitions)),
                     cooldown_period_seconds=float(defaults.get("cooldownPeriod", 300)),
                     offset_reset_policy=scaled["triggers"][0]["metadata"].get("offsetResetPolicy", "latest"))
    controller = simulate.KedaController(name, config, pool=pool, poll_phase=poll_phase, sync_phase=sync_phase)
    result = simulate.run(trace, world, controller)
    real = tuple((float(t), int(r)) for t, r in run["replica_timeline"])
    modelled = model_timeline(result, tick)
    end = trace.duration
    return RunCalibration(name, pool, lag_threshold, real, modelled, integral(real, end), integral(modelled, end),
                          match_steps(real, modelled))


def calibrate(measurement: Mapping[str, Any]) -> list[RunCalibration]:
    """Every KEDA run of a loop-benchmark result (runs without a replica timeline are skipped)."""
    return [calibrate_run(name, run, measurement["config"]) for name, run in keda_runs(measurement)]


def summary(calibrations: Sequence[RunCalibration]) -> dict[str, Any]:
    return {
        "bounds": {"replica_seconds_error": REPLICA_SECONDS_BOUND, "step_seconds": POLLING_PERIOD_SECONDS,
                   "hpa_sync_seconds_for_information": HPA_SYNC_SECONDS},
        "runs": {c.run: c.to_dict() for c in calibrations},
        "passed": bool(calibrations) and all(c.passed for c in calibrations),
    }


def format_table(calibrations: Sequence[RunCalibration]) -> str:
    """One line per run: replica-seconds real / model / error, then each step real -> model."""
    header = (f"{'run':<14} {'rep-s real':>10} {'model':>8} {'error':>7}  "
              f"steps (real s -> model s: difference)")
    lines = [header, "-" * len(header)]
    for c in calibrations:
        steps = "; ".join(_describe_step(step) for step in c.steps) or "none"
        verdict = "ok" if c.passed else "MISS"
        lines.append(f"{c.run:<14} {c.real_replica_seconds:>10,.0f} {c.model_replica_seconds:>8,.0f} "
                     f"{c.replica_seconds_error:>+7.1%}  {steps}  [{verdict}]")
    return "\n".join(lines)


def _describe_step(step: Step) -> str:
    def side(time: float | None, replicas: int | None) -> str:
        return "-" if time is None else f"{time:.1f} s ->{replicas}"

    difference = step.difference
    gap = "unmatched" if difference is None else f"{difference:+.1f} s"
    return f"{side(step.real_time, step.real_replicas)} / {side(step.model_time, step.model_replicas)}: {gap}"


def calibratable(measurement: Mapping[str, Any]) -> bool:
    """A loop-benchmark result that can be calibrated: a config with the trace and at least one KEDA run."""
    config = measurement.get("config")
    if not isinstance(config, Mapping):
        return False
    keys = ("before_seconds", "burst_seconds", "after_seconds", "base_rate", "burst_rate", "partitions", "cost_ms")
    return all(isinstance(config.get(k), int | float) and math.isfinite(config[k]) for k in keys) and bool(
        keda_runs(measurement))

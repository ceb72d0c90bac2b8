"""The scaling decision: lag and rates in, replicas x pool out, with a reason a person can read. Pure.

`decide(config, observation, memory, now) -> Decision` is called once per poll. Everything it needs
to remember between polls is in `PolicyMemory`, an immutable value that serialises to a small dict
(the operator stores it in status, so a restarted operator resumes without a spurious scale).

This module holds the configuration, the inputs and outputs, the guards of step 1 and the memory's
upkeep; steps 2-8 are named functions in `decision_steps` (with the constants named below), which
`_decide_on_lag` runs in order, so each rule can be read, and tested, on its own.

Capacity is counted in *slots*: one slot processes one message at a time; a pod runs `pool` slots
(the worker's in-pod concurrency), so capacity = replicas x pool. A decision goes through:

1. Guards. `paused` holds everything exactly as it is (even outside bounds: paused means hands off),
   or pins the replicas at `paused_replicas` when set (the pool is held). Lag is still observed
   while paused, so the memory's view of the lag stays current and resuming acts on what happens
   from then on: the pause itself is no reason to scale (see `_pause`).
   No sample (lag unreadable) never scales down: hold, or — with `fallback.mode=replicas` and at least
   `failureThreshold` consecutive failures — go to `fallback.replicas` (never zero while blind).
2. Lag. Per-partition lag with `offsetResetPolicy` (see `observations.partition_lag`). Partitions
   whose verdict is STALLED or STOPPED are excluded from the lag more workers can drain — always in
   `drainTime`, in `lagThreshold` only with `excludePersistentLag` (KEDA's meaning) — unless the
   group is at zero replicas, where nothing can move and all lag must count to wake it.
3. Raw recommendation in slots.
   * `lagThreshold` (KEDA's meaning, with consumer = slot): ceil(lag / lagPerConsumer). KEDA caps
     the metric at partitions x threshold because its consumers are single-threaded; Lagpilot caps
     *replicas* at the partition count instead, and lets the pool carry the rest.
   * `drainTime` with a lag-only source (`Observation.lag_only`, e.g. Prometheus: no offsets, so no
     rates): the `lagThreshold` rule, said so in the reason.
   * `drainTime`: needed = produce rate x (1 + headroom) + backlog / T, slots = ceil(needed / μ),
     where T = targetDrainSeconds, or the time-lag target (targetTimeLag, e.g. 200ms, or
     targetTimeLagSeconds) when the group's time lag exceeds it. The time lag dates the oldest
     *uncommitted* message, so a group that keeps up reads up to about a commit interval behind: a
     target below `COMMITTED_TIME_LAG_FLOOR_SECONDS` (1 s, or the workers' declared commit interval
     when longer) is held at that floor (a time lag within it counts as on target; above it the
     backlog drains in the floor's time, not in 200 ms),
     and μ is the per-slot throughput (msg/s per slot):
       - measured as consume rate ÷ busy slots once every slot has been busy for a whole consume-rate
         window at unchanged busy slots: the group was saturated (backlog larger than
         `SATURATION_BACKLOG_SECONDS` of consumption and 2 messages per slot), or the backlog's trend
         showed a steady deficit (the smallest lag per minute grew by `TREND_BACKLOG_SECONDS` of
         consumption within `TREND_WINDOW_SECONDS` at unchanged capacity, while production exceeds
         consumption: a group 1 % short crosses the saturation bar only after 1000 s); or, in
         `drainTime` before that, as what the committed offsets moved ÷ busy slots over a *busy span*:
         polls at one settled shape with work waiting at each (lag above the saturation bar, or, for
         workers that declare their commit interval, above `WORK_WAITING_COMMITS` commit steps and
         `WORK_WAITING_SECONDS` of consumption), for `FALLING_BEHIND_POLLS` polls,
         `FALLING_BEHIND_SECONDS` and `BUSY_SPAN_COMMITS` commit steps, whichever way the lag went
         (slots slower than the first step assumed, draining a backlog slowly, up and down with the
         commits, were otherwise held until the window measured them, far past the drain target);
         smoothed (EWMA, weight 0.5);
       - bounded below between measurements by the highest consume rate ÷ busy slots seen (a
         lower bound, since slots are never faster than they are busy), halving every
         `FLOOR_HALF_LIFE_SECONDS` so a slower workload is not hidden by an old fast one;
       - before any measurement ("we know nothing"): a saturated backlog that grew since the last
         poll at least doubles capacity, but never past what the lower bound proves enough (that
         doubling would overshoot and step back down a window later) - and only once every consumer
         has joined and the member count is unchanged since the last poll (until then the growth
         says nothing about capacity already added, and doubling again overshoots by a rebalance
         storm); a saturated, shrinking
         backlog keeps the capacity that drains it; an unsaturated group keeps its capacity, or
         less if the lower bound proves less is enough; no backlog and no production needs 0 slots.
       A lower bound is never used to *add* capacity to an unsaturated group: at low load it is
       far below the real speed and would grow the group 20 % per poll. A *late* group is treated as a
       saturated, growing one: its time lag was above the (held) target and grew at each of
       `FALLING_BEHIND_POLLS` polls at one settled shape, by more than the floor, with the lag larger
       than at the run's start (falling_behind.LateRun). That finds a deficit the saturation bar
       (10 s of consumption) takes minutes to see, and a late run also makes the growth span's
       reading count (falling_behind.py) when the lag grew by less than the tolerance band. So does
       a backlog above the saturation bar since before the span began: every slot had work waiting.
       Falling behind also needs the growth to have lasted `FALLING_BEHIND_SECONDS` (at 2 s polls three
       polls are as long as a busy node stalls a group that keeps up).
4. Tolerance band (hysteresis): a raw recommendation within ±`tolerance_percent` (10 %) of current
   capacity is taken as "current" (HPA's rule), and after steps 5-6 a shrink smaller than that band
   is not made either, so a decaying window does not trickle out one pool change per poll. The band
   is below the default 20 % headroom, so holding inside it never leaves the group short of the
   produce rate.
5. Stabilization (HPA's algorithm on slots): the target is at least the *minimum* recommendation
   over the scale-up window and at most the *maximum* over the scale-down window. With no memory
   (first decision, lost status) the current capacity counts as recommended now, so a fresh start
   never scales down before a full scale-down window.
6. Step limits per direction (HPA's algorithm on slots): within any `periodSeconds`, capacity may
   grow by at most max(minStep, maxStepPercent % of the capacity at the period's start), and
   shrink likewise. Waking from zero, scaling to zero and enforcing bounds are not step-limited.
7. Replicas x pool. Pool changes are live, replica changes cost a rebalance, so the pool grows
   first: the fewest replicas r ≥ min with r x pool.max ≥ slots, and pool = slots x ceil(P / r) / P
   within pool bounds: an assignor gives the busiest of r pods ceil(P / r) of the P partitions, so
   10 partitions on 9 pods size every pod for 2 of them (a scale-down keeps more of its pods when
   that exceeds pool.max);
   a scale-up never removes pods and a scale-down never adds them; replicas ≤ partition count
   unless `allowIdleConsumers` (if `replicas.min` exceeds the partition count, min wins) or the
   group is a share group (`groupType: share`, KIP-932): its consumers share partitions record by
   record, so neither the cap nor the busiest-pod pool applies (pool = slots / r), and, as with the
   consumer protocol, a pod joining or leaving pauses no other;
   `cooldownSeconds` must pass between two replica changes (the pool still moves meanwhile); and
   for max(3 polls, scaleDown.periodSeconds) after pods were removed, no pods are added back (the
   removal's rebalance paused every consumer; the lag it left is not demand - the pool absorbs it).
8. Zero. Only with `replicas.min == 0` and total lag ≤ activationLag for the whole scale-down
   stabilization window; from zero, wake (at least one replica) as soon as lag > activationLag.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from lagpilot_operator.core import decision_steps as steps
from lagpilot_operator.core.falling_behind import LateRun, Span
from lagpilot_operator.core.observations import (
    DEFAULT_CONSUME_RATE_WINDOW_SECONDS,
    DEFAULT_PRODUCE_RATE_WINDOW_SECONDS,
    LagHistory,
    LagSample,
    OffsetResetPolicy,
    PartitionKey,
    partition_lag,
)
from lagpilot_operator.core.verdicts import Verdict
from lagpilot_operator.kube.models import TIME_LAG_ONE_FORM, duration_seconds

Mode = Literal["drainTime", "lagThreshold"]
FallbackMode = Literal["hold", "replicas"]
Direction = Literal["up", "down", "none"]


# --- configuration (plain mirror of the CRD's spec; the pydantic adapter fills it) -----------------


@dataclass(frozen=True)
class ReplicaBounds:
    min: int = 1
    max: int = 10


@dataclass(frozen=True)
class PoolBounds:
    min: int = 1
    max: int = 64
    initial: int = 8


@dataclass(frozen=True)
class LagThresholdConfig:
    lag_per_consumer: int = 10
    activation_lag: int = 0
    allow_idle_consumers: bool = False
    offset_reset_policy: OffsetResetPolicy = "earliest"  # the worker's auto.offset.reset default
    exclude_persistent_lag: bool = False


@dataclass(frozen=True)
class DrainTimeConfig:
    target_drain_seconds: int = 60
    target_time_lag_seconds: float | None = None  # fractions allowed: a 200 ms latency target is 0.2
    headroom_percent: int = 20


@dataclass(frozen=True)
class ScalingBehavior:
    stabilization_seconds: int
    max_step_percent: int
    min_step: int
    period_seconds: int


DEFAULT_SCALE_UP = ScalingBehavior(stabilization_seconds=0, max_step_percent=100, min_step=4, period_seconds=5)
DEFAULT_SCALE_DOWN = ScalingBehavior(stabilization_seconds=120, max_step_percent=25, min_step=1, period_seconds=30)


@dataclass(frozen=True)
class FallbackConfig:
    mode: FallbackMode = "hold"
    replicas: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class PolicyConfig:
    """Everything `decide` reads. `activationLag`, `allowIdleConsumers` and `offsetResetPolicy` live
    under `lagThreshold` in the CRD but apply in both modes (waking, the partition cap, lag)."""

    replicas: ReplicaBounds = ReplicaBounds()
    pool: PoolBounds = PoolBounds()
    mode: Mode = "drainTime"
    lag_threshold: LagThresholdConfig = LagThresholdConfig()
    drain_time: DrainTimeConfig = DrainTimeConfig()
    scale_up: ScalingBehavior = DEFAULT_SCALE_UP
    scale_down: ScalingBehavior = DEFAULT_SCALE_DOWN
    cooldown_seconds: int = 0
    paused: bool = False
    paused_replicas: int | None = None  # not in the spec: the lagpilot.io/paused-replicas annotation (pause.py)
    fallback: FallbackConfig = FallbackConfig()
    poll_interval_seconds: int = 5
    tolerance_percent: int = 10  # not in the CRD: HPA's default tolerance
    # spec.groupType share (KIP-932): consumers share partitions, so the partition count bounds nothing.
    share_group: bool = False

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> PolicyConfig:
        """Read a KafkaConsumerGroup `spec` (camelCase dict, as in YAML); absent fields take CRD defaults."""
        policy = _mapping(spec.get("policy"), "policy")
        replicas = _mapping(spec.get("replicas"), "replicas")
        pool = _mapping(spec.get("pool"), "pool")
        lag = _mapping(spec.get("lag"), "lag")
        threshold = _mapping(policy.get("lagThreshold"), "policy.lagThreshold")
        drain = _mapping(policy.get("drainTime"), "policy.drainTime")
        fallback = _mapping(spec.get("fallback"), "fallback")
        default = cls()
        config = cls(
            replicas=ReplicaBounds(
                min=_int(replicas, "min", default.replicas.min), max=_int(replicas, "max", default.replicas.max)
            ),
            pool=PoolBounds(
                min=_int(pool, "min", default.pool.min),
                max=_int(pool, "max", default.pool.max),
                initial=_int(pool, "initial", default.pool.initial),
            ),
            mode=cast(Mode, _choice(policy, "mode", ("drainTime", "lagThreshold"), default.mode)),
            lag_threshold=LagThresholdConfig(
                lag_per_consumer=_int(threshold, "lagPerConsumer", 10),
                activation_lag=_int(threshold, "activationLag", 0),
                allow_idle_consumers=_bool(threshold, "allowIdleConsumers", False),
                offset_reset_policy=cast(
                    OffsetResetPolicy, _choice(threshold, "offsetResetPolicy", ("latest", "earliest"), "earliest")
                ),
                exclude_persistent_lag=_bool(threshold, "excludePersistentLag", False),
            ),
            drain_time=DrainTimeConfig(
                target_drain_seconds=_int(drain, "targetDrainSeconds", 60),
                target_time_lag_seconds=_time_lag_target(drain),
                headroom_percent=_int(drain, "headroomPercent", 20),
            ),
            scale_up=_behavior(_mapping(policy.get("scaleUp"), "policy.scaleUp"), DEFAULT_SCALE_UP),
            scale_down=_behavior(_mapping(policy.get("scaleDown"), "policy.scaleDown"), DEFAULT_SCALE_DOWN),
            cooldown_seconds=_int(policy, "cooldownSeconds", 0),
            paused=_bool(spec, "paused", False),
            fallback=FallbackConfig(
                mode=cast(FallbackMode, _choice(fallback, "mode", ("hold", "replicas"), "hold")),
                replicas=_int(fallback, "replicas", 1),
                failure_threshold=_int(fallback, "failureThreshold", 3),
            ),
            poll_interval_seconds=_int(lag, "pollIntervalSeconds", 5),
            share_group=_choice(spec, "groupType", ("consumer", "share"), "consumer") == "share",
        )
        config.validate()
        return config

    def validate(self) -> None:
        """The CRD's own rules (CEL), for configs that did not come through the API server."""
        problems = []
        if not 0 <= self.replicas.min <= self.replicas.max:
            problems.append("replicas: need 0 <= min <= max")
        if not 1 <= self.pool.min <= self.pool.initial <= self.pool.max:
            problems.append("pool: need 1 <= min <= initial <= max")
        if self.lag_threshold.lag_per_consumer < 1:
            problems.append("policy.lagThreshold.lagPerConsumer must be >= 1")
        if self.drain_time.target_drain_seconds < 1:
            problems.append("policy.drainTime.targetDrainSeconds must be >= 1")
        tl = self.drain_time.target_time_lag_seconds
        if tl is not None and not (tl > 0 and math.isfinite(tl)):
            problems.append("policy.drainTime: the time-lag target must be > 0 seconds")
        for name, behavior in (("scaleUp", self.scale_up), ("scaleDown", self.scale_down)):
            if behavior.period_seconds < 1 or behavior.min_step < 0 or behavior.max_step_percent < 0:
                problems.append(f"policy.{name}: periodSeconds >= 1, minStep >= 0, maxStepPercent >= 0")
            if behavior.min_step == 0 and behavior.max_step_percent == 0:
                problems.append(f"policy.{name}: minStep and maxStepPercent cannot both be 0")
        if self.fallback.failure_threshold < 1 or self.fallback.replicas < 0:
            problems.append("fallback: failureThreshold >= 1 and replicas >= 0")
        if problems:
            raise ValueError("; ".join(problems))


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _int(source: Mapping[str, Any], key: str, default: int) -> int:
    value = source.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _optional_int(source: Mapping[str, Any], key: str) -> int | None:
    value = source.get(key)
    return None if value is None else _int(source, key, 0)


def _time_lag_target(drain: Mapping[str, Any]) -> float | None:
    """targetTimeLag (a duration string, e.g. "200ms") or targetTimeLagSeconds (whole seconds), in seconds."""
    duration = drain.get("targetTimeLag")
    whole = _optional_int(drain, "targetTimeLagSeconds")
    if duration is None:
        return None if whole is None else float(whole)
    if whole is not None:
        raise ValueError(TIME_LAG_ONE_FORM.message)
    if not isinstance(duration, str):
        raise ValueError(f"targetTimeLag must be a duration string such as 200ms, got {duration!r}")
    return duration_seconds(duration)


def _bool(source: Mapping[str, Any], key: str, default: bool) -> bool:
    value = source.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _choice(source: Mapping[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = source.get(key, default)
    if value not in allowed:
        raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _behavior(source: Mapping[str, Any], default: ScalingBehavior) -> ScalingBehavior:
    return ScalingBehavior(
        stabilization_seconds=_int(source, "stabilizationSeconds", default.stabilization_seconds),
        max_step_percent=_int(source, "maxStepPercent", default.max_step_percent),
        min_step=_int(source, "minStep", default.min_step),
        period_seconds=_int(source, "periodSeconds", default.period_seconds),
    )


# --- inputs and outputs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """What the operator saw this poll. `sample` is None when lag could not be read."""

    sample: LagSample | None
    current_replicas: int
    current_pool: int
    partitions: int = 0                       # 0: take len(sample.partitions); unknown without a sample
    produce_rate: float | None = None         # msg/s, LagHistory.produce_rate()
    consume_rate: float | None = None         # msg/s, LagHistory.consume_rate()
    consume_rate_window_seconds: float = DEFAULT_CONSUME_RATE_WINDOW_SECONDS
    verdicts: Mapping[PartitionKey, Verdict] = field(default_factory=dict)
    time_lags: Mapping[PartitionKey, float] = field(default_factory=dict)   # seconds, per partition
    consecutive_failures: int = 0             # lag reads failed in a row (0 when sample is set)
    ready_replicas: int | None = None         # pods ready; used when the sample has no member count
    lag_only: bool = False                    # the source gives lag, not offsets (Prometheus): no rates ever
    commit_interval_seconds: float | None = None  # the workers' declared commit interval (None: their default)
    # Each partition's lag in `sample` under the config's offsetResetPolicy (`lags_by_partition`), when the
    # caller has it already (the reconcile: once for the decision, the status and the metrics); None: computed.
    lags: Mapping[PartitionKey, int] | None = None

    @classmethod
    def from_history(
        cls,
        history: LagHistory,
        *,
        current_replicas: int,
        current_pool: int,
        verdicts: Mapping[PartitionKey, Verdict] | None = None,
        time_lags: Mapping[PartitionKey, float] | None = None,
        ready_replicas: int | None = None,
        produce_window_seconds: float = DEFAULT_PRODUCE_RATE_WINDOW_SECONDS,
        consume_window_seconds: float = DEFAULT_CONSUME_RATE_WINDOW_SECONDS,
        commit_interval_seconds: float | None = None,
        lags: Mapping[PartitionKey, int] | None = None,
    ) -> Observation:
        """Observation of a successful read: the history's newest sample is this poll's sample."""
        sample = history.latest
        return cls(
            sample=sample,
            current_replicas=current_replicas,
            current_pool=current_pool,
            partitions=len(sample.partitions) if sample is not None else 0,
            produce_rate=history.produce_rate(produce_window_seconds),
            consume_rate=history.consume_rate(consume_window_seconds),
            consume_rate_window_seconds=consume_window_seconds,
            verdicts=dict(verdicts or {}),
            time_lags=dict(time_lags or {}),
            ready_replicas=ready_replicas,
            commit_interval_seconds=commit_interval_seconds,
            lags=lags,
        )


@dataclass(frozen=True)
class PolicyMemory:
    """What `decide` remembers between polls. Immutable; `to_dict()`/`from_dict()` round-trip exactly."""

    recommendations: tuple[tuple[float, int], ...] = ()    # (time, slots) for the stabilization windows
    changes: tuple[tuple[float, int, int], ...] = ()       # (time, slots before, slots after) for step limits
    last_replica_change: float | None = None               # for cooldownSeconds
    last_replica_decrease: float | None = None             # for the rebalance grace
    slot_rate: float | None = None                         # measured msg/s per slot
    slot_rate_floor: float | None = None                   # lower bound on it, as of floor_time
    floor_time: float | None = None
    busy: tuple[tuple[float, int], ...] = ()               # (since, busy slots), recent values
    saturated_since: float | None = None
    idle_since: float | None = None                        # total lag <= activationLag since
    last_time: float | None = None
    last_lag: int | None = None                            # effective lag at last_time
    last_members: int | None = None                        # consumers at last_time
    trend: tuple[tuple[float, int], ...] = ()              # (bucket start, smallest effective lag in it)
    deficit_since: float | None = None                     # the trend has shown a steady deficit since
    span: Span | None = None                               # the lag's growth span (falling_behind.py)
    pod_rate: tuple[int, float] | None = None              # (pool, msg/s per pod) read with the lag growing
    pool_ceiling: int | None = None                        # pool beyond which a pod's slots add no throughput
    late: LateRun | None = None                            # the time lag's growth above its target
    # Polls at one settled shape with work waiting at each: what every slot drains, read before a whole
    # consume-rate window has passed (decision_steps.busy_span_rate).
    busy_span: Span | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendations": [[t, s] for t, s in self.recommendations],
            "changes": [[t, a, b] for t, a, b in self.changes],
            "lastReplicaChange": self.last_replica_change,
            "lastReplicaDecrease": self.last_replica_decrease,
            "slotRate": self.slot_rate,
            "slotRateFloor": self.slot_rate_floor,
            "floorTime": self.floor_time,
            "busy": [[t, b] for t, b in self.busy],
            "saturatedSince": self.saturated_since,
            "idleSince": self.idle_since,
            "lastTime": self.last_time,
            "lastLag": self.last_lag,
            "lastMembers": self.last_members,
            "trend": [[t, lag] for t, lag in self.trend],
            "deficitSince": self.deficit_since,
            "span": None if self.span is None else self.span.to_list(),
            "podRate": None if self.pod_rate is None else list(self.pod_rate),
            "poolCeiling": self.pool_ceiling,
            "late": None if self.late is None else self.late.to_list(),
            "busySpan": None if self.busy_span is None else self.busy_span.to_list(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PolicyMemory:
        """Tolerant reader: missing or malformed data gives a fresh memory (which never scales down early)."""
        if not data:
            return cls()
        try:
            return cls(
                recommendations=tuple((float(t), int(s)) for t, s in data.get("recommendations", [])),
                changes=tuple((float(t), int(a), int(b)) for t, a, b in data.get("changes", [])),
                last_replica_change=_opt_float(data.get("lastReplicaChange")),
                last_replica_decrease=_opt_float(data.get("lastReplicaDecrease")),
                slot_rate=_opt_float(data.get("slotRate")),
                slot_rate_floor=_opt_float(data.get("slotRateFloor")),
                floor_time=_opt_float(data.get("floorTime")),
                busy=tuple((float(t), int(b)) for t, b in data.get("busy", [])),
                saturated_since=_opt_float(data.get("saturatedSince")),
                idle_since=_opt_float(data.get("idleSince")),
                last_time=_opt_float(data.get("lastTime")),
                last_lag=None if data.get("lastLag") is None else int(data["lastLag"]),
                last_members=None if data.get("lastMembers") is None else int(data["lastMembers"]),
                trend=tuple((float(t), int(lag)) for t, lag in data.get("trend", [])),
                deficit_since=_opt_float(data.get("deficitSince")),
                span=Span.from_list(data.get("span")),
                pod_rate=_pod_rate(data.get("podRate")),
                pool_ceiling=None if data.get("poolCeiling") is None else int(data["poolCeiling"]),
                late=LateRun.from_list(data.get("late")),
                busy_span=Span.from_list(data.get("busySpan")),
            )
        except (TypeError, ValueError):
            return cls()


def _pod_rate(value: object) -> tuple[int, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"podRate is [pool, msg/s], got {value!r}")
    return int(value[0]), float(value[1])


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float | str):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


@dataclass(frozen=True)
class Decision:
    replicas: int
    pool: int
    reason: str
    total_lag: int                 # lag of all partitions
    effective_lag: int             # lag more workers can drain (stuck partitions excluded)
    memory: PolicyMemory
    slots: int = 0                 # capacity aimed at after windows and limits (replicas x pool ≥ slots)
    direction: Direction = "none"  # of capacity (replicas x pool)
    excluded_partitions: tuple[PartitionKey, ...] = ()
    slot_rate: float | None = None # msg/s per slot the decision assumed
    needed_rate: float | None = None  # msg/s the decision aimed to consume (drainTime)


# --- the decision ----------------------------------------------------------------------------------


def decide(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> Decision:
    if config.paused:
        return _pause(config, observation, memory, now)
    if observation.sample is None:
        return _blind(config, observation, memory, now)
    return _decide_on_lag(config, observation, memory, now)


def _decide_on_lag(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> Decision:
    """Steps 2-8 with a sample in hand; each is a function of `decision_steps`, and this only passes
    each one what the earlier ones found, in the order the module docstring gives."""
    ctx = steps.DecisionContext.of(config, observation, memory, now)
    lag = steps.read_lag(ctx)
    throughput = steps.assess_throughput(ctx, lag)
    activation = steps.read_activation(ctx, lag)
    raw = steps.recommend(ctx, lag, throughput)
    recommendation = steps.within_tolerance(ctx, raw.slots, waking=activation.waking)
    notes = (*throughput.notes, *raw.notes, *recommendation.notes)
    if activation.at_zero:
        target = 0
        shape = steps.Shape(0, steps.clamp(ctx.current_pool, config.pool.min, config.pool.max))
    elif activation.waking:
        # Waking has activation semantics: no stabilization or step limit from zero.
        target = recommendation.slots
        shape = steps.shape_for(ctx, max(target, 1), forced=True)
    else:
        stabilized = steps.stabilize(ctx, recommendation.slots)
        limited = steps.limit_steps(ctx, stabilized.slots)
        kept = steps.keep_small_shrink(ctx, limited.slots)
        target = kept.slots
        growth = throughput.growth
        ceiling, why = steps.ceiling_for(ctx, growth)
        shape = steps.shape_for(ctx, max(target, 1), forced=False, ceiling=ceiling, ceiling_why=why,
                                reshape=growth is not None and growth.ceiling_found)
        notes += (*stabilized.notes, *limited.notes, *kept.notes)
    notes += (*shape.notes, *steps.share_group_note(ctx, shape.replicas))
    direction = steps.direction_of(ctx.current_capacity, shape.capacity)
    reason = steps.reason(ctx, lag, activation, raw, shape, direction, notes)
    return Decision(
        replicas=shape.replicas,
        pool=shape.pool,
        reason=reason,
        total_lag=lag.total,
        effective_lag=lag.effective,
        memory=_remember(ctx, lag, throughput, activation, recommendation.slots, shape),
        slots=target,
        direction=direction,
        excluded_partitions=tuple(lag.stuck),
        slot_rate=raw.slot_rate,
        needed_rate=raw.needed_rate,
    )


def _remember(ctx: steps.DecisionContext, lag: steps.LagView, throughput: steps.Throughput,
              activation: steps.Activation, recommendation: int, shape: steps.Shape) -> PolicyMemory:
    """The memory after a decision with a sample: what the next poll's windows, limits and estimates read."""
    memory, now, growth = ctx.memory, ctx.now, throughput.growth
    changes = memory.changes
    if shape.capacity != ctx.current_capacity:
        changes = (*changes, (now, ctx.current_capacity, shape.capacity))
    remembered = PolicyMemory(
        recommendations=(*ctx.recommendations, (now, recommendation)),
        changes=changes,
        last_replica_change=now if shape.replicas != ctx.current_replicas else memory.last_replica_change,
        last_replica_decrease=now if shape.replicas < ctx.current_replicas else memory.last_replica_decrease,
        slot_rate=throughput.slot_rate,
        slot_rate_floor=throughput.floor,
        floor_time=now if throughput.floor is not None else None,
        busy=throughput.busy,
        saturated_since=throughput.saturated_since,
        idle_since=activation.idle_since,
        last_time=now,
        last_lag=lag.effective,
        last_members=throughput.consumers,
        trend=throughput.trend,
        deficit_since=throughput.deficit_since,
        span=growth.span if growth is not None else None,
        pod_rate=growth.pod_rate if growth is not None else memory.pod_rate,
        pool_ceiling=growth.pool_ceiling if growth is not None else memory.pool_ceiling,
        late=throughput.late_run,
        busy_span=throughput.busy_span,
    )
    return _prune(remembered, ctx.config, now, ctx.observation)


def _sample_lag(config: PolicyConfig, sample: LagSample | None) -> int:
    if sample is None:
        return 0
    return sum(partition_lag(p, config.lag_threshold.offset_reset_policy) for p in sample.partitions)


def _remember_hold(memory: PolicyMemory, now: float, capacity: int) -> PolicyMemory:
    """Holding counts as recommending the current capacity, so scale-down waits a full window after."""
    return replace(
        memory,
        recommendations=(*memory.recommendations, (now, capacity)),
        idle_since=None,
        saturated_since=None,
        last_time=now,
        trend=(),
        deficit_since=None,
        span=None,  # a hold (paused, lag unreadable) ends the growth span: the shape was not judged
        late=None,  # and the late run
        busy_span=None,  # and the busy span
    )


def _hold(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float, reason: str,
          *, clamp: bool) -> Decision:
    replicas, pool = max(0, observation.current_replicas), observation.current_pool
    if clamp:  # bounds still hold (a user may have just changed them); zero stays zero when min allows
        replicas = steps.clamp(replicas, config.replicas.min, steps.replica_cap(config, observation.partitions))
        pool = steps.clamp(pool, config.pool.min, config.pool.max)
    lag = _sample_lag(config, observation.sample)
    new_memory = _prune(_remember_hold(memory, now, replicas * pool), config, now, observation)
    return Decision(replicas, pool, reason, lag, lag, new_memory, slots=replicas * pool)


def _pause(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> Decision:
    """Hands off: hold (or pin) replicas and pool, and keep the memory's observations current.

    Holding counts as recommending the held capacity (no scale-down for a full window after the
    resume) and resets the idle and saturation clocks (a pause is no evidence of either). The lag
    seen during the pause becomes `last_lag`: otherwise the first decision after a long pause
    compares with the lag from before it and reads the pause's backlog as growth.
    """
    current_r, pool = max(0, observation.current_replicas), observation.current_pool
    replicas = current_r if config.paused_replicas is None else max(0, config.paused_replicas)
    if replicas == current_r:
        reason = f"paused: holding {steps.describe_shape(replicas, pool)}"
    else:
        reason = f"paused: replicas pinned {current_r}→{replicas}, pool {pool}"
    lag = _sample_lag(config, observation.sample)
    held = _remember_hold(memory, now, replicas * pool)
    if observation.sample is not None:
        partitions = steps.owned_partitions(config, observation.partitions or len(observation.sample.partitions))
        held = replace(held, last_lag=lag,
                       last_members=steps.consumers_at_work(observation, observation.sample, partitions))
    direction = steps.direction_of(current_r, replicas)
    return Decision(replicas, pool, reason, lag, lag, _prune(held, config, now, observation),
                    slots=replicas * pool, direction=direction)


def _blind(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> Decision:
    failures = observation.consecutive_failures
    threshold = config.fallback.failure_threshold
    if config.fallback.mode == "replicas" and failures >= threshold:
        cap = steps.replica_cap(config, observation.partitions)
        replicas = steps.clamp(config.fallback.replicas, max(1, config.replicas.min), max(1, cap))
        pool = steps.clamp(observation.current_pool, config.pool.min, config.pool.max)
        reason = (f"fallback to {steps.describe_shape(replicas, pool)}: lag unreadable for {failures} consecutive "
                  f"polls (failureThreshold {threshold})")
        changed = replicas != observation.current_replicas
        new_memory = _prune(_remember_hold(memory, now, replicas * pool), config, now, observation)
        if changed:
            new_memory = replace(new_memory, last_replica_change=now)
        direction = steps.direction_of(observation.current_replicas * observation.current_pool, replicas * pool)
        return Decision(replicas, pool, reason, 0, 0, new_memory, slots=replicas * pool, direction=direction)
    detail = f"{failures} consecutive failure{'s' if failures != 1 else ''}"
    if config.fallback.mode == "replicas":
        detail += f"; fallback to {config.fallback.replicas} after {threshold}"
    replicas, pool = observation.current_replicas, observation.current_pool
    reason = f"hold {steps.describe_shape(replicas, pool)}: lag unavailable ({detail})"
    return _hold(config, observation, memory, now, reason, clamp=True)


def _prune(memory: PolicyMemory, config: PolicyConfig, now: float, observation: Observation) -> PolicyMemory:
    """Drop what no window can need any more, so the memory stays a small dict."""
    up_cut = now - config.scale_up.stabilization_seconds
    down_cut = now - config.scale_down.stabilization_seconds
    kept: list[tuple[float, int]] = []
    recs = memory.recommendations
    for index, (time, slots) in enumerate(recs):
        in_up = time > up_cut
        in_down = time > down_cut
        if not in_up and not in_down:
            continue
        later = recs[index + 1:]
        # Outside the up window an entry only matters for the down window's maximum: a later entry
        # at least as large makes it irrelevant (it expires first).
        if not in_up and any(s >= slots for _, s in later):
            continue
        if in_up and not in_down and any(s <= slots for _, s in later):
            continue
        kept.append((time, slots))
    period = max(config.scale_up.period_seconds, config.scale_down.period_seconds)
    changes = tuple(c for c in memory.changes if c[0] > now - period)
    horizon = now - observation.consume_rate_window_seconds
    busy = list(memory.busy)
    while len(busy) > 1 and busy[1][0] <= horizon:
        busy.pop(0)
    return replace(memory, recommendations=tuple(kept), changes=changes, busy=tuple(busy))

"""The scaling decision: lag and rates in, replicas x pool out, with a reason a person can read. Pure.

`decide(config, observation, memory, now) -> Decision` is called once per poll. Everything it needs
to remember between polls is in `PolicyMemory`, an immutable value that serialises to a small dict
(the operator stores it in status, so a restarted operator resumes without a spurious scale).

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
     targetTimeLagSeconds) when the group's time lag exceeds it,
     and μ is the per-slot throughput (msg/s per slot):
       - measured as consume rate ÷ busy slots once every slot has been busy for a whole consume-rate
         window at unchanged busy slots: the group was saturated (backlog larger than
         `SATURATION_BACKLOG_SECONDS` of consumption and 2 messages per slot), or the backlog's trend
         showed a steady deficit (the smallest lag per minute grew by `TREND_BACKLOG_SECONDS` of
         consumption within `TREND_WINDOW_SECONDS` at unchanged capacity, while production exceeds
         consumption: a group 1 % short crosses the saturation bar only after 1000 s); smoothed
         (EWMA, weight 0.5);
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
       far below the real speed and would grow the group 20 % per poll.
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

from lagpilot_operator.models import TIME_LAG_ONE_FORM, duration_seconds
from lagpilot_operator.observations import (
    DEFAULT_CONSUME_RATE_WINDOW_SECONDS,
    DEFAULT_PRODUCE_RATE_WINDOW_SECONDS,
    LagHistory,
    LagSample,
    OffsetResetPolicy,
    PartitionKey,
    partition_lag,
    partition_name,
)
from lagpilot_operator.verdicts import STUCK, Verdict

Mode = Literal["drainTime", "lagThreshold"]
FallbackMode = Literal["hold", "replicas"]
Direction = Literal["up", "down", "none"]

SATURATION_BACKLOG_SECONDS = 10.0  # > librdkafka's 5 s auto-commit: commit lag alone never looks saturated
SLOT_RATE_EWMA_WEIGHT = 0.5
FLOOR_HALF_LIFE_SECONDS = 600.0
MAX_NAMED_PARTITIONS = 5
REBALANCE_GRACE_POLLS = 3  # polls after a replica decrease during which replicas do not go back up
# A steady deficit (capacity just below demand) grows the backlog too slowly to cross the saturation
# bar soon: 1 % short takes 1000 s to build 10 s of consumption. The backlog's trend finds it sooner:
# the smallest lag seen in each TREND_BUCKET_SECONDS bucket (the minimum strips most of the commit
# sawtooth) is compared across up to TREND_WINDOW_SECONDS at unchanged capacity; growth by more than
# TREND_BACKLOG_SECONDS of consumption says every slot is busy. A deficit too small to grow that much
# within the window is left to the saturation bar.
TREND_WINDOW_SECONDS = 600.0
TREND_BUCKET_SECONDS = 60.0
TREND_BACKLOG_SECONDS = 3.0
MIN_RATE = 1e-3  # msg/s; below this a consume rate says nothing about per-slot speed
MAX_SLOTS = 1_000_000  # far above any pool.max x replicas.max; keeps arithmetic finite


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
            )
        except (TypeError, ValueError):
            return cls()


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
    return _Decider(config, observation, memory, now).run()


def _shape(replicas: int, pool: int) -> str:
    return f"{replicas} replica{'s' if replicas != 1 else ''}, pool {pool}"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _owned_partitions(config: PolicyConfig, partitions: int) -> int:
    """Partitions the consumers split among themselves, each owning some; 0 (no bound) for a share group,
    whose consumers all fetch from every partition."""
    return 0 if config.share_group else partitions


def _replica_cap(config: PolicyConfig, partitions: int) -> int:
    cap = config.replicas.max
    partitions = _owned_partitions(config, partitions)
    if not config.lag_threshold.allow_idle_consumers and partitions > 0:
        cap = min(cap, partitions)
    return max(cap, config.replicas.min)  # min wins over the partition cap


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
    )


def _hold(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float, reason: str,
          *, clamp: bool) -> Decision:
    replicas, pool = max(0, observation.current_replicas), observation.current_pool
    if clamp:  # bounds still hold (a user may have just changed them); zero stays zero when min allows
        replicas = _clamp(replicas, config.replicas.min, _replica_cap(config, observation.partitions))
        pool = _clamp(pool, config.pool.min, config.pool.max)
    lag = _sample_lag(config, observation.sample)
    new_memory = _prune(_remember_hold(memory, now, replicas * pool), config, now, observation)
    return Decision(replicas, pool, reason, lag, lag, new_memory, slots=replicas * pool)


def _consumers(observation: Observation, sample: LagSample, partitions: int) -> int:
    """Consumers working on partitions now (members, else ready pods, else the replica count)."""
    replicas = max(0, observation.current_replicas)
    if replicas == 0:
        return 0  # members of a group scaled to zero are leftovers on their way out
    members = sample.members
    if members is None:
        members = observation.ready_replicas if observation.ready_replicas is not None else replicas
    if partitions > 0:
        members = min(members, partitions)  # idle consumers have no partitions to work on
    return max(0, members)


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
        reason = f"paused: holding {_shape(replicas, pool)}"
    else:
        reason = f"paused: replicas pinned {current_r}→{replicas}, pool {pool}"
    lag = _sample_lag(config, observation.sample)
    held = _remember_hold(memory, now, replicas * pool)
    if observation.sample is not None:
        partitions = _owned_partitions(config, observation.partitions or len(observation.sample.partitions))
        held = replace(held, last_lag=lag, last_members=_consumers(observation, observation.sample, partitions))
    direction: Direction = "none" if replicas == current_r else "up" if replicas > current_r else "down"
    return Decision(replicas, pool, reason, lag, lag, _prune(held, config, now, observation),
                    slots=replicas * pool, direction=direction)


def _blind(config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> Decision:
    failures = observation.consecutive_failures
    threshold = config.fallback.failure_threshold
    if config.fallback.mode == "replicas" and failures >= threshold:
        cap = _replica_cap(config, observation.partitions)
        replicas = _clamp(config.fallback.replicas, max(1, config.replicas.min), max(1, cap))
        pool = _clamp(observation.current_pool, config.pool.min, config.pool.max)
        reason = (f"fallback to {_shape(replicas, pool)}: lag unreadable for {failures} consecutive polls "
                  f"(failureThreshold {threshold})")
        changed = replicas != observation.current_replicas
        new_memory = _prune(_remember_hold(memory, now, replicas * pool), config, now, observation)
        if changed:
            new_memory = replace(new_memory, last_replica_change=now)
        direction: Direction = "none"
        current_capacity = observation.current_replicas * observation.current_pool
        if replicas * pool != current_capacity:
            direction = "up" if replicas * pool > current_capacity else "down"
        return Decision(replicas, pool, reason, 0, 0, new_memory, slots=replicas * pool, direction=direction)
    detail = f"{failures} consecutive failure{'s' if failures != 1 else ''}"
    if config.fallback.mode == "replicas":
        detail += f"; fallback to {config.fallback.replicas} after {threshold}"
    replicas, pool = observation.current_replicas, observation.current_pool
    return _hold(config, observation, memory, now, f"hold {_shape(replicas, pool)}: lag unavailable ({detail})",
                 clamp=True)


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


def _next_trend(trend: tuple[tuple[float, int], ...], now: float, lag: int, *,
                restart: bool) -> tuple[tuple[float, int], ...]:
    """The lag trend's buckets after this poll; `restart` when capacity or membership just changed."""
    if restart or not trend:
        return ((now, lag),)
    buckets = list(trend)
    start, smallest = buckets[-1]
    if now - start >= TREND_BUCKET_SECONDS:
        buckets.append((now, lag))
    else:
        buckets[-1] = (start, min(smallest, lag))
    while len(buckets) > 1 and buckets[0][0] < now - TREND_WINDOW_SECONDS:
        buckets.pop(0)
    return tuple(buckets)


def _steady_deficit(trend: tuple[tuple[float, int], ...], now: float, window: float, consume: float | None,
                    produce: float | None) -> bool:
    """A backlog that grew across the trend at unchanged capacity, and still grows: capacity is below demand."""
    if not trend or consume is None or produce is None or consume < MIN_RATE or produce <= consume:
        return False
    start, first = trend[0]
    growth = trend[-1][1] - first
    return now - start >= 2 * window and growth > TREND_BACKLOG_SECONDS * consume


@dataclass
class _Raw:
    slots: int
    explanation: str
    slot_rate: float | None = None
    needed_rate: float | None = None


class _Decider:
    """One decision; a class only to share the many intermediate values between its steps."""

    def __init__(self, config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> None:
        self.config = config
        self.obs = observation
        self.memory = memory
        self.now = now
        self.sample = cast(LagSample, observation.sample)
        self.partitions = observation.partitions or len(self.sample.partitions)
        # What bounds consumers and sizes the busiest pod: the partitions, except in a share group.
        self.owned = _owned_partitions(config, self.partitions)
        self.current_r = max(0, observation.current_replicas)
        self.current_pool = observation.current_pool
        self.current_capacity = self.current_r * self.current_pool
        # KIP-848: the broker assigns and moves only the partitions that change owner, with no group-wide
        # join barrier, so a pod added or removed costs the others (almost) nothing. A share group's
        # consumers own no partitions at all: one joining or leaving stops nobody.
        self.incremental = self.sample.protocol == "consumer" or config.share_group
        self.group_kind = "share group (KIP-932)" if config.share_group else "consumer-protocol group (KIP-848)"
        self.cheap_join = ("adding one stops no other consumer" if config.share_group
                           else "adding one moves only the partitions it takes")
        self.cheap_leave = ("its consumers share partitions, removing one paused no other" if config.share_group
                            else "its rebalance paused only the partitions it moved")
        self.notes: list[str] = []
        # Fresh memory (first decision, lost status): as if the current capacity was just recommended,
        # so nothing scales down before a full window has been observed.
        self.seeded_recommendations = memory.recommendations
        if memory.last_time is None and self.current_capacity > 0:
            self.seeded_recommendations = (*memory.recommendations, (now, self.current_capacity))

    # -- lag ------------------------------------------------------------------------------------

    def _lags(self) -> None:
        reset = self.config.lag_threshold.offset_reset_policy
        self.lags = {p.key: partition_lag(p, reset) for p in self.sample.partitions}
        self.total_lag = sum(self.lags.values())
        excluding = self.config.mode == "drainTime" or self.config.lag_threshold.exclude_persistent_lag
        self.stuck: dict[PartitionKey, Verdict] = {}
        if excluding and self.current_r > 0:
            self.stuck = {
                key: verdict
                for key, verdict in sorted(self.obs.verdicts.items())
                if verdict in STUCK and self.lags.get(key, 0) > 0
            }
        self.stuck_lag = sum(self.lags[key] for key in self.stuck)
        self.effective_lag = self.total_lag - self.stuck_lag

    # -- throughput -----------------------------------------------------------------------------

    def _consumers(self) -> int:
        return _consumers(self.obs, self.sample, self.owned)

    def _busy_slots(self) -> int:
        return self.consumers * self.current_pool

    def _throughput(self) -> None:
        memory, now = self.memory, self.now
        window = self.obs.consume_rate_window_seconds
        consume = self.obs.consume_rate
        self.consumers = self._consumers()
        busy_now = self._busy_slots()
        busy = list(memory.busy)
        if not busy or busy[-1][1] != busy_now:
            busy.append((now, busy_now))
        self.busy_now = busy_now
        self.busy_history = tuple(busy)
        busy_max = _max_in_window(busy, now - window)
        # Without any rate (first sample) there is no telling a backlog from commit lag: not saturated.
        reference = consume if consume is not None else self.obs.produce_rate
        threshold = max(2.0 * busy_now, (reference or 0.0) * SATURATION_BACKLOG_SECONDS)
        self.saturated = busy_now > 0 and reference is not None and self.effective_lag > threshold
        self.saturated_since = (memory.saturated_since if memory.saturated_since is not None else now) \
            if self.saturated else None
        stable_since = busy[-1][0]
        # Pods still starting (replicas > members) will change the capacity soon: no trend across that.
        joining = self.consumers < (min(self.current_r, self.owned) if self.owned > 0 else self.current_r)
        self.trend = _next_trend(memory.trend, now, self.effective_lag, restart=stable_since >= now or joining)
        deficit = _steady_deficit(self.trend, now, window, consume, self.obs.produce_rate)
        self.deficit_since = (memory.deficit_since if memory.deficit_since is not None else now) \
            if deficit else None
        # Like saturation, the deficit must have lasted a whole consume-rate window before that window's
        # rate counts as every slot's: a step up in load grows the lag at once, but the window before
        # it was mostly idle slots.
        self.deficit = self.deficit_since is not None and self.deficit_since <= now - window
        if self.deficit:
            self.notes.append(f"lag grew {self.trend[-1][1] - self.trend[0][1]:,} msgs in "
                              f"{now - self.trend[0][0]:,.0f} s at unchanged capacity: every slot is busy")

        floor = memory.slot_rate_floor
        if floor is not None and memory.floor_time is not None:
            floor *= 0.5 ** (max(0.0, now - memory.floor_time) / FLOOR_HALF_LIFE_SECONDS)
        if consume is not None and consume >= MIN_RATE and busy_max > 0:
            bound = consume / busy_max
            floor = bound if floor is None else max(floor, bound)
        slot_rate = memory.slot_rate
        self.measured: float | None = None
        saturated_for_a_window = self.saturated_since is not None and self.saturated_since <= now - window
        if (
            (saturated_for_a_window or self.deficit)
            and stable_since <= now - window
            and consume is not None
            and consume >= MIN_RATE
        ):
            self.measured = consume / busy_now
            slot_rate = self.measured if slot_rate is None else (
                SLOT_RATE_EWMA_WEIGHT * self.measured + (1 - SLOT_RATE_EWMA_WEIGHT) * slot_rate)
            floor = self.measured  # a fresh measurement replaces any older lower bound
        self.slot_rate = slot_rate
        self.floor = floor

    # -- raw recommendation ---------------------------------------------------------------------

    def _raw(self) -> _Raw:
        if self.config.mode == "lagThreshold" or self.obs.lag_only:
            per = self.config.lag_threshold.lag_per_consumer
            slots = math.ceil(self.effective_lag / per)
            # A lag-only source (Prometheus) never yields produce/consume rates, so drainTime cannot
            # size by throughput; the KEDA-compatible rule is the honest fallback.
            prefix = "lag-only source, sized by lagThreshold: " if self.config.mode == "drainTime" else ""
            return _Raw(slots, f"{prefix}lag {self.effective_lag:,} msgs at {per:,} per consumer needs {slots:,} slots")
        return self._raw_drain_time()

    def _raw_drain_time(self) -> _Raw:
        settings = self.config.drain_time
        produce = self.obs.produce_rate
        if produce is None:
            produce = self.obs.consume_rate or 0.0
        drain_seconds = float(settings.target_drain_seconds)
        target_lag = settings.target_time_lag_seconds
        time_lag = max((v for k, v in self.obs.time_lags.items() if k not in self.stuck), default=0.0)
        if target_lag is not None and time_lag > target_lag and target_lag < drain_seconds:
            drain_seconds = float(target_lag)
            self.notes.append(f"time lag {_seconds(time_lag)} > target {_seconds(target_lag)}")
        headroom = 1 + settings.headroom_percent / 100
        needed = produce * headroom + self.effective_lag / drain_seconds
        demand = (f"backlog {self.effective_lag:,} msgs + {_rate(produce)} msg/s "
                  f"(+{settings.headroom_percent}%)")
        drain = f"to drain in {_seconds(drain_seconds)}"

        def slots_at(rate: float) -> int:
            if needed <= 0:
                return 0
            return min(MAX_SLOTS, math.ceil(needed / rate - 1e-9))

        capacity = self.current_capacity
        if self.slot_rate is not None:
            rate = max(self.slot_rate, self.floor or 0.0)
            slots = slots_at(rate)
            return _Raw(slots, f"{demand} needs {slots:,} slots at {_rate(rate)} msg/s/slot {drain}", rate, needed)
        # Nothing measured yet: act on the lag's direction, bounded by what the lower bound proves.
        floor = self.floor
        bound_slots = slots_at(floor) if floor else None
        if self.saturated:
            growing = self.memory.last_lag is None or self.effective_lag > self.memory.last_lag
            expected = min(self.current_r, self.owned) if self.owned > 0 else self.current_r
            settled = self.consumers >= expected and self.memory.last_members in (None, self.consumers)
            if growing and not settled:
                # Pods are still starting or just joined (a rebalance pause): the lag's growth says
                # nothing yet about the capacity already added, so do not double again.
                return _Raw(capacity, f"lag {self.effective_lag:,} msgs growing while consumers join "
                                      f"({self.consumers} of {expected}): keeping {capacity:,} slots", floor, needed)
            if growing:
                doubled = max(2 * capacity, self.config.pool.initial)
                # The lower bound on the per-slot rate makes `bound_slots` an upper bound on what is
                # needed: doubling past it only overshoots and steps back down a window later. (A bound
                # that asks for no more than the capacity has is stale: the lag says otherwise.)
                if bound_slots is not None and capacity < bound_slots < doubled:
                    return _Raw(bound_slots, f"lag {self.effective_lag:,} msgs growing, per-slot throughput "
                                             f"not measured yet: {demand} needs at most {bound_slots:,} slots at "
                                             f"≥ {_rate(cast(float, floor))} msg/s/slot {drain}", floor, needed)
                slots = max(doubled, bound_slots or 0)
                return _Raw(slots, f"lag {self.effective_lag:,} msgs growing, per-slot throughput not measured "
                                   f"yet: at least doubling {capacity:,}→{slots:,} slots", floor, needed)
            # Draining: keep what works until the drain itself measures the per-slot throughput.
            return _Raw(capacity, f"lag {self.effective_lag:,} msgs shrinking, per-slot throughput not measured "
                                  f"yet: keeping {capacity:,} slots", floor, needed)
        if needed <= 0:
            return _Raw(0, f"no backlog and no production ({_rate(produce)} msg/s)", floor, needed)
        if bound_slots is not None:
            slots = min(capacity, bound_slots) if capacity > 0 else bound_slots
            return _Raw(slots, f"{demand} needs at most {slots:,} slots at ≥ {_rate(cast(float, floor))} "
                               f"msg/s/slot {drain}", floor, needed)
        slots = capacity if capacity > 0 else self.config.pool.initial
        return _Raw(slots, f"{demand}, per-slot throughput not measured yet: keeping {slots:,} slots", None, needed)

    # -- windows and limits ---------------------------------------------------------------------

    def _stabilize(self, recommendation: int) -> int:
        recs = list(self.seeded_recommendations)
        up_cut = self.now - self.config.scale_up.stabilization_seconds
        down_cut = self.now - self.config.scale_down.stabilization_seconds
        up = min([recommendation, *(s for t, s in recs if t > up_cut)])
        down = max([recommendation, *(s for t, s in recs if t > down_cut)])
        target = self.current_capacity
        if target < up:
            target = up
        if target > down:
            target = down
        if recommendation < self.current_capacity and target > recommendation:
            self.notes.append(f"scale-down stabilization keeps {target:,} slots "
                              f"(max over {self.config.scale_down.stabilization_seconds} s)")
        if recommendation > self.current_capacity and target < recommendation:
            self.notes.append(f"scale-up stabilization keeps {target:,} slots "
                              f"(min over {self.config.scale_up.stabilization_seconds} s)")
        return target

    def _limit_steps(self, target: int) -> int:
        capacity = self.current_capacity
        if target > capacity:
            up = self.config.scale_up
            added = sum(b - a for t, a, b in self.memory.changes if t > self.now - up.period_seconds and b > a)
            base = max(0, capacity - added)
            limit = base + max(up.min_step, math.ceil(base * up.max_step_percent / 100))
            limited = max(capacity, min(target, limit))
            if limited < target:
                self.notes.append(f"scale-up step limit {limited:,} slots "
                                  f"(+max({up.min_step}, {up.max_step_percent}%) per {up.period_seconds} s)")
            return limited
        if target < capacity:
            down = self.config.scale_down
            removed = sum(a - b for t, a, b in self.memory.changes if t > self.now - down.period_seconds and a > b)
            base = capacity + removed
            limit = base - max(down.min_step, math.ceil(base * down.max_step_percent / 100))
            limited = min(capacity, max(target, limit))
            if limited > target:
                self.notes.append(f"scale-down step limit {limited:,} slots "
                                  f"(-max({down.min_step}, {down.max_step_percent}%) per {down.period_seconds} s)")
            return limited
        return target

    def _shape_for(self, slots: int, *, forced: bool) -> tuple[int, int]:
        """Replicas x pool for `slots`: pool first, the partition cap, bounds and cooldown."""
        config = self.config
        pool_min, pool_max = config.pool.min, config.pool.max
        if slots <= 0:
            return 0, _clamp(self.current_pool, pool_min, pool_max)
        low = max(1, config.replicas.min)
        high = _replica_cap(config, self.partitions)
        current_ok = (low <= self.current_r <= high) and pool_min <= self.current_pool <= pool_max
        if slots == self.current_capacity and current_ok:
            return self.current_r, self.current_pool
        shrinking = slots < self.current_capacity
        replicas = math.ceil(slots / pool_max)
        if self.incremental and not shrinking:
            # Pool first is for the classic protocol, where each new pod is a rebalance of the group.
            # With incremental rebalances, new capacity goes to new pods at the current pool (more
            # CPU and memory, smaller failure domain); the pool grows once pods reach their cap.
            spread = math.ceil(slots / _clamp(max(self.current_pool, config.pool.initial), pool_min, pool_max))
            if _clamp(spread, low, high) > _clamp(replicas, low, high):
                self.notes.append(f"{self.group_kind}: pods before a bigger pool, as {self.cheap_join}")
            replicas = spread
        # Removing capacity never adds pods; adding capacity never removes pods.
        replicas = min(replicas, max(self.current_r, 1)) if shrinking else max(replicas, self.current_r)
        replicas = _clamp(replicas, low, high)
        # A pod with more partitions than the others needs more slots (the pool is per pod). A scale-down
        # keeps as many of the current pods as the busiest one's share needs to fit in pool.max (9 pods
        # of 10 partitions would leave one pod short at the same slots). A scale-up adds no pods for
        # it: their pools would shrink as they start, a capacity blip; growing, the pool is at its max.
        if shrinking:
            while replicas < min(high, self.current_r) and self._pool_for(slots, replicas) > pool_max:
                replicas += 1
        if replicas == high and self._pool_for(slots, high) > pool_max:
            self.notes.append(f"capped at {high} replicas x pool {pool_max}"
                              + (f" ({self.owned} partitions)" if high == self.owned else ""))
        last = self.memory.last_replica_change
        cooling = (
            not forced
            and self.current_r > 0
            and replicas != self.current_r
            and last is not None
            and self.now - last < config.cooldown_seconds
        )
        if cooling:
            held = _clamp(self.current_r, low, high)
            if held != replicas:
                wait = config.cooldown_seconds - (self.now - cast(float, last))
                self.notes.append(f"replica change waits {wait:,.0f} s more for the {config.cooldown_seconds} s "
                                  "cooldown")
                replicas = held
        decreased = self.memory.last_replica_decrease
        grace = max(REBALANCE_GRACE_POLLS * config.poll_interval_seconds, config.scale_down.period_seconds)
        recently_decreased = (
            not forced
            and replicas > self.current_r > 0
            and decreased is not None
            and self.now - decreased < grace
            and low <= self.current_r <= high
        )
        if recently_decreased and self.incremental:
            self.notes.append(f"{self.group_kind}: no rebalance grace after removing a pod, {self.cheap_leave}")
        elif recently_decreased:
            # Removing a pod paused the whole group for a rebalance; the lag that built up meanwhile
            # is not demand. Let the pool absorb it instead of bouncing the replica count right back.
            self.notes.append(f"no new pods within {grace} s of removing one (rebalance lag)")
            replicas = self.current_r
        pool = _clamp(self._pool_for(slots, replicas), pool_min, pool_max)
        if shrinking and current_ok and replicas * pool >= self.current_capacity:
            # Pool rounding after consolidating pods would not actually shrink anything: keep as is.
            return self.current_r, self.current_pool
        return replicas, pool

    def _even_capacity(self) -> int:
        """Slots the current shape gives load spread evenly over partitions: `_pool_for` inverted."""
        partitions, replicas = self.owned, self.current_r
        if partitions <= 0 or replicas <= 0:
            return self.current_capacity
        busiest = math.ceil(partitions / min(replicas, partitions))
        return min(self.current_capacity, self.current_pool * partitions // busiest)

    def _pool_for(self, slots: int, replicas: int) -> int:
        """Pool that gives the busiest pod its partitions' share of `slots`.

        An assignor spreads P partitions over r consumers as evenly as it can, so the busiest pod has
        ceil(P / r) of them and, at a load spread evenly over partitions, that share of the work:
        ceil(P / r) / P of the slots. 10 partitions on 9 pods put 2 on one pod, which then needs twice
        the pool of the others; sizing every pod for slots / 9 leaves that pod short and the lag grows.
        A share group's records go to whichever consumer fetches: slots / r each.
        """
        partitions = self.owned
        if partitions <= 0 or replicas <= 0:
            return math.ceil(slots / max(replicas, 1))
        busiest = math.ceil(partitions / min(replicas, partitions))
        return math.ceil(slots * busiest / partitions - 1e-9)

    # -- the whole thing --------------------------------------------------------------------------

    def run(self) -> Decision:
        config, now = self.config, self.now
        self._lags()
        self._throughput()
        activation = config.lag_threshold.activation_lag
        idle = self.total_lag <= activation
        idle_since = (self.memory.idle_since if self.memory.idle_since is not None else now) if idle else None
        zero_allowed = config.replicas.min == 0
        idle_long_enough = idle_since is not None and now - idle_since >= config.scale_down.stabilization_seconds

        raw = self._raw()
        waking = self.current_r == 0 and not idle
        staying_at_zero = self.current_r == 0 and idle and zero_allowed
        tolerance = config.tolerance_percent / 100
        recommendation = raw.slots
        if waking:
            recommendation = max(recommendation, 1)
        elif self.current_capacity > 0 and abs(recommendation - self.current_capacity) <= (
            tolerance * self.current_capacity
        ):
            if recommendation != self.current_capacity:
                self.notes.append(f"within {config.tolerance_percent}% tolerance")
            recommendation = self.current_capacity

        if staying_at_zero:
            target, head = 0, f"stay at zero: lag {self.total_lag:,} ≤ activation {activation:,}"
            replicas, pool = 0, _clamp(self.current_pool, config.pool.min, config.pool.max)
        elif zero_allowed and idle and idle_long_enough:
            target = 0
            head = (f"scale to zero: lag {self.total_lag:,} ≤ activation {activation:,} for "
                    f"{config.scale_down.stabilization_seconds} s")
            replicas, pool = 0, _clamp(self.current_pool, config.pool.min, config.pool.max)
        else:
            # Waking has activation semantics: no stabilization or step limit from zero.
            target = recommendation if waking else self._limit_steps(self._stabilize(recommendation))
            # Measured against what the current shape gives evenly spread load: a pool sized for the
            # busiest pod's partitions counts more slots than that, and every poll would trim one.
            shrink = self._even_capacity() - target
            band = max(1.0, tolerance * self.current_capacity)
            if not waking and target < self.current_capacity and 0 < shrink < band:
                # The window's maximum decays one expired recommendation at a time; without this band
                # every small decay would be its own pool change.
                self.notes.append(f"shrink of {self.current_capacity - target} slots within "
                                  f"{config.tolerance_percent}% tolerance")
                target = self.current_capacity
            forced = waking
            replicas, pool = self._shape_for(max(target, 1), forced=forced)
            head = ""
            if waking:
                head = f"wake from zero: lag {self.total_lag:,} > activation {activation:,}; "

        capacity = replicas * pool
        direction: Direction = "none"
        if capacity > self.current_capacity:
            direction = "up"
        elif capacity < self.current_capacity:
            direction = "down"
        if config.share_group and replicas > self.partitions > 0:
            self.notes.append(f"share group: {replicas} replicas on {self.partitions} partitions, not capped at the "
                              "partition count (its consumers share partitions)")
        reason = self._reason(head, raw, replicas, pool, direction, target, staying_at_zero or replicas == 0)

        memory = self.memory
        changes = memory.changes
        if capacity != self.current_capacity:
            changes = (*changes, (now, self.current_capacity, capacity))
        new_memory = PolicyMemory(
            recommendations=(*self.seeded_recommendations, (now, recommendation)),
            changes=changes,
            last_replica_change=now if replicas != self.current_r else memory.last_replica_change,
            last_replica_decrease=now if replicas < self.current_r else memory.last_replica_decrease,
            slot_rate=self.slot_rate,
            slot_rate_floor=self.floor,
            floor_time=now if self.floor is not None else None,
            busy=self.busy_history,
            saturated_since=self.saturated_since,
            idle_since=idle_since,
            last_time=now,
            last_lag=self.effective_lag,
            last_members=self.consumers,
            trend=self.trend,
            deficit_since=self.deficit_since,
        )
        new_memory = _prune(new_memory, config, now, self.obs)
        return Decision(
            replicas=replicas,
            pool=pool,
            reason=reason,
            total_lag=self.total_lag,
            effective_lag=self.effective_lag,
            memory=new_memory,
            slots=target,
            direction=direction,
            excluded_partitions=tuple(self.stuck),
            slot_rate=raw.slot_rate,
            needed_rate=raw.needed_rate,
        )

    def _reason(self, head: str, raw: _Raw, replicas: int, pool: int, direction: Direction, target: int,
                zero: bool) -> str:
        if zero:
            text = head
        else:
            before_r, before_pool = self.current_r, self.current_pool
            if replicas != before_r:
                verb = "scale up" if direction == "up" else "scale down" if direction == "down" else "reshape"
                action = f"{verb} {before_r}→{replicas} replicas"
                action += f", pool {before_pool}→{pool}" if pool != before_pool else f", pool {pool}"
            elif pool != before_pool:
                verb = "grow" if pool > before_pool else "shrink"
                action = f"{verb} pool {before_pool}→{pool} on {_shape(replicas, pool).split(',')[0]}"
            else:
                action = f"hold {_shape(replicas, pool)}"
            text = f"{head}{action}: {raw.explanation}"
        notes = list(self.notes)
        if self.stuck:
            names = [f"{partition_name(key)} ({verdict.value})" for key, verdict in self.stuck.items()]
            shown = ", ".join(names[:MAX_NAMED_PARTITIONS])
            if len(names) > MAX_NAMED_PARTITIONS:
                shown += f" and {len(names) - MAX_NAMED_PARTITIONS} more"
            notes.append(f"excluded stuck partitions {shown}: {self.stuck_lag:,} msgs more workers cannot drain")
        if notes:
            text += "; " + "; ".join(notes)
        return text


def _max_in_window(values: list[tuple[float, int]], window_start: float) -> int:
    """Largest value in effect at any time after `window_start`; each value holds until the next begins."""
    largest = 0
    for index, (_, value) in enumerate(values):
        ends = values[index + 1][0] if index + 1 < len(values) else math.inf
        if ends > window_start:
            largest = max(largest, value)
    return largest


def _seconds(value: float) -> str:
    """A duration for a reason: "45 s", "1.5 s", below a second in milliseconds ("200 ms")."""
    if value >= 10:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.1f}".removesuffix(".0") + " s"
    return f"{value * 1000:,.0f} ms"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"

"""A KEDA-equivalent autoscaler (Kafka scaler + HPA), for side-by-side comparison. Pure: no I/O.

What it reproduces, with the defaults of KEDA 2.x and Kubernetes' HPA v2:

Kafka scaler (`pkg/scalers/kafka_scaler.go`, `GetMetrics`/`getLagForPartition`):
* lag of a partition = log-end - committed; no committed offset: 1 under `offsetResetPolicy=latest`
  (0 with `scaleToZeroOnInvalidOffset`), the log-end offset under `earliest` (KEDA counts from 0, so
  messages deleted by retention count too; reproduced as is);
* `excludePersistentLag`: a partition whose committed offset equals the one seen at the previous
  poll contributes 0 to the metric (but still to activation);
* the total is capped at partitions x `lagThreshold` unless `allowIdleConsumers`, which is what keeps
  replicas at or below the partition count;
* active (0 <-> 1 decisions, made by KEDA's operator every `pollingInterval`, default 30 s) when the
  uncapped lag > `activationLagThreshold` (default 0); back to 0 only after `cooldownPeriod`
  (default 300 s) without activity, and only when `minReplicaCount` is 0.

Metrics server: on each HPA request KEDA asks the scaler afresh (the trigger's `useCachedMetrics`,
default false); only with `useCachedMetrics` does the HPA get the value of the operator's last poll.
So with KEDA's defaults `pollingInterval` paces activation (0 <-> 1) only, and the HPA sees the lag
of its own sync (calibrated against the real KEDA 2.21: a new metric value at every 15 s sync).

HPA (`pkg/controller/podautoscaler`, external metric with an AverageValue target = lagThreshold):
* every sync (default 15 s): ratio = metric / (lagThreshold x current replicas); if 1 - tolerance <=
  ratio <= 1 + tolerance (the 10 % tolerance, bounds included, in float64 as Kubernetes 1.34's
  `Tolerances.isWithin`) keep the current count, else desired = ceil(metric / lagThreshold). The bounds
  matter: |1 - 1.1| is 0.10000000000000009 in floats, but 1.0 + 0.1 == 1.1, so a ratio of exactly 1.1 holds
  (the real HPA kept 1 replica at 1,760 against a lagThreshold of 1,600, ratio 1.100);
* stabilization: the recommendation is recorded; the result is at least the minimum over the
  scale-up window (default 0 s) and at most the maximum over the scale-down window (default 300 s);
* rate limits. KEDA gives its HPA a `behavior` only when the ScaledObject sets
  `advanced.horizontalPodAutoscalerConfig.behavior`; without one (the default) the HPA controller
  takes its legacy path (`normalizeDesiredReplicas`): up to max(2 x current, 4) at each sync, down
  at once (after the stabilization) - the real KEDA went 1 -> 4 -> 8, not 1 -> 5 -> 8.
  With a behavior (`hpa_behavior`; the fields below are the API's defaults for it): up by at most
  max(4 pods, 100 %) per 15 s, down by at most 100 % per 15 s, counted from the replicas at the
  start of the period (HPA's `replicasAddedInCurrentPeriod`);
* clamped to [max(1, minReplicaCount), maxReplicaCount], and never scaled up beyond the partition
  count unless `allowIdleConsumers` (KEDA's documented promise; its code gets there through the metric
  cap, whose integer division can let one replica more through - we apply the documented cap).

KEDA scales pods only: a KEDA-scaled worker's in-pod concurrency is whatever its user fixed (the
simulator gives it Lagpilot's `pool.initial` by default, `--keda-pool` to change it). As in KEDA, the
partition cap comes from the metric cap, so the 10 % tolerance can leave replicas just below the
partition count (KEDA issues #2908, #4791) - reproduced, not fixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from lagpilot_operator.core.observations import LagSample, OffsetResetPolicy, PartitionKey, PartitionOffsets
from lagpilot_operator.core.stabilization import stabilized


@dataclass(frozen=True)
class KedaConfig:
    lag_threshold: int = 10
    activation_lag_threshold: int = 0
    allow_idle_consumers: bool = False
    offset_reset_policy: OffsetResetPolicy = "latest"
    exclude_persistent_lag: bool = False
    scale_to_zero_on_invalid_offset: bool = False
    min_replicas: int = 0                    # ScaledObject minReplicaCount
    max_replicas: int = 100                  # ScaledObject maxReplicaCount
    polling_interval_seconds: float = 30.0   # ScaledObject pollingInterval
    cooldown_period_seconds: float = 300.0   # ScaledObject cooldownPeriod (1 -> 0 only)
    hpa_sync_seconds: float = 15.0           # --horizontal-pod-autoscaler-sync-period
    tolerance: float = 0.1                   # --horizontal-pod-autoscaler-tolerance
    use_cached_metrics: bool = False         # trigger useCachedMetrics: the HPA reads the last poll
    # ScaledObject advanced.horizontalPodAutoscalerConfig.behavior set (with the scale_up_*/scale_down_*
    # values below); False, KEDA's default: no behavior, the HPA's legacy max(2 x current, 4) per sync.
    hpa_behavior: bool = False
    scale_up_stabilization_seconds: float = 0.0
    scale_up_pods: int = 4
    scale_up_percent: int = 100
    scale_up_period_seconds: float = 15.0
    scale_down_stabilization_seconds: float = 300.0
    scale_down_percent: int = 100
    scale_down_period_seconds: float = 15.0


def keda_partition_lag(offsets: PartitionOffsets, config: KedaConfig) -> int:
    """KEDA's `getLagForPartition` (without persistent-lag exclusion)."""
    if offsets.committed is None:
        if config.offset_reset_policy == "latest":
            return 0 if config.scale_to_zero_on_invalid_offset else 1
        return offsets.end_offset
    return offsets.end_offset - offsets.committed


@dataclass(frozen=True)
class ScalerMetric:
    metric: int            # what the HPA sees (capped unless allowIdleConsumers)
    total_lag: int         # uncapped, with persistent lag: decides activity
    partitions: int
    active: bool


def scaler_metric(
    config: KedaConfig, sample: LagSample, previous_offsets: Mapping[PartitionKey, int]
) -> tuple[ScalerMetric, dict[PartitionKey, int]]:
    """One KEDA scaler poll: the metric, and the committed offsets to remember for the next poll."""
    metric_lag = 0
    total = 0
    remembered = dict(previous_offsets)
    for offsets in sample.partitions:
        lag = keda_partition_lag(offsets, config)
        total += lag
        if config.exclude_persistent_lag and offsets.committed is not None:
            previous = previous_offsets.get(offsets.key)
            remembered[offsets.key] = offsets.committed
            if previous is not None and previous == offsets.committed:
                lag = 0  # consumer did not move since the last poll: more consumers would not help
        metric_lag += lag
    partitions = len(sample.partitions)
    if not config.allow_idle_consumers and partitions > 0 and metric_lag // config.lag_threshold > partitions:
        metric_lag = partitions * config.lag_threshold
    return ScalerMetric(metric_lag, total, partitions, total > config.activation_lag_threshold), remembered


@dataclass(frozen=True)
class KedaState:
    """Everything KEDA's operator and the HPA controller keep between their loops."""

    metric: ScalerMetric | None = None
    metric_time: float | None = None
    previous_offsets: tuple[tuple[PartitionKey, int], ...] = ()
    last_active_time: float | None = None
    recommendations: tuple[tuple[float, int], ...] = ()
    scale_events: tuple[tuple[float, int], ...] = ()   # (time, replica change)


@dataclass(frozen=True)
class KedaDecision:
    replicas: int
    reason: str
    state: KedaState


def poll(config: KedaConfig, state: KedaState, sample: LagSample | None, now: float) -> KedaState:
    """KEDA's polling loop: refresh the metric (errors keep the last value, as a failed scaler call
    makes the HPA hold) and the last time the scaler was active."""
    if sample is None:
        return state
    metric, remembered = scaler_metric(config, sample, dict(state.previous_offsets))
    return replace(
        state,
        metric=metric,
        metric_time=now,
        previous_offsets=tuple(sorted(remembered.items())),
        last_active_time=now if metric.active else state.last_active_time,
    )


def hpa_metric_read(config: KedaConfig, state: KedaState, sample: LagSample | None, now: float) -> KedaState:
    """The HPA's request for the external metric: KEDA's metrics server asks the scaler afresh unless
    the trigger sets `useCachedMetrics` (then: the operator's last poll, `state` as it is). Activity
    (cooldown) is the operator's business, so `last_active_time` is left alone; a failed read keeps
    the last value."""
    if config.use_cached_metrics or sample is None:
        return state
    metric, remembered = scaler_metric(config, sample, dict(state.previous_offsets))
    return replace(state, metric=metric, metric_time=now, previous_offsets=tuple(sorted(remembered.items())))


def activation(config: KedaConfig, state: KedaState, current_replicas: int, now: float) -> KedaDecision | None:
    """KEDA operator's own 0 <-> 1 scaling (runs after each poll); None when the HPA is in charge."""
    metric = state.metric
    if metric is None:
        return None
    if current_replicas == 0:
        if metric.active:
            replicas = max(1, config.min_replicas)
            return KedaDecision(replicas, f"activate: lag {metric.total_lag:,} > "
                                          f"{config.activation_lag_threshold:,}", state)
        return KedaDecision(0, "inactive at zero", state)
    if (
        config.min_replicas == 0
        and not metric.active
        and (state.last_active_time is None or now - state.last_active_time >= config.cooldown_period_seconds)
    ):
        return KedaDecision(0, f"deactivate after {config.cooldown_period_seconds:.0f} s cooldown", state)
    return None


def within_hpa_tolerance(ratio: float, tolerance: float) -> bool:
    """The HPA keeps its replica count (Kubernetes 1.34, `Tolerances.isWithin`): bounds included, in float64
    arithmetic, so a ratio of exactly 1 + tolerance holds where |1 - ratio| <= tolerance would not."""
    return (1.0 - tolerance) <= ratio <= (1.0 + tolerance)


def hpa_sync(config: KedaConfig, state: KedaState, current_replicas: int, now: float) -> KedaDecision:
    """One HPA reconcile on the cached metric (replica count for a running workload)."""
    metric = state.metric
    if metric is None or current_replicas == 0:
        return KedaDecision(current_replicas, "hpa: no metric or scaled to zero", state)
    target = config.lag_threshold
    ratio = metric.metric / (target * current_replicas)
    within_tolerance = within_hpa_tolerance(ratio, config.tolerance)
    recommendation = current_replicas if within_tolerance else math.ceil(metric.metric / target)
    # Stabilization (HPA's stabilizeRecommendationWithBehaviors).
    desired = stabilized(current_replicas, recommendation, state.recommendations, now,
                         config.scale_up_stabilization_seconds, config.scale_down_stabilization_seconds)
    recs = (*state.recommendations, (now, recommendation))
    # Rate limits: without a behavior the HPA's legacy calculateScaleUpLimit (KEDA's default); with one,
    # calculateScaleUpLimitWithScalingRules / ...ScaleDownLimit...
    if not config.hpa_behavior:
        if desired > current_replicas:
            desired = min(desired, max(2 * current_replicas, 4))
    elif desired > current_replicas:
        added = sum(d for t, d in state.scale_events if d > 0 and t > now - config.scale_up_period_seconds)
        base = current_replicas - added
        limit = max(base + config.scale_up_pods, math.ceil(base * (1 + config.scale_up_percent / 100)))
        desired = min(desired, max(limit, current_replicas))
    elif desired < current_replicas:
        removed = sum(-d for t, d in state.scale_events if d < 0 and t > now - config.scale_down_period_seconds)
        base = current_replicas + removed
        limit = int(base * (1 - config.scale_down_percent / 100))
        desired = max(desired, min(limit, current_replicas))
    if not config.allow_idle_consumers and metric.partitions > 0 and desired > current_replicas:
        # KEDA documents "replicas never exceed partitions"; its integer-division cap lets the HPA reach
        # partitions + 1 when lag / threshold lies strictly between the two. We apply the documented cap.
        desired = max(current_replicas, min(desired, metric.partitions))
    desired = max(max(1, config.min_replicas), min(config.max_replicas, desired))
    horizon = now - max(config.scale_down_stabilization_seconds, config.scale_up_stabilization_seconds)
    events = state.scale_events
    if desired != current_replicas:
        events = (*events, (now, desired - current_replicas))
    period = max(config.scale_up_period_seconds, config.scale_down_period_seconds)
    new_state = replace(
        state,
        recommendations=tuple((t, r) for t, r in recs if t > horizon),
        scale_events=tuple((t, d) for t, d in events if t > now - period),
    )
    reason = (f"hpa: metric {metric.metric:,} / {target} per pod -> {recommendation}, "
              f"stabilized {desired} (from {current_replicas})")
    return KedaDecision(desired, reason, new_state)

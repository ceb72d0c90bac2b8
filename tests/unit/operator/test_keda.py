"""The KEDA-equivalent: Kafka scaler metric semantics and the HPA algorithm with its defaults."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_operator.core import keda
from lagpilot_operator.core.observations import LagSample, PartitionOffsets


def sample(offsets: Sequence[tuple[int, int | None]], time: float = 0.0) -> LagSample:
    return LagSample(time, tuple(PartitionOffsets("orders", p, end, c) for p, (end, c) in enumerate(offsets)))


@pytest.mark.parametrize(
    ("offsets", "changes", "metric", "total"),
    [
        ([(100, 90), (50, 50)], {}, 10, 10),
        ([(100, None)], {}, 1, 1),                                          # latest, no commit: 1
        ([(100, None)], {"scale_to_zero_on_invalid_offset": True}, 0, 0),
        ([(100, None)], {"offset_reset_policy": "earliest"}, 10, 100),      # counts from offset 0 (then capped)
        ([(1000, 0), (1000, 0)], {}, 20, 2000),                             # capped at partitions x threshold
        ([(1000, 0), (1000, 0)], {"allow_idle_consumers": True}, 2000, 2000),
        ([(25, 0), (0, 0)], {}, 25, 25),                                    # 25 // 10 = 2, not > 2: no cap
    ],
)
def test_scaler_metric(offsets: list[tuple[int, int | None]], changes: dict[str, object], metric: int,
                       total: int) -> None:
    config = replace(keda.KedaConfig(), **changes)  # type: ignore[arg-type]
    result, _ = keda.scaler_metric(config, sample(offsets), {})
    assert (result.metric, result.total_lag) == (metric, total)


def test_exclude_persistent_lag_zeroes_partitions_that_did_not_move_since_the_last_poll() -> None:
    config = keda.KedaConfig(exclude_persistent_lag=True, lag_threshold=1000)
    first, remembered = keda.scaler_metric(config, sample([(100, 10), (100, 20)]), {})
    assert first.metric == 170  # nothing remembered yet
    second, _ = keda.scaler_metric(config, sample([(200, 10), (200, 60)]), remembered)
    assert second.metric == 140 and second.total_lag == 330 and second.active


def test_activation_and_cooldown_to_zero() -> None:
    config = keda.KedaConfig(min_replicas=0, activation_lag_threshold=5, cooldown_period_seconds=300)
    state = keda.poll(config, keda.KedaState(), sample([(10, 7)]), 0.0)  # lag 3: not active
    assert keda.activation(config, state, 0, 0.0) == keda.KedaDecision(0, "inactive at zero", state)
    state = keda.poll(config, state, sample([(20, 7)]), 30.0)  # lag 13: active
    decision = keda.activation(config, state, 0, 30.0)
    assert decision is not None and decision.replicas == 1
    state = keda.poll(config, state, sample([(20, 20)]), 60.0)
    assert keda.activation(config, state, 3, 60.0) is None  # inactive, but cooldown not over
    state = keda.poll(config, state, sample([(20, 20)]), 330.0)
    decision = keda.activation(config, state, 3, 330.0)
    assert decision is not None and decision.replicas == 0
    assert keda.poll(config, state, None, 400.0) is state  # a failed poll keeps the last metric


def hpa_run(config: keda.KedaConfig, metric: int, replicas: int, times: Sequence[float],
            state: keda.KedaState | None = None) -> list[int]:
    state = state or keda.KedaState()
    state = replace(state, metric=keda.ScalerMetric(metric, metric, 100, True))
    out = []
    for now in times:
        decision = keda.hpa_sync(config, state, replicas, now)
        state, replicas = decision.state, decision.replicas
        out.append(replicas)
    return out


def test_hpa_without_behavior_scales_up_to_max_of_double_and_4_per_sync() -> None:
    """KEDA's default ScaledObject gives its HPA no behavior: the HPA's legacy limit, per sync."""
    config = keda.KedaConfig(max_replicas=100)
    assert hpa_run(config, 10_000, 1, [0, 15, 30, 45, 60]) == [4, 8, 16, 32, 64]
    assert hpa_run(config, 10_000, 1, [0, 5, 15.5]) == [4, 8, 16]


def test_hpa_metric_read_is_fresh_unless_use_cached_metrics() -> None:
    config = keda.KedaConfig(lag_threshold=100)
    polled = keda.poll(config, keda.KedaState(), sample([(50, 0)]), 0.0)
    fresh = keda.hpa_metric_read(config, polled, sample([(90, 0)]), 15.0)
    assert fresh.metric is not None and fresh.metric.metric == 90 and fresh.last_active_time == 0.0
    cached = keda.hpa_metric_read(replace(config, use_cached_metrics=True), polled, sample([(90, 0)]), 15.0)
    assert cached is polled


def test_hpa_scale_up_rate_with_behavior_is_max_of_4_pods_and_100_percent_per_15_s() -> None:
    config = keda.KedaConfig(max_replicas=100, hpa_behavior=True)
    assert hpa_run(config, 10_000, 1, [0, 15, 30, 45, 60]) == [5, 10, 20, 40, 80]
    # Two syncs in one period share its budget.
    assert hpa_run(config, 10_000, 1, [0, 5, 15.5]) == [5, 5, 10]


def test_hpa_tolerance_and_keda_partition_cap_leave_replicas_below_partitions() -> None:
    """KEDA #2908: 12 partitions, metric capped at 120, 11 replicas: 120/110 is within 10 %."""
    config = keda.KedaConfig(max_replicas=100)
    assert hpa_run(config, 120, 11, [0]) == [11]
    assert hpa_run(config, 120, 10, [0]) == [12]


def test_hpa_tolerance_includes_its_bounds_as_kubernetes_does() -> None:
    """The real HPA (Kubernetes 1.34) kept 1 replica at a metric of 1,760 against a lagThreshold of 1,600
    (bench/data/real_keda_loop_2026-12-06_9da9dd0.json, keda-pool-16 at 29.8 s): a ratio of exactly 1.1 is
    within the tolerance, although |1 - 1.1| > 0.1 in floats."""
    assert abs(1.0 - 1760 / 1600) > 0.1
    assert keda.within_hpa_tolerance(1760 / 1600, 0.1) and keda.within_hpa_tolerance(1440 / 1600, 0.1)
    assert not keda.within_hpa_tolerance(1761 / 1600, 0.1) and not keda.within_hpa_tolerance(1439 / 1600, 0.1)
    config = keda.KedaConfig(lag_threshold=1600, min_replicas=1, max_replicas=8)
    assert hpa_run(config, 1760, 1, [0]) == [1]
    assert hpa_run(config, 1761, 1, [0]) == [2]


def test_hpa_scale_down_waits_300_s_then_drops_at_once() -> None:
    config = keda.KedaConfig(min_replicas=1, max_replicas=100)
    state = keda.KedaState()
    state = replace(state, metric=keda.ScalerMetric(100, 100, 100, True))
    high = keda.hpa_sync(config, state, 10, 0.0)
    assert high.replicas == 10
    low_state = replace(high.state, metric=keda.ScalerMetric(0, 0, 100, True))
    replicas = 10
    history = []
    for now in range(15, 331, 15):
        decision = keda.hpa_sync(config, low_state, replicas, float(now))
        low_state, replicas = decision.state, decision.replicas
        history.append((now, replicas))
    assert all(r == 10 for t, r in history if t < 300)
    assert dict(history)[300] == 1


def test_hpa_without_metric_or_at_zero_holds() -> None:
    config = keda.KedaConfig()
    assert keda.hpa_sync(config, keda.KedaState(), 3, 0.0).replicas == 3
    state = replace(keda.KedaState(), metric=keda.ScalerMetric(500, 500, 12, True))
    assert keda.hpa_sync(config, state, 0, 0.0).replicas == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), min_size=1, max_size=30),
       st.integers(1, 100), st.integers(1, 40), st.booleans())
def test_replicas_never_exceed_partitions_without_idle_consumers(offsets: list[tuple[int, int]], threshold: int,
                                                                 replicas: int, allow_idle: bool) -> None:
    config = keda.KedaConfig(lag_threshold=threshold, max_replicas=1000, allow_idle_consumers=allow_idle)
    lagging = [(max(e, c), min(e, c)) for e, c in offsets]
    state = keda.poll(config, keda.KedaState(), sample(lagging), 0.0)
    decision = keda.hpa_sync(config, state, replicas, 0.0)
    if not allow_idle:
        assert decision.replicas <= max(len(offsets), replicas)
    assert decision.replicas == first_sync_replicas(lagging, threshold, replicas, allow_idle)


def first_sync_replicas(lagging: list[tuple[int, int]], threshold: int, replicas: int, allow_idle: bool) -> int:
    """The replicas of a first HPA sync, written out from KEDA's and the HPA's documentation: no history,
    so stabilization keeps the recommendation; scale-up limited to max(4, 2 x current) (no behavior); not
    above the partitions without allowIdleConsumers; then [1, maxReplicaCount=1000]."""
    partitions = len(lagging)
    lag = sum(end - committed for end, committed in lagging)
    if not allow_idle and lag // threshold > partitions:
        lag = partitions * threshold
    wanted = replicas if 0.9 <= lag / (threshold * replicas) <= 1.1 else -(-lag // threshold)  # HPA's isWithin
    if wanted > replicas:
        wanted = min(wanted, max(4, 2 * replicas))  # no behavior (KEDA's default): the HPA's legacy limit
        if not allow_idle:
            wanted = max(replicas, min(wanted, partitions))
    return max(1, min(1000, wanted))


@pytest.mark.parametrize(("lagging", "threshold", "replicas", "allow_idle", "expected"), [
    ([(100, 0)] * 3, 10, 1, False, 3),        # 300 lag wants 30, capped at the metric's 3 partitions
    ([(100, 0)] * 3, 10, 1, True, 4),         # 30 wanted, one sync goes to at most max(4, 2 x 1): 4
    ([(100, 0)] * 3, 10, 20, True, 30),        # from 20: +100 % allows 40, 30 wanted
    ([(105, 0)], 10, 10, True, 10),           # 105 / (10 x 10) is within the 10 % tolerance: hold
    ([(0, 0)] * 8, 10, 6, False, 1),          # no lag: down to the minimum of 1 at once (no history)
])
def test_first_sync_exact_replicas(lagging: list[tuple[int, int]], threshold: int, replicas: int, allow_idle: bool,
                                   expected: int) -> None:
    config = keda.KedaConfig(lag_threshold=threshold, max_replicas=1000, allow_idle_consumers=allow_idle)
    state = keda.poll(config, keda.KedaState(), sample(lagging), 0.0)
    assert keda.hpa_sync(config, state, replicas, 0.0).replicas == expected
    assert first_sync_replicas(lagging, threshold, replicas, allow_idle) == expected

"""The scaling decision: table-driven cases plus the properties issue 3 asks for."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lagpilot_operator.core.observations import LagHistory, LagSample, PartitionKey, PartitionOffsets
from lagpilot_operator.core.policy import (
    Decision,
    DrainTimeConfig,
    FallbackConfig,
    LagThresholdConfig,
    Observation,
    PolicyConfig,
    PolicyMemory,
    PoolBounds,
    ReplicaBounds,
    ScalingBehavior,
    decide,
)
from lagpilot_operator.core.verdicts import Verdict

NOW = 10_000.0
END = 1_000_000

# Steps and windows out of the way, to look at one rule at a time.
FREE_UP = ScalingBehavior(stabilization_seconds=0, max_step_percent=100_000, min_step=100_000, period_seconds=1)
FREE_DOWN = ScalingBehavior(stabilization_seconds=0, max_step_percent=100, min_step=100_000, period_seconds=1)
FREE = PolicyConfig(scale_up=FREE_UP, scale_down=FREE_DOWN)
WARM = PolicyMemory(last_time=NOW - 5)  # a memory that is not fresh (fresh ones hold scale-down)


def sample(lags: Sequence[int], *, time: float = NOW, members: int | None = None, topic: str = "orders") -> LagSample:
    return LagSample(time, tuple(PartitionOffsets(topic, p, END, END - lag) for p, lag in enumerate(lags)), members)


def observe(lags: Sequence[int] | None, replicas: int, pool: int, *, produce: float | None = None,
            consume: float | None = None, members: int | None = None, partitions: int = 0,
            verdicts: Mapping[PartitionKey, Verdict] | None = None,
            time_lags: Mapping[PartitionKey, float] | None = None, failures: int = 0,
            time: float = NOW) -> Observation:
    return Observation(
        sample=None if lags is None else sample(lags, time=time, members=members),
        current_replicas=replicas,
        current_pool=pool,
        partitions=partitions if lags is None else (partitions or len(lags)),
        produce_rate=produce,
        consume_rate=consume,
        verdicts=dict(verdicts or {}),
        time_lags=dict(time_lags or {}),
        consecutive_failures=failures,
    )


def threshold_config(per: int = 1, **changes: Any) -> PolicyConfig:
    changes.setdefault("lag_threshold", LagThresholdConfig(lag_per_consumer=per))
    return replace(FREE, mode="lagThreshold", **changes)


def spread(total: int, partitions: int = 12) -> list[int]:
    return [total // partitions + (1 if p < total % partitions else 0) for p in range(partitions)]


# --- replicas x pool ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "current", "partitions", "config_changes", "expected"),
    [
        (64, (1, 8), 12, {}, (1, 64)),          # the pool grows before replicas
        (65, (1, 8), 12, {}, (2, 33)),          # fewest replicas with r x pool.max >= slots
        (100, (1, 8), 12, {}, (2, 50)),
        (30, (3, 8), 12, {}, (3, 10)),          # adding capacity never removes pods
        (20, (3, 8), 12, {}, (1, 20)),          # a scale-down consolidates
        (5000, (1, 8), 12, {}, (10, 64)),       # within max
        (5000, (1, 8), 3, {}, (3, 64)),         # never more replicas than partitions
        (1, (1, 8), 12, {"pool": PoolBounds(min=4, max=64, initial=8)}, (1, 4)),
        (1, (1, 8), 12, {"replicas": ReplicaBounds(min=2, max=10)}, (2, 1)),
        (1, (1, 8), 3, {"replicas": ReplicaBounds(min=5, max=10)}, (5, 1)),  # min wins over partitions
        (21, (1, 20), 12, {}, (1, 20)),         # within the 10 % tolerance: no change
        (23, (1, 20), 12, {}, (1, 23)),
        # The busiest pod gets ceil(P / r) partitions and needs that share of the slots:
        (531, (10, 60), 10, {}, (10, 54)),      # not 9 x 59: one of 9 pods would have 2 of 10 partitions
        (200, (6, 64), 6, {}, (6, 34)),         # not 4 x 50: two of 4 pods would carry 2 of 6 partitions
        (200, (1, 8), 6, {}, (4, 64)),          # a scale-up adds no pods for it (pools would shrink)
        (300, (2, 64), 10, {}, (5, 60)),        # 5 pods share 10 partitions evenly: no extra slots
        (100, (1, 8), 7, {}, (2, 58)),          # 2 pods: the busiest has 4 of 7 partitions
    ],
)
def test_slots_to_replicas_and_pool(slots: int, current: tuple[int, int], partitions: int,
                                    config_changes: dict[str, Any], expected: tuple[int, int]) -> None:
    config = threshold_config(**config_changes)
    decision = decide(config, observe(spread(slots, partitions), *current), WARM, NOW)
    assert (decision.replicas, decision.pool) == expected


def test_a_pool_sized_for_the_busiest_pod_is_not_trimmed_every_poll() -> None:
    # 5 x 63 on 9 partitions: the busiest pods carry 2, so the shape gives 63 x 9 / 2 = 283 slots of
    # evenly spread load, not 315. 277 slots is within the 10 % band of that: no pool change.
    config = threshold_config()
    decision = decide(config, observe(spread(277, 9), 5, 63), WARM, NOW)
    assert (decision.replicas, decision.pool) == (5, 63) and "within 10% tolerance" in decision.reason
    assert (lambda d: (d.replicas, d.pool))(decide(config, observe(spread(225, 9), 5, 63), WARM, NOW)) == (5, 50)


def test_allow_idle_consumers_lifts_the_partition_cap() -> None:
    config = threshold_config(lag_threshold=LagThresholdConfig(lag_per_consumer=1, allow_idle_consumers=True))
    decision = decide(config, observe(spread(5000, 3), 1, 8), WARM, NOW)
    assert (decision.replicas, decision.pool) == (10, 64)


def test_lag_threshold_is_keda_compatible_and_explains_itself() -> None:
    config = threshold_config(per=100)
    decision = decide(config, observe(spread(12_000), 1, 8), WARM, NOW)
    assert (decision.replicas, decision.pool, decision.slots) == (2, 60, 120)
    assert decision.direction == "up"
    assert decision.reason == "scale up 1→2 replicas, pool 8→60: lag 12,000 msgs at 100 per consumer needs 120 slots"


# --- drainTime ----------------------------------------------------------------------------------------


def test_drain_time_sizes_for_produce_rate_headroom_and_backlog() -> None:
    memory = replace(WARM, slot_rate=10.0)
    # needed = 300 x 1.2 + 12,000 / 60 = 560 msg/s -> 56 slots at 10 msg/s/slot
    decision = decide(FREE, observe(spread(12_000), 2, 8, produce=300.0, consume=100.0), memory, NOW)
    assert decision.slots == 56 and (decision.replicas, decision.pool) == (2, 28)
    assert decision.needed_rate == pytest.approx(560.0) and decision.slot_rate == pytest.approx(10.0)
    assert decision.reason == ("grow pool 8→28 on 2 replicas: backlog 12,000 msgs + 300 msg/s (+20%) needs 56 slots "
                               "at 10.0 msg/s/slot to drain in 60 s")


def test_time_lag_target_shortens_the_drain() -> None:
    config = replace(FREE, drain_time=DrainTimeConfig(target_drain_seconds=60, target_time_lag_seconds=20))
    memory = replace(WARM, slot_rate=10.0)
    late = {("orders", 0): 45.0}
    decision = decide(config, observe(spread(12_000), 2, 8, produce=300.0, time_lags=late), memory, NOW)
    assert decision.slots == 96  # 360 + 12,000 / 20 = 960 msg/s
    assert "time lag 45 s > target 20 s" in decision.reason and "to drain in 20 s" in decision.reason
    on_time = decide(config, observe(spread(12_000), 2, 8, produce=300.0, time_lags={("orders", 0): 5.0}), memory,
                     NOW)
    assert on_time.slots == 56


def test_measures_per_slot_throughput_once_saturated_for_a_whole_window() -> None:
    config = FREE
    memory = WARM
    # 2 replicas x 8 slots, a big backlog, 160 msg/s consumed: 10 msg/s per slot.
    for step in range(8):
        now = NOW + 5 * step
        obs = observe(spread(50_000), 2, 8, produce=100.0, consume=160.0, members=2, time=now)
        decision = decide(replace(config, scale_up=replace(FREE_UP, max_step_percent=0, min_step=0)), obs,
                          memory, now)
        memory = decision.memory
    assert memory.slot_rate == pytest.approx(10.0)
    assert decision.slots == 16  # steps frozen to zero, so only the estimate is under test
    assert "at 10.0 msg/s/slot" in decision.reason


def test_unknown_throughput_and_growing_backlog_at_least_doubles() -> None:
    memory = replace(WARM, last_lag=1_000)
    decision = decide(FREE, observe(spread(5_000), 1, 8, produce=500.0, consume=160.0), memory, NOW)
    assert decision.slots >= 16
    assert "growing, per-slot throughput not measured yet: at least doubling" in decision.reason


def test_growing_backlog_grows_no_further_than_the_lower_bound_proves() -> None:
    # 8 slots consume 29.68 msg/s of 30: slots are at least 3.71 msg/s fast, so (36 + 400 / 60) msg/s
    # needs at most 12 slots. Doubling to 16 would only step back down a window later.
    memory = replace(WARM, last_lag=350, last_members=1)
    decision = decide(FREE, observe([400], 1, 8, produce=30.0, consume=29.68, members=1), memory, NOW)
    assert (decision.replicas, decision.pool) == (1, 12)
    assert "needs at most 12 slots at ≥ 3.7 msg/s/slot" in decision.reason
    # A bound that asks for no more than the capacity already has is stale: the lag says otherwise.
    stale = replace(memory, slot_rate_floor=100.0, floor_time=NOW)
    assert decide(FREE, observe([400], 1, 8, produce=30.0, consume=29.68, members=1), stale, NOW).pool == 16


def steady_polls(lag_at: Any, *, produce: float, consume: float, seconds: float, pool: int = 8,
                 config: PolicyConfig = FREE) -> list[tuple[float, Decision]]:
    """Poll every 5 s at a fixed capacity (the decision is not applied), lag given by `lag_at(t)`."""
    memory, out = WARM, []
    for step in range(int(seconds / 5) + 1):
        now = NOW + 5 * step
        decision = decide(config, observe([lag_at(5 * step)], 1, pool, produce=produce, consume=consume, members=1,
                                          time=now), memory, now)
        memory = decision.memory
        out.append((5 * step, decision))
    return out


def test_a_steady_deficit_is_found_from_the_backlog_trend() -> None:
    # 8 slots x 3.71 msg/s = 29.68 msg/s against 30: the backlog grows 0.32 msg/s and stays below the
    # saturation bar (10 s x 29.68 = 297 msgs) for the whole 10 minutes. The trend finds the deficit once
    # the lag grew by 3 s of consumption (89 msgs), i.e. after ~280 s, plus a consume window.
    polls = steady_polls(lambda t: 100 + round(0.32 * t), produce=30.0, consume=29.68, seconds=600)
    grown = [(t, d) for t, d in polls if d.replicas * d.pool > 8]
    assert grown, "a steady 1 % deficit was never found"
    t, first = grown[0]
    assert 270 <= t <= 400 and "at unchanged capacity: every slot is busy" in first.reason
    assert first.memory.slot_rate == pytest.approx(29.68 / 8)
    assert first.pool == 11  # (30 x 1.2 + lag / 60) / 3.71: no doubling, no step back down


def test_a_flat_lag_with_commit_sawtooth_is_no_deficit() -> None:
    # Commit lag jumps between 0 and 5 s of consumption; the bucket minimum does not grow.
    for produce, consume in ((30.0, 30.0), (30.0, 29.0)):
        polls = steady_polls(lambda t: 10 + (150 if (t // 5) % 3 else 0), produce=produce, consume=consume,
                             seconds=900)
        assert {d.replicas * d.pool for _, d in polls} == {8}
        assert all("every slot is busy" not in d.reason for _, d in polls)


def test_a_step_up_in_load_is_no_measurement_until_it_lasted_a_window() -> None:
    # Quiet for 2 minutes, then the lag jumps: the last window's consume rate is mostly idle slots.
    polls = steady_polls(lambda t: 50 if t < 120 else 50 + 60 * (t - 115), produce=60.0, consume=10.0,
                         seconds=140, config=replace(FREE, scale_up=replace(FREE_UP, max_step_percent=0, min_step=0)))
    assert all(d.memory.slot_rate is None for t, d in polls if t < 150)
    assert polls[-1][1].memory.deficit_since == NOW + 120


def test_unknown_throughput_and_no_backlog_keeps_capacity_and_idle_shrinks() -> None:
    busy = decide(FREE, observe([0] * 12, 1, 8, produce=100.0, consume=100.0), WARM, NOW)
    assert (busy.replicas, busy.pool) == (1, 8)
    idle = decide(FREE, observe([0] * 12, 2, 8, produce=0.0, consume=0.0), WARM, NOW)
    assert (idle.replicas, idle.pool) == (1, 1)


def test_no_doubling_again_while_new_pods_are_still_joining() -> None:
    memory = replace(WARM, last_lag=1_000, last_members=1)
    joining = decide(FREE, observe(spread(5_000), 2, 8, produce=500.0, consume=160.0, members=1), memory, NOW)
    assert joining.replicas * joining.pool == 16
    assert "growing while consumers join (1 of 2): keeping 16 slots" in joining.reason
    settled = replace(WARM, last_lag=1_000, last_members=2)
    doubled = decide(FREE, observe(spread(5_000), 2, 8, produce=500.0, consume=160.0, members=2), settled, NOW)
    assert doubled.replicas * doubled.pool >= 32


def test_pods_just_removed_are_not_added_back_for_a_grace_period() -> None:
    config = threshold_config()  # grace = max(3 polls of 5 s, scaleDown.periodSeconds 1 s) = 15 s
    memory = replace(WARM, last_replica_decrease=NOW - 10)
    held = decide(config, observe(spread(200), 1, 64), memory, NOW)
    assert (held.replicas, held.pool) == (1, 64)
    assert "no new pods within 15 s of removing one (rebalance lag)" in held.reason
    later = decide(config, observe(spread(200), 1, 64), memory, NOW + 10)
    assert (later.replicas, later.pool) == (4, 50)


def kip848(observation: Observation) -> Observation:
    """The same observation of a group whose members use the consumer protocol (KIP-848)."""
    return replace(observation, sample=replace(cast(LagSample, observation.sample), protocol="consumer"))


@pytest.mark.parametrize(
    ("slots", "current", "partitions", "classic", "consumer"),
    [
        (64, (1, 8), 12, (1, 64), (8, 11)),     # 64 / 8 pods, not one pod at 64 (the busiest has 2 of 12)
        (200, (1, 8), 12, (4, 50), (10, 34)),   # pods up to replicas.max (10), then the pool grows
        (40, (2, 16), 12, (2, 20), (3, 14)),    # the current pool (above pool.initial) is the unit
        (20, (3, 8), 12, (1, 20), (1, 20)),     # a scale-down consolidates either way
    ],
)
def test_a_consumer_protocol_group_grows_pods_before_the_pool(slots: int, current: tuple[int, int], partitions: int,
                                                              classic: tuple[int, int],
                                                              consumer: tuple[int, int]) -> None:
    config = threshold_config()
    observation = observe(spread(slots, partitions), *current)
    before = decide(config, observation, WARM, NOW)
    after = decide(config, kip848(observation), WARM, NOW)
    assert ((before.replicas, before.pool), (after.replicas, after.pool)) == (classic, consumer)
    assert "KIP-848" not in before.reason
    said = "consumer-protocol group (KIP-848): pods before a bigger pool" in after.reason
    assert said == (consumer[0] > classic[0]), after.reason


def test_a_consumer_protocol_group_has_no_rebalance_grace() -> None:
    config = threshold_config()
    memory = replace(WARM, last_replica_decrease=NOW - 10)
    classic = decide(config, observe(spread(200), 1, 64), memory, NOW)
    assert (classic.replicas, classic.pool) == (1, 64)
    consumer = decide(config, kip848(observe(spread(200), 1, 64)), memory, NOW)
    assert (consumer.replicas, consumer.pool) == (4, 50)  # the current pool (64) is the unit: 200 / 64
    assert "consumer-protocol group (KIP-848): no rebalance grace after removing a pod" in consumer.reason
    assert "rebalance lag" not in consumer.reason


def test_lag_only_source_falls_back_to_the_lag_threshold_rule() -> None:
    obs = replace(observe(spread(1_200), 1, 8), lag_only=True)
    decision = decide(FREE, obs, WARM, NOW)
    assert decision.slots == 120
    assert decision.reason.endswith("lag-only source, sized by lagThreshold: lag 1,200 msgs at 10 per consumer "
                                    "needs 120 slots")


def test_stuck_partitions_are_excluded_and_named() -> None:
    verdicts = {("orders", 1): Verdict.STALLED, ("orders", 2): Verdict.STOPPED, ("orders", 3): Verdict.LAGGING}
    lags = [100, 5_000, 7_000, 100]
    memory = replace(WARM, slot_rate=10.0)
    decision = decide(FREE, observe(lags, 2, 8, produce=0.0, verdicts=verdicts), memory, NOW)
    assert decision.total_lag == 12_200 and decision.effective_lag == 200
    assert decision.excluded_partitions == (("orders", 1), ("orders", 2))
    assert ("excluded stuck partitions orders-1 (STALLED), orders-2 (STOPPED): 12,000 msgs more workers cannot "
            "drain") in decision.reason
    # lagThreshold keeps KEDA's meaning: excluded only with excludePersistentLag.
    plain = threshold_config(per=100)
    assert decide(plain, observe(lags, 2, 8, verdicts=verdicts), WARM, NOW).effective_lag == 12_200
    excluding = replace(plain, lag_threshold=LagThresholdConfig(lag_per_consumer=100, exclude_persistent_lag=True))
    assert decide(excluding, observe(lags, 2, 8, verdicts=verdicts), WARM, NOW).effective_lag == 200
    # At zero replicas nothing can move, so all lag counts (or the group would never wake).
    config = replace(FREE, replicas=ReplicaBounds(min=0, max=10))
    woken = decide(config, observe(lags, 0, 8, verdicts=verdicts), WARM, NOW)
    assert woken.effective_lag == 12_200 and woken.replicas >= 1


# --- guards ------------------------------------------------------------------------------------------


def test_paused_holds_everything_even_out_of_bounds() -> None:
    config = replace(FREE, paused=True)
    decision = decide(config, observe(spread(100_000), 15, 3), WARM, NOW)
    assert (decision.replicas, decision.pool) == (15, 3)
    assert decision.reason.startswith("paused")


def test_missing_data_holds_then_falls_back() -> None:
    config = replace(FREE, fallback=FallbackConfig(mode="replicas", replicas=2, failure_threshold=3))
    held = decide(config, observe(None, 6, 16, failures=2, partitions=12), WARM, NOW)
    assert (held.replicas, held.pool) == (6, 16)
    assert held.reason == "hold 6 replicas, pool 16: lag unavailable (2 consecutive failures; fallback to 2 after 3)"
    fallen = decide(config, observe(None, 6, 16, failures=3, partitions=12), WARM, NOW)
    assert (fallen.replicas, fallen.pool) == (2, 16) and fallen.direction == "down"
    assert "lag unreadable for 3 consecutive polls" in fallen.reason
    never_zero = replace(config, replicas=ReplicaBounds(min=0, max=10),
                         fallback=FallbackConfig(mode="replicas", replicas=0, failure_threshold=1))
    assert decide(never_zero, observe(None, 3, 8, failures=5), WARM, NOW).replicas == 1


def test_missing_data_blocks_the_next_scale_down_for_a_window() -> None:
    config = replace(threshold_config(per=10), scale_down=replace(FREE_DOWN, stabilization_seconds=60))
    memory = decide(config, observe(None, 4, 8, failures=1), WARM, NOW).memory
    after = decide(config, observe([0] * 12, 4, 8), memory, NOW + 30)
    assert (after.replicas, after.pool) == (4, 8)
    later = decide(config, observe([0] * 12, 4, 8), after.memory, NOW + 61)
    assert later.replicas * later.pool < 32


# --- behaviour over time ------------------------------------------------------------------------------


def test_scale_up_step_limit_per_period() -> None:
    config = replace(threshold_config(), scale_up=ScalingBehavior(0, 100, 4, 15))
    first = decide(config, observe(spread(1000), 1, 2), WARM, NOW)
    assert first.replicas * first.pool == 6  # 2 + max(4, 100 % of 2)
    assert "scale-up step limit 6 slots" in first.reason
    second = decide(config, observe(spread(1000), first.replicas, first.pool), first.memory, NOW + 5)
    assert second.replicas * second.pool == 6  # same 15 s period: counted from its start (2)
    third = decide(config, observe(spread(1000), first.replicas, first.pool), second.memory, NOW + 16)
    assert third.replicas * third.pool == 12


def test_scale_down_waits_for_the_stabilization_window_and_steps() -> None:
    config = replace(threshold_config(), scale_down=ScalingBehavior(120, 25, 1, 30))
    memory = decide(config, observe(spread(80), 1, 8), WARM, NOW).memory  # recommends 80 slots
    capacity = (1, 64)
    times = [NOW + 5 * i for i in range(1, 40)]
    shrinks = []
    for now in times:
        decision = decide(config, observe([0] * 12, *capacity, produce=0.0), memory, now)
        if decision.replicas * decision.pool < capacity[0] * capacity[1]:
            shrinks.append((now - NOW, decision.replicas * decision.pool))
        capacity, memory = (decision.replicas, decision.pool), decision.memory
    assert shrinks[0] == (120.0, 48)  # once the high recommendation left the 120 s window; then -25 % per 30 s
    assert shrinks[:3] == [(120.0, 48), (150.0, 36), (180.0, 27)]


def test_cooldown_between_replica_changes_but_pool_moves() -> None:
    config = replace(threshold_config(), cooldown_seconds=60)
    memory = replace(WARM, last_replica_change=NOW - 10)
    decision = decide(config, observe(spread(200), 1, 8), memory, NOW)
    assert (decision.replicas, decision.pool) == (1, 64)
    assert "replica change waits 50 s more for the 60 s cooldown" in decision.reason
    later = decide(config, observe(spread(200), 1, 64), decision.memory, NOW + 51)
    assert (later.replicas, later.pool) == (4, 50)


def test_scale_to_zero_only_after_a_quiet_window_and_wake_on_activation() -> None:
    config = replace(threshold_config(per=10), replicas=ReplicaBounds(min=0, max=10),
                     lag_threshold=LagThresholdConfig(lag_per_consumer=10, activation_lag=5),
                     scale_down=ScalingBehavior(100, 100, 1000, 1))
    memory = WARM
    capacity = (2, 8)
    for step in range(30):
        now = NOW + 5 * step
        decision = decide(config, observe([1, 2, 0], *capacity), memory, now)  # lag 3 <= activation 5
        capacity, memory = (decision.replicas, decision.pool), decision.memory
        if now - NOW < 100:
            assert decision.replicas >= 1
        if decision.replicas == 0:
            assert now - NOW >= 100 and decision.reason.startswith("scale to zero: lag 3 ≤ activation 5 for 100 s")
            break
    assert capacity[0] == 0
    stay = decide(config, observe([1, 2, 2], 0, 8), memory, NOW + 200)
    assert stay.replicas == 0 and stay.reason.startswith("stay at zero")
    wake = decide(config, observe([100, 2, 2], 0, 8), stay.memory, NOW + 205)
    assert wake.replicas == 1 and wake.reason.startswith("wake from zero: lag 104 > activation 5; ")


def test_min_zero_with_lag_above_activation_never_goes_to_zero() -> None:
    config = replace(threshold_config(per=10), replicas=ReplicaBounds(min=0, max=10),
                     scale_down=ScalingBehavior(0, 100, 1000, 1))
    decision = decide(config, observe([1, 0, 0], 3, 8), WARM, NOW)  # lag 1 > activation 0
    assert decision.replicas == 1


def test_fresh_memory_does_not_scale_down_before_a_window() -> None:
    config = replace(threshold_config(per=10), scale_down=ScalingBehavior(120, 100, 1000, 1))
    first = decide(config, observe([0] * 12, 5, 8), PolicyMemory(), NOW)
    assert (first.replicas, first.pool) == (5, 8)
    later = decide(config, observe([0] * 12, 5, 8), first.memory, NOW + 121)
    assert later.replicas == 1


# --- memory ------------------------------------------------------------------------------------------


def test_memory_round_trips_through_json_and_tolerates_garbage() -> None:
    memory = PolicyMemory(
        recommendations=((1.5, 3), (2.25, 4)), changes=((2.0, 8, 16),), last_replica_change=3.0, slot_rate=9.75,
        slot_rate_floor=4.5, floor_time=3.5, busy=((1.0, 16),), saturated_since=2.0, idle_since=None,
        last_time=4.0, last_lag=120, trend=((1.0, 100), (61.0, 140)), deficit_since=61.0,
    )
    assert PolicyMemory.from_dict(json.loads(json.dumps(memory.to_dict()))) == memory
    assert PolicyMemory.from_dict(None) == PolicyMemory()
    assert PolicyMemory.from_dict({"recommendations": "nonsense"}) == PolicyMemory()
    assert PolicyMemory.from_dict({"slotRate": [1, 2]}) == PolicyMemory()


def test_memory_stays_small_over_a_long_run() -> None:
    config = PolicyConfig(scale_down=ScalingBehavior(600, 25, 1, 30))
    memory = PolicyMemory()
    for step in range(500):
        lag = 1_000 + (step * 7919) % 3_000  # noisy
        obs = observe(spread(lag), 2, 16, produce=200.0, consume=190.0, members=2, time=NOW + 5 * step)
        memory = decide(config, obs, memory, NOW + 5 * step).memory
    assert len(json.dumps(memory.to_dict())) < 4_000


# --- config ------------------------------------------------------------------------------------------


def test_a_sub_second_time_lag_target_is_a_float_and_reads_in_milliseconds() -> None:
    config = replace(FREE, drain_time=DrainTimeConfig(target_drain_seconds=60, target_time_lag_seconds=0.2))
    memory = replace(WARM, slot_rate=10.0)
    # Below the 1 s committed offsets can show (COMMITTED_TIME_LAG_FLOOR_SECONDS) the target is held at 1 s.
    decision = decide(config, observe(spread(120), 2, 8, produce=300.0, time_lags={("orders", 0): 1.45}), memory,
                      NOW)
    assert decision.slots == 48  # 300 x 1.2 + 120 / 1 = 480 msg/s
    assert "time lag 1.4 s > target 200 ms (held at the 1 s committed offsets can show)" in decision.reason
    assert "to drain in 1 s" in decision.reason
    floor = decide(config, observe(spread(120), 2, 8, produce=300.0, time_lags={("orders", 0): 0.45}), memory, NOW)
    assert "time lag 450 ms is within the 1 s committed offsets can show: target 200 ms counts as met" in floor.reason
    assert floor.slots == 37  # 360 + 120 / 60 = 362 msg/s
    within = decide(config, observe(spread(120), 2, 8, produce=300.0, time_lags={("orders", 0): 0.15}), memory, NOW)
    assert within.slots == 37  # 360 + 120 / 60 = 362 msg/s
    assert "time lag" not in within.reason
    with pytest.raises(ValueError, match="time-lag target must be > 0"):
        replace(config, drain_time=DrainTimeConfig(target_time_lag_seconds=0.0)).validate()


def test_config_from_a_kafkaconsumergroup_spec() -> None:
    spec = {
        "replicas": {"min": 0, "max": 20},
        "pool": {"min": 2, "max": 32, "initial": 4},
        "lag": {"pollIntervalSeconds": 10},
        "policy": {
            "mode": "lagThreshold",
            "lagThreshold": {"lagPerConsumer": 50, "activationLag": 3, "allowIdleConsumers": True,
                             "offsetResetPolicy": "earliest", "excludePersistentLag": True},
            "drainTime": {"targetDrainSeconds": 30, "targetTimeLagSeconds": 10, "headroomPercent": 5},
            "scaleUp": {"stabilizationSeconds": 5},
            "scaleDown": {"maxStepPercent": 50, "periodSeconds": 60},
            "cooldownSeconds": 15,
        },
        "paused": True,
        "fallback": {"mode": "replicas", "replicas": 2, "failureThreshold": 5},
    }
    config = PolicyConfig.from_spec(spec)
    assert config.replicas == ReplicaBounds(0, 20) and config.pool == PoolBounds(2, 32, 4)
    assert config.mode == "lagThreshold" and config.poll_interval_seconds == 10 and config.paused
    assert config.lag_threshold == LagThresholdConfig(50, 3, True, "earliest", True)
    assert config.drain_time == DrainTimeConfig(30, 10, 5)
    assert config.scale_up == ScalingBehavior(5, 100, 4, 5)
    assert config.scale_down == ScalingBehavior(120, 50, 1, 60)
    assert config.cooldown_seconds == 15 and config.fallback == FallbackConfig("replicas", 2, 5)
    assert PolicyConfig.from_spec({}) == PolicyConfig()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"replicas": {"min": 5, "max": 2}}, "min <= max"),
        ({"pool": {"min": 1, "max": 4, "initial": 8}}, "initial <= max"),
        ({"policy": {"mode": "fast"}}, "mode must be one of"),
        ({"policy": {"lagThreshold": {"lagPerConsumer": 0}}}, "lagPerConsumer"),
        ({"policy": {"lagThreshold": {"lagPerConsumer": 1.5}}}, "must be an integer"),
        ({"paused": "yes"}, "true or false"),
        ({"policy": []}, "must be a mapping"),
    ],
)
def test_config_errors(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PolicyConfig.from_spec(spec)


def test_observation_from_history() -> None:
    history = LagHistory()
    for step in range(7):
        history.add(LagSample(5.0 * step, (PartitionOffsets("orders", 0, 100 * step, 50 * step),), members=1))
    obs = Observation.from_history(history, current_replicas=1, current_pool=8)
    assert obs.sample is history.latest and obs.partitions == 1
    assert obs.produce_rate == pytest.approx(20.0) and obs.consume_rate == pytest.approx(10.0)


# --- properties --------------------------------------------------------------------------------------


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    replicas_min = draw(st.integers(0, 6))
    replicas_max = draw(st.integers(max(replicas_min, 1), 16))
    pool_min = draw(st.integers(1, 8))
    pool_max = draw(st.integers(pool_min, 80))
    pool_initial = draw(st.integers(pool_min, pool_max))

    def behavior(stabilization: int) -> ScalingBehavior:
        return ScalingBehavior(draw(st.integers(0, stabilization)), draw(st.integers(1, 200)),
                               draw(st.integers(0, 8)), draw(st.integers(1, 60)))

    return PolicyConfig(
        replicas=ReplicaBounds(replicas_min, replicas_max),
        pool=PoolBounds(pool_min, pool_max, pool_initial),
        mode=draw(st.sampled_from(["drainTime", "lagThreshold"])),
        lag_threshold=LagThresholdConfig(
            lag_per_consumer=draw(st.integers(1, 500)),
            activation_lag=draw(st.integers(0, 50)),
            allow_idle_consumers=draw(st.booleans()),
            offset_reset_policy=draw(st.sampled_from(["latest", "earliest"])),
            exclude_persistent_lag=draw(st.booleans()),
        ),
        drain_time=DrainTimeConfig(draw(st.integers(1, 600)), draw(st.one_of(st.none(), st.integers(1, 120))),
                                   draw(st.integers(0, 100))),
        scale_up=behavior(30),
        scale_down=behavior(300),
        cooldown_seconds=draw(st.integers(0, 120)),
        fallback=FallbackConfig(draw(st.sampled_from(["hold", "replicas"])), draw(st.integers(0, 20)),
                                draw(st.integers(1, 5))),
    )


rates = st.one_of(st.none(), st.floats(0.0, 5_000.0))
lag_lists = st.lists(st.integers(0, 200_000), min_size=1, max_size=24)


@st.composite
def observations(draw: st.DrawFn, time: float, partitions: int | None = None, most: int = 200_000) -> Observation:
    """`most`: the largest lag of a partition."""
    count = partitions or draw(st.integers(1, 24))
    lags = draw(st.lists(st.integers(0, most), min_size=count, max_size=count))
    keys = [("orders", p) for p in range(count)]
    verdicts = {k: draw(st.sampled_from(list(Verdict))) for k in keys if draw(st.booleans())}
    return Observation(
        sample=None if draw(st.integers(0, 9)) == 0 else sample(lags, time=time,
                                                                 members=draw(st.one_of(st.none(),
                                                                                        st.integers(0, 30)))),
        current_replicas=draw(st.integers(0, 30)),
        current_pool=draw(st.integers(1, 100)),
        partitions=count,
        produce_rate=draw(rates),
        consume_rate=draw(rates),
        verdicts=verdicts,
        time_lags={k: draw(st.floats(0, 600)) for k in keys if draw(st.booleans())},
        consecutive_failures=draw(st.integers(0, 6)),
    )


@st.composite
def histories(draw: st.DrawFn, most: int = 200_000) -> tuple[PolicyConfig, PolicyMemory, float]:
    """A config and the memory left by a few earlier decisions (`most`: as in `observations`)."""
    config = draw(configs())
    memory = PolicyMemory()
    now = NOW
    for _ in range(draw(st.integers(0, 6))):
        now += draw(st.floats(1.0, 60.0))
        memory = decide(config, draw(observations(now, most=most)), memory, now).memory
    return config, memory, now + draw(st.floats(1.0, 60.0))


def assert_within_bounds(config: PolicyConfig, decision: Decision, partitions: int) -> None:
    assert config.pool.min <= decision.pool <= config.pool.max
    if decision.replicas == 0:
        assert config.replicas.min == 0
    else:
        assert config.replicas.min <= decision.replicas <= config.replicas.max
    if not config.lag_threshold.allow_idle_consumers:
        assert decision.replicas <= max(partitions, config.replicas.min)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_always_within_bounds_and_never_above_partitions(history: tuple[PolicyConfig, PolicyMemory, float],
                                                         data: st.DataObject) -> None:
    config, memory, now = history
    obs = data.draw(observations(now))
    decision = decide(config, obs, memory, now)
    assert_within_bounds(config, decision, obs.partitions)
    assert decision.reason


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_more_lag_never_yields_fewer_workers(history: tuple[PolicyConfig, PolicyMemory, float],
                                             data: st.DataObject) -> None:
    config, memory, now = history
    obs = data.draw(observations(now))
    assume(obs.sample is not None)
    assert obs.sample is not None
    extra = data.draw(st.lists(st.integers(0, 100_000), min_size=obs.partitions, max_size=obs.partitions))
    more = replace(obs, sample=LagSample(now, tuple(
        replace(p, end_offset=p.end_offset + bump, committed=p.committed)
        for p, bump in zip(obs.sample.partitions, extra, strict=True)), obs.sample.members))
    less_decision = decide(config, obs, memory, now)
    more_decision = decide(config, more, memory, now)
    assert more_decision.replicas >= less_decision.replicas
    assert more_decision.replicas * more_decision.pool >= less_decision.replicas * less_decision.pool


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_missing_data_never_scales_down(history: tuple[PolicyConfig, PolicyMemory, float],
                                        data: st.DataObject) -> None:
    config, memory, now = history
    config = replace(config, fallback=FallbackConfig("hold", 1, 3), paused=False)
    obs = replace(data.draw(observations(now)), sample=None)
    decision = decide(config, obs, memory, now)
    cap = config.replicas.max if config.lag_threshold.allow_idle_consumers else \
        max(config.replicas.min, min(config.replicas.max, obs.partitions))
    expected_replicas = max(config.replicas.min, min(cap, obs.current_replicas))
    assert decision.replicas == expected_replicas
    if config.replicas.min <= obs.current_replicas <= cap:
        assert decision.replicas == obs.current_replicas  # nothing to enforce: exactly held
    assert decision.pool == max(config.pool.min, min(config.pool.max, obs.current_pool))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_resuming_from_a_persisted_memory_changes_nothing(history: tuple[PolicyConfig, PolicyMemory, float],
                                                          data: st.DataObject) -> None:
    """An operator restart that reloads the memory from status decides exactly as if it had not restarted."""
    config, memory, now = history
    resumed = PolicyMemory.from_dict(json.loads(json.dumps(memory.to_dict())))
    assert resumed == memory
    for _ in range(4):
        obs = data.draw(observations(now))
        live = decide(config, obs, memory, now)
        restarted = decide(config, obs, resumed, now)
        assert (live.replicas, live.pool, live.reason) == (restarted.replicas, restarted.pool, restarted.reason)
        memory = live.memory
        resumed = PolicyMemory.from_dict(json.loads(json.dumps(restarted.memory.to_dict())))
        now += data.draw(st.floats(1.0, 30.0))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs(), st.integers(1_000, 200_000), st.integers(0, 300))
def test_scale_down_waits_for_the_stabilization_window(config: PolicyConfig, high_lag: int, window: int) -> None:
    config = replace(config, paused=False, scale_down=replace(config.scale_down, stabilization_seconds=window),
                     replicas=replace(config.replicas, min=max(1, config.replicas.min)))
    first = decide(config, observe(spread(high_lag), 1, config.pool.initial, produce=1_000.0), PolicyMemory(), NOW)
    capacity = first.replicas * first.pool
    memory, shape = first.memory, (first.replicas, first.pool)
    for step in range(1, 200):
        now = NOW + step * 5
        decision = decide(config, observe([0] * 12, *shape, produce=0.0, consume=0.0), memory, now)
        if decision.replicas * decision.pool < capacity:
            assert now - NOW >= window
            break
        memory, shape = decision.memory, (decision.replicas, decision.pool)
        capacity = decision.replicas * decision.pool


# --- share groups (KIP-932) ----------------------------------------------------------------------------


def share(config: PolicyConfig) -> PolicyConfig:
    return replace(config, share_group=True)


def test_the_group_type_comes_from_the_spec() -> None:
    assert PolicyConfig.from_spec({"groupType": "share"}).share_group
    assert not PolicyConfig.from_spec({"groupType": "consumer"}).share_group
    assert not PolicyConfig.from_spec({}).share_group


def test_a_share_group_is_not_capped_at_the_partition_count() -> None:
    config = threshold_config()
    consumer = decide(config, observe(spread(5000, 2), 1, 8), WARM, NOW)
    assert (consumer.replicas, consumer.pool) == (2, 64)
    assert "capped at 2 replicas x pool 64 (2 partitions)" in consumer.reason
    shared = decide(share(config), observe(spread(5000, 2), 1, 8), WARM, NOW)
    assert (shared.replicas, shared.pool) == (10, 64)  # replicas.max, the CR's own bound, still holds
    assert "share group: 10 replicas on 2 partitions, not capped at the partition count" in shared.reason
    assert "(2 partitions)" not in shared.reason


def test_a_share_group_sizes_every_pod_for_an_even_share_and_adds_pods_first() -> None:
    config = threshold_config()
    # 3 partitions: a consumer group keeps 3 of its 4 pods and sizes them for one partition each.
    consumer = decide(config, observe(spread(100, 3), 4, 20), WARM, NOW)
    assert (consumer.replicas, consumer.pool) == (3, 34)
    # A share group's records go to whichever consumer fetches: new pods at the current pool, 100 / 5 each.
    shared = decide(share(config), observe(spread(100, 3), 4, 20), WARM, NOW)
    assert (shared.replicas, shared.pool) == (5, 20)
    assert "share group (KIP-932): pods before a bigger pool, as adding one stops no other consumer" in shared.reason


def test_a_share_group_has_no_rebalance_grace() -> None:
    memory = replace(WARM, last_replica_decrease=NOW - 10)
    shared = decide(share(threshold_config()), observe(spread(200), 1, 64), memory, NOW)
    assert (shared.replicas, shared.pool) == (4, 50)
    assert "share group (KIP-932): no rebalance grace after removing a pod" in shared.reason


def test_a_blind_share_group_falls_back_beyond_the_partition_count() -> None:
    config = replace(FREE, fallback=FallbackConfig(mode="replicas", replicas=5, failure_threshold=1))
    blind = observe(None, 1, 8, partitions=2, failures=1)
    assert decide(config, blind, WARM, NOW).replicas == 2
    assert decide(share(config), blind, WARM, NOW).replicas == 5
    # Holding clamps to the bounds, and a share group's bound is replicas.max, not the 2 partitions.
    hold = replace(config, fallback=FallbackConfig(mode="hold"))
    assert decide(hold, observe(None, 6, 8, partitions=2, failures=1), WARM, NOW).replicas == 2
    assert decide(share(hold), observe(None, 6, 8, partitions=2, failures=1), WARM, NOW).replicas == 6

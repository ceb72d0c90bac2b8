"""What changed enough to write (`writes`): status fields, the policy's memory across a restart, the
templated Deployment, Events."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy import FREE, NOW, WARM, histories, observations, observe, spread, threshold_config

from lagpilot_operator.core.falling_behind import Span
from lagpilot_operator.core.policy import Observation, PolicyConfig, PolicyMemory, decide
from lagpilot_operator.kube.writes import (
    LAST_LAG_BAND,
    PACED_SECONDS,
    EventMemory,
    contained,
    decision_wording,
    deployment_patch,
    memory_refresh_only,
    resume_memory,
    status_write_reason,
    stored_status,
    wording,
)

REFRESH = 300.0
PACED = 30.0
LATER = 100.0 + PACED
"""A poll far enough after the write at 100.0 for a paced field's move to be written."""


def status(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "observedGeneration": 3, "desiredReplicas": 2, "currentReplicas": 2, "poolSize": 8,
        "lastDecision": "hold 2x8: lag 1,200 needs 2 consumers", "consecutiveLagFailures": 0,
        "totalLag": 1200, "partitions": 4, "produceRatePerSecond": 50.0, "consumeRatePerSecond": 50.0,
        "topPartitions": [{"topic": "t", "partition": 0, "lag": 600}, {"topic": "t", "partition": 1, "lag": 600}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "hold 2x8: lag 1,200",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}],
        "policyMemory": PolicyMemory(recommendations=((100.0, 16),), last_time=100.0).to_dict(),
    }
    base.update(changes)
    return base


def test_the_first_status_and_a_refresh_are_always_written() -> None:
    assert status_write_reason(None, None, status(), 100.0) == "first"
    assert status_write_reason(status(), 100.0, status(), 100.0 + REFRESH, REFRESH) == "refresh"
    assert status_write_reason(status(), 100.0, status(), 100.0 + REFRESH - 1, REFRESH) is None


def test_what_people_and_controllers_read_is_written_at_once() -> None:
    for changes in ({"observedGeneration": 4}, {"desiredReplicas": 3}, {"currentReplicas": 3}, {"poolSize": 9},
                    {"partitions": 5}, {"lastScaleTime": "2026-01-01T00:01:00Z"}, {"deadLetter": {"topic": "d"}},
                    {"lastDecision": "scale up 2x8 -> 3x8: lag 1,200"}, {"consecutiveLagFailures": 1}):
        assert status_write_reason(status(), 100.0, status(**changes), 105.0) == next(iter(changes)), changes
    cond = status()["conditions"][0]
    for change in ({"status": "False"}, {"reason": "NotReady"}, {"observedGeneration": 4},
                   {"message": "see the KafkaReachable condition"}):
        assert status_write_reason(status(), 100.0, status(conditions=[{**cond, **change}]), 105.0) == "conditions"


def test_numbers_move_coarsely() -> None:
    top = [{"topic": "t", "partition": 0, "lag": 625}, {"topic": "t", "partition": 1, "lag": 625}]
    quiet = status(totalLag=1250, produceRatePerSecond=52.0, lastDecision="hold 2x8: lag 1,250 needs 2 consumers",
                   topPartitions=top,
                   conditions=[{**status()["conditions"][0], "message": "hold 2x8: lag 1,250"}],
                   consecutiveLagFailures=0)
    assert status_write_reason(status(), 100.0, quiet, 105.0) is None
    assert status_write_reason(status(), 100.0, status(totalLag=1400), 105.0) == "totalLag"
    assert status_write_reason(status(totalLag=200), 100.0, status(totalLag=250), 105.0) is None  # under the floor
    # Leaving zero is no exception to the floor: sparse traffic that a group keeps up with reads 0, 5, 0 records.
    assert status_write_reason(status(totalLag=0), 100.0, status(totalLag=5), 105.0) is None
    assert status_write_reason(status(totalLag=0), 100.0, status(totalLag=150), 105.0) == "totalLag"  # a backlog
    assert status_write_reason(status(totalLag=80), 100.0, status(totalLag=0), 105.0) == "totalLag"  # caught up
    # Nor for rates and time lags (the lag reaching zero says the group caught up).
    assert status_write_reason(status(consumeRatePerSecond=0.0), 100.0, status(consumeRatePerSecond=0.33),
                               LATER) is None
    assert status_write_reason(status(consumeRatePerSecond=0.33), 100.0, status(consumeRatePerSecond=0.0),
                               LATER) is None
    assert status_write_reason(status(maxTimeLagSeconds=4.0), 100.0, status(maxTimeLagSeconds=0.0), LATER) is None
    # A time lag is known to about a poll interval: polled every 5 s, 0 -> 5.2 s is not news, 0 -> 10 s is.
    def lagging(seconds: float) -> dict[str, Any]:
        return status(maxTimeLagSeconds=seconds,
                      topPartitions=[{"topic": "t", "partition": 0, "lag": 5, "timeLagSeconds": seconds}])

    sparse, later, behind = lagging(0.0), lagging(5.2), lagging(10.0)
    assert status_write_reason(sparse, 100.0, later, LATER, poll_interval=5.0) is None
    assert status_write_reason(sparse, 100.0, later, LATER) == "maxTimeLagSeconds"  # the 5 s floor alone
    assert status_write_reason(sparse, 100.0, behind, LATER, poll_interval=5.0) == "maxTimeLagSeconds"
    assert status_write_reason(sparse, 100.0, {**behind, "maxTimeLagSeconds": 0.0}, LATER,
                               poll_interval=5.0) == "topPartitions"
    assert status_write_reason(status(), 100.0, status(consumeRatePerSecond=30.0), LATER) == "consumeRatePerSecond"
    assert status_write_reason(status(), 100.0, status(topPartitions=[{"topic": "t", "partition": 1, "lag": 600}]),
                               105.0) == "topPartitions"
    assert status_write_reason(status(), 100.0, status(maxTimeLagSeconds=3.0), LATER) == "maxTimeLagSeconds"
    # the order follows the lags: partitions of about the same lag trading places is not news...
    swapped = [{"topic": "t", "partition": 1, "lag": 610}, {"topic": "t", "partition": 0, "lag": 605}]
    assert status_write_reason(status(), 100.0, status(topPartitions=swapped), 105.0) is None
    # ...a partition entering, a verdict, or a lag that moved is
    entered = [{"topic": "t", "partition": 0, "lag": 600}, {"topic": "t", "partition": 2, "lag": 600}]
    assert status_write_reason(status(), 100.0, status(topPartitions=entered), 105.0) == "topPartitions"
    flagged = [{"topic": "t", "partition": 1, "lag": 600}, {"topic": "t", "partition": 0, "lag": 600,
                                                            "verdict": "STALLED"}]
    assert status_write_reason(status(), 100.0, status(topPartitions=flagged), 105.0) == "topPartitions"
    grown = [{"topic": "t", "partition": 1, "lag": 900}, {"topic": "t", "partition": 0, "lag": 600}]
    assert status_write_reason(status(), 100.0, status(topPartitions=grown), 105.0) == "topPartitions"
    # a failure run: its start and end at once, its count coarsely
    assert status_write_reason(status(consecutiveLagFailures=2), 100.0, status(consecutiveLagFailures=3),
                               105.0) == "consecutiveLagFailures"  # the first ten, each
    assert status_write_reason(status(consecutiveLagFailures=11), 100.0, status(consecutiveLagFailures=12),
                               105.0) is None
    assert status_write_reason(status(consecutiveLagFailures=15), 100.0, status(consecutiveLagFailures=16),
                               105.0) == "consecutiveLagFailures"
    assert status_write_reason(status(consecutiveLagFailures=3), 100.0, status(), 105.0) == "consecutiveLagFailures"
    assert wording("hold 2x8: lag 1,250.5 in 30 s") == "hold #x#: lag # in # s"


def test_time_lags_and_rates_are_paced() -> None:
    """A time lag or rate that moved is written once PACED seconds have passed since the last write (the time
    lag of a backlog nobody consumes moves every poll), at once with any other write."""
    assert PACED_SECONDS == PACED  # the default
    for changes in ({"maxTimeLagSeconds": 40.0}, {"meanTimeLagSeconds": 40.0}, {"produceRatePerSecond": 90.0},
                    {"consumeRatePerSecond": 90.0}):
        key = next(iter(changes))
        assert status_write_reason(status(), 100.0, status(**changes), LATER - 0.1, paced_seconds=PACED) is None
        assert status_write_reason(status(), 100.0, status(**changes), LATER, paced_seconds=PACED) == key
        # News comes first, and the paced move rides along with it.
        assert status_write_reason(status(), 100.0, status(**changes, desiredReplicas=3), 105.0) == "desiredReplicas"
    # The lag itself is not paced: a backlog appearing is written on its poll.
    assert status_write_reason(status(), 100.0, status(totalLag=2000, maxTimeLagSeconds=40.0), 105.0) == "totalLag"
    # A rate shown for the first time (known from the second read) or gone is news, not a move.
    unknown = {k: v for k, v in status().items() if k != "consumeRatePerSecond"}
    assert status_write_reason(unknown, 100.0, status(), 105.0) == "consumeRatePerSecond"
    assert status_write_reason(status(), 100.0, unknown, 105.0) == "consumeRatePerSecond"
    # In topPartitions, a time lag alone is paced, a lag is not.
    older = [{"topic": "t", "partition": 1, "lag": 600, "timeLagSeconds": 10.0},
             {"topic": "t", "partition": 0, "lag": 600, "timeLagSeconds": 10.0}]
    before = status(topPartitions=[{"topic": "t", "partition": 1, "lag": 600, "timeLagSeconds": 3.0},
                                   {"topic": "t", "partition": 0, "lag": 600, "timeLagSeconds": 3.0}])
    assert status_write_reason(before, 100.0, status(topPartitions=older), 105.0) is None
    assert status_write_reason(before, 100.0, status(topPartitions=older), LATER) == "topPartitions"
    grown = [{**older[0], "lag": 900}, older[1]]
    assert status_write_reason(before, 100.0, status(topPartitions=grown), 105.0) == "topPartitions"


def test_why_a_hold_holds_rides_along_and_what_it_holds_does_not() -> None:
    # A sparse topic: the policy's explanation alternates between branches at every record, nothing changed.
    idle = "hold 1 replica, pool 8: no backlog and no production (0.0 msg/s)"
    trickle = "hold 1 replica, pool 8: backlog 5 msgs + 0.3 msg/s (+20%), per-slot throughput not measured yet"
    assert decision_wording(idle) == decision_wording(trickle) == "hold # replica, pool #"
    ready = status()["conditions"][0]
    before = status(lastDecision=idle, conditions=[{**ready, "message": idle}])
    after = status(lastDecision=trickle, conditions=[{**ready, "message": trickle}])
    assert status_write_reason(before, 100.0, after, 105.0) is None
    # Holding another shape, or a change, is news at once; so is any other message's wording.
    assert status_write_reason(before, 100.0, status(lastDecision="hold 2 replicas, pool 8: ...",
                                                     conditions=[{**ready, "message": idle}]), 105.0) == "lastDecision"
    grow = "grow pool 8→16 on 1 replica: lag 900 msgs growing"
    assert decision_wording(grow) == wording(grow)
    assert status_write_reason(before, 100.0, status(lastDecision=idle, conditions=[{**ready, "message": grow}]),
                               105.0) == "conditions"


def steady(config: PolicyConfig, polls: int) -> list[PolicyMemory]:
    """The memories of `polls` polls of a group with no lag and no traffic that follows its decisions."""
    memory, out, shape = PolicyMemory(), [], (2, 8)
    for i in range(polls):
        now = NOW + 5 * i
        decision = decide(config, observe([0] * 4, *shape, produce=0.0, consume=0.0, time=now), memory, now)
        memory, shape = decision.memory, (decision.replicas, decision.pool)
        out.append(memory)
    return out


def test_an_unchanging_group_only_refreshes_its_memory() -> None:
    memories = steady(threshold_config(), 60)  # 5 minutes
    settled = list(itertools.pairwise(memories[8:]))
    # Once settled, every poll is a refresh, the lag trend's new bucket each minute included.
    assert [b.last_time for a, b in settled if a.trend != b.trend] == [NOW + 65, NOW + 125, NOW + 185, NOW + 245]
    assert all(memory_refresh_only(a, b) for a, b in settled)
    assert status_write_reason(status(policyMemory=memories[5].to_dict()), 100.0,
                               status(policyMemory=memories[6].to_dict()), 105.0) is None
    # a new recommendation value, a scale (changes, cooldown) or a fresh memory is not a refresh
    last = memories[-1]
    assert not memory_refresh_only(last, replace(last, recommendations=((last.last_time or 0.0, 99),)))
    assert not memory_refresh_only(last, replace(last, last_replica_change=last.last_time))
    assert not memory_refresh_only(PolicyMemory(), last)


def test_resume_moves_the_refreshed_timestamps_to_the_latest_unwritten_poll() -> None:
    memory = PolicyMemory(recommendations=((50.0, 4), (100.0, 1)), last_time=100.0, slot_rate_floor=8.0,
                          floor_time=100.0)
    resumed = resume_memory(memory, now=1000.0, refresh_seconds=REFRESH)
    # Each size written may have been recommended again, unwritten, until then.
    assert resumed.last_time == 400.0 and resumed.recommendations == ((400.0, 4), (400.0, 1))
    assert (resumed.slot_rate_floor, resumed.floor_time) == (8.0, 100.0)  # decayed by the policy from its own time
    assert resume_memory(memory, now=130.0, refresh_seconds=REFRESH).last_time == 130.0
    assert resume_memory(PolicyMemory(), now=1000.0) == PolicyMemory()
    assert resume_memory(replace(memory, trend=((40.0, 7), (100.0, 5))), now=1000.0).trend == ()


def test_recommendations_up_to_the_fewest_slots_the_bounds_allow_count_as_one_size() -> None:
    # A quiet group at its minimum (1 replica x pool 2) recommends 0 slots; a burst of 30 msgs, 1 slot: the
    # same shape, so the same windows. A bigger size, or any size where the bounds allow zero, is news.
    written = replace(WARM, last_time=NOW, recommendations=((NOW, 0),))
    live = replace(written, last_time=NOW + 5, recommendations=((NOW, 0), (NOW + 5, 1)))
    assert memory_refresh_only(written, live, floor_slots=2)
    assert memory_refresh_only(written, replace(live, recommendations=((NOW + 5, 2),)), floor_slots=2)
    assert not memory_refresh_only(written, replace(live, recommendations=((NOW + 5, 3),)), floor_slots=2)
    assert not memory_refresh_only(written, live, floor_slots=0)
    before, after = status(policyMemory=written.to_dict()), status(policyMemory=live.to_dict())
    assert status_write_reason(before, 100.0, after, 105.0, floor_slots=2) is None
    assert status_write_reason(before, 100.0, after, 105.0) == "policyMemory"


def test_the_busy_span_is_no_reason_to_write_and_starts_again_on_a_restart() -> None:
    # While work waits, the span's polls count up at every poll until it reads the slots (10 s): no news on
    # its own. A restarted operator does not know that work waited while nobody polled, so it starts again.
    written = replace(WARM, last_time=NOW, busy_span=Span(NOW - 4, 1_000, 900, 2, 2, 3))
    live = replace(written, last_time=NOW + 2, busy_span=Span(NOW - 4, 1_000, 900, 3, 2, 3))
    assert memory_refresh_only(written, live)
    assert memory_refresh_only(replace(written, busy_span=None), live)
    assert resume_memory(written, now=NOW + 60).busy_span is None


def test_a_last_lag_moving_within_the_band_is_not_written_and_resumes_at_its_top() -> None:
    written = replace(WARM, last_lag=5, last_time=NOW)
    live = replace(written, last_lag=90)
    assert memory_refresh_only(written, live)
    assert not memory_refresh_only(written, replace(live, last_lag=5 + LAST_LAG_BAND + 1))
    assert not memory_refresh_only(replace(written, last_lag=None), live)
    # 60 msgs waiting for 1 x 2 slots that drain 0.5 msg/s: saturated. From 90 the lag shrank and the live
    # memory holds; from the 5 last written it grew, and the policy would grow the pool.
    now = NOW + 5
    obs = observe(spread(60, 4), 1, 2, produce=0.5, consume=0.5, members=1, time=now)
    assert decide(FREE, obs, live, now).slots == 2
    assert decide(FREE, obs, written, now).slots > 2
    resumed = resume_memory(written, now, REFRESH)
    assert resumed.last_lag == 5 + LAST_LAG_BAND
    assert decide(FREE, obs, resumed, now).slots == 2


def test_a_last_lag_going_down_or_up_by_less_than_the_band_is_not_written() -> None:
    # The fleet bench's stalled groups: a burst takes the lag 30 -> 120 (623 writes at 1,000 groups), and a
    # backlog that drains reads less at every poll; a climb past the band above the written lag is news.
    written = replace(WARM, last_lag=30, last_time=NOW)
    assert memory_refresh_only(written, replace(written, last_lag=120, last_time=NOW + 5))
    assert not memory_refresh_only(written, replace(written, last_lag=131, last_time=NOW + 5))
    backlog = replace(WARM, last_lag=5_000, last_time=NOW)
    assert memory_refresh_only(backlog, replace(backlog, last_lag=1_200, last_time=NOW + 5))
    # Resumed at the band's top, the first poll after a restart reads "grown" only where the live memory,
    # whatever it held within the band, reads it too.
    assert resume_memory(written, NOW + 60, REFRESH).last_lag == 30 + LAST_LAG_BAND
    assert resume_memory(replace(written, last_lag=None), NOW + 60, REFRESH).last_lag is None


def test_recommendations_of_sizes_already_written_are_not_written() -> None:
    # Sparse traffic: the capacity (8) with a record waiting, nothing (0) with none, poll after poll.
    written = PolicyMemory(recommendations=((100.0, 8), (105.0, 0)), last_time=105.0)
    assert memory_refresh_only(written, replace(written, recommendations=((100.0, 8), (110.0, 8)), last_time=110.0))
    assert memory_refresh_only(written, replace(written, recommendations=((115.0, 0),), last_time=115.0))
    assert not memory_refresh_only(written, replace(written, recommendations=((100.0, 8), (110.0, 16)),
                                                    last_time=110.0))


def test_a_restart_after_skipped_recommendations_holds_as_the_live_memory_does() -> None:
    """Sparse traffic: a record waiting (the capacity, 8, is recommended), then none (0). Each size is written
    once; the 8 recommended again at 15 s is not, and keeps the live scale-down window (60 s) at 8 until 75 s.
    Resumed at 65 s, the memory as written would shrink the pool (its 8 is from 5 s); resumed, it holds."""
    config = replace(FREE, replicas=replace(FREE.replicas, min=1),
                     scale_down=replace(FREE.scale_down, stabilization_seconds=60))

    def waiting(now: float) -> Observation:
        return observe(spread(10, 4), 1, 8, produce=0.5, members=1, time=now)

    def none(now: float) -> Observation:
        return observe([0, 0, 0, 0], 1, 8, produce=0.0, members=1, time=now)

    memory, written, skipped = WARM, WARM, []
    for step, observed in enumerate([waiting, none, waiting] + [none] * 9, start=1):
        now = NOW + 5 * step
        memory = decide(config, observed(now), memory, now).memory
        if memory_refresh_only(written, memory):
            skipped.append(step * 5)
        else:
            written = memory
    assert skipped[0] == 15 and written.recommendations == ((NOW + 5, 8), (NOW + 10, 0))
    now = NOW + 65
    assert decide(config, none(now), memory, now).slots == 8
    assert decide(config, none(now), written, now).slots < 8
    assert decide(config, none(now), resume_memory(written, now, REFRESH), now).slots == 8


def test_a_step_change_expiring_is_not_written() -> None:
    written = PolicyMemory(recommendations=((100.0, 1),), changes=((90.0, 2, 1), (95.0, 3, 2)), last_time=100.0)
    assert memory_refresh_only(written, replace(written, changes=((95.0, 3, 2),), last_time=125.0))
    assert memory_refresh_only(written, replace(written, changes=(), last_time=130.0))
    assert not memory_refresh_only(written, replace(written, changes=((90.0, 2, 1),), last_time=125.0))
    assert not memory_refresh_only(written, replace(written, changes=((95.0, 3, 2), (125.0, 2, 1)),
                                                    last_time=125.0))


def test_idleness_is_only_remembered_where_the_group_may_scale_to_zero() -> None:
    idle = observe([0, 0], 1, 2, produce=0.0, consume=0.0, members=1, time=NOW + 5)
    assert decide(FREE, idle, WARM, NOW + 5).memory.idle_since is None
    to_zero = replace(FREE, replicas=replace(FREE.replicas, min=0))
    assert decide(to_zero, idle, WARM, NOW + 5).memory.idle_since == NOW + 5


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.data())
def test_a_restart_from_the_memory_as_written_never_scales_earlier(
        history: tuple[PolicyConfig, PolicyMemory, float], data: st.DataObject) -> None:
    """The operator writes its memory by the rules (refreshes skipped, a refresh every REFRESH s) and dies
    after any poll; the restarted one resumes from what was written and decides, poll by poll, as the
    live one would have, or holds (part of) the capacity where the live one moves: never a scale the
    live one does not make."""
    restart_after_writes(history, data, most=200_000)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(most=40), st.data())
def test_a_restart_amid_small_lags_never_scales_earlier(
        history: tuple[PolicyConfig, PolicyMemory, float], data: st.DataObject) -> None:
    """The same with lags of at most 40 a partition, mostly within LAST_LAG_BAND: the last lag moves unwritten
    there, and idleness comes and goes."""
    restart_after_writes(history, data, most=40)


def restart_after_writes(history: tuple[PolicyConfig, PolicyMemory, float], data: st.DataObject,
                         most: int) -> None:
    config, memory, now = history
    # The same reading every poll, two readings by turns (sparse traffic: a record waiting, then none), or
    # a new one each poll.
    mode = data.draw(st.sampled_from(["steady", "two", "random"]))
    fixed = [data.draw(observations(now, most=most)) for _ in range(2)]

    def observed(now: float) -> Observation:
        if mode == "random":
            return data.draw(observations(now, most=most))
        obs = fixed[data.draw(st.integers(0, 1))] if mode == "two" else fixed[0]
        return replace(obs, sample=obs.sample and replace(obs.sample, time=now))

    written, written_at = memory, now
    for _ in range(data.draw(st.integers(1, 12))):
        now += data.draw(st.sampled_from([2.0, 5.0, 15.0, 30.0]))
        memory = decide(config, observed(now), memory, now).memory
        if now - written_at >= REFRESH or not memory_refresh_only(written, memory,
                                                                  config.replicas.min * config.pool.min):
            written, written_at = memory, now
        stored = PolicyMemory.from_dict(json.loads(json.dumps(written.to_dict())))
    # Down for a while (the live operator, had it run, would have polled next at the same time).
    now += data.draw(st.sampled_from([2.0, 5.0, 15.0, 30.0])) + data.draw(st.floats(0.0, 2 * REFRESH))
    restarted, live = resume_memory(stored, now, REFRESH), memory
    for poll in range(4):
        now += data.draw(st.sampled_from([2.0, 5.0, 15.0, 30.0])) if poll else 0.0
        obs = observed(now)
        a, b = decide(config, obs, live, now), decide(config, obs, restarted, now)
        if (a.replicas, a.pool) != (b.replicas, b.pool):
            # Apart, the capacity the restarted one aims at (after windows and step limits) lies between
            # the current one and the live one's: it holds, or goes part of the way, never further or
            # the other way. (Its shape may still differ: a capacity held within new bounds.)
            current = obs.current_replicas * obs.current_pool
            low, high = sorted((current, a.slots))
            assert low <= b.slots <= high, "the restart scaled where the live did not"
            break
        live, restarted = a.memory, b.memory


def test_a_matching_deployment_is_not_patched() -> None:
    desired = {"metadata": {"labels": {"app": "w", "lagpilot.io/group": "g"}},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}},
                        "template": {"metadata": {"labels": {"app": "w"}},
                                     "spec": {"containers": [{"name": "worker", "image": "w:1",
                                                              "env": [{"name": "A", "value": "1"}]}]}}}}
    live = {"metadata": {"labels": {"app": "w", "lagpilot.io/group": "g", "extra": "x"}, "uid": "u"},
            "spec": {"replicas": 5, "strategy": {"type": "RollingUpdate"}, "selector": {"matchLabels": {"app": "w"}},
                     "template": {"metadata": {"labels": {"app": "w"}},
                                  "spec": {"dnsPolicy": "ClusterFirst",
                                           "containers": [
                                               {"name": "sidecar", "image": "s:1"},
                                               {"name": "worker", "image": "w:1", "imagePullPolicy": "IfNotPresent",
                                                "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}]}}}}
    assert deployment_patch(desired, live) is None  # defaults, other replicas, extra items: nothing to write
    changed = json.loads(json.dumps(desired))
    changed["spec"]["template"]["spec"]["containers"][0]["image"] = "w:2"
    patch = deployment_patch(changed, live)
    assert patch is not None and "replicas" not in patch["spec"]
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "w:2"
    assert deployment_patch({**desired, "metadata": {"labels": {"app": "v"}}}, live) is not None
    env_changed = json.loads(json.dumps(desired))
    env_changed["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "9"
    assert deployment_patch(env_changed, live) is not None
    assert not contained({"args": ["a", "b"]}, {"args": ["a"]}) and contained({"args": ["a"]}, {"args": ["a"]})


def test_the_same_event_is_posted_once() -> None:
    events = EventMemory()
    assert events.admit("Warning", "PartitionsStuck", "t-0")
    assert not events.admit("Warning", "PartitionsStuck", "t-0")
    assert events.admit("Normal", "ScaledUp", "t-0")  # another reason keeps its own last message
    assert events.admit("Warning", "PartitionsStuck", "t-1")
    assert events.admit("Warning", "PartitionsStuck", "t-0")  # news again once something else was said
    # one subject: up, down, and the same up again are three Events; the same up twice is one
    assert events.admit("Normal", "ScaledDown", "t-0")
    assert events.admit("Normal", "ScaledUp", "t-0")
    assert not events.admit("Normal", "ScaledUp", "t-0")




def test_the_next_reconcile_starts_from_the_last_write_when_the_watch_has_not_delivered_it() -> None:
    watched = status(poolSize=1, currentReplicas=1, desiredReplicas=1)
    written = status(poolSize=2, currentReplicas=6, desiredReplicas=6)
    assert stored_status(watched, written) == written
    assert stored_status(watched, None) == watched  # nothing written by this process yet (a restart)
    # After an unexpected error only the conditions were written: the rest is as the watch has it.
    errored = {"conditions": [{"type": "Ready", "status": "False", "reason": "ReconcileError"}]}
    merged = stored_status(watched, errored)
    assert merged["conditions"] == errored["conditions"] and merged["poolSize"] == 1

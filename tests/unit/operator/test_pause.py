"""Pausing: what the annotations and spec.paused ask for (pause.py), and what the policy does with it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lagpilot_operator.core.observations import LagSample, PartitionOffsets
from lagpilot_operator.core.pause import (
    MAX_PINNED_REPLICAS,
    NOT_PAUSED,
    PAUSED_ANNOTATION,
    PAUSED_REPLICAS_ANNOTATION,
    pause_from,
)
from lagpilot_operator.core.policy import (
    DEFAULT_SCALE_DOWN,
    Observation,
    PolicyConfig,
    PolicyMemory,
    ReplicaBounds,
    decide,
)
from lagpilot_operator.kube.models import condition_reason_ok

NOW = 10_000.0
END = 1_000_000


def sample(lags: list[int], *, time: float, members: int | None = 2) -> LagSample:
    return LagSample(time, tuple(PartitionOffsets("orders", p, END, END - lag) for p, lag in enumerate(lags)), members)


def observe(lags: list[int], replicas: int, pool: int, *, time: float, produce: float | None = None,
            consume: float | None = None, members: int | None = 2) -> Observation:
    return Observation(sample=sample(lags, time=time, members=members), current_replicas=replicas,
                       current_pool=pool, partitions=len(lags), produce_rate=produce, consume_rate=consume)


# --- reading the annotations -------------------------------------------------------------------------


@pytest.mark.parametrize(("annotations", "spec_paused", "expected"), [
    (None, False, (False, None, "NotPaused")),
    ({}, False, (False, None, "NotPaused")),
    ({"other/annotation": "true"}, False, (False, None, "NotPaused")),
    ({PAUSED_ANNOTATION: "false"}, False, (False, None, "NotPaused")),
    ({PAUSED_ANNOTATION: "0"}, False, (False, None, "NotPaused")),
    ({PAUSED_ANNOTATION: "true"}, False, (True, None, "PausedByAnnotation")),
    ({PAUSED_ANNOTATION: "True"}, False, (True, None, "PausedByAnnotation")),
    ({PAUSED_ANNOTATION: "1"}, False, (True, None, "PausedByAnnotation")),
    (None, True, (True, None, "PausedBySpec")),
    ({PAUSED_ANNOTATION: "true"}, True, (True, None, "PausedByAnnotation")),
    ({PAUSED_ANNOTATION: "false"}, True, (True, None, "PausedBySpec")),
    ({PAUSED_ANNOTATION: "true", PAUSED_REPLICAS_ANNOTATION: "3"}, False, (True, 3, "PausedAtReplicas")),
    ({PAUSED_REPLICAS_ANNOTATION: "0"}, False, (True, 0, "PausedAtReplicas")),        # as KEDA: it pauses alone
    ({PAUSED_REPLICAS_ANNOTATION: " 2 "}, True, (True, 2, "PausedAtReplicas")),
    ({PAUSED_ANNOTATION: "yes"}, False, (True, None, "InvalidPausedAnnotation")),     # the safe reading
    ({PAUSED_ANNOTATION: "yes", PAUSED_REPLICAS_ANNOTATION: "4"}, False, (True, 4, "InvalidPausedAnnotation")),
    ({PAUSED_ANNOTATION: "true", PAUSED_REPLICAS_ANNOTATION: "three"}, False,
     (True, None, "InvalidPausedReplicas")),
    ({PAUSED_REPLICAS_ANNOTATION: "-1"}, False, (True, None, "InvalidPausedReplicas")),
    ({PAUSED_REPLICAS_ANNOTATION: "2.5"}, False, (True, None, "InvalidPausedReplicas")),
    ({PAUSED_REPLICAS_ANNOTATION: ""}, False, (True, None, "InvalidPausedReplicas")),
    ({PAUSED_REPLICAS_ANNOTATION: "\u0663"}, False, (True, None, "InvalidPausedReplicas")),  # Arabic-Indic 3
    ({PAUSED_REPLICAS_ANNOTATION: str(MAX_PINNED_REPLICAS + 1)}, False, (True, None, "InvalidPausedReplicas")),
])
def test_pause_from_annotations_and_spec(annotations: dict[str, str] | None, spec_paused: bool,
                                         expected: tuple[bool, int | None, str]) -> None:
    pause = pause_from(annotations, spec_paused)
    assert (pause.paused, pause.replicas, pause.reason) == expected
    assert condition_reason_ok(pause.reason)
    if pause.paused:
        for key, value in (annotations or {}).items():
            if key.startswith("lagpilot.io/paused") and (key != PAUSED_ANNOTATION or value != "false"):
                assert f'{key}="{value}"' in pause.message  # the condition names what it read
    else:
        assert pause == NOT_PAUSED


# --- the decision while paused -----------------------------------------------------------------------


def test_pause_pins_replicas_and_holds_the_pool_out_of_bounds_too() -> None:
    config = replace(PolicyConfig(), paused=True, paused_replicas=12, replicas=ReplicaBounds(min=1, max=4))
    decision = decide(config, observe([500] * 6, 2, 8, time=NOW), PolicyMemory(last_time=NOW - 5), NOW)
    assert (decision.replicas, decision.pool, decision.direction) == (12, 8, "up")
    assert decision.reason == "paused: replicas pinned 2→12, pool 8"
    assert decision.total_lag == 3000  # lag is still read and reported
    to_zero = decide(replace(config, paused_replicas=0), observe([500] * 6, 2, 8, time=NOW), PolicyMemory(), NOW)
    assert (to_zero.replicas, to_zero.pool, to_zero.direction) == (0, 8, "down")
    held = decide(replace(config, paused_replicas=None), observe([0] * 6, 2, 8, time=NOW), PolicyMemory(), NOW)
    assert (held.replicas, held.pool, held.direction) == (2, 8, "none")


def test_resuming_after_a_pause_does_not_read_the_pause_as_growth() -> None:
    """Before the pause the lag was 1,200; during it, it grew to 6,000 and then shrank to 4,000 (the
    two pods drain it). Resuming at 3,900 must keep the capacity that drains it: comparing with the
    lag from before the pause reads 1,200 → 3,900 as growth and doubles the group."""
    config = replace(PolicyConfig(), scale_down=DEFAULT_SCALE_DOWN)
    memory = PolicyMemory(last_time=NOW - 100, last_lag=1200, last_members=2)
    paused = replace(config, paused=True)
    for step, lag in enumerate((2000, 4000, 6000, 5000, 4000)):
        now = NOW - 60 + 10 * step
        decision = decide(paused, observe([lag // 4] * 4, 2, 8, time=now, produce=10.0, consume=40.0), memory, now)
        assert (decision.replicas, decision.pool) == (2, 8)
        memory = decision.memory
    resumed = decide(config, observe([975] * 4, 2, 8, time=NOW, produce=10.0, consume=40.0), memory, NOW)
    assert (resumed.replicas, resumed.pool) == (2, 8), resumed.reason
    assert "shrinking" in resumed.reason


def test_resuming_does_not_scale_down_before_a_full_window_nor_to_zero() -> None:
    """The pause counts as recommending what it held: no scale-down (and no scale to zero with
    replicas.min 0) until a whole scale-down window after the last paused poll."""
    config = replace(PolicyConfig(), replicas=ReplicaBounds(min=0, max=10), scale_down=DEFAULT_SCALE_DOWN)
    window = DEFAULT_SCALE_DOWN.stabilization_seconds
    memory = PolicyMemory(last_time=NOW - 1000, idle_since=NOW - 1000)  # idle long before the pause
    paused = replace(config, paused=True, paused_replicas=3)
    for step in range(10):
        now = NOW - 50 + 5 * step
        decision = decide(paused, observe([0] * 4, 2 if step == 0 else 3, 8, time=now, produce=0.0, consume=0.0),
                          memory, now)
        memory = decision.memory
    assert memory.idle_since is None
    last_paused_poll = NOW - 5
    for now in (NOW, NOW + window / 2, last_paused_poll + window - 1):
        held = decide(config, observe([0] * 4, 3, 8, time=now, produce=0.0, consume=0.0), memory, now)
        assert (held.replicas, held.pool) == (3, 8), held.reason
        memory = held.memory
    later = decide(config, observe([0] * 4, 3, 8, time=last_paused_poll + window, produce=0.0, consume=0.0),
                   memory, last_paused_poll + window)
    assert later.replicas * later.pool < 24

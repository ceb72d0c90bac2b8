"""Stuck-partition verdicts over a sliding window (Burrow's rules on what an operator can observe)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_operator.core.observations import LagHistory, LagSample, PartitionOffsets
from lagpilot_operator.core.verdicts import (
    DEFAULT_WINDOW_SECONDS,
    STUCK,
    Verdict,
    evaluate,
    evaluate_partition,
    evaluate_series,
    stuck_partitions,
)

KEY = ("orders", 0)


def series(points: Sequence[tuple[int, int | None]], step: float = 5.0,
           start: int = 0) -> list[tuple[float, PartitionOffsets]]:
    """(end, committed) per sample, every `step` seconds from 0."""
    return [(i * step, PartitionOffsets("orders", 0, end, committed, start)) for i, (end, committed) in
            enumerate(points)]


FULL = 13  # 13 samples at 5 s = 60 s: the window is covered


@pytest.mark.parametrize(
    ("points", "members", "group_advanced", "policy", "verdict"),
    [
        # caught up at the end: OK whatever happened before
        ([(100, 50)] * (FULL - 1) + [(100, 100)], 3, False, "latest", Verdict.OK),
        # consuming and keeping up (lag goes up and down)
        ([(100 + 10 * i, 95 + 10 * i - (i % 2) * 3) for i in range(FULL)], 3, False, "latest", Verdict.OK),
        # not enough history to judge: a window's worth of samples is missing
        ([(100, 50)] * (FULL - 1), 3, False, "latest", Verdict.OK),
        # committed frozen with lag, consumers present
        ([(100 + i, 50) for i in range(FULL)], 3, False, "latest", Verdict.STALLED),
        # ... member count unknown but another partition moved: someone consumes
        ([(100 + i, 50) for i in range(FULL)], None, True, "latest", Verdict.STALLED),
        # ... nobody in the group
        ([(100 + i, 50) for i in range(FULL)], 0, True, "latest", Verdict.STOPPED),
        # ... member count unknown and nothing moved anywhere
        ([(100 + i, 50) for i in range(FULL)], None, False, "latest", Verdict.STOPPED),
        # never committed, latest: nothing to consume, not stuck
        ([(100 + i, None) for i in range(FULL)], 3, False, "latest", Verdict.OK),
        # never committed, earliest: the whole partition waits
        ([(100 + i, None) for i in range(FULL)], 3, False, "earliest", Verdict.STALLED),
        # moving but falling behind at every step
        ([(100 + 20 * i, 90 + 5 * i) for i in range(FULL)], 3, False, "latest", Verdict.LAGGING),
        # falling behind overall but one step caught up a little: Burrow's rule says not LAGGING
        ([(100 + 20 * i, 90 + 5 * i + (25 if i >= 6 else 0)) for i in range(FULL)], 3, False, "latest", Verdict.OK),
        # lag was zero once inside the window: not stuck
        ([(100, 50)] * 5 + [(100, 100)] + [(150, 100)] * (FULL - 6), 3, False, "latest", Verdict.OK),
        # committed went backwards: REWOUND wins over everything
        ([(200, 150)] * 6 + [(200, 10)] * (FULL - 6), 3, False, "latest", Verdict.REWOUND),
        # a rewind before the window is forgotten (stuck at the rewound offset since then)
        ([(200, 150)] * 2 + [(200, 10)] * (FULL + 2), 3, False, "latest", Verdict.STALLED),
    ],
)
def test_verdict_table(points: list[tuple[int, int | None]], members: int | None, group_advanced: bool,
                       policy: str, verdict: Verdict) -> None:
    data = series(points)
    now = data[-1][0]
    got = evaluate_partition(data, now, members=members, group_advanced=group_advanced,
                             offset_reset_policy=policy)  # type: ignore[arg-type]
    assert got is verdict


def test_rewind_is_reported_even_before_the_window_is_full() -> None:
    data = series([(200, 150), (200, 100)])
    assert evaluate_partition(data, 5.0, members=1) is Verdict.REWOUND


def test_window_length_is_the_threshold() -> None:
    frozen = series([(100 + i, 50) for i in range(FULL)])  # frozen for exactly 60 s
    assert evaluate_partition(frozen, 60.0, members=1, window_seconds=60.0) is Verdict.STALLED
    assert evaluate_partition(frozen, 60.0, members=1, window_seconds=61.0) is Verdict.OK
    assert evaluate_partition([], 0.0) is Verdict.OK


def history_of(samples: Sequence[LagSample]) -> LagHistory:
    history = LagHistory()
    for sample in samples:
        history.add(sample)
    return history


def test_evaluate_a_group_with_one_blocked_partition() -> None:
    samples = []
    for i in range(FULL):
        t = i * 5.0
        samples.append(LagSample(t, (
            PartitionOffsets("orders", 0, 100 + 10 * i, 95 + 10 * i),  # healthy
            PartitionOffsets("orders", 1, 100 + 10 * i, 40),            # blocked
        )))  # member count unknown (Prometheus source): partition 0's progress shows consumers exist
    verdicts = evaluate(history_of(samples))
    assert verdicts == {("orders", 0): Verdict.OK, ("orders", 1): Verdict.STALLED}
    assert stuck_partitions(verdicts) == {("orders", 1): Verdict.STALLED}
    # The same samples as a plain sequence, in any order, give the same answer.
    assert evaluate(list(reversed(samples))) == verdicts
    assert evaluate([]) == {}


def test_whole_group_stopped_without_members() -> None:
    samples = [LagSample(i * 5.0, tuple(PartitionOffsets("orders", p, 100 + i, 40) for p in range(3)), members=0)
               for i in range(FULL)]
    assert set(evaluate(samples).values()) == {Verdict.STOPPED}
    assert DEFAULT_WINDOW_SECONDS == 60.0
    assert {Verdict.STALLED, Verdict.STOPPED} == STUCK


committed_steps = st.lists(st.integers(1, 50), min_size=2, max_size=30)


@settings(max_examples=200, deadline=None)
@given(committed_steps, st.lists(st.integers(0, 60), min_size=30, max_size=30), st.one_of(st.none(), st.integers(0, 5)))
def test_a_partition_whose_commits_keep_moving_is_never_stuck(steps: list[int], produce: list[int],
                                                               members: int | None) -> None:
    committed, end = 0, 0
    points: list[tuple[int, int | None]] = []
    for index, step in enumerate(steps):
        committed += step
        end = max(end + produce[index], committed)
        points.append((end, committed))
    data = series(points)
    verdict = evaluate_partition(data, data[-1][0], members=members)
    assert verdict not in STUCK and verdict is not Verdict.REWOUND


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.one_of(st.none(), st.integers(0, 1000))), min_size=1,
                max_size=30), st.one_of(st.none(), st.integers(0, 5)), st.booleans())
def test_a_caught_up_partition_is_ok_or_rewound(points: list[tuple[int, int | None]], members: int | None,
                                                advanced: bool) -> None:
    end, _ = points[-1]
    points[-1] = (end, end)  # caught up now
    data = series(points)
    verdict = evaluate_partition(data, data[-1][0], members=members, group_advanced=advanced)
    assert verdict in {Verdict.OK, Verdict.REWOUND}


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 5), st.integers(1, 20), st.sampled_from([None, None, 0, 2]),
       st.sampled_from(["latest", "earliest"]), st.sampled_from([15.0, 60.0]), st.sampled_from([0.0, 0.0, 7.0]))
def test_verdicts_over_partitions_lined_up_by_position_are_the_verdicts_by_series(
        data: st.DataObject, partitions: int, samples: int, members: int | None, policy: str, window: float,
        later: float) -> None:
    """`evaluate` reads a history whose samples hold the same partitions column-wide (`evaluate_window`):
    exactly the verdicts `evaluate_series` gives from the (time, offsets) series."""
    # Per partition, how its commits move: frozen, by small steps (so lags often tie, reach zero, or end where
    # they began), catching up now and then, anyhow (with rewinds and uncommitted samples).
    modes = data.draw(st.lists(st.sampled_from(["frozen", "steps", "catching up", "any"]), min_size=partitions,
                               max_size=partitions))
    start = data.draw(st.sampled_from([0, 0, 40]))
    ends, committed = [100] * partitions, [data.draw(st.sampled_from([60, 100]))] * partitions
    history = LagHistory(needed_seconds=window)
    time = 0.0
    for _ in range(samples):
        time += data.draw(st.sampled_from([5.0, 5.0, 5.0, 1.0, 30.0]))
        offsets = []
        for p, mode in enumerate(modes):
            ends[p] += data.draw(st.sampled_from([0, 1, 2, 20]))
            known: int | None = committed[p]
            if mode == "steps":
                committed[p] = min(ends[p], committed[p] + data.draw(st.sampled_from([0, 1, 2])))
            elif mode == "catching up":
                committed[p] = ends[p] if data.draw(st.booleans()) else committed[p] + 1
            elif mode == "any":
                step = data.draw(st.one_of(st.sampled_from([0, 3, 30, -5]), st.none()))
                if step is None:
                    known = None
                else:
                    committed[p] = max(0, committed[p] + step)
            offsets.append(PartitionOffsets("orders", p, ends[p], None if known is None else committed[p], start))
        history.add(LagSample(time, tuple(offsets), members=members))
    at = time + later
    assert history.window(at - window) is not None
    expected = evaluate_series(history.series_by_partition(since=at - window), at, window_seconds=window,
                               members=members, offset_reset_policy=policy)  # type: ignore[arg-type]
    assert evaluate(history, window_seconds=window, offset_reset_policy=policy, now=at) == expected  # type: ignore[arg-type]

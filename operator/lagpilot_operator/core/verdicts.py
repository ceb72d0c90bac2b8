"""Stuck-partition verdicts over a sliding window of samples (issue 8). Pure: no I/O.

Burrow's evaluation rules adapted to what an operator can observe without reading
`__consumer_offsets`: committed offsets, end offsets and the group's member count at each sample
(commit timestamps are not visible through the admin API, so "no commits" means "the committed
offset did not change").

For one partition, with W = `window_seconds` and the window's *anchor* = the newest sample at or before
`now - W` (so the evaluated span always covers at least W seconds):

* REWOUND — the committed offset went down between two consecutive samples of the span (both known).
  Takes precedence: someone reset the group, and the other rules would misread the jump.
* OK — the partition has no lag now (`consumable_lag == 0`; a never-committed partition under
  `latest` has nothing to consume), or the history does not reach back W seconds yet
  (no anchor: not enough evidence to call anything stuck).
* STALLED — the committed offset is identical in every sample of the span, the lag was > 0 in every
  one of them, and the group has consumers: the newest sample reports `members > 0`, or the member
  count is unknown and some other partition's committed offset advanced during the span. Someone is
  consuming, yet this partition does not move (a poison message, a blocked handler, a tripped breaker).
* STOPPED — same as STALLED but with no evidence of consumers: members is 0, or unknown while no
  partition of the group advanced during the span. No commits at all for at least W while lagging.
* LAGGING — the committed offset moves, the lag was > 0 in every sample of the span, never decreased
  between two consecutive samples, and is strictly larger at the end than at the anchor
  (Burrow's WARN: consumers progress but fall further behind). Noise around a steady lag has some
  decreasing step, so steady load does not flicker into LAGGING.

Thresholds: `window_seconds` (default 60 s: twelve samples at the default 5 s polling, and well above
librdkafka's 5 s auto-commit interval and a rebalance pause, so ordinary gaps between commits never
look stuck). There is no minimum lag: any lag > 0 that persists for the whole window qualifies.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Mapping, Sequence
from enum import StrEnum

from lagpilot_operator.core.observations import (
    HistoryWindow,
    LagHistory,
    LagSample,
    OffsetResetPolicy,
    PartitionKey,
    PartitionOffsets,
    consumable_lag,
)

DEFAULT_WINDOW_SECONDS = 60.0


class Verdict(StrEnum):
    OK = "OK"
    LAGGING = "LAGGING"
    STALLED = "STALLED"
    STOPPED = "STOPPED"
    REWOUND = "REWOUND"


STUCK = frozenset({Verdict.STALLED, Verdict.STOPPED})

PartitionSeries = Sequence[tuple[float, PartitionOffsets]]


def _advanced(series: PartitionSeries, since: float) -> bool:
    """Did the committed offset go up between two consecutive samples after `since`?"""
    for (_, before), (time, after) in itertools.pairwise(series):
        if time <= since:
            continue
        if after.committed is not None and (before.committed is None or after.committed > before.committed):
            return True
    return False


def evaluate_partition(
    series: PartitionSeries,
    now: float,
    *,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    members: int | None = None,
    group_advanced: bool = False,
    offset_reset_policy: OffsetResetPolicy = "latest",
) -> Verdict:
    """Verdict for one partition from its (time, offsets) series, oldest first (see module docstring).

    `members` is the group's member count at the newest sample; `group_advanced` says whether any
    *other* partition's committed offset advanced during the window (evidence of live consumers when
    the member count is unknown).

    Runs for every partition of a group on every poll (1,000 partitions x the window's samples), so it
    walks the window in few passes over plain values rather than through the helpers above.
    """
    if not series:
        return Verdict.OK
    # The anchor: the newest point at or before now - W (times ascend); None when the history is shorter.
    anchor = bisect.bisect_right(series, now - window_seconds, key=_time) - 1
    recent = series[anchor:] if anchor >= 0 else series
    committed = [offsets.committed for _, offsets in recent]
    before = committed[0]
    for after in committed[1:]:
        if before is not None and after is not None and after < before:
            return Verdict.REWOUND
        before = after
    if anchor < 0 or consumable_lag(series[-1][1], offset_reset_policy) == 0:
        return Verdict.OK
    first = committed[0]
    frozen = all(value == first for value in committed)
    # One pass with early exits: most partitions are healthy and leave at their first lag decrease.
    previous = -1
    first_lag = None
    never_decreasing = True
    for _, offsets in recent:
        lag = consumable_lag(offsets, offset_reset_policy)
        if lag <= 0:
            return Verdict.OK
        if first_lag is None:
            first_lag = lag
        if lag < previous:
            if not frozen:
                return Verdict.OK
            never_decreasing = False
        previous = lag
    if frozen:
        has_consumers = (members is not None and members > 0) or (members is None and group_advanced)
        return Verdict.STALLED if has_consumers else Verdict.STOPPED
    if never_decreasing and first_lag is not None and previous > first_lag:
        return Verdict.LAGGING
    return Verdict.OK


def _time(point: tuple[float, PartitionOffsets]) -> float:
    return point[0]


def evaluate_series(
    series_by_partition: Mapping[PartitionKey, PartitionSeries],
    now: float,
    *,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    members: int | None = None,
    offset_reset_policy: OffsetResetPolicy = "latest",
) -> dict[PartitionKey, Verdict]:
    since = now - window_seconds
    advanced = {key for key, series in series_by_partition.items() if _advanced(series, since)}
    return {
        key: evaluate_partition(
            series,
            now,
            window_seconds=window_seconds,
            members=members,
            group_advanced=len(advanced) > 1 or (bool(advanced) and key not in advanced),
            offset_reset_policy=offset_reset_policy,
        )
        for key, series in series_by_partition.items()
    }


def evaluate(
    history: LagHistory | Sequence[LagSample],
    *,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    offset_reset_policy: OffsetResetPolicy = "latest",
    now: float | None = None,
) -> dict[PartitionKey, Verdict]:
    """Verdicts for every partition of the newest sample (now defaults to its time)."""
    if not isinstance(history, LagHistory):
        ordered = LagHistory(window_seconds=float("inf"), max_samples=max(2, len(history)))
        for sample in sorted(history, key=lambda s: s.time):
            ordered.add(sample)
        history = ordered
    latest = history.latest
    if latest is None:
        return {}
    at = latest.time if now is None else now
    # Only the window (from its anchor on) matters: keeps a 1000-partition group cheap.
    window = history.window(since=at - window_seconds)
    if window is not None:
        return evaluate_window(window, at, window_seconds=window_seconds, members=latest.members,
                               offset_reset_policy=offset_reset_policy)
    series = history.series_by_partition(since=at - window_seconds)
    return evaluate_series(
        series,
        at,
        window_seconds=window_seconds,
        members=latest.members,
        offset_reset_policy=offset_reset_policy,
    )


def evaluate_window(
    window: HistoryWindow,
    now: float,
    *,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    members: int | None = None,
    offset_reset_policy: OffsetResetPolicy = "latest",
) -> dict[PartitionKey, Verdict]:
    """`evaluate_series` over `window` (samples from the anchor, `LagHistory.window(now - window_seconds)`),
    reading each partition's committed offsets and lags across the samples as one tuple (`OffsetColumns`),
    not through a (time, offsets) pair per sample: the same verdicts for a fraction of the CPU.

    Every partition has every sample of the window, so they share its anchor: its first sample when that is at
    or before `now - window_seconds` (then each later one is after it), else none. For a partition committed
    in every sample, the rules of `evaluate_partition` read: REWOUND when its committed offsets are not
    ascending; OK without an anchor, or with no lag in some sample (lags are never negative), or when the lag
    went down at some step while commits moved; STALLED or STOPPED when they never moved (ascending, so equal
    first and last); LAGGING when the lag ends above where it began (ascending, so never down). A partition
    uncommitted in some sample is evaluated by `evaluate_partition` itself.
    """
    since = now - window_seconds
    anchored = window.times[0] <= since
    committed = list(zip(*(c.committed for c in window.columns), strict=True))
    lags = list(zip(*(c.lags for c in window.columns), strict=True))
    uncommitted = set().union(*(c.uncommitted for c in window.columns))

    def series(index: int) -> PartitionSeries:
        return [(time, sample.partitions[index]) for time, sample in zip(window.times, window.samples, strict=True)]

    le, gt = operator.le, operator.gt
    # Committed offsets never going down (a partition uncommitted somewhere: False, and evaluated below on its own).
    ascending = [index not in uncommitted and all(map(le, values, values[1:]))
                 for index, values in enumerate(committed)]
    # Every step of the window is after `since`: only its first sample can be at or before it.
    advanced = [values[-1] > values[0] if up else index not in uncommitted and any(map(gt, values[1:], values))
                for index, (values, up) in enumerate(zip(committed, ascending, strict=True))]
    for index in uncommitted:
        advanced[index] = _advanced(series(index), since)
    moving = sum(advanced)
    verdicts: list[Verdict] = []
    verdict = verdicts.append
    for index, (values, lag) in enumerate(zip(committed, lags, strict=True)):
        if not ascending[index]:
            if index in uncommitted:
                verdict(evaluate_partition(series(index), now, window_seconds=window_seconds, members=members,
                                           group_advanced=moving - advanced[index] > 0,
                                           offset_reset_policy=offset_reset_policy))
            else:
                verdict(Verdict.REWOUND)
        elif not anchored or 0 in lag:
            verdict(Verdict.OK)
        elif values[-1] == values[0]:  # frozen
            group_advanced = moving - advanced[index] > 0
            has_consumers = (members is not None and members > 0) or (members is None and group_advanced)
            verdict(Verdict.STALLED if has_consumers else Verdict.STOPPED)
        elif not all(map(le, lag, lag[1:])):
            verdict(Verdict.OK)
        else:
            verdict(Verdict.LAGGING if lag[-1] > lag[0] else Verdict.OK)
    return dict(zip(window.keys, verdicts, strict=True))


def stuck_partitions(verdicts: Mapping[PartitionKey, Verdict]) -> dict[PartitionKey, Verdict]:
    return {key: verdict for key, verdict in verdicts.items() if verdict in STUCK}

"""Time lag: how many seconds behind a group is, estimated from offsets only (issue 8). Pure: no I/O.

Per partition we keep a small table of (log-end offset, time sampled) points from the operator's own
samples. The end offset at time t says every message below it was produced before t, so the table is
a map from offsets to produce times. To date the oldest unconsumed message (offset = committed) we
interpolate between the points around it, as kafka-lag-exporter does:

    t(o) = t_l + (o - o_l) · (t_r - t_l) / (o_r - o_l)

where l is the newest point with offset ≤ o and r the first point with offset > o; outside the
table we extrapolate along the oldest segment. Time lag = now - t(o), clamped at 0, and exactly 0 when
the committed offset has reached the end offset. No messages are read.

A run of samples where the end offset did not move is stored as two points (first and last time
seen): messages at that offset were produced after the run's *last* time, messages below it before
its *first* time. Without the second point a quiet period would be smeared into the interpolation.
When the table is full, the interior point whose removal changes the interpolation least is dropped
(not simply the oldest), so the table keeps a long horizon at coarse resolution where the offset-time
line is straight and fine resolution where the produce rate changed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lagpilot_operator.core.observations import LagSample, OffsetResetPolicy, PartitionKey, PartitionOffsets

DEFAULT_MAX_POINTS = 60  # kafka-lag-exporter's default lookup-table size


@dataclass(frozen=True)
class OffsetTimePoint:
    offset: int
    time: float


def _between(left_offset: int, left_time: float, right_offset: int, right_time: float, offset: float) -> float:
    if right_offset == left_offset:
        return left_time
    return left_time + (offset - left_offset) * (right_time - left_time) / (right_offset - left_offset)


class PartitionTimeTable:
    """(end offset, time) points of one partition; offsets and times never decrease along the table.

    Kept as parallel lists of numbers, not point objects: a 1,000-partition group holds up to 60,000
    points, each object of which the garbage collector would walk on every full collection."""

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS) -> None:
        if max_points < 3:
            raise ValueError("max_points must be at least 3")
        self.max_points = max_points
        self._offsets: list[int] = []
        self._times: list[float] = []
        # How much the interpolation would change without each point (ends: infinite, never dropped).
        self._errors: list[float] = []

    @property
    def points(self) -> tuple[OffsetTimePoint, ...]:
        return tuple(map(OffsetTimePoint, self._offsets, self._times))

    def add(self, end_offset: int, time: float) -> None:
        offsets, times, errors = self._offsets, self._times, self._errors
        if times and time <= times[-1]:
            return  # not newer: ignore
        if offsets and end_offset < offsets[-1]:
            offsets.clear()  # end offset went backwards: topic recreated or truncated, old points lie
            times.clear()
            errors.clear()
        count = len(offsets)
        if count >= 2 and offsets[-1] == end_offset == offsets[-2]:
            times[-1] = time  # extend the flat run's last-seen time
        else:
            offsets.append(end_offset)
            times.append(time)
            errors.append(math.inf)
            count += 1
        # A point's error: how far its time is from the interpolation between its neighbours. Refreshed where
        # a neighbour changed, inline (this runs for every partition on every poll).
        if count >= 3:
            errors[-2] = abs(times[-2] - _between(offsets[-3], times[-3], offsets[-1], times[-1], offsets[-2]))
        if count > self.max_points:
            # The first minimum: on ties the oldest point goes.
            index = errors.index(min(errors[1:-1]), 1)
            del offsets[index]
            del times[index]
            del errors[index]
            # The two points around the gap have new neighbours (ends excepted).
            for around in (index - 1, index):
                if 0 < around < count - 2:
                    errors[around] = abs(times[around] - _between(offsets[around - 1], times[around - 1],
                                                                  offsets[around + 1], times[around + 1],
                                                                  offsets[around]))

    def estimate_time(self, offset: int) -> float | None:
        """When the message at `offset` was produced (estimate); None for an empty table.

        With a single distinct offset in the table nothing can be extrapolated, and the message is
        known only to be older than the first point: that time is returned (a lower bound on the lag).
        """
        offsets, times = self._offsets, self._times
        if not offsets:
            return None
        if offset >= offsets[-1]:
            return times[-1]
        right = bisect.bisect_right(offsets, offset)
        if right == 0:
            # Older than the table: extrapolate along the oldest segment with distinct offsets.
            first = offsets[0]
            for later in range(1, len(offsets)):
                if offsets[later] > first:
                    return _between(first, times[0], offsets[later], times[later], offset)
            return times[0]
        return _between(offsets[right - 1], times[right - 1], offsets[right], times[right], offset)


@dataclass(frozen=True)
class TimeLagSummary:
    max_seconds: float
    mean_seconds: float
    partitions: int


class TimeLagTracker:
    """One `PartitionTimeTable` per partition of a group, fed with every `LagSample`."""

    def __init__(self, max_points: int = DEFAULT_MAX_POINTS) -> None:
        self.max_points = max_points
        self._tables: dict[PartitionKey, PartitionTimeTable] = {}
        # The partitions of the last sample added, in its order, and their tables in that order: a sample
        # over the same partitions (nearly every one) reaches its tables by position, not by key.
        self._order: tuple[PartitionKey, ...] = ()
        self._aligned: list[PartitionTimeTable] = []
        self._last: LagSample | None = None

    def add(self, sample: LagSample) -> None:
        keys = sample.keys
        if keys is not self._order and keys != self._order:
            tables = self._tables
            aligned: list[PartitionTimeTable] = []
            for key in keys:
                table = tables.get(key)
                if table is None:
                    table = tables[key] = PartitionTimeTable(self.max_points)
                aligned.append(table)
            for gone in set(tables) - set(keys):
                del tables[gone]  # partition (or topic) no longer consumed
            self._order, self._aligned = keys, aligned
        self._last = sample
        time = sample.time
        for table, offsets in zip(self._aligned, sample.partitions, strict=True):
            table.add(offsets.end_offset, time)

    def table(self, key: PartitionKey) -> PartitionTimeTable | None:
        return self._tables.get(key)

    def time_lag(
        self, offsets: PartitionOffsets, now: float, offset_reset_policy: OffsetResetPolicy = "latest"
    ) -> float:
        """Seconds between now and the produce time of the partition's oldest unconsumed message."""
        return self._time_lag(offsets, self._tables.get(offsets.key), now, offset_reset_policy)

    @staticmethod
    def _time_lag(offsets: PartitionOffsets, table: PartitionTimeTable | None, now: float,
                  offset_reset_policy: OffsetResetPolicy) -> float:
        if offsets.committed is None:
            if offset_reset_policy == "latest":
                return 0.0  # a consumer would start at the end: nothing old to consume
            position = offsets.start_offset
        else:
            position = max(offsets.committed, offsets.start_offset)
        if position >= offsets.end_offset:
            return 0.0
        estimate = table.estimate_time(position) if table is not None else None
        if estimate is None:
            return 0.0
        return max(0.0, now - estimate)

    def time_lags(
        self, sample: LagSample, now: float | None = None, offset_reset_policy: OffsetResetPolicy = "latest"
    ) -> dict[PartitionKey, float]:
        """Time lag of every partition of `sample` (now defaults to the sample's time)."""
        at = sample.time if now is None else now
        if sample is self._last:  # the sample just added: its tables in its order
            lag = self._time_lag
            return dict(zip(self._order, [lag(p, table, at, offset_reset_policy)
                                          for p, table in zip(sample.partitions, self._aligned, strict=True)],
                            strict=True))
        return {p.key: self.time_lag(p, at, offset_reset_policy) for p in sample.partitions}


def summarize(time_lags: Mapping[PartitionKey, float] | Iterable[float]) -> TimeLagSummary:
    """Group max and mean (mean over all partitions, caught-up ones count as 0)."""
    values = list(time_lags.values()) if isinstance(time_lags, Mapping) else list(time_lags)
    if not values:
        return TimeLagSummary(0.0, 0.0, 0)
    return TimeLagSummary(max(values), sum(values) / len(values), len(values))

"""Offsets sampled from Kafka, per-partition lag, and a rolling history that yields rates. Pure: no I/O.

The operator samples, for every partition of the group's topics, the log-end offset (high watermark),
the log-start offset and the group's committed offset. Everything Lagpilot knows about a group's
progress is derived from those samples:

* offset lag of a partition (`partition_lag`), with KEDA's `offsetResetPolicy` semantics for a
  partition the group never committed;
* the produce rate (from end-offset deltas) and the consume rate (from committed-offset deltas),
  over a window of recent samples (`LagHistory`).
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

PartitionKey = tuple[str, int]
OffsetResetPolicy = Literal["latest", "earliest"]

# End offsets are exact at the sample instant, so a short window is accurate and reacts fast.
DEFAULT_PRODUCE_RATE_WINDOW_SECONDS = 15.0
# Committed offsets move in steps of the consumers' commit interval (librdkafka auto-commit: 5 s by
# default); a window of several commit intervals keeps that granularity below ~20 %.
DEFAULT_CONSUME_RATE_WINDOW_SECONDS = 30.0


@dataclass(frozen=True)
class PartitionOffsets:
    topic: str
    partition: int
    end_offset: int              # log-end offset (high watermark)
    # None: group never committed this partition. For a share group (KIP-932), the offset below which the
    # group has nothing left to deliver as far as its lag goes: end offset minus the broker's share-partition
    # lag (share_lag.share_sample), so that end - committed is that lag and its progress the consume rate.
    committed: int | None
    start_offset: int = 0        # log-start offset (for offsetResetPolicy=earliest)

    @property
    def key(self) -> PartitionKey:
        return (self.topic, self.partition)


# "share": a share group (KIP-932), whose consumers share partitions instead of owning them.
GroupProtocol = Literal["classic", "consumer", "share"]


@dataclass(frozen=True)
class LagSample:
    time: float                  # epoch seconds of the sample
    partitions: tuple[PartitionOffsets, ...]
    members: int | None = None   # consumer-group members, if known
    # The group's rebalance protocol as the broker reports it: "consumer" is KIP-848 (assignment on the
    # broker, incremental rebalances); None when unknown (no such group yet, or a lag-only source).
    protocol: GroupProtocol | None = None

    def by_key(self) -> dict[PartitionKey, PartitionOffsets]:
        return {(p.topic, p.partition): p for p in self.partitions}

    @functools.cached_property
    def keys(self) -> tuple[PartitionKey, ...]:
        """(topic, partition) of each partition, in order: made once per sample, for the history and the time-lag
        tracker, which line samples up by it."""
        return tuple([(p.topic, p.partition) for p in self.partitions])


def partition_name(key: PartitionKey) -> str:
    """`orders-3`: Kafka's own way of naming a topic partition, for messages people read."""
    return f"{key[0]}-{key[1]}"


def partition_lag(offsets: PartitionOffsets, offset_reset_policy: OffsetResetPolicy = "latest") -> int:
    """Messages the group still has to consume on one partition, never negative.

    * committed offset known: `end - max(committed, start)`. Messages below the log-start offset
      were deleted by retention and can never be consumed, so they are not lag (KEDA counts them).
    * no committed offset, `latest`: 1, exactly like KEDA's Kafka scaler: a consumer would start at
      the end, so there is nothing to drain, but a group scaled to zero must still be woken so that
      a consumer can join and commit (KEDA's `scaleToZeroOnInvalidOffset=false` default).
    * no committed offset, `earliest`: `end - start`, the whole retained partition. KEDA returns
      the log-end offset here, which counts messages retention already deleted; we use log-start.
    """
    if offsets.committed is None:
        if offset_reset_policy == "earliest":
            return max(0, offsets.end_offset - offsets.start_offset)
        # KEDA returns 1 even for an empty partition; one that retains nothing has nothing to wake for.
        return 1 if offsets.end_offset > offsets.start_offset else 0
    return max(0, offsets.end_offset - max(offsets.committed, offsets.start_offset))


def consumable_lag(offsets: PartitionOffsets, offset_reset_policy: OffsetResetPolicy = "latest") -> int:
    """Like `partition_lag`, but a never-committed partition under `latest` has nothing to consume (0).

    Used where the question is "is this partition making progress on real messages" (verdicts, time
    lag) rather than "should a consumer be running" (scaling).
    """
    if offsets.committed is None and offset_reset_policy == "latest":
        return 0
    return partition_lag(offsets, offset_reset_policy)


def total_lag(sample: LagSample, offset_reset_policy: OffsetResetPolicy = "latest") -> int:
    return sum(partition_lag(p, offset_reset_policy) for p in sample.partitions)


@dataclass(frozen=True, slots=True)
class OffsetColumns:
    """One sample's offsets column by column, in the order of its partitions: made once per sample when it
    enters a `LagHistory`, read by every window over it (rates, verdicts) without touching a
    `PartitionOffsets` per partition and sample."""

    ends: tuple[int, ...]
    committed: tuple[int | None, ...]
    lags: tuple[int | None, ...]
    """`partition_lag` where the committed offset is known (the same under either reset policy), else None."""
    uncommitted: frozenset[int]
    """Positions of the partitions without a committed offset."""
    committed_or_zero: tuple[int, ...]
    """`committed` with 0 for None (the same tuple when every partition committed): comparable column-wide."""

    @classmethod
    def of(cls, partitions: Sequence[PartitionOffsets]) -> OffsetColumns:
        ends = tuple([p.end_offset for p in partitions])
        committed = tuple([p.committed for p in partitions])
        starts = [p.start_offset for p in partitions]
        uncommitted = frozenset(i for i, c in enumerate(committed) if c is None) if None in committed else frozenset()
        known = tuple([0 if c is None else c for c in committed]) if uncommitted else cast(tuple[int, ...], committed)
        # max(0, e - max(c, s)), spelled out: four times faster than the two calls, for 1,000 partitions a poll.
        lags: tuple[int | None, ...] = tuple([lag if (lag := e - (c if c > s else s)) > 0 else 0
                                              for e, c, s in zip(ends, known, starts, strict=True)])
        if uncommitted:
            lags = tuple([None if i in uncommitted else lag for i, lag in enumerate(lags)])
        return cls(ends=ends, committed=committed, lags=lags, uncommitted=uncommitted, committed_or_zero=known)


@dataclass(frozen=True)
class HistoryWindow:
    """The samples of a `LagHistory` from the newest one at or before a time on (from the oldest when none
    is), when they all hold the same partitions in the same order (`keys`): positions line them up."""

    keys: tuple[PartitionKey, ...]
    times: tuple[float, ...]
    columns: tuple[OffsetColumns, ...]
    samples: tuple[LagSample, ...]


def _positive_delta(before: int | None, after: int | None) -> int | None:
    """Offset progress between two samples; None when it cannot be known or went backwards."""
    if before is None or after is None or after < before:
        return None
    return after - before


class LagHistory:
    """Rolling window of samples for one KafkaConsumerGroup, and the rates derived from it.

    * Samples older than `window_seconds` (relative to the newest) are dropped, and at most
      `max_samples` are kept. A sample not newer than the newest one is ignored (clock jitter,
      a retried read), so time always moves forward. With `needed_seconds`, the samples no window of
      up to that length starts from are dropped too (what is read stays the same).
    * Rates are computed per partition over the sample pairs where that partition is present in both
      samples with a usable value, then summed over the partitions of the newest sample. So a
      partition that appears counts from its first pair on, one that disappears stops counting,
      `committed=None` contributes nothing until it has two commits, and an offset that went backwards
      (topic recreated, group reset) skips that one pair instead of producing a negative rate.
    """

    def __init__(self, window_seconds: float = 600.0, max_samples: int = 240,
                 needed_seconds: float | None = None) -> None:
        if window_seconds <= 0 or max_samples < 2:
            raise ValueError("window_seconds must be > 0 and max_samples >= 2")
        if needed_seconds is not None and needed_seconds <= 0:
            raise ValueError("needed_seconds must be > 0")
        self.window_seconds = window_seconds
        self.max_samples = max_samples
        self.needed_seconds = needed_seconds
        """The longest window anyone reads (rates, `series_by_partition`): the samples before that window's
        start are dropped as well (None: kept for `window_seconds`)."""
        self._samples: deque[LagSample] = deque()
        # Each sample's partition keys, in its order: lets the common case (same partitions in the
        # same order every poll) line samples up by position instead of by dictionary lookups.
        # The same partitions in the same order as the sample before share its keys tuple (`is` tells).
        self._keys: deque[tuple[PartitionKey, ...]] = deque()
        self._columns: deque[OffsetColumns] = deque()

    def add(self, sample: LagSample) -> bool:
        """Append a sample; returns False (and changes nothing) if it is not newer than the last one."""
        if self._samples and sample.time <= self._samples[-1].time:
            return False
        keys = sample.keys
        if self._keys and keys == self._keys[-1]:
            keys = self._keys[-1]
        self._samples.append(sample)
        self._keys.append(keys)
        self._columns.append(OffsetColumns.of(sample.partitions))
        horizon = sample.time - self.window_seconds
        while len(self._samples) > self.max_samples or (len(self._samples) > 2 and self._samples[0].time < horizon):
            self._drop_oldest()
        if self.needed_seconds is not None:
            # A window of up to `needed_seconds` starts at the newest sample at or before its start
            # (`_first_index`), so the samples before that one are read by none: a history that reads
            # 60 s of 5 s polls keeps 13 samples of 1,000 partitions, not 121.
            since = sample.time - self.needed_seconds
            while len(self._samples) > 1 and self._samples[1].time <= since:
                self._drop_oldest()
        return True

    def _drop_oldest(self) -> None:
        self._samples.popleft()
        self._keys.popleft()
        self._columns.popleft()

    def __len__(self) -> int:
        return len(self._samples)

    def __iter__(self) -> Iterator[LagSample]:
        return iter(self._samples)

    @property
    def samples(self) -> tuple[LagSample, ...]:
        return tuple(self._samples)

    @property
    def latest(self) -> LagSample | None:
        return self._samples[-1] if self._samples else None

    def _first_index(self, since: float) -> int:
        """Index of the newest sample at or before `since` (0 if none is)."""
        first = 0
        for index, sample in enumerate(self._samples):
            if sample.time <= since:
                first = index
            else:
                break
        return first

    def latest_lags(self, offset_reset_policy: OffsetResetPolicy = "latest") -> dict[PartitionKey, int]:
        """`lags_by_partition` of the newest sample, read from its columns (made once when it was added)."""
        if not self._samples:
            return {}
        columns, keys = self._columns[-1], self._keys[-1]
        if not columns.uncommitted:
            return dict(zip(keys, cast(tuple[int, ...], columns.lags), strict=True))
        partitions = self._samples[-1].partitions
        return dict(zip(keys, [partition_lag(partitions[i], offset_reset_policy) if lag is None else lag
                               for i, lag in enumerate(columns.lags)], strict=True))

    def window(self, since: float) -> HistoryWindow | None:
        """The samples from the newest one at or before `since` on (all when none is), or None when they do
        not all hold the newest sample's partitions in its order (then `series_by_partition` lines them up)."""
        if not self._samples:
            return None
        first = self._first_index(since)
        latest_keys = self._keys[-1]
        if any(self._keys[index] is not latest_keys for index in range(first, len(self._samples) - 1)):
            return None
        samples = tuple(itertools.islice(self._samples, first, None))
        return HistoryWindow(keys=latest_keys, times=tuple(s.time for s in samples),
                             columns=tuple(itertools.islice(self._columns, first, None)), samples=samples)

    def _rows(self, first: int) -> list[tuple[float, Sequence[PartitionOffsets | None]]]:
        """From sample `first` on: (time, offsets of the newest sample's partitions, None where absent)."""
        latest_keys = self._keys[-1]
        rows: list[tuple[float, Sequence[PartitionOffsets | None]]] = []
        for index in range(first, len(self._samples)):
            sample, keys = self._samples[index], self._keys[index]
            if keys == latest_keys:
                rows.append((sample.time, sample.partitions))
            else:
                by_key = dict(zip(keys, sample.partitions, strict=True))
                rows.append((sample.time, [by_key.get(key) for key in latest_keys]))
        return rows

    def _rate(self, window_seconds: float, produced: bool) -> float | None:
        """Starts at the newest sample at or before `newest - window`, so the span is never shorter than
        asked for because of polling jitter (it may be up to one poll interval longer)."""
        if len(self._samples) < 2:
            return None
        window = self.window(self._samples[-1].time - window_seconds)
        if window is not None:
            return _window_rate(window, produced)
        return self._rate_by_key(window_seconds, produced)

    def _rate_by_key(self, window_seconds: float, produced: bool) -> float | None:
        """`_rate` for any history, partition by partition (samples over other partitions line up by key)."""
        if len(self._samples) < 2:
            return None
        rows = self._rows(self._first_index(self._samples[-1].time - window_seconds))
        count = len(rows[-1][1])
        progress = [0] * count
        spans = [0.0] * count
        for (before_time, before_row), (after_time, after_row) in itertools.pairwise(rows):
            dt = after_time - before_time
            for index, (before, after) in enumerate(zip(before_row, after_row, strict=True)):
                if before is None or after is None:
                    continue
                if produced:
                    delta = _positive_delta(before.end_offset, after.end_offset)
                else:
                    delta = _positive_delta(before.committed, after.committed)
                if delta is None:
                    continue
                progress[index] += delta
                spans[index] += dt
        rates = [moved / span for moved, span in zip(progress, spans, strict=True) if span > 0]
        if not rates:
            return None
        return sum(rates)

    def produce_rate(self, window_seconds: float = DEFAULT_PRODUCE_RATE_WINDOW_SECONDS) -> float | None:
        """Messages per second appended to the group's partitions (end-offset deltas); None before 2 samples."""
        return self._rate(window_seconds, produced=True)

    def consume_rate(self, window_seconds: float = DEFAULT_CONSUME_RATE_WINDOW_SECONDS) -> float | None:
        """Messages per second committed by the group (committed-offset deltas); None when unknown."""
        return self._rate(window_seconds, produced=False)

    def series_by_partition(
        self, since: float | None = None
    ) -> dict[PartitionKey, list[tuple[float, PartitionOffsets]]]:
        """For every partition of the newest sample: (time, offsets) of each sample that has it, oldest first.

        With `since`, samples start at the newest one at or before that time (all of them if none is).
        """
        if not self._samples:
            return {}
        rows = self._rows(0 if since is None else self._first_index(since))
        latest_keys = self._keys[-1]
        columns: list[list[tuple[float, PartitionOffsets]]] = [[] for _ in latest_keys]
        for time, row in rows:
            for column, offsets in zip(columns, row, strict=True):
                if offsets is not None:
                    column.append((time, offsets))
        return dict(zip(latest_keys, columns, strict=True))


def _window_rate(window: HistoryWindow, produced: bool) -> float | None:
    """`LagHistory._rate` over a window whose samples line up by position, with the same arithmetic: per
    partition, the offset progress over the pairs of samples where it is known and did not go backwards,
    divided by the time those pairs span; summed over the partitions in their order.

    A partition known and never going backwards over the whole window (nearly all, nearly always) progressed
    by its last value minus its first over the whole span: found column-wide (`map` over whole columns); only
    the others go pair by pair."""
    if len(window.columns) < 2:
        return None
    columns = [c.ends if produced else c.committed_or_zero for c in window.columns]
    span = 0.0
    dts: list[float] = []
    for before, after in itertools.pairwise(window.times):
        dts.append(after - before)
        span += after - before
    irregular: set[int] = set()
    if not produced:
        for c in window.columns:
            irregular.update(c.uncommitted)
    for before_column, after_column in itertools.pairwise(columns):
        if not all(map(operator.le, before_column, after_column)):
            irregular.update(itertools.compress(itertools.count(), map(operator.gt, before_column, after_column)))
    first, last = columns[0], columns[-1]
    # Per partition in order: its rate, or None where it has none (no pair counted).
    rates: list[float | None] = [(b - a) / span for a, b in zip(first, last, strict=True)] if span > 0 \
        else [None] * len(first)
    if irregular:
        exact: list[tuple[int | None, ...]] = [c.ends if produced else c.committed for c in window.columns]
        for index in irregular:
            moved, spent = 0, 0.0
            for dt, (earlier, later) in zip(dts, itertools.pairwise(exact), strict=True):
                delta = _positive_delta(earlier[index], later[index])
                if delta is not None:
                    moved += delta
                    spent += dt
            rates[index] = moved / spent if spent > 0 else None
    counted = [rate for rate in rates if rate is not None] if irregular or span <= 0 else cast(list[float], rates)
    if not counted:
        return None
    return sum(counted)


def lags_by_partition(
    partitions: Iterable[PartitionOffsets], offset_reset_policy: OffsetResetPolicy = "latest"
) -> dict[PartitionKey, int]:
    return {p.key: partition_lag(p, offset_reset_policy) for p in partitions}

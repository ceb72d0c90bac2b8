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

import itertools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

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
        self._keys: deque[tuple[PartitionKey, ...]] = deque()

    def add(self, sample: LagSample) -> bool:
        """Append a sample; returns False (and changes nothing) if it is not newer than the last one."""
        if self._samples and sample.time <= self._samples[-1].time:
            return False
        self._samples.append(sample)
        self._keys.append(tuple((p.topic, p.partition) for p in sample.partitions))
        horizon = sample.time - self.window_seconds
        while len(self._samples) > self.max_samples or (len(self._samples) > 2 and self._samples[0].time < horizon):
            self._samples.popleft()
            self._keys.popleft()
        if self.needed_seconds is not None:
            # A window of up to `needed_seconds` starts at the newest sample at or before its start
            # (`_first_index`), so the samples before that one are read by none: a history that reads
            # 60 s of 5 s polls keeps 13 samples of 1,000 partitions, not 121.
            since = sample.time - self.needed_seconds
            while len(self._samples) > 1 and self._samples[1].time <= since:
                self._samples.popleft()
                self._keys.popleft()
        return True

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


def lags_by_partition(
    partitions: Iterable[PartitionOffsets], offset_reset_policy: OffsetResetPolicy = "latest"
) -> dict[PartitionKey, int]:
    return {p.key: partition_lag(p, offset_reset_policy) for p in partitions}

"""Falling behind: what a group's slots drain while its lag grows, read from the lag itself. Pure.

The per-slot estimate (`decision_steps._per_slot_rate`) is measured only once the group was saturated for
a whole consume-rate window, and bounded below by consume rate ÷ busy slots in between. Both can be
optimistic: a CPU-starved pod's slots are slower than they were measured at, and a lower bound taken at a
smaller pool is no bound at a bigger one when the pod's CPU, not its slots, limits it. The lag says so
before either estimate does: it grows.

A *growth span* starts at the first poll at which the lag grew at a settled shape (same consumers, all
joined, same pool) and continues while the lag grows at every poll at that shape; anything else ends it.
Over a span, the committed offsets say what the slots drained (`rate`), and the lag's growth what arrived
on top. A span is *read* once it covers a poll and some commit moved the offsets (a span that drained
nothing is a stall, left to the verdicts and the saturation rule: no rate is divided by it), and it says
*capacity-limited* when the lag grew by more than the tolerance band of what was drained: production,
not the noise of commit steps, outran these slots.

Two rules use it (decision_steps):

* **Falling behind**: a capacity-limited span of at least `FALLING_BEHIND_POLLS` polls. The drained rate
  per busy slot then caps the per-slot estimate, the arrival rate floors the produce rate, and capacity
  grows (the step limits, the stabilization windows and the bounds still apply).
* **CPU-bound pool**: per-pod readings are remembered with their pool; a reading at a bigger pool whose
  pods drained less than `POOL_GAIN_SHARE` of the gain its added slots should give (in proportion) sets a
  *pool ceiling* at the smaller pool: more capacity goes to pods of that pool (`shape_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FALLING_BEHIND_POLLS = 3  # polls of growth at one shape before the estimate is overruled (hysteresis)
POOL_GAIN_SHARE = 0.5     # a bigger pool that adds less than half its proportional throughput is CPU-bound


@dataclass(frozen=True)
class Span:
    """A run of polls at one shape (consumers, pool) at each of which the lag grew."""

    start: float     # time of its first poll
    drained: int     # committed offsets summed at its start
    lag: int         # effective lag at its start
    polls: int       # polls since its start
    consumers: int
    pool: int

    def to_list(self) -> list[float | int]:
        return [self.start, self.drained, self.lag, self.polls, self.consumers, self.pool]

    @classmethod
    def from_list(cls, data: object) -> Span | None:
        if data is None:
            return None
        if not isinstance(data, list | tuple) or len(data) != 6:
            raise ValueError(f"a growth span is 6 numbers, got {data!r}")
        start, drained, lag, polls, consumers, pool = data
        return cls(float(start), int(drained), int(lag), int(polls), int(consumers), int(pool))


@dataclass(frozen=True)
class Reading:
    """What a span says after at least one poll: msg/s drained and msg/s the lag grew by."""

    seconds: float
    rate: float      # drained, msg/s (> 0)
    growth: float    # lag growth, msg/s (> 0: the lag grew at every poll of the span)
    polls: int

    @property
    def arrival(self) -> float:
        return self.rate + self.growth

    def capacity_limited(self, tolerance_percent: int) -> bool:
        return self.growth > tolerance_percent / 100 * self.rate


def next_span(span: Span | None, *, now: float, drained: int, lag: int, grew: bool, consumers: int,
              pool: int) -> Span | None:
    """The span after this poll. `grew`: the lag grew since the last poll at a settled shape."""
    if not grew or consumers <= 0 or pool <= 0:
        return None
    if span is None or (span.consumers, span.pool) != (consumers, pool) or drained < span.drained:
        return Span(now, drained, lag, 0, consumers, pool)
    return Span(span.start, span.drained, span.lag, span.polls + 1, consumers, pool)


def read(span: Span | None, *, now: float, drained: int, lag: int) -> Reading | None:
    """The span's reading, or None before a whole poll or while nothing was drained (a stall)."""
    if span is None or span.polls < 1:
        return None
    seconds = now - span.start
    moved = drained - span.drained
    if seconds <= 0 or moved <= 0:
        return None
    return Reading(seconds, moved / seconds, max(0, lag - span.lag) / seconds, span.polls)


def pool_ceiling(previous: tuple[int, float] | None, pool: int, per_pod: float,
                 ceiling: int | None) -> tuple[int | None, bool]:
    """The pool ceiling after a per-pod reading at `pool`, and whether this reading found it.

    `previous` is the last reading (pool, msg/s per pod). A bigger pool that added less than
    POOL_GAIN_SHARE of its proportional gain marks the smaller pool as the ceiling; a bigger pool that did
    add it lifts a ceiling below it (the workload changed).
    """
    if previous is None or not previous[0] < pool or previous[1] <= 0 or not math.isfinite(per_pod):
        return ceiling, False
    smaller, rate = previous
    expected_gain = rate * (pool / smaller - 1)
    if per_pod - rate < POOL_GAIN_SHARE * expected_gain:
        return (smaller if ceiling is None else min(ceiling, smaller)), True
    if ceiling is not None and pool > ceiling:
        return None, False
    return ceiling, False

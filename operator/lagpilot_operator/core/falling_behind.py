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
*capacity-limited* when the lag grew by more than the tolerance band of what was drained and by more than
the commit noise (one commit interval's arrivals, as the late run's bar): production, not the noise of
commit steps, outran these slots. A group that keeps up at 150 msg/s with 1 s commits reads 100-230 msgs of
lag as its commits come on time or late on a busy node; three polls climbing through that range are no
deficit.

Two rules use it (decision_steps):

* **Falling behind**: a capacity-limited span of at least `FALLING_BEHIND_POLLS` polls and
  `FALLING_BEHIND_SECONDS`. The drained rate
  per busy slot then caps the per-slot estimate, the arrival rate floors the produce rate, and capacity
  grows (the step limits, the stabilization windows and the bounds still apply).
* **CPU-bound pool**: per-pod readings are remembered with their pool; a reading at a bigger pool whose
  pods drained less than `POOL_GAIN_SHARE` of the gain its added slots should give (in proportion) sets a
  *pool ceiling* at the smaller pool: more capacity goes to pods of that pool (`shape_for`). Pods that
  drained clearly less at the bigger pool (`POOL_DROP_SHARE`) were slowed by something else: no ceiling.

With a time-lag target, a third reading looks at the time lag instead of the lag: a *late run* (`LateRun`)
is a run of polls at one settled shape at each of which the time lag was above its target and had grown.
The lag in messages jumps both ways with commits and a starved partition (the seed benchmark: 501-1,210
msgs while the time lag went 14 s → 49 s at 5 s a poll), which ends a growth span at every dip; the age of
the oldest waiting message does not. A run is *late* (`late`) after `FALLING_BEHIND_POLLS` polls once the
time lag grew by more than commit timing alone moves it, with the lag above the run's start: the group
then gets capacity as a saturated, growing one does, and a growth span's reading within the tolerance band
counts as capacity-limited.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields, replace
from typing import ClassVar, Self

FALLING_BEHIND_POLLS = 3  # polls of growth at one shape before the estimate is overruled (hysteresis)...
# ...lasting this long too: at 2 s polls three polls are 6 s, and a busy node stalls a group that keeps up for
# that long (the steady scenario in CI: 8 s of growth, then the lag went back down). At the default 5 s
# polls three polls are 15 s already.
FALLING_BEHIND_SECONDS = 10.0
POOL_GAIN_SHARE = 0.5     # a bigger pool that adds less than half its proportional throughput is CPU-bound
# A bigger pool whose pods drained less than this share of what the smaller pool's did: not a CPU limit (at
# worst a bigger pool drains the same) but pods slowed by something else, a busy node or another workload.
POOL_DROP_SHARE = 0.9


class _Numbers:
    """A span or run kept in the policy memory (the status) as a compact list of its fields' numbers."""

    WHAT: ClassVar[str]  # what a malformed list is said to be

    def to_list(self) -> list[float | int]:
        return list(astuple(self))  # type: ignore[call-overload]

    @classmethod
    def from_list(cls, data: object) -> Self | None:
        """The record `to_list` wrote (None stays None), each number as its field's type."""
        if data is None:
            return None
        kinds = [float if field.type == "float" else int for field in fields(cls)]  # type: ignore[arg-type]
        if not isinstance(data, list | tuple) or len(data) != len(kinds):
            raise ValueError(f"{cls.WHAT} is {len(kinds)} numbers, got {data!r}")
        return cls(*(kind(value) for kind, value in zip(kinds, data, strict=True)))


@dataclass(frozen=True)
class Span(_Numbers):
    """A run of polls at one shape (consumers, pool) at each of which the lag grew (a growth span), or at each
    of which work waited (decision_steps' busy span, read with `read` too)."""

    WHAT: ClassVar[str] = "a growth span"

    start: float     # time of its first poll
    drained: int     # committed offsets summed at its start
    lag: int         # effective lag at its start
    polls: int       # polls since its start
    consumers: int
    pool: int


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

    def capacity_limited(self, tolerance_percent: int, noise_seconds: float = 0.0) -> bool:
        """The lag outgrew the tolerance band of what was drained, and by more than `noise_seconds` of
        arrivals in all: commits that come late (a busy node, a worker's commit interval) move the committed
        lag by up to that many messages at one poll, with nothing wrong with the slots."""
        return (self.growth > tolerance_percent / 100 * self.rate
                and self.growth * self.seconds > noise_seconds * self.arrival)


def next_span(span: Span | None, *, now: float, drained: int, lag: int, grew: bool, consumers: int,
              pool: int) -> Span | None:
    """The span after this poll. `grew`: the lag grew since the last poll at a settled shape (for a busy span:
    work waited at a settled shape)."""
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
    add it lifts a ceiling below it (the workload changed). A bigger pool whose pods drained less than
    POOL_DROP_SHARE of the smaller pool's rate says nothing about a ceiling: more slots do not slow a
    CPU-bound pod down, something else did.
    """
    if previous is None or not previous[0] < pool or previous[1] <= 0 or not math.isfinite(per_pod):
        return ceiling, False
    smaller, rate = previous
    if per_pod < POOL_DROP_SHARE * rate:
        return ceiling, False
    expected_gain = rate * (pool / smaller - 1)
    if per_pod - rate < POOL_GAIN_SHARE * expected_gain:
        return (smaller if ceiling is None else min(ceiling, smaller)), True
    if ceiling is not None and pool > ceiling:
        return None, False
    return ceiling, False


# --- late: a time-lag target missed by more at every poll -------------------------------------------------


@dataclass(frozen=True)
class LateRun(_Numbers):
    """A run of polls at one shape at each of which the time lag was above its target and had grown.

    The lag in messages need not grow at every poll (the commit sawtooth and a starved partition make it
    jump both ways, as in the seed benchmark); the time lag of the oldest waiting message does, when the
    group falls behind where it matters: some message waits longer at every poll.
    """

    WHAT: ClassVar[str] = "a late run"

    start: float       # time of its first poll
    time_lag: float    # time lag at its start, seconds
    lag: int           # effective lag at its start
    last_time_lag: float  # time lag at its last poll
    polls: int         # polls since its start
    consumers: int
    pool: int


@dataclass(frozen=True)
class Late:
    """What a late run says once it is long and steep enough: the time lag and the lag over it."""

    seconds: float
    polls: int
    time_lag_from: float
    time_lag_to: float
    lag_from: int
    lag_to: int


def next_late_run(run: LateRun | None, *, now: float, time_lag: float, lag: int, above: bool, settled: bool,
                  consumers: int, pool: int) -> LateRun | None:
    """The run after this poll. `above`: the time lag is above its (held) target; `settled`: every consumer
    joined and none joined or left since the last poll (a rebalance's pause ages every message)."""
    if not above or not settled or consumers <= 0 or pool <= 0:
        return None
    fresh = LateRun(now, time_lag, lag, time_lag, 0, consumers, pool)
    if run is None or (run.consumers, run.pool) != (consumers, pool) or time_lag <= run.last_time_lag:
        return fresh  # a new shape, or the time lag did not grow: the run starts again here
    return replace(run, last_time_lag=time_lag, polls=run.polls + 1)


def late(run: LateRun | None, *, now: float, lag: int, noise_seconds: float, backlog: int) -> Late | None:
    """The run's reading when it says the group falls behind its time-lag target: at least
    FALLING_BEHIND_POLLS polls of growth, the lag larger than at the run's start and than `backlog` (work
    waiting, not just in the slots: the growth span's bar), and the time lag grown by more than
    `noise_seconds` (what commit timing alone moves it by: a deficit, not the commit sawtooth)."""
    if run is None or run.polls < FALLING_BEHIND_POLLS or lag <= max(run.lag, backlog):
        return None
    seconds = now - run.start
    if seconds <= 0 or run.last_time_lag - run.time_lag <= noise_seconds:
        return None
    return Late(seconds, run.polls, run.time_lag, run.last_time_lag, run.lag, lag)

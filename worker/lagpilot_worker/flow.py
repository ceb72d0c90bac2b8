"""How much the consumer-group worker fetches, and which partitions it pauses (the window).

A record stays in the window from its fetch until the broker acknowledged a commit covering it.
FlowControl turns the trackers' counts into the room left for new records and the set of paused
partitions (ordering.Backpressure decides per partition); HeldRecords keeps the records consumed
while the window was full (to serve commit answers) aside until there is room; `plan_fetch`
decides, from those numbers alone, what the poll loop asks of the consumer.
"""

from __future__ import annotations

from typing import NamedTuple

from confluent_kafka import Message, TopicPartition

from .config import WorkerConfig
from .ordering import Backpressure, WindowLimits
from .partition import PartitionState, PartitionStates


class FetchPlan(NamedTuple):
    """What one iteration of the poll loop takes: held records first, then a fetch of up to `fetch`
    records (0: no fetch) whose records are admitted, or held aside when `hold` (no room).
    (A tuple: made every iteration, it must cost next to nothing.)"""

    admit_held: int
    fetch: int
    hold: bool
    for_answer: bool          # the window is full: the fetch only serves a commit answer
    wait_for_slots: bool      # no fetch: wait (briefly) for the slots to finish something


def plan_fetch(*, room: int, held: int, hold_limit: int, batch: int, all_paused: bool, awaiting_answer: bool
               ) -> FetchPlan:
    """The fetch of one iteration (pure).

    Held records go first, in the same admission as this iteration's fetch (one admission per
    iteration keeps runs_directly's "nothing else of the partition" true). Never take more than the
    window has room for (at least 1: a paused consumer returns nothing, but must still serve
    callbacks). With the window full and a commit answer awaited, consuming still serves the answer:
    what comes meanwhile is held aside, up to `hold_limit`.
    """
    admit_held = min(held, room) if room > 0 else 0
    room -= admit_held
    held -= admit_held
    if room > 0 or all_paused:
        return FetchPlan(admit_held, min(batch, max(1, room)), room <= 0, False, False)
    if awaiting_answer and held < hold_limit:
        return FetchPlan(admit_held, min(batch, hold_limit - held), True, True, False)
    return FetchPlan(admit_held, 0, False, False, True)


class HeldRecords:
    """Records consumed while the window was full, not yet admitted: never processed, so not in the
    window (a crash repeats none of them); at most `hold_limit`. A rebalance forgets those of the
    partitions it moves: a new assignment fetches from the committed offset."""

    def __init__(self) -> None:
        self.records: list[Message] = []
        self._changes = 0                 # counts rebalance callbacks (see keep)
        self._moved: set[tuple[str, int]] = set()   # partitions rebalance callbacks named during a fetch

    def __len__(self) -> int:
        return len(self.records)

    def take(self, count: int) -> list[Message]:
        taken = self.records[:count]
        del self.records[:count]
        return taken

    def fetch_began(self) -> int:
        """Before a consume(): the mark that tells whether a rebalance ran inside it."""
        self._moved.clear()
        return self._changes

    def still_ours(self, messages: list[Message], mark: int) -> list[Message]:
        """Of records taken before a consume(), those whose partitions it did not move."""
        if mark == self._changes:
            return messages
        moved = self._moved
        return [m for m in messages if (m.topic(), m.partition()) not in moved]

    def keep(self, fetched: list[Message], mark: int, states: PartitionStates) -> None:
        """Set aside records consumed while the window is full (admitted later, in order)."""
        if mark != self._changes:
            # A rebalance ran inside this consume(): keep only records of partitions still ours.
            fetched = [m for m in fetched if m.error() is not None or (m.topic(), m.partition()) in states]
        self.records.extend(fetched)

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Forget held records of partitions that are revoked, lost or assigned afresh: a new
        assignment fetches from the committed offset, and an old record must not enter it."""
        self._changes += 1
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._moved.update(gone)
        if self.records:
            self.records[:] = [m for m in self.records if (m.topic(), m.partition()) not in gone]


class FlowControl:
    """The window's counts, the room for new records, and the partitions that should be paused."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self.backpressure: Backpressure[PartitionState] = Backpressure(WindowLimits(config.window(config.pool_size)))
        self.paused: set[PartitionState] = set()
        self.held = HeldRecords()
        self.room = config.window(config.pool_size)
        self.uncommitted_total = 0
        self.releasable_total = 0
        self.awaiting_total = 0       # released records whose commit is sent, not yet answered
        # Both change with the pool size only; attributes, not computed each iteration.
        self.window = 0
        self.hold_limit = 0
        self._set_window()

    def resized(self, pool_size: int) -> None:
        self.backpressure.limits = WindowLimits(self._config.window(pool_size))
        self._set_window()

    def _set_window(self) -> None:
        self.window = self.backpressure.limits.max_uncommitted
        # Records held aside while the window waits for a commit answer: half the window (at least a
        # batch), enough for the answer of a commit sent at half the window to arrive first at most speeds.
        self.hold_limit = max(self._config.consume_batch_size, self.window // 2)

    def holding_full(self) -> bool:
        return len(self.held.records) >= self.hold_limit

    def desired_pauses(self, states: PartitionStates, now: float, *, stopping: bool, commit_backoff: bool,
                       also: set[PartitionState]) -> set[PartitionState]:
        """Count the window and decide which partitions to pause; `also`: paused for other reasons
        (a retry-tier record not yet due, an open breaker, stalled writes). `commit_backoff`: a
        synchronous commit failed a moment ago and the loop waits before the next."""
        if stopping:
            desired = set(states.values())
            self.uncommitted_total = sum(s.tracker.uncommitted for s in desired)
            self.room = 0
            return desired
        counts = {state: state.tracker.uncommitted for state in states.values()}
        self.uncommitted_total = sum(counts.values())
        self.releasable_total = sum(state.tracker.releasable for state in states.values())
        self.awaiting_total = sum(state.tracker.awaiting_ack for state in states.values())
        decision = self.backpressure.update(counts, now)
        self.room = decision.room
        desired = decision.paused
        if self.room <= 0 and self.awaiting_total and self.holding_full() and commit_backoff:
            # Waiting for a commit answer with a batch held (the synchronous commit failed):
            # consume() must go on serving answers without returning records.
            desired = set(states.values())
        if also:
            desired |= also
        return desired

    def forget(self, states: list[PartitionState]) -> None:
        for state in states:
            self.paused.discard(state)
        self.backpressure.forget(states)

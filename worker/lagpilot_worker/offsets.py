"""Which offset of a partition may be committed: the lowest one not yet finished (pure, no I/O).

Messages of a partition finish in any order when handlers run concurrently. Kafka stores one
number per partition ("the next offset to read"), so the only safe number is the lowest offset
that is still unfinished: everything below it is done, and a slow message is never skipped.
Done messages above it would be re-delivered after a crash: done_flags() hands them to the
commit's offset map (offset_map.py), so a new owner skips them.

The window (`uncommitted`) counts a record until a commit covering it is ACKNOWLEDGED by the
broker, not merely sent: asynchronous commits may be stored late under load, and a crash repeats
everything above the last stored commit. So a record stays counted from fetch until the broker
answered a commit at or above it (`mark_committed` when sent, `acknowledged` when answered).

Revocation: the runtime creates a fresh tracker for every assignment of a partition and revokes
the old one, so completions of work started under an earlier assignment can never advance a
later one (they hold the revoked object, which ignores them).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque


class PartitionOffsets:
    """Offsets of one partition from fetch to commit.

    Offsets are added in increasing order (the order a consumer reads a partition) and finished
    in any order. Gaps between offsets (compaction, transaction markers) are allowed.
    """

    __slots__ = ("_committed_completions", "_completions", "_done_above", "_finished", "_head", "_last_added",
                 "_pending", "_released", "_released_acked", "_released_sent", "_sent", "committed", "revoked")

    def __init__(self, committed: int | None = None) -> None:
        # Offsets added and not yet released, in increasing order, from index `_head` on (a list
        # with a moving head: releasing a run of n offsets is one addition, not n pops).
        self._pending: list[int] = []
        self._head = 0
        # One flag per entry of `_pending`: finished (1) or not (0). Only entries from `_head` on
        # count; releasing is a C-speed search for the first unfinished one.
        self._finished = bytearray()
        self._done_above = 0      # finished entries from `_head` on (behind an unfinished one)
        self._last_added: int | None = None
        # Released records (finished, below the committable offset), counted since the start: all
        # of them, those covered by the last commit sent, those covered by an acknowledged commit.
        self._released = 0
        self._released_sent = 0
        self._released_acked = 0
        # Commits sent and not yet answered: (offset, released records below it), in send order.
        self._sent: deque[tuple[int, int]] = deque()
        # Calls that finished offsets, and their number at the last commit: a commit is due when
        # either the committable offset or the done set above it (the offset map) changed.
        self._completions = 0
        self._committed_completions = 0
        self.committed = committed
        self.revoked = False

    def add(self, offset: int) -> None:
        self.add_many([offset])

    def add_many(self, offsets: list[int]) -> None:
        """Add a fetched batch of this partition (increasing offsets)."""
        if not offsets:
            return
        if self._last_added is not None and offsets[0] <= self._last_added:
            raise ValueError(f"offset {offsets[0]} added after {self._last_added}: offsets must increase")
        self._pending.extend(offsets)
        self._finished.extend(bytes(len(offsets)))
        self._last_added = offsets[-1]

    def done(self, offset: int) -> bool:
        """Mark `offset` finished (checked). False (and no effect) once the partition was revoked."""
        if self.revoked:
            return False
        pending, head = self._pending, self._head
        index = bisect_left(pending, offset, head)
        if index >= len(pending) or pending[index] != offset or self._finished[index]:
            raise ValueError(f"offset {offset} finished but it is not in flight")
        return self.done_many([offset])

    def done_many(self, offsets: list[int]) -> bool:
        """Mark offsets finished (the hot path: they must be in flight; not checked)."""
        if self.revoked:
            return False
        pending = self._pending
        head = self._head
        count = len(offsets)
        if not self._done_above and pending[head:head + count] == offsets:
            # In order from the lowest unfinished one (partition order, or a whole batch): no flags.
            head += count
        else:
            finished = self._finished
            base = pending[head] - head
            if pending[-1] - base == len(pending) - 1:
                # No gaps from the head on (the usual case): an offset's index is arithmetic.
                for offset in offsets:
                    finished[offset - base] = 1
            else:
                for offset in offsets:
                    finished[bisect_left(pending, offset, head)] = 1
            end = finished.find(0, head)
            if end < 0:
                end = len(pending)
            self._done_above += count - (end - head)
            head = end
        self._released += head - self._head
        self._completions += 1
        if head > 4096 and head * 2 > len(pending):
            del pending[:head]     # compact now and then; amortised O(1) per offset
            del self._finished[:head]
            head = 0
        self._head = head
        return True

    def committable(self) -> int | None:
        """The offset to commit (next to read): the lowest unfinished, or one past the last added.

        None when nothing was ever added (the committed offset, if any, stays as it is).
        """
        if self._head < len(self._pending):
            return self._pending[self._head]
        if self._last_added is None:
            return None
        return self._last_added + 1

    def needs_commit(self, map_changes: bool = True) -> bool:
        """The committable offset changed since the last commit, or (with `map_changes`) the done set above it."""
        candidate = self.committable()
        if candidate is None:
            return False
        return candidate != self.committed or (map_changes and self._done_above > 0 and
                                               self._completions != self._committed_completions)

    def mark_committed(self, offset: int) -> None:
        """Record that `offset` (with the done set as it is now) was sent as this partition's commit.

        The records it covers stay in `uncommitted` until acknowledged(offset)."""
        if self.committed is None or offset > self.committed:
            self.committed = offset
        if offset == self.committable():
            self._released_sent = self._released
            self._committed_completions = self._completions
        # An older offset covers at most what the last commit sent covered (never a later release).
        covers = self._released if offset == self.committable() else min(self._released_sent, self._released)
        self._sent.append((offset, covers))

    def acknowledged(self, offset: int) -> None:
        """The broker stored a commit of `offset`: the released records below it leave the window.

        Answers may cover several commits sent (a later one answers for the earlier ones below it);
        an answer for an offset never sent here (an earlier assignment's commit) frees only what
        this tracker sent at or below it, which that stored offset covers too.
        """
        sent = self._sent
        covered = self._released_acked
        while sent and sent[0][0] <= offset:
            covered = max(covered, sent.popleft()[1])
        self._released_acked = covered

    def commit_failed(self, offset: int) -> None:
        """An asynchronous commit of `offset` failed: the next commit sends it (and its map) again."""
        if self.committed == offset:
            self.committed = None
        self._committed_completions = -1
        # Its records stay in the window and become releasable again: the next commit covers them.
        self._sent = deque(entry for entry in self._sent if entry[0] != offset)
        self._released_sent = max((covers for _, covers in self._sent), default=self._released_acked)

    @property
    def done_above(self) -> int:
        """Finished offsets above the committable one (what the offset map records)."""
        return self._done_above

    def done_flags(self) -> tuple[int, bytes] | None:
        """(committable offset, flags): flags[i] is 1 when offset committable+i is finished.

        Spans the committable offset up to the highest finished offset; offsets of that span the
        partition never delivered (gaps: compaction, transaction markers) count as finished. None
        when nothing above the committable offset is finished. Costs a copy of the flags (a find
        in C for the highest finished one); with gaps, one step per unfinished offset.
        """
        if not self._done_above:
            return None
        pending, finished, head = self._pending, self._finished, self._head
        last = finished.rfind(1, head)
        if last < 0:      # cannot happen while _done_above > 0; no map is the safe answer
            return None
        base = pending[head]
        if pending[last] - base == last - head:
            return base, bytes(finished[head:last + 1])
        flags = bytearray(b"\x01") * (pending[last] - base + 1)
        index = head
        while True:
            index = finished.find(0, index, last)
            if index < 0:
                break
            flags[pending[index] - base] = 0
            index += 1
        return base, bytes(flags)

    @property
    def last_added(self) -> int | None:
        return self._last_added

    @property
    def in_flight(self) -> int:
        """Added and not yet finished."""
        return len(self._pending) - self._head - self._done_above

    @property
    def releasable(self) -> int:
        """Finished and below the committable offset, not covered by a commit sent: a commit frees these."""
        return self._released - self._released_sent

    @property
    def awaiting_ack(self) -> int:
        """Released records covered by commits sent but not yet acknowledged: their answer frees these."""
        return self._released_sent - self._released_acked

    @property
    def uncommitted(self) -> int:
        """Added and not covered by an acknowledged commit: what a crash now would deliver again, at most."""
        return len(self._pending) - self._head + self._released - self._released_acked

    def revoke(self) -> int | None:
        """Stop tracking: later completions are ignored. Returns the last committable offset."""
        final = self.committable()
        self.revoked = True
        return final

"""The completion path of the consumer-group worker: offset commits, with offset maps.

Each partition commits its lowest unfinished offset with the map of finished offsets above it
(offset_map.py) as commit metadata. A record leaves the window only when the broker answers a
commit covering it, so `choose_commit` (pure) sends commits early enough for the answer to arrive
before the window fills; OffsetCommits does the I/O and books the answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import NamedTuple

from confluent_kafka import KafkaError, TopicPartition

from .config import WorkerConfig
from .consumer import GroupConsumer
from .flow import FlowControl
from .metrics import WorkerMetrics
from .offset_map import carry_inherited, past_inherited_done
from .offset_map import encode as encode_offset_map
from .partition import PartitionState, PartitionStates

log = logging.getLogger("lagpilot_worker")

MIN_COMMIT_GAP_SECONDS = 0.02
SYNC_COMMIT_BACKOFF_SECONDS = 0.5   # after a failed synchronous commit: serve the consumer queue (a rebalance) first
NOTHING_TO_SEND_RETRY_SECONDS = 0.005   # a full window with nothing to send: look again this soon


class CommitChoice(Enum):
    NOT_YET = "not-yet"
    SOONER = "sooner"                 # asynchronous, partitions whose offset moved
    ON_INTERVAL = "on-interval"       # asynchronous, also partitions whose map alone changed
    WAIT_FOR_ANSWER = "wait"          # synchronous: only its answer would free the full window


class WindowCounts(NamedTuple):
    """The window's numbers for one decision (a tuple: made every iteration, it must be cheap)."""

    room: int
    window: int
    uncommitted: int
    releasable: int                   # finished, below the next commit, not yet sent
    awaiting: int                     # covered by a sent commit, answer not yet in
    holding_full: bool                # a batch is held aside while the window is full


def window_needs_answer(counts: WindowCounts, *, now: float, sync_commit_after: float, stopping: bool) -> bool:
    """The window is full, a batch is held, and only a commit answer would make room (pure)."""
    return (counts.room <= 0 and bool(counts.releasable or counts.awaiting) and counts.holding_full
            and now >= sync_commit_after and not stopping)


def choose_commit(counts: WindowCounts, *, now: float, next_commit: float, last_commit: float,
                  sync_commit_after: float, stopping: bool) -> CommitChoice:
    """Whether to commit now, and how (pure).

    On the interval, and sooner once half the window is used (at most every MIN_COMMIT_GAP, or at
    once when a quarter of the window is finished and unsent: a fast handler fills the rest in less
    than the gap). The interval's commit also sends partitions whose offset map alone changed; the
    sooner ones only partitions whose offset moved (they carry the current map too): a slow record
    holding the offset back must not turn every iteration into a commit request.
    """
    if window_needs_answer(counts, now=now, sync_commit_after=sync_commit_after, stopping=stopping):
        return CommitChoice.WAIT_FOR_ANSWER
    if now >= next_commit:
        return CommitChoice.ON_INTERVAL
    window = counts.window
    if counts.room <= 0 and counts.releasable and not counts.awaiting:
        return CommitChoice.SOONER
    if counts.uncommitted < window // 2 or (
            counts.releasable < window // 4 and now < last_commit + MIN_COMMIT_GAP_SECONDS):
        return CommitChoice.NOT_YET
    return CommitChoice.SOONER


class OffsetCommits:
    """Sends the commits and books their answers in the trackers."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, states: PartitionStates, flow: FlowControl,
                 *, update_pauses: Callable[[], None]) -> None:
        self._config = config
        self._metrics = metrics
        self._states = states
        self._flow = flow
        self._update_pauses = update_pauses
        self.consumer: GroupConsumer | None = None
        self.next_commit = 0.0
        self._last_commit = 0.0
        # A synchronous commit failed a moment ago: until then the consumer queue (a rebalance) is served first.
        self.sync_commit_after = 0.0

    def counts(self) -> WindowCounts:
        flow = self._flow
        return WindowCounts(flow.room, flow.window, flow.uncommitted_total, flow.releasable_total,
                            flow.awaiting_total, flow.holding_full())

    def needs_answer(self, now: float, *, stopping: bool) -> bool:
        return window_needs_answer(self.counts(), now=now, sync_commit_after=self.sync_commit_after,
                                   stopping=stopping)

    def poll(self, now: float, *, stopping: bool) -> None:
        choice = choose_commit(self.counts(), now=now, next_commit=self.next_commit, last_commit=self._last_commit,
                               sync_commit_after=self.sync_commit_after, stopping=stopping)
        if choice is CommitChoice.NOT_YET:
            return
        if choice is CommitChoice.WAIT_FOR_ANSWER:
            self._commit_and_wait(now)
            return
        releasable = self._flow.releasable_total
        self.next_commit = now + self._config.commit_interval_seconds
        self._last_commit = now
        self.commit(list(self._states.values()), asynchronous=True, map_changes=choice is CommitChoice.ON_INTERVAL)
        if releasable:
            self._update_pauses()     # count what now awaits an answer (the next fetch decision uses it)

    def _commit_and_wait(self, now: float) -> None:
        """The window is full and only a commit answer would free it: commit synchronously.

        An asynchronous commit's answer is served only by consume(), which also hands out records
        the window has no room for: the loop holds one batch of them aside, and beyond that it
        would have to pause every partition, which costs a refetch that librdkafka starts only
        about a second after the resume. A synchronous commit waits one round trip, which the loop
        would wait anyway, and needs no poll. It resends the offsets still awaiting an answer: the
        broker stores them again, and its answer covers the earlier asynchronous commits too (a
        partition's commits are stored in the order they were sent). If it fails (a rebalance is
        under way), every partition is paused for a while so that consume() serves the rebalance
        and the answers without handing out records (see FlowControl.desired_pauses)."""
        states = [s for s in self._states.values()
                  if not s.revoked and (s.tracker.needs_commit() or s.tracker.awaiting_ack)]
        if not states:
            # Nothing to send (the totals are from before this iteration's changes): wait as usual.
            self.sync_commit_after = now + NOTHING_TO_SEND_RETRY_SECONDS
            return
        self.next_commit = now + self._config.commit_interval_seconds
        self._last_commit = now
        if self.commit(states, asynchronous=False, resend=True):
            self._metrics.window_commit_waits.inc()
            self._update_pauses()     # the window has room again: fetch in the next iteration
        else:
            self.sync_commit_after = now + SYNC_COMMIT_BACKOFF_SECONDS

    def commit(self, states: list[PartitionState], asynchronous: bool, map_changes: bool = True,
               resend: bool = False) -> bool:
        """Commit each partition's lowest unfinished offset, with the map of finished ones above it.

        `map_changes`: also partitions whose offset did not move but whose map did. `resend`: also
        partitions with commits awaiting the broker's answer. False when a synchronous commit failed."""
        assert self.consumer is not None
        requests: list[tuple[PartitionState, int]] = []
        offsets: list[TopicPartition] = []
        for state in states:
            tracker = state.tracker
            if state.revoked or not (tracker.needs_commit(map_changes) or (resend and tracker.awaiting_ack)):
                continue
            offset = tracker.committable()
            assert offset is not None      # needs_commit() is False and nothing awaits an answer without one
            requests.append((state, offset))
            # Past records the earlier owner finished that this one has not fetched yet: the next owner
            # would run them again. The tracker keeps its own offset (it knows nothing above its fetch).
            sent = past_inherited_done(offset, state.done_map, tracker.last_added)
            state.committed_past_inherited = (sent, offset) if sent != offset else None
            offsets.append(TopicPartition(state.topic, state.partition, sent,
                                          metadata=self._offset_map(state, sent)))
        if not requests:
            return True
        ok = self.consumer.commit(offsets, asynchronous)
        if ok:
            for state, offset in requests:
                state.tracker.mark_committed(offset)
                if not asynchronous:
                    state.tracker.acknowledged(offset)
            self._metrics.commits.inc()
        return ok

    def commit_final(self, states: list[PartitionState], refused_warning: str) -> int:
        """The last, synchronous commit of `states` (revoked, or at shutdown). Returns the records it
        would have covered when the broker refused it: they run again on the next owner."""
        # resend: an asynchronous commit still awaiting its answer may yet be refused (the group
        # rebalancing as Pods come and go); this synchronous one covers its records for sure.
        if self.commit(states, asynchronous=False, resend=True):
            return 0
        return self.report_refused(states, refused_warning)

    def report_refused(self, states: list[PartitionState], refused_warning: str) -> int:
        """A final commit the broker refused (ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS while the group
        rebalances again, as in a rolling update), said in the log and the metrics so duplicates are
        accounted for, not a mystery. Returns the records it would have covered."""
        refused = sum(state.tracker.uncommitted for state in states if not state.revoked)
        self._metrics.revoke_commit_refused.inc(refused)
        log.warning(refused_warning, extra={"refused_records": refused})
        return refused

    def _offset_map(self, state: PartitionState, committable: int) -> str:
        """The commit metadata of `state`: its finished offsets above the committable one, and those of
        an earlier owner's map it has not fetched up to yet; or ""."""
        limit = self._config.offset_metadata_max_bytes
        if not limit:
            return ""
        flags = carry_inherited(state.tracker.done_flags(), committable, state.done_map, state.tracker.last_added)
        if flags is None:
            return ""
        text = encode_offset_map(flags[0], flags[1], limit)
        if text is None:
            self._metrics.offset_map_overflows.inc()
            return ""
        return text

    def on_commit_error(self, err: KafkaError, partitions: list[TopicPartition]) -> None:
        log.warning("asynchronous commit failed, will commit again: %s", err)
        for tp in partitions:
            state = self._states.get((tp.topic, tp.partition))
            if state is not None:
                moved = state.committed_past_inherited
                state.tracker.commit_failed(moved[1] if moved is not None and moved[0] == tp.offset else tp.offset)

    def on_commit_ack(self, partitions: list[TopicPartition]) -> None:
        # The broker stored these offsets: the records below them leave the window.
        for tp in partitions:
            state = self._states.get((tp.topic, tp.partition))
            if state is not None and tp.offset >= 0:
                state.tracker.acknowledged(tp.offset)

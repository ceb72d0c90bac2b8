"""The Worker: one poll thread that owns every decision, and a pool of slots that run the handler.

The poll thread fetches, queues records in the scheduler, hands work items to the pool, reads
their results, writes failures to the DLQ/retry topics, pauses and resumes partitions, and
commits. It never sleeps and never waits on a handler (except, bounded, while a rebalance takes
partitions away), so the group membership never times out however slow the handler is.

The exception that proves it: a sync handler of a few microseconds per record, for which a
hand-off to a slot costs more than the work, runs on the poll thread itself, in items of a few
milliseconds, through the same run_job and result path (see inline.py for when, and how it falls
back to the slots when the handler turns out to block).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaError, Message, TopicPartition
from prometheus_client import CollectorRegistry

from lagpilot_contract import headers as h

from .breaker import BreakerState, PartitionBreaker
from .config import WorkerConfig
from .consumer import GroupConsumer
from .dlq import FailurePublisher
from .inline import HandlerCost, InlineGate, InlinePolicy, handler_seconds, runs_directly
from .offset_map import DoneOffsets, carry_inherited
from .offset_map import encode as encode_offset_map
from .offset_map import read as read_offset_map
from .offsets import PartitionOffsets
from .ordering import Backpressure, Lane, OrderingMode, Scheduler, Segment, WindowLimits
from .poolsize import PoolSizeSource
from .processing import Failure, Job, Processor
from .rebalance_clock import RebalanceClock, RebalanceReason
from .record import Handler, message_headers
from .retry import DueGate, SendToRetryTier, parse_int_header, retry_due_ms
from .shell import WorkerShell
from .threadclock import RunQueueClock, thread_usage
from .write_retry import next_write_retry

log = logging.getLogger("lagpilot_worker")

BUSY_WAIT_SECONDS = 0.005     # longest poll while work is out: results are noticed this fast
IDLE_WAIT_SECONDS = 0.1
GAUGE_INTERVAL_SECONDS = 2.0
PREFETCH_PER_SLOT = 2         # work items handed out per slot: one running, one ready to start
# Work items are sized by the measured handler time: big enough that the hand-off to a slot is
# negligible, small enough that every slot gets work and results come back often.
MIN_ITEM_SECONDS = 0.005
MAX_ITEM_SECONDS = 0.1
INITIAL_SECONDS_PER_RECORD = 0.05   # assume slow until measured: small first items
MIN_COMMIT_GAP_SECONDS = 0.02
SYNC_COMMIT_BACKOFF_SECONDS = 0.5   # after a failed synchronous commit: serve the consumer queue (a rebalance) first
COMMITTED_READ_TIMEOUT_SECONDS = 10.0   # reading the offset maps at assignment; on timeout: no maps


# Message methods, unbound: map() and groupby() call them from C, with no Python loop per record.
# (A consumed record, unlike an error event, always has a topic, a partition and an offset.)
_error = Message.error
_partition = cast(Callable[[Message], int], Message.partition)
_offset = cast(Callable[[Message], int], Message.offset)
_key = Message.key

def _topic_partition(message: Message) -> tuple[str, int]:
    return cast(str, message.topic()), cast(int, message.partition())


class PartitionState:
    """One assigned partition, for one assignment (a re-assignment gets a fresh object).

    The scheduler uses the object itself as the partition's identity, so nothing started under
    an earlier assignment can touch a later one.
    """

    __slots__ = ("breaker", "done_map", "halted", "held", "kafka_tp", "out_segments", "partition",
                 "pending_writes", "revoked", "tier", "topic", "tracker")

    def __init__(self, topic: str, partition: int, tier: int, breaker: PartitionBreaker) -> None:
        self.topic = topic
        self.partition = partition
        self.tier = tier                      # 0: source topic; n: retry tier n
        self.tracker = PartitionOffsets()
        self.breaker = breaker
        self.revoked = False                  # read by slots: stop working on this partition
        self.halted = False                   # read by slots: breaker open, start nothing more
        self.out_segments = 0                 # segments handed to slots, not yet reported back
        self.pending_writes = 0               # DLQ/retry writes not yet acknowledged
        self.held: list[tuple[Message, Lane[Any, Any] | None]] = []   # refused by the open breaker
        self.kafka_tp = TopicPartition(topic, partition)
        # Records an earlier owner finished above the committed offset (the commit's offset map):
        # skipped when fetched; dropped once fetching passes its highest offset.
        self.done_map: DoneOffsets | None = None

    def log_extra(self, offset: int | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {"topic": self.topic, "partition": self.partition}
        if offset is not None:
            extra["offset"] = offset
        return extra

    def __repr__(self) -> str:
        return f"PartitionState({self.topic}[{self.partition}])"


class DirectSegment(Segment[PartitionState, Message]):
    """A run the poll thread formed itself, without lanes, to run inline (see Worker._run_inline)."""

    __slots__ = ()


class Worker(WorkerShell):
    """Consume `config.topics` in group `config.group_id` and run `handler` for every record.

    `handler(record)` may be a function or a coroutine function. run() blocks until stop() is
    called (from another thread or a signal handler) and the graceful shutdown is over.
    """

    def __init__(self, config: WorkerConfig, handler: Handler, *, pool_size_source: PoolSizeSource | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(config, handler, pool_size_source=pool_size_source, registry=registry)
        self._states: dict[tuple[str, int], PartitionState] = {}
        self._scheduler: Scheduler[PartitionState, Message] = Scheduler(config.ordering)
        self._keyed = config.ordering is OrderingMode.KEY
        self._due_gate: DueGate[PartitionState, Message] = DueGate()
        self._backpressure: Backpressure[PartitionState] = Backpressure(
            WindowLimits(config.window(config.pool_size)))
        self._paused: set[PartitionState] = set()
        self._open_breakers: set[PartitionState] = set()
        # Partitions paused because a DLQ/retry-tier write failed past its retry bound: writes stuck.
        self._stalled_writes: dict[PartitionState, int] = {}
        self._jobs: set[Job] = set()
        self._write_retries: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._retry_tiers = {topic: tier for tier, topic in enumerate(config.retry_topics, start=1)}
        self._topics = list(dict.fromkeys([*config.topics, *config.retry_topics]))
        # Subscribed to one topic by name: every record is of that topic, no need to ask each.
        only = self._topics[0]
        self._only_topic = only if len(self._topics) == 1 and not only.startswith("^") else None
        self._uncommitted_total = 0
        self._releasable_total = 0
        self._awaiting_total = 0          # released records whose commit is sent, not yet answered
        # Records consumed while the window was full (to serve commit answers), not yet admitted:
        # never processed, so not in the window (a crash repeats none of them); at most one batch.
        self._held: list[Message] = []
        self._assignment_changes = 0      # counts rebalance callbacks (see _hold)
        self._moved: set[tuple[str, int]] = set()   # partitions rebalance callbacks named during a fetch
        self._room = config.window(config.pool_size)
        self._seconds_per_record = INITIAL_SECONDS_PER_RECORD
        policy = InlinePolicy()
        self._inline = InlineGate(policy, allowed=not self._is_async)
        # The handler's cost per record (CPU time unless it waits per record, inline.handler_seconds)
        # decides inline execution: wall time on a loaded host would never allow it.
        self._handler_cost = HandlerCost(policy, INITIAL_SECONDS_PER_RECORD)
        self._run_queue: RunQueueClock | None = None   # the poll thread's, opened by it
        self._inline_running = 0          # 1 while the poll thread runs a work item (in-flight gauge)
        # Runs fetched this iteration that may skip the lanes (runs_directly), for _dispatch.
        self._direct: list[tuple[PartitionState, list[Message]]] = []
        self.direct_records = 0           # records run inline without lanes (read by tests)
        self._processor: Processor | None = None
        self._next_commit = 0.0
        self._last_commit = 0.0
        self._sync_commit_after = 0.0
        self._next_gauges = 0.0
        self._assigned_once = False
        self._consumer: GroupConsumer | None = None
        self._consumer_open = False
        self._rebalance_clock = RebalanceClock()

    # -- public -----------------------------------------------------------------------------

    def assignment(self) -> list[tuple[str, int]]:
        return sorted(self._states)

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Readiness: in the group, fetching, and (by default) no open dead-letter breaker."""
        open_breakers = [f"{s.topic}[{s.partition}]" for s in list(self._open_breakers)]
        reasons: list[str] = []
        if not self._started.is_set():
            reasons.append("starting")
        if not self._assigned_once:
            reasons.append("waiting for a partition assignment")
        if self._stopping.is_set() or self._stop_requested.is_set():
            reasons.append("stopping")
        if open_breakers and self.config.ready_requires_closed_breakers:
            reasons.append("dead-letter circuit breaker open")
        stalled = [f"{s.topic}[{s.partition}]" for s in list(self._stalled_writes) if not s.revoked]
        if stalled:
            reasons.append("dead-letter/retry topic writes failing")
        alive, _ = self.alive()
        if not alive:
            reasons.append("poll loop stuck")
        return not reasons, {"reasons": reasons, "open_breakers": open_breakers, "failing_writes": stalled,
                             "partitions": len(self._states), "pool_size": self._pool_size}

    def alive(self) -> tuple[bool, dict[str, object]]:
        """Liveness: the poll loop went round recently (a rebalance may hold it for revoke_timeout)."""
        since = time.monotonic() - self._last_loop
        limit = max(60.0, self.config.revoke_timeout_seconds + 30.0)
        return since < limit or self._finished.is_set(), {"seconds_since_poll": round(since, 3)}

    # -- start and stop ---------------------------------------------------------------------

    def _start(self) -> None:
        config = self.config
        self._processor = self._start_slots(
            config.retry, dead_letter_run_limit=config.breaker.max_consecutive if config.breaker.enabled else None)
        # Computed when read, from the trackers: exact at any moment (a scrape, or a test that reads
        # it in-process right before killing the worker), not as of the last gauge update.
        self.metrics.uncommitted.set_function(self._window_use)
        if config.dlq_topic is not None or config.retry_topics:
            self._publisher = FailurePublisher(
                config.producer_settings(), group_id=config.group_id, worker_id=config.worker_id,
                dead_letter_topic=config.dlq_topic, retry_topics=config.retry_topics)
            self._publisher.load_partition_counts()
        self._pool_source.start(self._on_pool_size)
        topics = self._topics
        self._rebalance_clock.subscribed(time.monotonic())
        self._consumer = GroupConsumer(
            config.consumer_settings(), topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost, on_commit_error=self._on_commit_error, on_commit_ack=self._on_commit_ack)
        self._consumer_open = True
        log.info("worker started", extra={"group": config.group_id, "topics": topics,
                                          "ordering": str(config.ordering), "pool_size": config.pool_size,
                                          "group_protocol": str(config.group_protocol),
                                          "worker_id": config.worker_id, "http_port": self.http_port})
        self._started.set()

    def _cleanup(self) -> None:
        self._stopping.set()
        if self._run_queue is not None:
            self._run_queue.close()
            self._run_queue = None
        if self._consumer_open:
            # Failed before a graceful shutdown: still leave the group instead of lingering in it.
            for state in self._states.values():
                state.revoked = True
            self._close_consumer()
        self._stop_slots()

    def _shutdown(self) -> None:
        """Stop fetching, let handed-out work finish until the deadline, commit, leave the group."""
        assert self._consumer is not None
        config = self.config
        deadline = time.monotonic() + config.shutdown_timeout_seconds
        in_flight = self._in_flight_records(list(self._states.values()))
        log.info("stopping: finishing the records in hand", extra={
            "in_flight_items": len(self._jobs), "in_flight_records": in_flight,
            "deadline_seconds": config.shutdown_timeout_seconds})
        self._stopping.set()            # slots stop waiting to retry in place
        self.metrics.revoked_in_flight.inc(in_flight)
        for job in self._jobs:
            job.cancelled = True        # finish the record in hand, start no other
        self._update_pauses()
        while time.monotonic() < deadline and (self._jobs or self._pending_writes()):
            self._last_loop = time.monotonic()
            self._consumer.fetch(1, 0.0)        # serves callbacks; everything is paused
            self._drain_results()
            self._poll_publisher()
            self._run_timers(time.monotonic())
            if self._jobs or self._pending_writes():
                self._wake.wait(0.01)
                self._wake.clear()
        abandoned = sum(len(seg.messages) for job in self._jobs for seg in job.segments)
        abandoned_in_flight = self._in_flight_records(list(self._states.values()))
        self.metrics.revoked_abandoned.inc(abandoned_in_flight)
        for job in list(self._jobs):
            job.cancelled = True
        if self._publisher is not None:
            self._publisher.flush(max(0.0, deadline - time.monotonic()))
            self._poll_publisher()
        self._drain_results()
        # resend: an asynchronous commit still awaiting its answer may yet be refused (the group
        # rebalancing as Pods come and go); this synchronous one covers its records for sure.
        states = list(self._states.values())
        if not self._commit(states, asynchronous=False, resend=True):
            refused = sum(state.tracker.uncommitted for state in states)
            self.metrics.revoke_commit_refused.inc(refused)
            log.warning("the broker refused the final commit at shutdown: its uncommitted records run again on "
                        "the next owner", extra={"refused_records": refused})
        if abandoned:
            log.warning("shutdown deadline reached: abandoned work will be delivered again",
                        extra={"records": abandoned, "abandoned_records": abandoned_in_flight})
        for state in self._states.values():
            state.revoked = True
        self._close_consumer()
        log.info("stopped", extra={"group": config.group_id})

    def _close_consumer(self) -> None:
        consumer, self._consumer_open = self._consumer, False
        if consumer is None:
            return
        try:
            consumer.close()
        except Exception:
            log.exception("closing the consumer failed; the group will notice after the session timeout")

    # -- pool size --------------------------------------------------------------------------

    def _in_flight(self) -> float:
        # The poll thread counts too while it runs a work item itself (inline execution).
        return super()._in_flight() + self._inline_running

    def _apply_pool_size(self) -> bool:
        resized = super()._apply_pool_size()
        if resized:
            self._backpressure.limits = WindowLimits(self.config.window(self._pool_size))
        return resized

    # -- the loop ---------------------------------------------------------------------------

    def _iterate(self) -> None:
        assert self._consumer is not None
        now = time.monotonic()
        self._last_loop = now
        self._apply_pool_size()
        room = self._room
        messages: list[Message] = []
        if self._held and room > 0:
            # Held records go first and in the same _ingest call as this iteration's fetch: one
            # call per iteration keeps runs_directly's "nothing else of the partition" true.
            messages = self._held[:room]
            del self._held[:room]
            room -= len(messages)
        if room > 0 or (self._states and len(self._paused) == len(self._states)):
            if self._results or (self._scheduler.queued and len(self._jobs) < self._capacity()):
                wait = 0.0
            else:
                wait = self._idle_wait(now)
            # Never take more than the window has room for (at least 1: a paused consumer returns nothing).
            changes = self._assignment_changes
            self._moved.clear()
            fetched = self._consumer.fetch(min(self.config.consume_batch_size, max(1, room)), wait)
            if messages and changes != self._assignment_changes:
                # A rebalance ran inside consume(): held records of the partitions it moved are not ours.
                moved = self._moved
                messages = [m for m in messages if (m.topic(), m.partition()) not in moved]
            if room > 0:
                messages += fetched
            elif fetched:
                self._hold(fetched, changes)
        elif self._awaiting_total and len(self._held) < self._hold_limit():
            # The window is full and a commit answer would free it: keep consuming, which serves the
            # answers that arrived (see consumer.py), and hold what comes aside, unprocessed. Once a
            # batch is held, _maybe_commit commits synchronously (see _commit_and_wait).
            wait = 0.0 if self._results else BUSY_WAIT_SECONDS
            changes = self._assignment_changes
            room_to_hold = self._hold_limit() - len(self._held)
            fetched = self._consumer.fetch(min(self.config.consume_batch_size, room_to_hold), wait)
            if fetched:
                self._hold(fetched, changes)
        elif not self._results and not self._commit_would_free_window(now):
            # The window is full of unfinished records: leave records in librdkafka's queue and wait
            # for slots to finish.
            self._wake.wait(BUSY_WAIT_SECONDS)
            self._wake.clear()
        if messages:
            self._ingest(messages)
        if self._results:
            self._drain_results()
        self._poll_publisher()
        self._run_timers(now)
        self._dispatch()
        self._update_pauses()
        self._maybe_commit(now)
        if now >= self._next_gauges:
            self._update_gauges(now)

    def _hold(self, fetched: list[Message], changes: int) -> None:
        """Set aside records consumed while the window is full (admitted later, in order)."""
        if changes != self._assignment_changes:
            # A rebalance ran inside this consume(): keep only records of partitions still ours.
            states = self._states
            fetched = [m for m in fetched if m.error() is not None or (m.topic(), m.partition()) in states]
        self._held.extend(fetched)

    def _drop_held(self, partitions: list[TopicPartition]) -> None:
        """Forget held records of partitions that are revoked, lost or assigned afresh: a new
        assignment fetches from the committed offset, and an old record must not enter it."""
        self._assignment_changes += 1
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._moved.update(gone)
        if self._held:
            self._held[:] = [m for m in self._held if (m.topic(), m.partition()) not in gone]

    def _hold_limit(self) -> int:
        """Records held aside while the window waits for a commit answer: half the window (at least a
        batch), enough for the answer of a commit sent at half the window to arrive first at most speeds."""
        return max(self.config.consume_batch_size, self._backpressure.limits.max_uncommitted // 2)

    def _capacity(self) -> int:
        return PREFETCH_PER_SLOT * self._pool_size

    def _idle_wait(self, now: float) -> float:
        # Writes waiting for their backoff are timers (below), not busy work: a write stalled for
        # hours must not spin the poll loop.
        if self._jobs or (self._publisher is not None and self._publisher.pending):
            return BUSY_WAIT_SECONDS
        wait = min(IDLE_WAIT_SECONDS, max(0.0, self._next_commit - now))
        due = self._due_gate.next_due_ms()
        if due is not None:
            wait = min(wait, max(0.0, due / 1000.0 - time.time()))
        for state in self._open_breakers:
            probe = state.breaker.seconds_until_probe(now)
            if probe is not None:
                wait = min(wait, probe)
        if self._write_retries:
            wait = min(wait, max(0.0, self._write_retries[0][0] - now))
        return wait

    def _ingest(self, messages: list[Message]) -> None:
        if any(map(_error, messages)):
            # Errors and end-of-partition events are rare: set them aside, keep the records.
            kept: list[Message] = []
            for message in messages:
                if message.error() is None:
                    kept.append(message)
                else:
                    self._on_consume_error(message)
            messages = kept
            if not messages:
                return
        states = self._states
        topic = self._only_topic
        # Records arrive in runs of one partition, often a whole batch: find the runs in C (map,
        # groupby) and look each partition up once per run.
        groups: list[tuple[PartitionState | None, list[Message]]]
        if topic is None:
            groups = [(states.get(tp), list(run)) for tp, run in itertools.groupby(messages, _topic_partition)]
        else:
            partitions = list(map(_partition, messages))
            if partitions.count(partitions[0]) == len(partitions):
                groups = [(states.get((topic, partitions[0])), messages)]
            else:
                groups = [(states.get((topic, p)), list(run)) for p, run in itertools.groupby(messages, _partition)]
        runs: dict[PartitionState, list[Message]] = {}
        for state, run in groups:
            if state is None:
                continue          # revoked meanwhile: not ours to track
            if state in runs:
                runs[state] += run
            else:
                runs[state] = run
        count = 0
        inline = self._inline.inline
        for state, batch in runs.items():
            offsets = list(map(_offset, batch))
            last = state.tracker.last_added
            if last is not None and offsets[0] <= last:
                # Never expected (we do not seek); tolerate a re-delivery instead of corrupting the tracker.
                keep = [i for i, o in enumerate(offsets) if o > last]
                batch = [batch[i] for i in keep]
                offsets = [offsets[i] for i in keep]
                if not batch:
                    continue
            skipped: list[int] = []
            if state.done_map is not None:
                batch, skipped = self._skip_done(state, batch, offsets)
            # Decided before the run is added: in_flight counts only what was there already.
            direct = bool(batch) and inline and runs_directly(
                inline=True, tier=state.tier, in_flight=state.tracker.in_flight, out_segments=state.out_segments,
                halted=state.halted, breaker_closed=state.breaker.state is BreakerState.CLOSED,
                held=len(state.held), blocked=self._scheduler.is_blocked(state), paused=state in self._paused,
                stopping=self._stopping.is_set())
            state.tracker.add_many(offsets)
            count += len(offsets)
            if skipped:
                state.tracker.done_many(skipped)
                if not batch:
                    continue
            if direct:
                self._direct.append((state, batch))
            elif state.tier:
                self._ingest_retry_records(state, batch)
            elif self._keyed:
                self._scheduler.enqueue(state, batch, list(map(_key, batch)))
            else:
                self._scheduler.enqueue(state, batch)
        if count:
            self.metrics.consumed.inc(count)

    def _skip_done(self, state: PartitionState, batch: list[Message],
                   offsets: list[int]) -> tuple[list[Message], list[int]]:
        """Split off the records the committed offset map marks done (an earlier owner finished them).

        Records below the map's base or above its highest offset (an offset reset, retention) are
        not in it and run as usual; once fetching passed the highest offset the map is dropped.
        """
        done_map = state.done_map
        assert done_map is not None
        if offsets[-1] >= done_map.high:
            state.done_map = None
        if offsets[0] > done_map.high or offsets[-1] < done_map.base:
            return batch, []
        kept: list[Message] = []
        skipped: list[int] = []
        for message, offset in zip(batch, offsets, strict=True):
            if offset in done_map:
                skipped.append(offset)
            else:
                kept.append(message)
        if skipped:
            self.metrics.offset_map_skipped.inc(len(skipped))
        return kept, skipped

    def _ingest_retry_records(self, state: PartitionState, batch: list[Message]) -> None:
        now_ms = int(time.time() * 1000)
        ready: list[Message] = []
        for message in batch:
            due = parse_int_header(message_headers(message), h.RETRY_DUE)
            if self._due_gate.admit(state, due, message, now_ms):
                ready.append(message)
        self._enqueue(state, ready)

    def _enqueue(self, state: PartitionState, batch: list[Message]) -> None:
        if batch:
            self._scheduler.enqueue(state, batch, [m.key() for m in batch] if self._keyed else None)

    def _on_consume_error(self, message: Message) -> None:
        err = message.error()
        if err is not None and err.code() == KafkaError._PARTITION_EOF:
            return
        log.warning("consume error: %s", err, extra={"topic": message.topic(), "partition": message.partition()})

    def _dispatch(self) -> None:
        assert self._pool is not None
        if not self._scheduler.queued and not self._direct:
            return
        gate = self._inline
        was_inline = gate.inline
        if gate.update(self._handler_cost.seconds_per_record, time.monotonic()) != was_inline:
            self._inline_changed()
        if not gate.inline and self._direct:
            self._queue_direct_runs()
        if gate.inline:
            self._run_inline()
            if gate.inline or not self._scheduler.queued:
                return
        capacity = self._capacity() - len(self._jobs)
        if capacity <= 0:
            return
        per_record = max(self._seconds_per_record, 1e-7)
        largest = max(1, min(self.config.max_messages_per_item, int(MAX_ITEM_SECONDS / per_record)))
        smallest = max(1, min(largest, int(MIN_ITEM_SECONDS / per_record)))
        for item in self._scheduler.take(capacity, largest, smallest):
            self._submit(Job(item))

    def _submit(self, job: Job) -> None:
        assert self._pool is not None
        self._hand_out(job)
        self._pool.submit(job)

    def _hand_out(self, job: Job) -> None:
        for segment in job.segments:
            segment.partition.out_segments += 1
        self._jobs.add(job)

    def _run_inline(self) -> None:
        """Run one work item on the poll thread: the same run_job and the same result path as a slot.

        The item is formed by the same Scheduler.take (so the ordering mode holds), topped up with
        this iteration's direct runs (runs_directly: nothing else of their partition exists, so
        records run one after another in offset order need no lanes), and holds at most the
        iteration's budget of estimated work; its result is booked at once, before this
        iteration's pauses and commit. What the budget leaves of the direct runs is queued after
        the result is booked, so a tail put back by the result stays ahead of it.
        """
        assert self._processor is not None
        gate = self._inline
        largest = min(self.config.max_messages_per_item, gate.budget_records(self._handler_cost.seconds_per_record))
        items = self._scheduler.take(1, largest, largest)
        segments: list[Segment[PartitionState, Message]] = items[0] if items else []
        rests: list[tuple[PartitionState, list[Message]]] = []
        if self._direct:
            room = largest - sum(len(segment.messages) for segment in segments)
            for state, batch in self._direct:
                self.direct_records += min(room, len(batch)) if room > 0 else 0
                if room >= len(batch):
                    segments.append(DirectSegment(state, batch, []))
                    room -= len(batch)
                elif room > 0:
                    segments.append(DirectSegment(state, batch[:room], []))
                    rests.append((state, batch[room:]))
                    room = 0
                else:
                    rests.append((state, batch))
            self._direct = []
        if not segments:
            return
        job = Job(segments, inline=True)
        self._hand_out(job)
        if self._run_queue is None:
            self._run_queue = RunQueueClock()
        self._inline_running = 1
        cpu_before, switches_before = thread_usage()
        queued_before = self._run_queue.read()
        began = time.perf_counter()
        try:
            self._processor.run_job(job)
        except Exception:     # a bug in the runtime, not in the handler: as in a slot, log and go on
            log.exception("inline work item crashed")
        finally:
            self._inline_running = 0
        elapsed = time.perf_counter() - began
        cpu_after, switches_after = thread_usage()
        queued_after = self._run_queue.read()
        self._drain_results()
        for state, rest in rests:
            if not state.revoked:
                self._enqueue(state, rest)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        queued = None if queued_before is None or queued_after is None else queued_after - queued_before
        if not gate.item_finished(elapsed, time.monotonic(), cpu_seconds=cpu, waited=switches_after > switches_before,
                                  run_queue_seconds=queued, handed_back=job.handed_back):
            self.metrics.inline_execution.set(0)
            log.warning("%s: work items go to the slots again", "a record needs a retry in place" if job.handed_back
                        else "the handler held the poll thread", extra={
                "item_seconds": round(elapsed, 3), "cpu_seconds": None if cpu is None else round(cpu, 3),
                "waited": switches_after > switches_before,
                "run_queue_seconds": None if queued is None else round(queued, 3),
                "records": sum(len(s.messages) for s in job.segments),
                "retry_in_place": job.handed_back, "stalls": gate.stalls,
                "slots_for_seconds": round(gate.seconds_until_allowed(time.monotonic()), 1)})

    def _queue_direct_runs(self) -> None:
        """Inline execution ended: this iteration's direct runs take the lanes after all."""
        direct, self._direct = self._direct, []
        for state, batch in direct:
            if not state.revoked:
                self._enqueue(state, batch)

    def _inline_changed(self) -> None:
        inline = self._inline.inline
        self.metrics.inline_execution.set(1 if inline else 0)
        log.info("running work items %s", "on the poll thread (fast handler)" if inline else "in the slots",
                 extra={"handler_seconds_per_record": round(self._handler_cost.seconds_per_record, 7),
                        "seconds_per_record": round(self._seconds_per_record, 7)})

    # -- results ----------------------------------------------------------------------------

    def _drain_results(self) -> None:
        results = self._results
        scheduler = self._scheduler
        processed = failed = retried = 0
        while results:
            result = results.popleft()
            self._jobs.discard(result.job)
            if result.handled:
                # Smoothed handler time per record; sizes the next work items.
                self._seconds_per_record += 0.2 * (result.elapsed / result.handled - self._seconds_per_record)
                cost = handler_seconds(self._inline.policy, result.elapsed, records=result.handled,
                                       cpu_seconds=result.cpu_seconds, waits=result.waits)
                self._handler_cost.add(cost / result.handled)
            failed += result.failed_attempts
            retried += result.retries_in_place
            for segment, (handled, failures) in zip(result.job.segments, result.segments, strict=True):
                state: PartitionState = segment.partition
                state.out_segments -= 1
                if state.revoked:
                    continue
                messages = segment.messages
                held: set[int] = set()
                if failures is None:
                    if handled:
                        run = messages if handled == len(messages) else messages[:handled]
                        state.tracker.done_many(list(map(_offset, run)))
                        state.breaker.record_successes(handled)
                        processed += handled
                else:
                    settled, held = self._settle_with_failures(state, segment, handled, failures)
                    processed += settled
                if handled < len(messages) and self._states.get((state.topic, state.partition)) is state \
                        and not self._stopping.is_set():
                    # Not run (a slot gave up unexpectedly, a retry in place handed back): run it again, in order.
                    tail = messages[handled:]
                    if type(segment) is DirectSegment:
                        # It took no lanes and nothing else of its partition is queued (runs_directly;
                        # the rest of its run is queued after this): queued afresh, it stays in order.
                        self._enqueue(state, tail)
                    else:
                        scheduler.requeue(segment, tail, [m.key() for m in tail] if self._keyed else None, held)
                elif held:
                    for lane in segment.lanes:
                        if id(lane) not in held:
                            scheduler.release(lane)
                elif segment.lanes:
                    scheduler.release_all(segment.lanes)
        if processed:
            self.metrics.processed.inc(processed)
        if failed:
            self.metrics.failed.inc(failed)
        if retried:
            self.metrics.retried.labels("in-place").inc(retried)

    def _settle_with_failures(self, state: PartitionState, segment: Segment[PartitionState, Message], handled: int,
                              failures: list[Failure]) -> tuple[int, set[int]]:
        """Book a segment with failures, in order (the breaker counts outcomes in sequence).

        Returns the records settled and the ids of lanes the breaker holds back (kept out).
        """
        by_index = {failure.index: failure for failure in failures}
        done: list[int] = []
        successes = 0
        settled = 0
        held: set[int] = set()
        breaker = state.breaker
        for index, message in enumerate(segment.messages[:handled]):
            failure = by_index.get(index)
            if failure is None:
                done.append(message.offset())  # type: ignore[arg-type]
                successes += 1
                continue
            breaker.record_successes(successes)
            settled += successes
            successes = 0
            key = message.key() if self._keyed else None
            lane = self._scheduler.lane_for(segment, key)
            if self._on_failure(state, lane, message, failure):
                if type(segment) is DirectSegment:
                    # Ran without a lane: take one now, so the key's later records wait behind the
                    # held record as they would behind a lane handed out by take().
                    lane = self._scheduler.hold(state, key)
                    state.held[-1] = (message, lane)
                if lane is not None:
                    held.add(id(lane))
        breaker.record_successes(successes)
        settled += successes
        state.tracker.done_many(done)
        return settled, held

    def _on_failure(self, state: PartitionState, lane: Lane[Any, Any] | None, message: Message,
                    failure: Failure) -> bool:
        """Route a failed record to a retry tier or the DLQ. True when the breaker holds it back."""
        offset = message.offset()
        action = failure.action
        extra = {**state.log_extra(offset), "exception": failure.info.exception_class,
                 "attempts": failure.attempts}
        publisher = self._publisher
        if isinstance(action, SendToRetryTier):
            assert publisher is not None
            due = retry_due_ms(int(time.time() * 1000), action.delay_seconds)
            log.info("handing record to retry tier %d: %s", action.tier, failure.info.message,
                     extra={**extra, "tier": action.tier, "due_ms": due})
            self._write(state, message, lambda done: publisher.send_retry(
                message, failure.info, tier=action.tier, due_ms=due, attempts=failure.attempts, on_done=done),
                on_acked=lambda: self.metrics.retried.labels("tier").inc())
            return False
        now = time.monotonic()
        breaker = state.breaker
        if not breaker.allow_dead_letter():
            breaker.refuse_dead_letter(now)
            state.held.append((message, lane))
            self._breaker_opened(state)
            log.warning("dead-letter circuit breaker open: holding record back", extra=extra)
            return True
        tripped = breaker.record_dead_letter(now)
        kind = action.kind
        if publisher is not None and publisher.dead_letter_topic is not None:
            log.warning("dead-lettering record (%s): %s", kind, failure.info.message, extra={**extra, "kind": kind})
            self._write(state, message, lambda done: publisher.send_dead_letter(
                message, failure.info, kind=kind, attempts=failure.attempts, on_done=done),
                on_acked=lambda: self.metrics.dead_lettered.labels(kind).inc())
        else:
            log.error("dropping failed record (no dead-letter topic) (%s): %s", kind, failure.info.message,
                      extra={**extra, "kind": kind})
            state.tracker.done_many([offset])  # type: ignore[list-item]
        if tripped:
            self._breaker_opened(state)
        return False

    def _write(self, state: PartitionState, message: Message, send: Callable[[Callable[[KafkaError | None], None]],
               bool], on_acked: Callable[[], None]) -> None:
        """Write to the DLQ/a retry tier; the source offset is done only once the write is acknowledged.

        A failed write is retried with backoff (write_retry.py); past the bound its partition is
        paused and reported (/readyz, lagpilot_worker_dead_letter_write_stalled) until a retry
        goes through.
        """
        state.pending_writes += 1
        failures = 0
        stalled = False

        def finished() -> None:
            nonlocal stalled
            state.pending_writes -= 1
            if stalled:
                stalled = False
                self._write_unstalled(state)

        def delivered(err: KafkaError | None) -> None:
            if err is None:
                finished()
                if not state.revoked:
                    state.tracker.done_many([message.offset()])  # type: ignore[list-item]
                on_acked()
                return
            retry_later(str(err))

        def retry_later(error: str) -> None:
            nonlocal failures, stalled
            if state.revoked:
                finished()
                return
            failures += 1
            self.metrics.write_errors.inc()
            decision = next_write_retry(self.config.write_retry, failures, random.random())
            log.error("writing a failed record failed (attempt %d), retrying in %.1fs: %s", failures,
                      decision.delay_seconds, error, extra={**state.log_extra(message.offset()), "attempts": failures})
            if decision.pause_partition and not stalled:
                stalled = True
                self._write_stalled(state, error)
            heapq.heappush(self._write_retries, (time.monotonic() + decision.delay_seconds, next(self._sequence),
                                                 attempt))

        def attempt() -> None:
            if state.revoked:
                finished()
                return
            try:
                queued = send(delivered)
                error = "the producer's queue is full"
            except Exception as exc:    # e.g. the broker refused the topic (authorization, unknown topic)
                queued, error = False, f"could not queue the write: {exc}"
            if not queued:
                retry_later(error)

        attempt()

    def _write_stalled(self, state: PartitionState, error: str) -> None:
        count = self._stalled_writes.get(state, 0)
        self._stalled_writes[state] = count + 1
        if count:
            return
        self.metrics.write_stalled.labels(state.topic, str(state.partition)).set(1)
        log.error("writes to the dead-letter/retry topic keep failing: partition paused until one goes through "
                  "(%s)", error, extra={**state.log_extra(), "retry_every_seconds":
                                        self.config.write_retry.backoff_max_seconds})

    def _write_unstalled(self, state: PartitionState) -> None:
        count = self._stalled_writes.get(state, 0) - 1
        if count > 0:
            self._stalled_writes[state] = count
            return
        self._stalled_writes.pop(state, None)
        if not state.revoked:
            self.metrics.write_stalled.labels(state.topic, str(state.partition)).set(0)
            log.info("writes to the dead-letter/retry topic go through again: partition resumed",
                     extra=state.log_extra())

    def _pending_writes(self) -> int:
        return (self._publisher.pending if self._publisher is not None else 0) + len(self._write_retries)

    def _poll_publisher(self) -> None:
        if self._publisher is not None and self._publisher.pending:
            self._publisher.poll()

    # -- breaker ----------------------------------------------------------------------------

    def _breaker_opened(self, state: PartitionState) -> None:
        if state in self._open_breakers:
            return
        self._open_breakers.add(state)
        state.halted = True
        self._scheduler.block(state)
        self.metrics.breaker_open.labels(state.topic, str(state.partition)).set(1)
        log.error("dead-letter circuit breaker OPEN: partition paused, nothing more is dead-lettered (%s)",
                  state.breaker.reason, extra={**state.log_extra(), "cooldown_seconds":
                                               self.config.breaker.cooldown_seconds})

    def _check_breakers(self, now: float) -> None:
        for state in list(self._open_breakers):
            breaker = state.breaker
            if breaker.state is BreakerState.OPEN and breaker.poll(now):
                log.info("dead-letter circuit breaker half-open: retrying held records", extra=state.log_extra())
                state.halted = False
                self._scheduler.unblock(state)
                held, state.held = state.held, []
                if held:
                    segments: list[Segment[PartitionState, Message]] = []
                    by_lane: dict[int, Segment[PartitionState, Message]] = {}
                    for message, lane in held:
                        key = id(lane) if lane is not None else 0
                        segment = by_lane.get(key)
                        if segment is None:
                            segment = by_lane[key] = Segment(state, [], [lane] if lane is not None else [])
                            segments.append(segment)
                        segment.messages.append(message)
                    self._submit(Job(segments))
            elif breaker.state is BreakerState.OPEN and not self._scheduler.is_blocked(state):
                state.halted = True               # a failed probe: block again
                self._scheduler.block(state)
            elif breaker.state is BreakerState.CLOSED:
                self._open_breakers.discard(state)
                state.halted = False
                self._scheduler.unblock(state)
                self.metrics.breaker_open.labels(state.topic, str(state.partition)).set(0)
                log.info("dead-letter circuit breaker closed", extra=state.log_extra())

    # -- timers, pauses, commits ------------------------------------------------------------

    def _run_timers(self, now: float) -> None:
        if self._due_gate.next_due_ms() is not None:
            for state, batch in self._due_gate.release(int(time.time() * 1000)):
                if not state.revoked:
                    self._enqueue(state, batch)
        if self._open_breakers:
            self._check_breakers(now)
        retries = self._write_retries
        while retries and retries[0][0] <= now:
            _, _, attempt = heapq.heappop(retries)
            attempt()

    def _update_pauses(self) -> None:
        assert self._consumer is not None
        states = self._states
        if self._stopping.is_set():
            desired = set(states.values())
            self._uncommitted_total = sum(s.tracker.uncommitted for s in desired)
            self._room = 0
        else:
            counts = {state: state.tracker.uncommitted for state in states.values()}
            self._uncommitted_total = sum(counts.values())
            self._releasable_total = sum(state.tracker.releasable for state in states.values())
            self._awaiting_total = sum(state.tracker.awaiting_ack for state in states.values())
            decision = self._backpressure.update(counts, time.monotonic())
            self._room = decision.room
            desired = decision.paused
            if (self._room <= 0 and self._awaiting_total and len(self._held) >= self._hold_limit()
                    and time.monotonic() < self._sync_commit_after):
                # Waiting for a commit answer with a batch held (the synchronous commit failed):
                # consume() must go on serving answers without returning records.
                desired = set(states.values())
            desired |= self._due_gate.waiting_partitions()
            for state in self._open_breakers:
                if state.breaker.state is BreakerState.OPEN:
                    desired.add(state)
            desired.update(s for s in self._stalled_writes if not s.revoked)
        if desired == self._paused:
            return
        to_pause = [s.kafka_tp for s in desired - self._paused if not s.revoked]
        to_resume = [s.kafka_tp for s in self._paused - desired if not s.revoked]
        self._consumer.pause(to_pause)
        self._consumer.resume(to_resume)
        self._paused = desired

    def _maybe_commit(self, now: float) -> None:
        # A record leaves the window only when the broker answers a commit covering it, so commits
        # go out early enough for the answer to arrive before the window fills: on the interval,
        # and sooner once half the window is used (at most every MIN_COMMIT_GAP, or at once when a
        # quarter of the window is finished and unsent: a fast handler fills the rest in less than
        # the gap). The interval's commit also sends partitions whose offset map alone changed;
        # the sooner ones only partitions whose offset moved (they carry the current map too): a
        # slow record holding the offset back must not turn every iteration into a commit request.
        releasable = self._releasable_total
        if self._commit_would_free_window(now):
            self._commit_and_wait(now)
            return
        on_interval = now >= self._next_commit
        if not on_interval:
            window = self._backpressure.limits.max_uncommitted
            if self._room <= 0 and releasable and not self._awaiting_total:
                pass
            elif self._uncommitted_total < window // 2 or (
                    releasable < window // 4 and now < self._last_commit + MIN_COMMIT_GAP_SECONDS):
                return
        self._next_commit = now + self.config.commit_interval_seconds
        self._last_commit = now
        self._commit(list(self._states.values()), asynchronous=True, map_changes=on_interval)
        if releasable:
            self._update_pauses()     # count what now awaits an answer (the next fetch decision uses it)

    def _commit_would_free_window(self, now: float) -> bool:
        """The window is full, a batch is held, and only a commit answer would make room."""
        return (self._room <= 0 and bool(self._releasable_total or self._awaiting_total)
                and len(self._held) >= self._hold_limit() and now >= self._sync_commit_after
                and not self._stopping.is_set())

    def _commit_and_wait(self, now: float) -> None:
        """The window is full and only a commit answer would free it: commit synchronously.

        An asynchronous commit's answer is served only by consume(), which also hands out records
        the window has no room for: the loop holds one batch of them aside (see _iterate), and
        beyond that it would have to pause every partition, which costs a refetch that librdkafka
        starts only about a second after the resume. A synchronous commit waits one round trip,
        which the loop would wait anyway, and needs no poll. It resends the offsets still awaiting
        an answer: the broker stores them again, and its answer covers the earlier asynchronous
        commits too (a partition's commits are stored in the order they were sent). If it fails
        (a rebalance is under way), every partition is paused for a while so that consume()
        serves the rebalance and the answers without handing out records (see _update_pauses)."""
        states = [s for s in self._states.values()
                  if not s.revoked and (s.tracker.needs_commit() or s.tracker.awaiting_ack)]
        if not states:
            # Nothing to send (the totals are from before this iteration's changes): wait as usual.
            self._sync_commit_after = now + BUSY_WAIT_SECONDS
            return
        self._next_commit = now + self.config.commit_interval_seconds
        self._last_commit = now
        if self._commit(states, asynchronous=False, resend=True):
            self.metrics.window_commit_waits.inc()
            self._update_pauses()     # the window has room again: fetch in the next iteration
        else:
            self._sync_commit_after = now + SYNC_COMMIT_BACKOFF_SECONDS

    def _commit(self, states: list[PartitionState], asynchronous: bool, map_changes: bool = True,
                resend: bool = False) -> bool:
        """Commit each partition's lowest unfinished offset, with the map of finished ones above it.

        `map_changes`: also partitions whose offset did not move but whose map did. `resend`: also
        partitions with commits awaiting the broker's answer. False when a synchronous commit failed."""
        assert self._consumer is not None
        requests: list[tuple[PartitionState, int]] = []
        offsets: list[TopicPartition] = []
        for state in states:
            tracker = state.tracker
            if state.revoked or not (tracker.needs_commit(map_changes) or (resend and tracker.awaiting_ack)):
                continue
            offset = tracker.committable()
            assert offset is not None      # needs_commit() is False and nothing awaits an answer without one
            requests.append((state, offset))
            offsets.append(TopicPartition(state.topic, state.partition, offset,
                                          metadata=self._offset_map(state, offset)))
        if not requests:
            return True
        ok = self._consumer.commit(offsets, asynchronous)
        if ok:
            for state, offset in requests:
                state.tracker.mark_committed(offset)
                if not asynchronous:
                    state.tracker.acknowledged(offset)
            self.metrics.commits.inc()
        return ok

    def _offset_map(self, state: PartitionState, committable: int) -> str:
        """The commit metadata of `state`: its finished offsets above the committable one, and those of
        an earlier owner's map it has not fetched up to yet; or ""."""
        limit = self.config.offset_metadata_max_bytes
        if not limit:
            return ""
        flags = carry_inherited(state.tracker.done_flags(), committable, state.done_map, state.tracker.last_added)
        if flags is None:
            return ""
        text = encode_offset_map(flags[0], flags[1], limit)
        if text is None:
            self.metrics.offset_map_overflows.inc()
            return ""
        return text

    def _on_commit_error(self, err: KafkaError, partitions: list[TopicPartition]) -> None:
        log.warning("asynchronous commit failed, will commit again: %s", err)
        for tp in partitions:
            state = self._states.get((tp.topic, tp.partition))
            if state is not None:
                state.tracker.commit_failed(tp.offset)

    def _on_commit_ack(self, partitions: list[TopicPartition]) -> None:
        # The broker stored these offsets: the records below them leave the window.
        for tp in partitions:
            state = self._states.get((tp.topic, tp.partition))
            if state is not None and tp.offset >= 0:
                state.tracker.acknowledged(tp.offset)

    def _window_use(self) -> float:
        """Records fetched and not covered by a commit the broker acknowledged (held records are not
        in it: they never started). Called from the metrics thread too: list() copies the dict at once."""
        return float(sum(state.tracker.uncommitted for state in list(self._states.values())))

    def _update_gauges(self, now: float) -> None:
        self._next_gauges = now + GAUGE_INTERVAL_SECONDS
        metrics = self.metrics
        metrics.assigned_partitions.set(len(self._states))
        metrics.paused_partitions.set(len(self._paused))
        if self._consumer is None:
            return
        for state in self._states.values():
            # Every assigned partition has a 0/1 series, so "closed" and "never reported" differ.
            partition = str(state.partition)
            metrics.breaker_open.labels(state.topic, partition).set(1 if state in self._open_breakers else 0)
            metrics.write_stalled.labels(state.topic, partition).set(1 if state in self._stalled_writes else 0)
            high = self._consumer.high_watermark(state.topic, state.partition)
            position = state.tracker.committable()
            if position is None:
                position = state.tracker.committed
            if high is not None and position is not None:
                metrics.partition_lag.labels(state.topic, str(state.partition)).set(max(0, high - position))

    # -- rebalances -------------------------------------------------------------------------

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        self.metrics.rebalances.inc()
        self.metrics.partitions_gained.inc(len(partitions))
        span = self._rebalance_clock.assigned(time.monotonic())
        if span is not None:
            self.metrics.rebalance_seconds.labels(str(span.reason)).observe(span.seconds)
        self._drop_held(partitions)
        for tp in partitions:
            tier = self._retry_tiers.get(tp.topic, 0)
            self._states[(tp.topic, tp.partition)] = PartitionState(
                tp.topic, tp.partition, tier, PartitionBreaker(self.config.breaker))
        if self.config.offset_metadata_max_bytes:
            self._load_offset_maps(partitions)
        self._consumer.incremental_assign(partitions)
        # librdkafka may keep a partition's pause flag across revoke and re-assignment; a new
        # assignment starts fetching, whatever an earlier one was doing.
        self._consumer.resume(partitions)
        self._assigned_once = True
        rebalance = {"rebalance": str(span.reason), "rebalance_seconds": round(span.seconds, 3)} if span else {}
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions],
                                               "assigned": len(self._states), **rebalance})

    def _load_offset_maps(self, partitions: list[TopicPartition]) -> None:
        """Read the committed offsets' maps: records an earlier owner finished are skipped when fetched.

        Runs before the partitions are fetched from. A failed read or a map that does not decode
        means no map: those records run again (at-least-once either way).
        """
        assert self._consumer is not None
        committed = self._consumer.committed(partitions, COMMITTED_READ_TIMEOUT_SECONDS)
        if committed is None:
            return
        loaded: dict[str, int] = {}
        for tp in committed:
            state = self._states.get((tp.topic, tp.partition))
            if state is None or tp.error is not None or tp.offset < 0 or not tp.metadata:
                continue
            done_map, problem = read_offset_map(tp.metadata, tp.offset)
            if problem is not None:
                self.metrics.offset_map_ignored.inc()
                log.warning("committed metadata is not an offset map; its records run again: %s", problem,
                            extra={**state.log_extra(tp.offset)})
            elif done_map is not None and done_map.starts:
                state.done_map = done_map
                loaded[f"{tp.topic}[{tp.partition}]"] = done_map.count
        if loaded:
            log.info("offset maps read: records finished by an earlier owner are skipped", extra={"records": loaded})

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        if partitions:
            self._rebalance_clock.revoked(time.monotonic())
            self.metrics.partitions_lost.labels(str(RebalanceReason.REVOKE)).inc(len(partitions))
        self._release(partitions, commit=True)
        self._consumer.incremental_unassign(partitions)

    def _on_lost(self, partitions: list[TopicPartition]) -> None:
        assert self._consumer is not None
        log.warning("partitions lost (another member may own them now); nothing is committed for them",
                    extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})
        self._rebalance_clock.lost(time.monotonic())
        self.metrics.partitions_lost.labels(str(RebalanceReason.LOST)).inc(len(partitions))
        self._release(partitions, commit=False)
        self._consumer.incremental_unassign(partitions)

    def _release(self, partitions: list[TopicPartition], commit: bool) -> None:
        """Give partitions back: stop handing them out, wait (bounded) for their work, commit, forget."""
        self._drop_held(partitions)
        states = [s for tp in partitions if (s := self._states.pop((tp.topic, tp.partition), None)) is not None]
        if not states:
            return
        for state in states:
            dropped = self._scheduler.drop(state)
            dropped.extend(self._due_gate.drop(state))
            state.held.clear()
            self._open_breakers.discard(state)
            self._paused.discard(state)
        self._backpressure.forget(states)
        stopping = self._stopping.is_set()     # _shutdown already waited and counted
        timeout = self.config.revoke_timeout_seconds if commit and not stopping else 0.0
        deadline = time.monotonic() + timeout
        for state in states:
            # The slots finish the record in hand and start no other of these partitions: the wait
            # below is one handler call, not whole work items, and what never started is no duplicate.
            state.halted = True
        in_flight = 0 if stopping else self._in_flight_records(states)
        self.metrics.revoked_in_flight.inc(in_flight)

        def busy() -> bool:
            return any(s.out_segments or s.pending_writes for s in states)

        while busy() and time.monotonic() < deadline:
            self._last_loop = time.monotonic()
            self._drain_results()
            self._poll_publisher()
            self._run_timers(time.monotonic())
            if busy():
                self._wake.wait(0.01)
                self._wake.clear()
        abandoned = 0 if stopping else self._in_flight_records(states)
        self.metrics.revoked_abandoned.inc(abandoned)
        refused = 0
        if commit and not self._commit(states, asynchronous=False, resend=True):
            # The broker refused the final commit (ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS while the
            # group rebalances again, as in a rolling update): everything it would have covered runs
            # again on the next owner. Said here, so duplicates are accounted for, not a mystery.
            refused = sum(state.tracker.uncommitted for state in states)
            self.metrics.revoke_commit_refused.inc(refused)
            log.warning("the broker refused the commit of revoked partitions: their uncommitted records run "
                        "again on the next owner", extra={"refused_records": refused})
        unfinished = 0
        for state in states:
            unfinished += state.tracker.in_flight
            state.revoked = True
            state.tracker.revoke()
            self.metrics.forget_partition(state.topic, state.partition)
        log.info("partitions revoked", extra={
            "partitions": [f"{s.topic}[{s.partition}]" for s in states], "committed": commit,
            "unfinished_records": unfinished, "in_flight_records": in_flight, "abandoned_records": abandoned,
            "refused_records": refused,
            "assigned": len(self._states)})

    def _in_flight_records(self, states: list[PartitionState]) -> int:
        """Records of `states` that may be running now: one per work item out with a segment of them
        (a slot runs one record at a time), plus unacknowledged dead-letter/retry writes."""
        wanted = set(states)
        running = sum(1 for job in self._jobs if any(segment.partition in wanted for segment in job.segments))
        return running + sum(state.pending_writes for state in states)

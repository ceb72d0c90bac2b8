"""Handing admitted records to the slots, or running them on the poll thread (consumer-group worker).

The Dispatcher owns the Scheduler (lanes per the ordering mode) and the work items out: it forms
items sized by the measured handler time and submits them to the pool, or, for a handler of a few
microseconds per record, runs one item on the poll thread itself through the same run_job and
result path (inline.py says when). Results of items are not read here: `book_results` (the
ResultBook) is the next step and is called right after an inline item, so that the item's outcome
is booked before the iteration's pauses and commit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Message

from .breaker import BreakerState
from .config import WorkerConfig
from .inline import HandlerCost, InlineGate, InlinePolicy, handler_seconds, runs_directly
from .metrics import WorkerMetrics
from .ordering import OrderingMode, Scheduler, Segment
from .partition import DirectSegment, PartitionState, message_key
from .pool import SlotPool
from .processing import Job, JobResult, Processor
from .threadclock import RunQueueClock, thread_usage

log = logging.getLogger("lagpilot_worker")

PREFETCH_PER_SLOT = 2         # work items handed out per slot: one running, one ready to start
# Work items are sized by the measured handler time: big enough that the hand-off to a slot is
# negligible, small enough that every slot gets work and results come back often.
MIN_ITEM_SECONDS = 0.005
MAX_ITEM_SECONDS = 0.1
INITIAL_SECONDS_PER_RECORD = 0.05   # assume slow until measured: small first items


def item_size_bounds(seconds_per_record: float, max_messages_per_item: int) -> tuple[int, int]:
    """(largest, smallest) records per work item for a handler taking `seconds_per_record` (pure)."""
    per_record = max(seconds_per_record, 1e-7)
    largest = max(1, min(max_messages_per_item, int(MAX_ITEM_SECONDS / per_record)))
    smallest = max(1, min(largest, int(MIN_ITEM_SECONDS / per_record)))
    return largest, smallest


class Dispatcher:
    """The scheduler's lanes, the work items out, and where each item runs (a slot or the poll thread)."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, policy: InlinePolicy, *, is_async: bool) -> None:
        self._config = config
        self._metrics = metrics
        self.scheduler: Scheduler[PartitionState, Message] = Scheduler(config.ordering)
        self.keyed = config.ordering is OrderingMode.KEY
        self.jobs: set[Job] = set()
        self.pool_size = config.pool_size
        self.seconds_per_record = INITIAL_SECONDS_PER_RECORD
        self.inline = InlineGate(policy, allowed=not is_async)
        # The handler's cost per record (CPU time unless it waits per record, inline.handler_seconds)
        # decides inline execution: wall time on a loaded host would never allow it.
        self._handler_cost = HandlerCost(policy, INITIAL_SECONDS_PER_RECORD)
        self._run_queue: RunQueueClock | None = None   # the poll thread's, opened by it
        self.inline_running = 0           # 1 while the poll thread runs a work item (in-flight gauge)
        # Runs fetched this iteration that may skip the lanes (runs_directly), for poll().
        self._direct: list[tuple[PartitionState, list[Message]]] = []
        self.direct_records = 0           # records run inline without lanes (read by tests)
        self._pool: SlotPool[Job] | None = None
        self._processor: Processor | None = None
        self.book_results: Callable[[], None] = lambda: None   # the next step: the ResultBook

    def start(self, pool: SlotPool[Job], processor: Processor) -> None:
        self._pool = pool
        self._processor = processor

    def resized(self, pool_size: int) -> None:
        self.pool_size = pool_size      # items out follow the pool: PREFETCH_PER_SLOT per slot

    def close(self) -> None:
        if self._run_queue is not None:
            self._run_queue.close()
            self._run_queue = None

    # -- admitted records in --------------------------------------------------------------------

    def enqueue(self, state: PartitionState, batch: list[Message]) -> None:
        if batch:
            self.scheduler.enqueue(state, batch, [m.key() for m in batch] if self.keyed else None)

    def enqueue_run(self, state: PartitionState, batch: list[Message]) -> None:
        """A fetched run of a partition (never empty): keys read in C in key mode."""
        if self.keyed:
            self.scheduler.enqueue(state, batch, list(map(message_key, batch)))
        else:
            self.scheduler.enqueue(state, batch)

    def may_run_directly(self, state: PartitionState, *, paused: bool, stopping: bool) -> bool:
        """Decided before the run is tracked: in_flight counts only what was there already."""
        return self.inline.inline and runs_directly(
            inline=True, tier=state.tier, in_flight=state.tracker.in_flight, out_segments=state.out_segments,
            halted=state.halted, breaker_closed=state.breaker.state is BreakerState.CLOSED,
            held=len(state.held), blocked=self.scheduler.is_blocked(state), paused=paused, stopping=stopping)

    def add_direct(self, state: PartitionState, batch: list[Message]) -> None:
        self._direct.append((state, batch))

    # -- work items out --------------------------------------------------------------------------

    def capacity(self) -> int:
        return PREFETCH_PER_SLOT * self.pool_size

    def has_ready_work(self) -> bool:
        """Queued records and a free place for an item: the loop should not wait on the consumer."""
        return bool(self.scheduler.queued) and len(self.jobs) < self.capacity()

    def poll(self) -> None:
        """Hand out what the slots (or the poll thread) can take now."""
        if not self.scheduler.queued and not self._direct:
            return
        gate = self.inline
        was_inline = gate.inline
        if gate.update(self._handler_cost.seconds_per_record, time.monotonic()) != was_inline:
            self._inline_changed()
        if not gate.inline and self._direct:
            self._queue_direct_runs()
        if gate.inline:
            self._run_inline()
            if gate.inline or not self.scheduler.queued:
                return
        capacity = self.capacity() - len(self.jobs)
        if capacity <= 0:
            return
        largest, smallest = item_size_bounds(self.seconds_per_record, self._config.max_messages_per_item)
        for item in self.scheduler.take(capacity, largest, smallest):
            self.submit(Job(item))

    def submit(self, job: Job) -> None:
        assert self._pool is not None
        self._hand_out(job)
        self._pool.submit(job)

    def _hand_out(self, job: Job) -> None:
        for segment in job.segments:
            segment.partition.out_segments += 1
        self.jobs.add(job)

    def finished(self, result: JobResult) -> None:
        """A work item came back: it is no longer out, and its timing sizes the next ones."""
        self.jobs.discard(result.job)
        if result.handled:
            # Smoothed handler time per record; sizes the next work items.
            self.seconds_per_record += 0.2 * (result.elapsed / result.handled - self.seconds_per_record)
            cost = handler_seconds(self.inline.policy, result.elapsed, records=result.handled,
                                   cpu_seconds=result.cpu_seconds, waits=result.waits)
            self._handler_cost.add(cost / result.handled)

    def cancel_all(self) -> None:
        """Finish the record in hand, start no other (shutdown)."""
        for job in self.jobs:
            job.cancelled = True

    def records_out(self) -> int:
        return sum(len(seg.messages) for job in self.jobs for seg in job.segments)

    def items_with(self, states: list[PartitionState]) -> int:
        """Work items out with a segment of `states` (a slot runs one record at a time: one record each)."""
        wanted = set(states)
        return sum(1 for job in self.jobs if any(segment.partition in wanted for segment in job.segments))

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
        gate = self.inline
        largest = min(self._config.max_messages_per_item, gate.budget_records(self._handler_cost.seconds_per_record))
        items = self.scheduler.take(1, largest, largest)
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
        self.inline_running = 1
        cpu_before, switches_before = thread_usage()
        queued_before = self._run_queue.read()
        began = time.perf_counter()
        try:
            self._processor.run_job(job)
        except Exception:     # a bug in the runtime, not in the handler: as in a slot, log and go on
            log.exception("inline work item crashed")
        finally:
            self.inline_running = 0
        elapsed = time.perf_counter() - began
        cpu_after, switches_after = thread_usage()
        queued_after = self._run_queue.read()
        self.book_results()
        for state, rest in rests:
            if not state.revoked:
                self.enqueue(state, rest)
        cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
        queued = None if queued_before is None or queued_after is None else queued_after - queued_before
        if not gate.item_finished(elapsed, time.monotonic(), cpu_seconds=cpu, waited=switches_after > switches_before,
                                  run_queue_seconds=queued, handed_back=job.handed_back):
            self._metrics.inline_execution.set(0)
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
                self.enqueue(state, batch)

    def _inline_changed(self) -> None:
        inline = self.inline.inline
        self._metrics.inline_execution.set(1 if inline else 0)
        log.info("running work items %s", "on the poll thread (fast handler)" if inline else "in the slots",
                 extra={"handler_seconds_per_record": round(self._handler_cost.seconds_per_record, 7),
                        "seconds_per_record": round(self.seconds_per_record, 7)})

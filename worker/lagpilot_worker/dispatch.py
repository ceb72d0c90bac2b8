"""Handing admitted records out as work items (consumer-group worker).

The Dispatcher owns the Scheduler (lanes per the ordering mode) and the work items out: it forms
items sized by the measured handler time and submits them to the pool, or, while the InlineRunner
(inline_runner.py) runs items on the poll thread for a handler of a few microseconds per record,
lets it take one. Results of items are not read here: `book_results` (the ResultBook) is the next
step, called right after an inline item so that its outcome is booked before the iteration's
pauses and commit.
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Message

from .config import WorkerConfig
from .inline import InlinePolicy
from .inline_runner import InlineRunner
from .metrics import WorkerMetrics
from .ordering import OrderingMode, Scheduler
from .partition import PartitionState, message_key
from .pool import SlotPool
from .processing import Job, JobResult, Processor

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
    """The scheduler's lanes and the work items out; each item goes to a slot or to the InlineRunner."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, policy: InlinePolicy, *, is_async: bool) -> None:
        self._config = config
        self.scheduler: Scheduler[PartitionState, Message] = Scheduler(config.ordering)
        self.keyed = config.ordering is OrderingMode.KEY
        self.jobs: set[Job] = set()
        self.pool_size = config.pool_size
        self.seconds_per_record = INITIAL_SECONDS_PER_RECORD   # smoothed wall time: sizes the items
        self.inline = InlineRunner(config, metrics, policy, is_async=is_async,
                                   initial_seconds_per_record=INITIAL_SECONDS_PER_RECORD)
        self._pool: SlotPool[Job] | None = None
        self.book_results: Callable[[], None] = lambda: None   # the next step: the ResultBook

    def start(self, pool: SlotPool[Job], processor: Processor) -> None:
        self._pool = pool
        self.inline.start(processor)

    def resized(self, pool_size: int) -> None:
        self.pool_size = pool_size      # items out follow the pool: PREFETCH_PER_SLOT per slot

    def close(self) -> None:
        self.inline.close()

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

    def add_direct(self, state: PartitionState, batch: list[Message]) -> None:
        self.inline.add_direct(state, batch)

    # -- work items out --------------------------------------------------------------------------

    def capacity(self) -> int:
        return PREFETCH_PER_SLOT * self.pool_size

    def has_ready_work(self) -> bool:
        """Queued records and a free place for an item: the loop should not wait on the consumer."""
        return bool(self.scheduler.queued) and len(self.jobs) < self.capacity()

    def poll(self) -> None:
        """Hand out what the slots (or the poll thread) can take now."""
        inline = self.inline
        if not self.scheduler.queued and not inline.direct:
            return
        if inline.update(self.seconds_per_record, self.enqueue):
            inline.run_one(self.scheduler, self._hand_out, self.book_results, self.enqueue)
            if inline.gate.inline or not self.scheduler.queued:
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
            self.inline.measured(result)

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

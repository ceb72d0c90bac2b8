"""Running work items on the poll thread itself, for a handler of a few microseconds per record.

inline.py decides (pure) whether and how much; the InlineRunner does it: it measures the handler's
cost per record from every result, forms one item per loop iteration from the scheduler and the
iteration's direct runs (fetched runs of a partition of which nothing else exists, which need no
lanes), runs it through the same Processor.run_job as a slot, books its result at once through the
same ResultBook, and gives the work back to the slots when the handler turns out to block.
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
from .ordering import Scheduler, Segment
from .partition import DirectSegment, PartitionState
from .processing import Job, JobResult, Processor
from .threadclock import RunQueueClock, thread_usage

log = logging.getLogger("lagpilot_worker")

Run = tuple[PartitionState, list[Message]]


class InlineRunner:
    """The inline gate, the handler's measured cost, and the poll thread's own work item."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, policy: InlinePolicy, *, is_async: bool,
                 initial_seconds_per_record: float) -> None:
        self._config = config
        self._metrics = metrics
        self.gate = InlineGate(policy, allowed=not is_async)
        # The handler's cost per record (CPU time unless it waits per record, inline.handler_seconds)
        # decides inline execution: wall time on a loaded host would never allow it.
        self._handler_cost = HandlerCost(policy, initial_seconds_per_record)
        self._run_queue: RunQueueClock | None = None   # the poll thread's, opened by it
        self.running = 0                  # 1 while the poll thread runs a work item (in-flight gauge)
        # Runs fetched this iteration that may skip the lanes (runs_directly), for the next run_one().
        self.direct: list[Run] = []
        self.direct_records = 0           # records run inline without lanes (read by tests)
        self._processor: Processor | None = None

    def start(self, processor: Processor) -> None:
        self._processor = processor

    def close(self) -> None:
        if self._run_queue is not None:
            self._run_queue.close()
            self._run_queue = None

    @property
    def inline(self) -> bool:
        return self.gate.inline

    def measured(self, result: JobResult) -> None:
        """A work item's handler cost per record (called for every item with handled records)."""
        cost = handler_seconds(self.gate.policy, result.elapsed, records=result.handled,
                               cpu_seconds=result.cpu_seconds, waits=result.waits)
        self._handler_cost.add(cost / result.handled)

    def may_run_directly(self, state: PartitionState, *, blocked: bool, paused: bool, stopping: bool) -> bool:
        """Decided before the run is tracked: in_flight counts only what was there already."""
        return self.gate.inline and runs_directly(
            inline=True, tier=state.tier, in_flight=state.tracker.in_flight, out_segments=state.out_segments,
            halted=state.halted, breaker_closed=state.breaker.state is BreakerState.CLOSED,
            held=len(state.held), blocked=blocked, paused=paused, stopping=stopping)

    def add_direct(self, state: PartitionState, batch: list[Message]) -> None:
        self.direct.append((state, batch))

    def update(self, seconds_per_record: float, enqueue: Callable[[PartitionState, list[Message]], None]) -> bool:
        """Ask the gate again; when inline execution ended, this iteration's direct runs take the lanes
        after all (`enqueue`). True while work items run on the poll thread."""
        gate = self.gate
        was_inline = gate.inline
        if gate.update(self._handler_cost.seconds_per_record, time.monotonic()) != was_inline:
            self._metrics.inline_execution.set(1 if gate.inline else 0)
            log.info("running work items %s", "on the poll thread (fast handler)" if gate.inline else "in the slots",
                     extra={"handler_seconds_per_record": round(self._handler_cost.seconds_per_record, 7),
                            "seconds_per_record": round(seconds_per_record, 7)})
        if not gate.inline and self.direct:
            direct, self.direct = self.direct, []
            for state, batch in direct:
                if not state.revoked:
                    enqueue(state, batch)
        return gate.inline

    def run_one(self, scheduler: Scheduler[PartitionState, Message], hand_out: Callable[[Job], None],
                book_results: Callable[[], None], enqueue: Callable[[PartitionState, list[Message]], None]) -> None:
        """Run one work item on the poll thread: the same run_job and the same result path as a slot.

        The item is formed by the same Scheduler.take (so the ordering mode holds), topped up with
        this iteration's direct runs (runs_directly: nothing else of their partition exists, so
        records run one after another in offset order need no lanes), and holds at most the
        iteration's budget of estimated work; its result is booked at once, before this
        iteration's pauses and commit. What the budget leaves of the direct runs is queued after
        the result is booked, so a tail put back by the result stays ahead of it.
        """
        assert self._processor is not None
        gate = self.gate
        largest = min(self._config.max_messages_per_item, gate.budget_records(self._handler_cost.seconds_per_record))
        items = scheduler.take(1, largest, largest)
        segments: list[Segment[PartitionState, Message]] = items[0] if items else []
        rests: list[Run] = []
        if self.direct:
            room = largest - sum(len(segment.messages) for segment in segments)
            for state, batch in self.direct:
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
            self.direct = []
        if not segments:
            return
        job = Job(segments, inline=True)
        hand_out(job)
        if self._run_queue is None:
            self._run_queue = RunQueueClock()
        self.running = 1
        cpu_before, switches_before = thread_usage()
        queued_before = self._run_queue.read()
        began = time.perf_counter()
        try:
            self._processor.run_job(job)
        except Exception:     # a bug in the runtime, not in the handler: as in a slot, log and go on
            log.exception("inline work item crashed")
        finally:
            self.running = 0
        elapsed = time.perf_counter() - began
        cpu_after, switches_after = thread_usage()
        queued_after = self._run_queue.read()
        book_results()
        for state, rest in rests:
            if not state.revoked:
                enqueue(state, rest)
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

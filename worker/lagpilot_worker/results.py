"""Booking what the slots report (consumer-group worker): the step after the Dispatcher.

Each work item's result finishes offsets in the partition's tracker (which the OffsetCommits step
commits), hands failed records to the FailureRouter (retry tier, dead-letter topic, or held back
by an open breaker), and puts back, in order, what a slot did not run.
"""

from __future__ import annotations

import threading
from collections import deque

from confluent_kafka import Message

from .dispatch import Dispatcher
from .failures import FailureRouter
from .metrics import WorkerMetrics
from .ordering import Segment
from .partition import DirectSegment, PartitionState, PartitionStates, message_offset
from .processing import Failure, JobResult


class ResultBook:
    """Reads the results deque the slots append to; the poll thread is its only reader."""

    def __init__(self, results: deque[JobResult], dispatcher: Dispatcher, states: PartitionStates,
                 failures: FailureRouter, metrics: WorkerMetrics, stopping: threading.Event) -> None:
        self._results = results
        self._dispatcher = dispatcher
        self._states = states
        self._failures = failures
        self._metrics = metrics
        self._stopping = stopping

    @property
    def waiting(self) -> bool:
        return bool(self._results)

    def poll(self) -> None:
        results = self._results
        if not results:
            return
        dispatcher = self._dispatcher
        scheduler = dispatcher.scheduler
        keyed = dispatcher.keyed
        processed = failed = retried = 0
        while results:
            result = results.popleft()
            dispatcher.finished(result)
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
                        state.tracker.done_many(list(map(message_offset, run)))
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
                        dispatcher.enqueue(state, tail)
                    else:
                        scheduler.requeue(segment, tail, [m.key() for m in tail] if keyed else None, held)
                elif held:
                    for lane in segment.lanes:
                        if id(lane) not in held:
                            scheduler.release(lane)
                elif segment.lanes:
                    scheduler.release_all(segment.lanes)
        if processed:
            self._metrics.processed.inc(processed)
        if failed:
            self._metrics.failed.inc(failed)
        if retried:
            self._metrics.retried.labels("in-place").inc(retried)

    def _settle_with_failures(self, state: PartitionState, segment: Segment[PartitionState, Message], handled: int,
                              failures: list[Failure]) -> tuple[int, set[int]]:
        """Book a segment with failures, in order (the breaker counts outcomes in sequence).

        Returns the records settled and the ids of lanes the breaker holds back (kept out).
        """
        scheduler = self._dispatcher.scheduler
        keyed = self._dispatcher.keyed
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
            key = message.key() if keyed else None
            lane = scheduler.lane_for(segment, key)
            if self._failures.submit(state, lane, message, failure):
                if type(segment) is DirectSegment:
                    # Ran without a lane: take one now, so the key's later records wait behind the
                    # held record as they would behind a lane handed out by take().
                    lane = scheduler.hold(state, key)
                    state.held[-1] = (message, lane)
                if lane is not None:
                    held.add(id(lane))
        breaker.record_successes(successes)
        settled += successes
        state.tracker.done_many(done)
        return settled, held

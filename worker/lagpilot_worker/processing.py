"""Running work items in a slot: deserialize, call the handler, retry in place, report the outcome.

This is the only code that runs in the slots (threads or asyncio tasks). It never touches the
consumer, the offsets or the scheduler: it appends one `JobResult` per work item to a deque that
the poll thread drains, so the bookkeeping stays single-threaded and lock-free.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from lagpilot_contract import headers as h

from .dlq import FailureInfo
from .metrics import ThreadLocalHistogram
from .ordering import Segment
from .record import Deserializer, KafkaMessage, Origin, Record, origin_of
from .retry import Classifier, DeadLetter, RetryInPlace, RetryPolicy, SendToRetryTier, classify, next_action
from .threadclock import thread_usage


class PartitionView(Protocol):
    """What a slot reads of a partition's state (written by the poll thread)."""

    @property
    def revoked(self) -> bool: ...
    @property
    def halted(self) -> bool: ...     # its dead-letter breaker is open: start nothing more
    @property
    def tier(self) -> int: ...


class Job:
    """A work item handed to a slot (or run by the poll thread itself: `inline`)."""

    __slots__ = ("cancelled", "handed_back", "inline", "segments")

    def __init__(self, segments: list[Segment[Any, Any]], *, inline: bool = False) -> None:
        self.segments = segments
        self.cancelled = False
        self.inline = inline
        self.handed_back = False    # inline, a record needed a retry in place: the rest goes to a slot


class Failure:
    """A record the handler gave up on: where it goes next, and why."""

    __slots__ = ("action", "attempts", "index", "info")

    def __init__(self, index: int, action: DeadLetter | SendToRetryTier, info: FailureInfo, attempts: int) -> None:
        self.index = index          # position in its segment
        self.action = action
        self.info = info
        self.attempts = attempts    # handler calls so far, across retry tiers


# (records handled in order from the segment's start, failures among them or None)
SegmentResult = tuple[int, list[Failure] | None]


class JobResult:
    __slots__ = ("cpu_seconds", "elapsed", "failed_attempts", "handled", "job", "retries_in_place", "segments",
                 "waits")

    def __init__(self, job: Job, segments: list[SegmentResult], failed_attempts: int, retries_in_place: int,
                 handled: int, elapsed: float, cpu_seconds: float | None = None, waits: int = 0) -> None:
        self.job = job
        self.segments = segments
        self.failed_attempts = failed_attempts
        self.retries_in_place = retries_in_place
        self.handled = handled          # records handled (any outcome)
        self.elapsed = elapsed          # seconds the slot spent on the item
        self.cpu_seconds = cpu_seconds  # the running thread's CPU seconds meanwhile (None: unknown)
        self.waits = waits              # its voluntary context switches meanwhile


class _Abandoned(Exception):
    """The partition was revoked or the worker is stopping while waiting to retry."""


class _HandBack(Exception):
    """Inline, a record needs a retry in place: the poll thread must not wait out a backoff."""


class Processor:
    def __init__(
        self,
        handler: Callable[[Record], Any],
        *,
        deserializer: Deserializer | None,
        classifier: Classifier | None,
        policy: RetryPolicy,
        processing: ThreadLocalHistogram,
        end_to_end: ThreadLocalHistogram,
        results: deque[JobResult],
        wake: threading.Event,
        stopping: threading.Event,
        dead_letter_run_limit: int | None = None,
    ) -> None:
        self._handler = handler
        self._deserializer = deserializer
        self._classifier = classifier
        self._policy = policy
        self._processing = processing
        self._end_to_end = end_to_end
        self._results = results
        self._wake = wake
        self._stopping = stopping
        self._dead_letter_run_limit = dead_letter_run_limit
        self._random = random.Random()

    # -- shared helpers ---------------------------------------------------------------------

    def _prepare(self, message: KafkaMessage, tier: int) -> tuple[Origin | None, Any]:
        """The origin (retried records) and deserialized value; raises on a poison pill."""
        origin = origin_of(message) if tier else None
        raw = message.value()
        value = raw if self._deserializer is None else self._deserializer(raw)
        return origin, value

    def _decide(self, exc: Exception, attempt_in_hop: int, tier: int) -> RetryInPlace | DeadLetter | SendToRetryTier:
        return next_action(self._policy, classify(exc, self._classifier), attempt_in_hop, tier,
                           self._random.random())

    def _too_many_dead(self, failures: list[Failure], handled: int) -> bool:
        """The last `dead_letter_run_limit` records of this segment all need the DLQ.

        The breaker is decided in the poll thread when the item comes back; stopping the segment
        here keeps a bad deploy from running the handler over a whole (large) item first. The
        rest of the segment goes back to the queue, and the breaker (if it opened) holds it.
        """
        limit = self._dead_letter_run_limit
        if limit is None or len(failures) < limit:
            return False
        if failures[-limit].index != handled - limit:
            return False      # not a run: successes in between
        return all(isinstance(f.action, DeadLetter) for f in failures[-limit:])

    def _give_up(self, job: Job, state: PartitionView) -> bool:
        return job.cancelled or state.revoked or state.halted or self._stopping.is_set()

    def _finish(self, job: Job, segments: list[SegmentResult], failed: int, retries: int, handled: int,
                elapsed: float, cpu_seconds: float | None = None, waits: int = 0) -> None:
        self._results.append(JobResult(job, segments, failed, retries, handled, elapsed, cpu_seconds, waits))
        self._wake.set()

    # -- threads ----------------------------------------------------------------------------

    def run_job(self, job: Job) -> None:
        # The hot path of a fast handler: locals only, one clock read per record (a record's time
        # runs from the end of the previous one), one report per item. Every record is observed in
        # both histograms; consecutive records nearly always fall in the same bucket, so they are
        # tallied in a local run (two comparisons) and added to the slot's recorder when the bucket
        # changes and when the item ends (the sums too), not searched and stored one by one.
        handler = self._handler
        deserialize = self._deserializer
        processing = self._processing.recorder()
        latency = self._end_to_end.recorder()
        p_counts, p_bounds, p_lower, p_upper = processing.counts, processing.bounds, processing.lower, processing.upper
        l_counts, l_bounds, l_lower, l_upper = latency.counts, latency.bounds, latency.lower, latency.upper
        p_bucket = l_bucket = 0
        p_run = l_run = 0
        p_low, p_high = p_lower[0], p_upper[0]
        l_low, l_high = l_lower[0], l_upper[0]
        p_sum = l_sum = 0.0
        perf = time.perf_counter
        out: list[SegmentResult] = []
        failed = retries = total = 0
        failure: Failure | None
        # The thread's CPU time and waits, read once per item: the inline gate judges the handler's
        # cost by them, not by wall time, which a loaded host inflates (inline.handler_seconds).
        cpu_began, waits_began = thread_usage()
        began = previous = perf()
        # Wall-clock time of a perf_counter reading, for end-to-end latency without a second clock call.
        to_wall = time.time() - began
        try:
            for segment in job.segments:
                state: PartitionView = segment.partition
                tier = state.tier
                failures: list[Failure] | None = None
                handled = 0
                fast = not tier and deserialize is None
                for message in segment.messages:
                    if job.cancelled or state.revoked or state.halted:
                        break
                    if fast:
                        # Source records, raw bytes: nothing to decode, no origin to read.
                        record = Record(message, message.value())
                        origin = None
                    else:
                        origin = origin_of(message) if tier else None
                        try:
                            value = message.value() if deserialize is None else deserialize(message.value())
                        except Exception as exc:
                            failed += 1
                            failures = failures or []
                            failures.append(Failure(handled, DeadLetter(h.FAILURE_POISON_PILL),
                                                    FailureInfo.from_exception(exc), 1))
                            handled += 1
                            previous = perf()
                            if self._too_many_dead(failures, handled):
                                break
                            continue
                        record = Record(message, value, origin.attempts + 1 if origin else 1, tier, origin)
                    try:
                        handler(record)
                        failure = None
                    except Exception as exc:
                        try:
                            failure, more_failed, more_retries = self._retry_in_place(job, state, record, exc)
                        except _Abandoned:
                            break
                        except _HandBack:
                            # The record stays unhandled: it and the rest of the item go back to the
                            # queue, ahead of later records, and a slot runs it from its first attempt.
                            failed += 1
                            job.handed_back = job.cancelled = True
                            break
                        failed += more_failed
                        retries += more_retries
                    now = perf()
                    elapsed = now - previous
                    previous = now
                    if p_low < elapsed <= p_high:
                        p_run += 1
                    else:
                        p_counts[p_bucket] += p_run
                        p_bucket = bisect_left(p_bounds, elapsed)
                        p_low, p_high, p_run = p_lower[p_bucket], p_upper[p_bucket], 1
                    p_sum += elapsed
                    if failure is None:
                        produced = origin.timestamp_ms if origin else message.timestamp()[1]
                        if produced > 0:
                            age = now + to_wall - produced * 0.001
                            if l_low < age <= l_high:
                                l_run += 1
                            else:
                                l_counts[l_bucket] += l_run
                                l_bucket = bisect_left(l_bounds, age)
                                l_low, l_high, l_run = l_lower[l_bucket], l_upper[l_bucket], 1
                            l_sum += age
                        handled += 1
                    else:
                        failure.index = handled
                        failures = failures or []
                        failures.append(failure)
                        handled += 1
                        if self._too_many_dead(failures, handled):
                            break
                out.append((handled, failures))
                total += handled
        finally:
            p_counts[p_bucket] += p_run
            l_counts[l_bucket] += l_run
            processing.total += p_sum
            latency.total += l_sum
            # Always report, even after an unexpected error: the poll thread puts back what is missing.
            out.extend((0, None) for _ in range(len(job.segments) - len(out)))
            item_seconds = perf() - began
            cpu_ended, waits_ended = thread_usage()
            self._finish(job, out, failed, retries, total, item_seconds,
                         None if cpu_began is None or cpu_ended is None else cpu_ended - cpu_began,
                         waits_ended - waits_began)

    def _retry_in_place(self, job: Job, state: PartitionView, record: Record,
                        exc: Exception) -> tuple[Failure | None, int, int]:
        attempt = 1
        failed = 1
        retries = 0
        while True:
            action = self._decide(exc, attempt, state.tier)
            if not isinstance(action, RetryInPlace):
                return Failure(0, action, FailureInfo.from_exception(exc), record.attempt), failed, retries
            if job.inline:
                raise _HandBack
            retries += 1
            deadline = time.monotonic() + action.delay_seconds
            while (remaining := deadline - time.monotonic()) > 0:
                if self._give_up(job, state):
                    raise _Abandoned
                # Wait in short steps so a revoke or shutdown is noticed promptly.
                self._stopping.wait(min(remaining, 0.05))
            if self._give_up(job, state):
                raise _Abandoned
            attempt += 1
            record.attempt += 1
            try:
                self._handler(record)
                return None, failed, retries
            except Exception as again:
                exc = again
                failed += 1

    # -- asyncio ----------------------------------------------------------------------------

    async def run_job_async(self, job: Job) -> None:
        handler: Callable[[Record], Awaitable[Any]] = self._handler
        # One event loop thread runs every async slot, so its recorder is shared safely.
        observe_processing = self._processing.recorder().observe
        observe_latency = self._end_to_end.recorder().observe
        perf = time.perf_counter
        wall = time.time
        out: list[SegmentResult] = []
        failed = retries = total = 0
        began = perf()
        try:
            for segment in job.segments:
                state: PartitionView = segment.partition
                tier = state.tier
                failures: list[Failure] | None = None
                handled = 0
                for message in segment.messages:
                    if job.cancelled or state.revoked or state.halted:
                        break
                    start = perf()
                    try:
                        origin, value = self._prepare(message, tier)
                    except Exception as exc:
                        failed += 1
                        failures = failures or []
                        failures.append(Failure(handled, DeadLetter(h.FAILURE_POISON_PILL),
                                                FailureInfo.from_exception(exc), 1))
                        handled += 1
                        if self._too_many_dead(failures, handled):
                            break
                        continue
                    record = Record(message, value, origin.attempts + 1 if origin else 1, tier, origin)
                    try:
                        await handler(record)
                    except Exception as exc:
                        try:
                            failure, more_failed, more_retries = await self._retry_in_place_async(
                                job, state, record, exc)
                        except _Abandoned:
                            break
                        failed += more_failed
                        retries += more_retries
                        if failure is not None:
                            failure.index = handled
                            failures = failures or []
                            failures.append(failure)
                            observe_processing(perf() - start)
                            handled += 1
                            if self._too_many_dead(failures, handled):
                                break
                            continue
                    observe_processing(perf() - start)
                    produced = origin.timestamp_ms if origin else message.timestamp()[1]
                    if produced > 0:
                        observe_latency(wall() - produced / 1000.0)
                    handled += 1
                out.append((handled, failures))
                total += handled
        finally:
            out.extend((0, None) for _ in range(len(job.segments) - len(out)))
            self._finish(job, out, failed, retries, total, perf() - began)

    async def _retry_in_place_async(self, job: Job, state: PartitionView, record: Record,
                                    exc: Exception) -> tuple[Failure | None, int, int]:
        handler: Callable[[Record], Awaitable[Any]] = self._handler
        attempt = 1
        failed = 1
        retries = 0
        while True:
            action = self._decide(exc, attempt, state.tier)
            if not isinstance(action, RetryInPlace):
                return Failure(0, action, FailureInfo.from_exception(exc), record.attempt), failed, retries
            retries += 1
            deadline = time.monotonic() + action.delay_seconds
            while (remaining := deadline - time.monotonic()) > 0:
                if self._give_up(job, state):
                    raise _Abandoned
                await asyncio.sleep(min(remaining, 0.05))
            if self._give_up(job, state):
                raise _Abandoned
            attempt += 1
            record.attempt += 1
            try:
                await handler(record)
                return None, failed, retries
            except Exception as again:
                exc = again
                failed += 1

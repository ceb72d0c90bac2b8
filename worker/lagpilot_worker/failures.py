"""The failure path of the consumer-group worker: retry-tier and dead-letter topics, and the breaker.

A record the handler gave up on goes to a retry tier topic or the dead-letter topic; its source
offset is finished only once the write is acknowledged (writes.py retries it; past a bound its
partition is paused and reported as stalled). The dead-letter circuit breaker of each partition
(breaker.py decides) holds records back instead of dead-lettering a flood of them, pauses the
partition, and sends the held records again at half-open.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from .breaker import BreakerState
from .config import WorkerConfig
from .dlq import FailurePublisher
from .metrics import WorkerMetrics
from .ordering import Lane, Scheduler, Segment
from .partition import PartitionState
from .processing import Failure, Job
from .retry import SendToRetryTier, retry_due_ms
from .write_retry import WriteRetry
from .writes import RetriedWrites, Send

log = logging.getLogger("lagpilot_worker")


class DeadLetterBreakers:
    """The partitions whose dead-letter breaker is not closed, and their way back."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, scheduler: Scheduler[PartitionState, Message],
                 resubmit: Callable[[Job], None]) -> None:
        self._config = config
        self._metrics = metrics
        self._scheduler = scheduler
        self._resubmit = resubmit
        self.open: set[PartitionState] = set()

    def opened(self, state: PartitionState) -> None:
        if state in self.open:
            return
        self.open.add(state)
        state.halted = True
        self._scheduler.block(state)
        self._metrics.breaker_open.labels(state.topic, str(state.partition)).set(1)
        log.error("dead-letter circuit breaker OPEN: partition paused, nothing more is dead-lettered (%s)",
                  state.breaker.reason, extra={**state.log_extra(), "cooldown_seconds":
                                               self._config.breaker.cooldown_seconds})

    def paused(self) -> list[PartitionState]:
        """Partitions to keep paused: their breaker is open (half-open probes fetch nothing new)."""
        return [state for state in self.open if state.breaker.state is BreakerState.OPEN]

    def seconds_until_probe(self, now: float) -> float | None:
        waits = [probe for state in self.open if (probe := state.breaker.seconds_until_probe(now)) is not None]
        return min(waits) if waits else None

    def poll(self, now: float) -> None:
        if not self.open:
            return
        scheduler = self._scheduler
        for state in list(self.open):
            breaker = state.breaker
            if breaker.state is BreakerState.OPEN and breaker.poll(now):
                log.info("dead-letter circuit breaker half-open: retrying held records", extra=state.log_extra())
                state.halted = False
                scheduler.unblock(state)
                held, state.held = state.held, []
                if held:
                    self._resubmit(Job(_segments_by_lane(state, held)))
            elif breaker.state is BreakerState.OPEN and not scheduler.is_blocked(state):
                state.halted = True               # a failed probe: block again
                scheduler.block(state)
            elif breaker.state is BreakerState.CLOSED:
                self.open.discard(state)
                state.halted = False
                scheduler.unblock(state)
                self._metrics.breaker_open.labels(state.topic, str(state.partition)).set(0)
                log.info("dead-letter circuit breaker closed", extra=state.log_extra())


def _segments_by_lane(state: PartitionState, held: list[tuple[Message, Lane[Any, Any] | None]]
                      ) -> list[Segment[PartitionState, Message]]:
    """Held records as segments, one per lane they hold (in the order they were held)."""
    segments: list[Segment[PartitionState, Message]] = []
    by_lane: dict[int, Segment[PartitionState, Message]] = {}
    for message, lane in held:
        key = id(lane) if lane is not None else 0
        segment = by_lane.get(key)
        if segment is None:
            segment = by_lane[key] = Segment(state, [], [lane] if lane is not None else [])
            segments.append(segment)
        segment.messages.append(message)
    return segments


class FailureRouter:
    """Routes each failed record to a retry tier, the dead-letter topic, or (breaker open) holds it."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, breakers: DeadLetterBreakers,
                 writes: RetriedWrites) -> None:
        self._config = config
        self._metrics = metrics
        self._breakers = breakers
        self._writes = writes
        self.publisher: FailurePublisher | None = None   # set at start when a topic is configured
        # Partitions paused because a write failed past its retry bound: writes stuck.
        self.stalled: dict[PartitionState, int] = {}

    def submit(self, state: PartitionState, lane: Lane[Any, Any] | None, message: Message, failure: Failure) -> bool:
        """Route a failed record to a retry tier or the DLQ. True when the breaker holds it back."""
        offset = message.offset()
        action = failure.action
        extra = {**state.log_extra(offset), "exception": failure.info.exception_class,
                 "attempts": failure.attempts}
        publisher = self.publisher
        if isinstance(action, SendToRetryTier):
            assert publisher is not None
            due = retry_due_ms(int(time.time() * 1000), action.delay_seconds)
            log.info("handing record to retry tier %d: %s", action.tier, failure.info.message,
                     extra={**extra, "tier": action.tier, "due_ms": due})
            self._write(state, message, lambda done: publisher.send_retry(
                message, failure.info, tier=action.tier, due_ms=due, attempts=failure.attempts, on_done=done),
                on_acked=lambda: self._metrics.retried.labels("tier").inc())
            return False
        now = time.monotonic()
        breaker = state.breaker
        if not breaker.allow_dead_letter():
            breaker.refuse_dead_letter(now)
            state.held.append((message, lane))
            self._breakers.opened(state)
            log.warning("dead-letter circuit breaker open: holding record back", extra=extra)
            return True
        tripped = breaker.record_dead_letter(now)
        kind = action.kind
        if publisher is not None and publisher.dead_letter_topic is not None:
            log.warning("dead-lettering record (%s): %s", kind, failure.info.message, extra={**extra, "kind": kind})
            self._write(state, message, lambda done: publisher.send_dead_letter(
                message, failure.info, kind=kind, attempts=failure.attempts, on_done=done),
                on_acked=lambda: self._metrics.dead_lettered.labels(kind).inc())
        else:
            log.error("dropping failed record (no dead-letter topic) (%s): %s", kind, failure.info.message,
                      extra={**extra, "kind": kind})
            state.tracker.done_many([offset])  # type: ignore[list-item]
        if tripped:
            self._breakers.opened(state)
        return False

    def _write(self, state: PartitionState, message: Message, send: Send, on_acked: Callable[[], None]) -> None:
        """Write to the DLQ/a retry tier; the source offset is done only once the write is acknowledged.

        A failed write is retried with backoff (write_retry.py); past the bound its partition is
        paused and reported (/readyz, lagpilot_worker_dead_letter_write_stalled) until a retry
        goes through.
        """
        state.pending_writes += 1
        self._writes.write(send, _PartitionWrite(self, state, message, on_acked))

    def poll(self, now: float) -> None:
        """Serve the producer's delivery callbacks and the writes whose backoff is over."""
        self.poll_producer()
        if self._writes.waiting:
            self._writes.poll(now)

    def poll_producer(self) -> None:
        publisher = self.publisher
        if publisher is not None and publisher.pending:
            publisher.poll()

    def next_attempt_at(self) -> float | None:
        """When the next write waiting for its backoff is due (monotonic)."""
        return self._writes.next_attempt_at()

    def pending(self) -> int:
        """Writes not yet acknowledged: queued with the producer or waiting for their backoff."""
        return (self.publisher.pending if self.publisher is not None else 0) + self._writes.waiting

    def stalled_partitions(self) -> list[PartitionState]:
        return [s for s in list(self.stalled) if not s.revoked]

    def write_stalled(self, state: PartitionState, error: str) -> None:
        count = self.stalled.get(state, 0)
        self.stalled[state] = count + 1
        if count:
            return
        self._metrics.write_stalled.labels(state.topic, str(state.partition)).set(1)
        log.error("writes to the dead-letter/retry topic keep failing: partition paused until one goes through "
                  "(%s)", error, extra={**state.log_extra(), "retry_every_seconds":
                                        self._config.write_retry.backoff_max_seconds})

    def write_unstalled(self, state: PartitionState) -> None:
        count = self.stalled.get(state, 0) - 1
        if count > 0:
            self.stalled[state] = count
            return
        self.stalled.pop(state, None)
        if not state.revoked:
            self._metrics.write_stalled.labels(state.topic, str(state.partition)).set(0)
            log.info("writes to the dead-letter/retry topic go through again: partition resumed",
                     extra=state.log_extra())


class _PartitionWrite:
    """One write for a source record of a partition (a writes.WriteOwner): it is retried for as long
    as the partition is ours; past the bound the partition is stalled until it goes through."""

    __slots__ = ("message", "on_acked", "router", "stalled", "state")

    def __init__(self, router: FailureRouter, state: PartitionState, message: Message,
                 on_acked: Callable[[], None]) -> None:
        self.router = router
        self.state = state
        self.message = message
        self.on_acked = on_acked
        self.stalled = False

    def abandoned(self) -> bool:
        return self.state.revoked

    def written(self) -> None:
        if not self.state.revoked:
            self.state.tracker.done_many([self.message.offset()])  # type: ignore[list-item]
        self.on_acked()

    def failed(self, error: str, failures: int, retry: WriteRetry) -> bool:
        log.error("writing a failed record failed (attempt %d), retrying in %.1fs: %s", failures,
                  retry.delay_seconds, error, extra={**self.state.log_extra(self.message.offset()),
                                                     "attempts": failures})
        if retry.pause_partition and not self.stalled:
            self.stalled = True
            self.router.write_stalled(self.state, error)
        return True

    def ended(self) -> None:
        self.state.pending_writes -= 1
        if self.stalled:
            self.stalled = False
            self.router.write_unstalled(self.state)

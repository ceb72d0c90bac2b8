"""Writes of failed records (dead-letter or retry-tier topic) that are retried until they go through.

Shared by both kinds of worker: what a write is *for* differs (a consumer group finishes the source
offset once it is acknowledged; a share group REJECTs the acquired record), what a write *does*
does not: send, wait for the producer's acknowledgement, and after a failure try again after a
backoff (write_retry.py) taken from a timer heap that the poll thread runs, never by sleeping.
The owner of each write decides, through its `WriteOwner`, whether to go on after a failure.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError

from .metrics import WorkerMetrics
from .write_retry import WriteRetry, WriteRetryPolicy, next_write_retry

# Queue one write with the producer, with its delivery callback; False: not queued (queue full).
Send = Callable[[Callable[[KafkaError | None], None]], bool]


class WriteOwner(Protocol):
    """What one write is for: told how it goes, asked whether to go on."""

    def abandoned(self) -> bool:
        """The record is no longer ours (its partition was revoked): stop trying, silently."""
        ...

    def written(self) -> None:
        """The broker acknowledged the write."""
        ...

    def failed(self, error: str, failures: int, retry: WriteRetry) -> bool:
        """The write failed for the `failures`-th time; True: try again after `retry.delay_seconds`."""
        ...

    def ended(self) -> None:
        """The write left the writer (written, abandoned or given up): called exactly once, last."""
        ...


class RetriedWrites:
    """Every failed-record write in hand, and the timers of those waiting to be tried again."""

    def __init__(self, policy: WriteRetryPolicy, metrics: WorkerMetrics,
                 random_unit: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._metrics = metrics
        self._random_unit = random_unit
        self._clock = clock
        self._waiting: list[tuple[float, int, Callable[[], None]]] = []   # (due, tie-break, attempt)
        self._sequence = itertools.count()

    @property
    def waiting(self) -> int:
        """Writes waiting for their backoff before the next attempt."""
        return len(self._waiting)

    def next_attempt_at(self) -> float | None:
        return self._waiting[0][0] if self._waiting else None

    def write(self, send: Send, owner: WriteOwner) -> None:
        """Send now; on failure, ask the owner and retry from poll() after the backoff."""
        failures = 0

        def delivered(err: KafkaError | None) -> None:
            if err is None:
                owner.written()
                owner.ended()
                return
            retry_later(str(err))

        def retry_later(error: str) -> None:
            nonlocal failures
            if owner.abandoned():
                owner.ended()
                return
            failures += 1
            self._metrics.write_errors.inc()
            decision = next_write_retry(self._policy, failures, self._random_unit())
            if not owner.failed(error, failures, decision):
                owner.ended()
                return
            heapq.heappush(self._waiting, (self._clock() + decision.delay_seconds, next(self._sequence), attempt))

        def attempt() -> None:
            if owner.abandoned():
                owner.ended()
                return
            try:
                queued = send(delivered)
                error = "the producer's queue is full"
            except Exception as exc:    # e.g. the broker refused the topic (authorization, unknown topic)
                queued, error = False, f"could not queue the write: {exc}"
            if not queued:
                retry_later(error)

        attempt()

    def poll(self, now: float) -> None:
        """Attempt again every write whose backoff is over (`math.inf`: every waiting write, now)."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            _, _, attempt = heapq.heappop(waiting)
            attempt()

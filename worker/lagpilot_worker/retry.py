"""Failure classification, backoff and retry-tier selection (pure, no I/O).

A handler failure is one of three kinds:

* transient: retried in place, in the same slot, with exponential backoff and jitter, a bounded
  number of times (ordering of the lane is kept: the next message of the key/partition waits);
* retry-later: written to the next retry tier topic (`<group>.retry.<n>`) with a due time, and
  the slot moves on (ordering of that key is given up for this record);
* permanent: written to the dead-letter topic at once.

Handlers raise `TransientError`, `RetryLaterError` or `PermanentError` (or subclasses), or the
user passes a classifier. Any other exception is *transient*: retried in place, then sent
through the retry tiers, then dead-lettered with kind `retries-exhausted`. The classifier is asked
first; it returns None to fall back to these rules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

from lagpilot_contract import headers as h


class TransientError(Exception):
    """Retry in place with backoff (e.g. a timeout talking to a dependency)."""


class RetryLaterError(Exception):
    """Retry later from a retry tier topic (e.g. a dependency is down for a while)."""


class PermanentError(Exception):
    """Do not retry: straight to the dead-letter topic (e.g. the message is invalid)."""


class FailureClass(StrEnum):
    TRANSIENT = "transient"
    RETRY_LATER = "retry-later"
    PERMANENT = "permanent"


Classifier = Callable[[BaseException], FailureClass | None]

#: What an exception no rule recognises is treated as.
DEFAULT_FAILURE_CLASS = FailureClass.TRANSIENT


def classify(exc: BaseException, classifier: Classifier | None = None) -> FailureClass:
    if classifier is not None:
        decided = classifier(exc)
        if decided is not None:
            return FailureClass(decided)
    if isinstance(exc, PermanentError):
        return FailureClass.PERMANENT
    if isinstance(exc, RetryLaterError):
        return FailureClass.RETRY_LATER
    if isinstance(exc, TransientError):
        return FailureClass.TRANSIENT
    return DEFAULT_FAILURE_CLASS


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try before giving a record up.

    attempts_in_place: handler calls per hop for transient failures (1 = no retry in place).
    Backoff before retry n (1-based) is min(max, initial * multiplier**(n-1)), reduced by up to
    `jitter` (a fraction) at random so that many slots failing together do not retry in lockstep.
    tier_delays_seconds: one entry per retry tier topic, in order.
    """

    attempts_in_place: int = 3
    backoff_initial_seconds: float = 0.2
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 10.0
    jitter: float = 0.5
    tier_delays_seconds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.attempts_in_place < 1:
            raise ValueError("attempts_in_place must be at least 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter is a fraction between 0 and 1")
        if self.backoff_initial_seconds < 0 or self.backoff_max_seconds < 0 or self.backoff_multiplier < 1:
            raise ValueError("backoff times must be >= 0 and the multiplier >= 1")
        if any(delay < 0 for delay in self.tier_delays_seconds):
            raise ValueError("retry tier delays must be >= 0")


def backoff_delay(policy: RetryPolicy, retry_number: int, random_unit: float) -> float:
    """Seconds to wait before retry `retry_number` (1-based); random_unit is in [0, 1)."""
    exponent = max(0, retry_number - 1)
    # Cap the exponent: multiplier**exponent overflows floats long before it matters.
    base = min(policy.backoff_max_seconds,
               policy.backoff_initial_seconds * policy.backoff_multiplier ** min(exponent, 64))
    return base * (1.0 - policy.jitter * random_unit)


@dataclass(frozen=True)
class RetryInPlace:
    delay_seconds: float


@dataclass(frozen=True)
class SendToRetryTier:
    tier: int                # 1-based
    delay_seconds: float


@dataclass(frozen=True)
class DeadLetter:
    kind: str                # lagpilot_contract.headers.FAILURE_*


FailureAction = RetryInPlace | SendToRetryTier | DeadLetter


def next_action(policy: RetryPolicy, failure: FailureClass, attempt_in_hop: int, current_tier: int,
                random_unit: float) -> FailureAction:
    """What to do after the handler failed on attempt `attempt_in_hop` (1-based) of this hop.

    current_tier is 0 for a record read from a source topic, n for one read from retry tier n.
    """
    if failure is FailureClass.PERMANENT:
        return DeadLetter(h.FAILURE_PERMANENT)
    if failure is FailureClass.TRANSIENT and attempt_in_hop < policy.attempts_in_place:
        return RetryInPlace(backoff_delay(policy, attempt_in_hop, random_unit))
    next_tier = current_tier + 1
    if next_tier <= len(policy.tier_delays_seconds):
        return SendToRetryTier(next_tier, policy.tier_delays_seconds[next_tier - 1])
    return DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)


def retry_due_ms(now_ms: int, delay_seconds: float) -> int:
    return now_ms + round(delay_seconds * 1000)


def parse_int_header(headers: list[tuple[str, bytes | None]] | None, name: str) -> int | None:
    text = h.header_text(headers, name)
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


# -- holding retry records until they are due -----------------------------------------------

K = TypeVar("K", bound=Hashable)
ItemT = TypeVar("ItemT")


class DueGate(Generic[K, ItemT]):
    """Holds records of retry-tier partitions until their due time, in offset order per partition.

    A tier has one delay, so due times within one of its partitions rise with the offset (up to
    clock skew between producers); holding the head back holds the partition back. While a
    partition's head is not due, the worker pauses fetching it instead of sleeping.
    """

    def __init__(self) -> None:
        self._held: dict[K, deque[tuple[int, ItemT]]] = {}

    def admit(self, partition: K, due_ms: int | None, item: ItemT, now_ms: int) -> bool:
        """True when `item` may run now; else it is held (behind anything held for `partition`)."""
        held = self._held.get(partition)
        if not held and (due_ms is None or due_ms <= now_ms):
            return True
        if held is None:
            held = self._held[partition] = deque()
        held.append((due_ms if due_ms is not None else now_ms, item))
        return False

    def release(self, now_ms: int) -> list[tuple[K, list[ItemT]]]:
        """Items that became due, per partition in offset order."""
        released: list[tuple[K, list[ItemT]]] = []
        for partition in list(self._held):
            held = self._held[partition]
            due: list[ItemT] = []
            while held and held[0][0] <= now_ms:
                due.append(held.popleft()[1])
            if due:
                released.append((partition, due))
            if not held:
                del self._held[partition]
        return released

    def waiting_partitions(self) -> set[K]:
        """Partitions whose head is not due: fetching them now only fills memory."""
        return set(self._held)

    def next_due_ms(self) -> int | None:
        heads = [held[0][0] for held in self._held.values() if held]
        return min(heads) if heads else None

    def drop(self, partition: K) -> list[ItemT]:
        return [item for _, item in self._held.pop(partition, deque())]

"""How a share-group worker settles each acquired record with the broker (pure, no I/O).

In a share group (KIP-932) a record is acquired by one consumer for a while and then acknowledged:
ACCEPT (done), RELEASE (give it back for another delivery, the broker's delivery count goes up) or
REJECT (never deliver again). The worker maps the handler's outcome onto them the way it maps it onto
retry tiers and the dead-letter topic for a consumer group:

* success: ACCEPT;
* transient failures are retried in place first, as in every mode (the record stays acquired);
* then, or at once for a retry-later failure, RELEASE while deliveries remain: each redelivery stands
  for a retry tier, the delivery count for the tier number;
* a permanent failure, a poison pill, or the last delivery the worker allows: write the dead-letter
  record (the same header contract, the delivery count as attempts) and REJECT only once the write
  is acknowledged. A write that keeps failing RELEASEs the record instead: it comes back, it is
  never dropped by the worker.

The broker archives a record by itself after `group.share.delivery.count.limit` deliveries (5 by
default) without telling anyone, so the worker's own limit must be at most the broker's: then the
worker, not the broker, decides the last delivery and the record reaches the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from .retry import RetryPolicy

#: Kafka's default `group.share.delivery.count.limit`.
BROKER_DELIVERY_LIMIT_DEFAULT = 5


class Settlement(StrEnum):
    ACCEPT = "accept"
    RELEASE = "release"
    DEAD_LETTER = "dead-letter"       # write the dead-letter record, then REJECT


@dataclass(frozen=True)
class Outcome:
    """What the slot reported for one record: finished (with or without a failure), or not run."""

    handled: bool
    dead_letter: bool = False         # the failure path chose the dead-letter topic
    retry_later: bool = False         # the failure path chose a later delivery (a retry tier)


def settle(outcome: Outcome) -> Settlement:
    if not outcome.handled:
        # Not run (the worker is stopping): someone else gets it, and this delivery counts.
        return Settlement.RELEASE
    if outcome.dead_letter:
        return Settlement.DEAD_LETTER
    if outcome.retry_later:
        return Settlement.RELEASE
    return Settlement.ACCEPT


def share_retry_policy(policy: RetryPolicy, max_deliveries: int) -> RetryPolicy:
    """The retry policy with one "tier" per redelivery the worker allows (delays are the broker's).

    `retry.next_action` then answers "retry tier n" for delivery n < max_deliveries and "dead-letter,
    retries exhausted" on the last one, when a record's tier is its delivery count - 1.
    """
    if max_deliveries < 1:
        raise ValueError("max_deliveries must be at least 1")
    return replace(policy, tier_delays_seconds=(0.0,) * (max_deliveries - 1))


def delivery_tier(delivery_count: int | None) -> int:
    """The retry tier a delivery stands for: the first delivery is the source record (tier 0)."""
    return max(0, (delivery_count or 1) - 1)

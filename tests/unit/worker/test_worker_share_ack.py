"""How a share-group worker settles a record (pure): the handler's outcome onto ACCEPT / RELEASE / dead-letter."""

from __future__ import annotations

import pytest

from lagpilot_contract import headers as h
from lagpilot_worker.retry import (
    DeadLetter,
    FailureClass,
    RetryInPlace,
    RetryPolicy,
    SendToRetryTier,
    next_action,
)
from lagpilot_worker.share_ack import Outcome, Settlement, delivery_tier, settle, share_retry_policy


@pytest.mark.parametrize(("outcome", "expected"), [
    (Outcome(handled=True), Settlement.ACCEPT),
    (Outcome(handled=True, retry_later=True), Settlement.RELEASE),
    (Outcome(handled=True, dead_letter=True), Settlement.DEAD_LETTER),
    (Outcome(handled=False), Settlement.RELEASE),   # not run (stopping): back to the group, never accepted
])
def test_settlement(outcome: Outcome, expected: Settlement) -> None:
    assert settle(outcome) is expected


def test_each_delivery_stands_for_a_retry_tier_and_the_last_one_dead_letters() -> None:
    policy = share_retry_policy(RetryPolicy(attempts_in_place=2, tier_delays_seconds=(5.0,)), max_deliveries=3)
    assert policy.tier_delays_seconds == (0.0, 0.0)  # the broker redelivers at once: no delay of its own

    def after(failure: FailureClass, attempt: int, delivery: int) -> object:
        return next_action(policy, failure, attempt, delivery_tier(delivery), 0.0)

    assert isinstance(after(FailureClass.TRANSIENT, 1, 1), RetryInPlace)
    assert after(FailureClass.TRANSIENT, 2, 1) == SendToRetryTier(1, 0.0)     # -> RELEASE
    assert after(FailureClass.RETRY_LATER, 1, 2) == SendToRetryTier(2, 0.0)   # -> RELEASE
    assert after(FailureClass.TRANSIENT, 2, 3) == DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)
    assert after(FailureClass.RETRY_LATER, 1, 3) == DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)
    assert after(FailureClass.PERMANENT, 1, 1) == DeadLetter(h.FAILURE_PERMANENT)
    # A delivery beyond the worker's limit (the limit was lowered meanwhile): dead-lettered, not released.
    assert after(FailureClass.RETRY_LATER, 1, 7) == DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)


def test_one_delivery_only_dead_letters_at_the_first_failure_past_the_retries_in_place() -> None:
    policy = share_retry_policy(RetryPolicy(attempts_in_place=1), max_deliveries=1)
    assert next_action(policy, FailureClass.TRANSIENT, 1, 0, 0.0) == DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)
    with pytest.raises(ValueError, match="max_deliveries"):
        share_retry_policy(policy, 0)


@pytest.mark.parametrize(("count", "tier"), [(None, 0), (0, 0), (1, 0), (2, 1), (5, 4)])
def test_delivery_tier(count: int | None, tier: int) -> None:
    assert delivery_tier(count) == tier

"""Classification defaults, bounded backoff with jitter, tier selection, and the due gate."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_contract import headers as h
from lagpilot_worker.retry import (
    DeadLetter,
    DueGate,
    FailureClass,
    PermanentError,
    RetryInPlace,
    RetryLaterError,
    RetryPolicy,
    SendToRetryTier,
    TransientError,
    backoff_delay,
    classify,
    next_action,
    parse_int_header,
)


class MyPermanent(PermanentError):
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransientError("x"), FailureClass.TRANSIENT),
        (RetryLaterError("x"), FailureClass.RETRY_LATER),
        (PermanentError("x"), FailureClass.PERMANENT),
        (MyPermanent("x"), FailureClass.PERMANENT),
        (ValueError("unknown"), FailureClass.TRANSIENT),     # the documented default
        (TimeoutError(), FailureClass.TRANSIENT),
    ],
)
def test_classify_without_classifier(exc: BaseException, expected: FailureClass) -> None:
    assert classify(exc) is expected


def test_user_classifier_first_then_fallback() -> None:
    def classifier(exc: BaseException) -> FailureClass | None:
        return FailureClass.PERMANENT if isinstance(exc, KeyError) else None

    assert classify(KeyError("k"), classifier) is FailureClass.PERMANENT
    assert classify(RetryLaterError(), classifier) is FailureClass.RETRY_LATER
    assert classify(ValueError(), classifier) is FailureClass.TRANSIENT


TWO_TIERS = RetryPolicy(attempts_in_place=3, backoff_initial_seconds=1, backoff_multiplier=2,
                        backoff_max_seconds=3, jitter=0, tier_delays_seconds=(10, 60))


@pytest.mark.parametrize(
    ("failure", "attempt", "tier", "expected"),
    [
        (FailureClass.TRANSIENT, 1, 0, RetryInPlace(1)),
        (FailureClass.TRANSIENT, 2, 0, RetryInPlace(2)),
        (FailureClass.TRANSIENT, 3, 0, SendToRetryTier(1, 10)),       # in-place budget used up
        (FailureClass.TRANSIENT, 3, 1, SendToRetryTier(2, 60)),
        (FailureClass.TRANSIENT, 3, 2, DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)),
        (FailureClass.RETRY_LATER, 1, 0, SendToRetryTier(1, 10)),      # skips retry in place
        (FailureClass.RETRY_LATER, 1, 2, DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)),
        (FailureClass.PERMANENT, 1, 0, DeadLetter(h.FAILURE_PERMANENT)),
    ],
)
def test_next_action(failure: FailureClass, attempt: int, tier: int, expected: object) -> None:
    assert next_action(TWO_TIERS, failure, attempt, tier, random_unit=0.0) == expected


def test_no_tiers_means_dlq_after_in_place() -> None:
    policy = RetryPolicy(attempts_in_place=1)
    assert next_action(policy, FailureClass.TRANSIENT, 1, 0, 0.0) == DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)
    assert next_action(policy, FailureClass.RETRY_LATER, 1, 0, 0.0) == DeadLetter(h.FAILURE_RETRIES_EXHAUSTED)


@pytest.mark.parametrize("bad", [dict(attempts_in_place=0), dict(jitter=1.5), dict(backoff_multiplier=0.5),
                                 dict(tier_delays_seconds=(-1.0,))])
def test_policy_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


@given(st.integers(1, 200), st.floats(0, 0.999), st.floats(0, 1), st.floats(0.001, 5), st.floats(1, 4),
       st.floats(0.01, 120))
def test_backoff_bounded_and_jittered(retry: int, unit: float, jitter: float, initial: float, mult: float,
                                      cap: float) -> None:
    policy = RetryPolicy(backoff_initial_seconds=initial, backoff_multiplier=mult, backoff_max_seconds=cap,
                         jitter=jitter)
    delay = backoff_delay(policy, retry, unit)
    no_jitter = backoff_delay(RetryPolicy(backoff_initial_seconds=initial, backoff_multiplier=mult,
                                          backoff_max_seconds=cap, jitter=0), retry, unit)
    assert 0 <= delay <= cap + 1e-9
    assert no_jitter * (1 - jitter) - 1e-9 <= delay <= no_jitter + 1e-9


def test_backoff_grows_until_cap() -> None:
    policy = RetryPolicy(backoff_initial_seconds=0.1, backoff_multiplier=2, backoff_max_seconds=1, jitter=0)
    assert [round(backoff_delay(policy, n, 0.5), 3) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_parse_int_header() -> None:
    headers = [(h.RETRY_DUE, b"123"), ("x", None), (h.ATTEMPTS, b"nope")]
    assert parse_int_header(headers, h.RETRY_DUE) == 123
    assert parse_int_header(headers, h.ATTEMPTS) is None
    assert parse_int_header(None, h.RETRY_DUE) is None


def test_due_gate_holds_in_offset_order_per_partition() -> None:
    gate: DueGate[tuple[str, int], str] = DueGate()
    a, b = ("r", 0), ("r", 1)
    assert gate.admit(a, None, "a-plain", now_ms=1000)
    assert gate.admit(a, 900, "a-past", now_ms=1000)
    assert not gate.admit(a, 2000, "a0", now_ms=1000)
    assert not gate.admit(a, 1500, "a1", now_ms=1000)       # behind a0 although due earlier
    assert not gate.admit(b, 3000, "b0", now_ms=1000)
    assert gate.waiting_partitions() == {a, b}
    assert gate.next_due_ms() == 2000
    assert gate.release(1999) == []
    assert gate.release(2000) == [(a, ["a0", "a1"])]
    assert gate.waiting_partitions() == {b}
    assert gate.drop(b) == ["b0"] and gate.next_due_ms() is None

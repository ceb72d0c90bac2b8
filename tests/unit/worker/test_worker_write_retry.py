"""Failed DLQ/retry-tier writes: exponential backoff up to a cap, and a bound after which the
partition pauses (pure decision; the real-broker side is in tests/integration/worker)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_worker.write_retry import WriteRetryPolicy, next_write_retry

POLICY = WriteRetryPolicy(attempts_before_pause=4, backoff_initial_seconds=0.5, backoff_max_seconds=3.0,
                          backoff_multiplier=2.0, jitter=0.2)


def test_backoff_doubles_up_to_the_cap_without_jitter() -> None:
    delays = [next_write_retry(POLICY, n, 0.0).delay_seconds for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_the_partition_pauses_exactly_at_the_bound_and_stays_paused() -> None:
    pauses = [next_write_retry(POLICY, n, 0.5).pause_partition for n in range(1, 8)]
    assert pauses == [False, False, False, True, True, True, True]


def test_a_bound_of_one_pauses_on_the_first_failure() -> None:
    assert next_write_retry(WriteRetryPolicy(attempts_before_pause=1), 1, 0.0).pause_partition


@settings(deadline=None)   # pure arithmetic: a deadline would only measure the machine's load
@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0.0, max_value=0.999))
def test_delay_is_within_jitter_of_the_capped_backoff(failures: int, unit: float) -> None:
    delay = next_write_retry(POLICY, failures, unit).delay_seconds
    capped = min(3.0, 0.5 * 2.0 ** (failures - 1)) if failures < 64 else 3.0
    assert capped * (1 - POLICY.jitter) <= delay + 1e-12 and delay <= capped + 1e-12
    assert delay > 0


def test_default_policy_pauses_after_five_failures_and_probes_every_30s_at_most() -> None:
    policy = WriteRetryPolicy()
    assert not next_write_retry(policy, 4, 0.0).pause_partition
    assert next_write_retry(policy, 5, 0.0).pause_partition
    assert next_write_retry(policy, 1000, 0.0).delay_seconds == 30.0


@pytest.mark.parametrize("kwargs", [
    {"attempts_before_pause": 0}, {"backoff_initial_seconds": 0.0}, {"backoff_initial_seconds": 60.0},
    {"backoff_multiplier": 0.5}, {"jitter": 1.0},
])
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WriteRetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_failures_are_one_based() -> None:
    with pytest.raises(ValueError):
        next_write_retry(POLICY, 0, 0.0)

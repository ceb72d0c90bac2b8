"""tests/support.wait_for: cheap predicates are polled at the interval, costly ones back off to max_interval."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import support
from support import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """time.monotonic and time.sleep of the support module, advanced by sleeps and by predicate costs."""
    fake = FakeClock()
    monkeypatch.setattr(support.time, "monotonic", fake.monotonic)
    monkeypatch.setattr(support.time, "sleep", fake.sleep)
    return fake


def predicate_true_after(clock: FakeClock, at: float, cost: float) -> tuple[list[float], Callable[[], bool]]:
    calls: list[float] = []

    def check() -> bool:
        calls.append(clock.now)
        clock.now += cost
        return clock.now >= at

    return calls, check


def test_a_cheap_predicate_is_polled_at_the_interval(clock: FakeClock) -> None:
    _, check = predicate_true_after(clock, at=10.0, cost=0.001)
    assert support.wait_for(check, 30, "cheap")
    assert set(clock.sleeps) == {0.2}
    assert clock.now < 10.0 + 0.2 + 0.002


def test_a_costly_predicate_backs_off_to_the_max_interval_and_ends_soon_after_its_condition(clock: FakeClock) -> None:
    calls, check = predicate_true_after(clock, at=30.0, cost=0.08)  # a kubectl process
    assert support.wait_for(check, 60, "costly")
    assert clock.sleeps[0] == pytest.approx(0.3) and max(clock.sleeps) == 1.0
    assert clock.sleeps == sorted(clock.sleeps)
    assert len(calls) < 40  # 0.2 s polling would have called it ~107 times in 30 s
    assert clock.now <= 30.0 + 1.0 + 0.08


def test_the_deadline_is_kept_and_named(clock: FakeClock) -> None:
    _, check = predicate_true_after(clock, at=1e9, cost=0.08)
    with pytest.raises(support.WaitTimeout, match="timed out after 5s waiting for never"):
        support.wait_for(check, 5, "never")
    assert 5.0 <= clock.now <= 5.0 + 0.08 + 1e-9

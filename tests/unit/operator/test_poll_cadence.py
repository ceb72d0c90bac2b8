"""The daemon's cadence: every resource is polled every interval, start to start."""

from __future__ import annotations

import pytest

from lagpilot_operator.handlers import pause_before_next_poll


def test_the_wait_is_the_rest_of_the_interval() -> None:
    assert pause_before_next_poll(5, 0.0) == 5
    assert pause_before_next_poll(5, 1.5) == pytest.approx(3.5)
    assert pause_before_next_poll(5, 4.9) == pytest.approx(0.5)  # the floor: a tenth of the interval


def test_a_reconcile_longer_than_the_interval_is_followed_by_a_tenth_of_it() -> None:
    assert pause_before_next_poll(5, 5.0) == pytest.approx(0.5)
    assert pause_before_next_poll(5, 30.0) == pytest.approx(0.5)
    assert pause_before_next_poll(1, 2.0) == pytest.approx(0.1)

"""The daemon's cadence: every resource is polled every interval, start to start."""

from __future__ import annotations

import asyncio

import pytest

from lagpilot_operator.handlers import _first_of, pause_before_next_poll


def test_the_wait_is_the_rest_of_the_interval() -> None:
    assert pause_before_next_poll(5, 0.0) == 5
    assert pause_before_next_poll(5, 1.5) == pytest.approx(3.5)
    assert pause_before_next_poll(5, 4.9) == pytest.approx(0.5)  # the floor: a tenth of the interval


def test_a_reconcile_longer_than_the_interval_is_followed_by_a_tenth_of_it() -> None:
    assert pause_before_next_poll(5, 5.0) == pytest.approx(0.5)
    assert pause_before_next_poll(5, 30.0) == pytest.approx(0.5)
    assert pause_before_next_poll(1, 2.0) == pytest.approx(0.1)


def test_the_first_wait_to_end_ends_them_all() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        ends, never = loop.create_future(), loop.create_future()
        loop.call_soon(ends.set_result, None)
        await _first_of(ends, never)
        return ends.done() and not ends.cancelled(), never.cancelled()

    assert asyncio.run(scenario()) == (True, True)


def test_a_cancelled_caller_cancels_every_wait() -> None:
    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()
        waiting = asyncio.create_task(_first_of(first, second))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return first.cancelled(), second.cancelled()

    assert asyncio.run(scenario()) == (True, True)

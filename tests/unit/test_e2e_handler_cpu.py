"""The e2e handler's CPU part (`E2E_CPU_MS`): thread CPU time, not wall time.

That the burn holds the GIL is by construction (a pure-Python loop, as bench/pool_model_bench.py's, whose
process never used more than one core at any pool); a test of it would time two threads against the wall
clock, which on this shared 2-core machine (load 10-20) cannot tell overlap from waiting for a core.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from lagpilot_worker.record import Record
from support import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def handlers() -> ModuleType:
    return load_script("e2e_handlers_for_cpu", ROOT / "e2e" / "handlers.py")


class _Message:
    """The part of a consumed message the handler reads."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def topic(self) -> str:
        return "in"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 7

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return self._value

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_765_000_000_000)


def _thread_cpu(work: Any) -> tuple[float, float]:
    """(thread CPU seconds, wall seconds) that `work()` took on this thread."""
    cpu, wall = time.thread_time(), time.perf_counter()
    work()
    return time.thread_time() - cpu, time.perf_counter() - wall


@pytest.mark.parametrize("seconds", [0.005, 0.02])
def test_burn_spends_the_asked_thread_cpu_time_within_ten_percent(handlers: ModuleType, seconds: float) -> None:
    spent: list[float] = []
    cpu, _ = _thread_cpu(lambda: spent.append(handlers.burn_cpu(seconds)))
    # Thread CPU time: another process or thread taking the core does not count, so the bound holds on a
    # busy machine.
    assert seconds <= spent[0] <= seconds * 1.1
    assert seconds <= cpu <= seconds * 1.1


def test_the_handler_burns_e2e_cpu_ms_of_cpu_then_waits_e2e_cost_ms_without_cpu(
        handlers: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    monkeypatch.setattr(handlers, "_write_entry", lambda ident, record: written.append(ident))
    record = Record(_Message(b'{"id": "m-1"}'), {"id": "m-1"})

    monkeypatch.setenv("E2E_CPU_MS", "15")
    monkeypatch.setenv("E2E_COST_MS", "0")
    cpu, _ = _thread_cpu(lambda: handlers.handle(record))
    assert 0.015 <= cpu <= 0.015 * 1.1 + 0.001  # the burn, and the id's parsing (µs)

    monkeypatch.setenv("E2E_CPU_MS", "0")
    monkeypatch.setenv("E2E_COST_MS", "30")
    cpu, wall = _thread_cpu(lambda: handlers.handle(record))
    assert wall >= 0.03 and cpu < 0.003  # the wait is wall time, not CPU

    monkeypatch.delenv("E2E_CPU_MS")
    cpu, _ = _thread_cpu(lambda: handlers.handle(record))
    assert cpu < 0.003  # no CPU part unless asked for
    assert written == ["m-1", "m-1", "m-1"]

"""The rebalance benchmark's pure analysis: how long each moved partition had no owner, window counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("rebalance_bench", BENCH / "rebalance_bench.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_a_partition_is_unowned_from_its_revocation_to_its_next_assignment(bench: ModuleType) -> None:
    own = bench.Ownership
    events = [
        own(5.0, "w0", "revoked", (9,)),         # before the change: not counted
        own(6.0, "w1", "assigned", (9,)),
        own(10.0, "w0", "revoked", (1, 2)),
        own(10.5, "w1", "revoked", (3,)),
        own(11.0, "w4", "assigned", (1,)),
        own(12.5, "w5", "assigned", (2, 3)),
        own(13.0, "w0", "assigned", ()),         # the closing assignment of a member that only gave up
        own(14.0, "w6", "assigned", (7,)),       # assigned without a revocation since the change: no span
    ]
    spans = bench.unowned_spans(events, since=10.0)
    assert spans == {1: 1.0, 2: 2.5, 3: 2.0}


def test_a_revocation_and_assignment_logged_in_the_same_millisecond_count_as_zero(bench: ModuleType) -> None:
    own = bench.Ownership
    spans = bench.unowned_spans([own(3.0, "w1", "assigned", (4,)), own(3.0, "w0", "revoked", (4,))], since=0.0)
    assert spans == {4: 0.0}


def test_window_counts_and_p99(bench: ModuleType) -> None:
    finished = [(10.0 + i / 100, 10.0 + i / 100 - (0.5 if i == 99 else 0.01)) for i in range(100)]
    assert bench.window_stats(finished, 10.0, 11.0) == (100, 500.0)
    assert bench.window_stats(finished, 10.0, 10.5) == (50, 10.0)
    assert bench.window_stats([], 0.0, 1.0) == (0, None)

from __future__ import annotations

from lagpilot_operator.core.stabilization import stabilized


def test_moves_only_as_far_as_every_recommendation_of_its_window_agrees() -> None:
    history = [(90.0, 8), (95.0, 4), (99.0, 6)]
    # Up: at most the smallest of the last 20 s (4), never below the current count.
    assert stabilized(2, 10, history, 100.0, 20, 300) == 4
    # Down: at least the largest of the last 300 s (8).
    assert stabilized(10, 1, history, 100.0, 0, 300) == 8
    # Windows of zero: the new recommendation alone decides.
    assert stabilized(10, 1, history, 100.0, 0, 0) == 1
    assert stabilized(2, 10, history, 100.0, 0, 0) == 10
    # Recommendations older than a window do not count: only (99, 6) is within 5 s.
    assert stabilized(10, 1, history, 100.0, 0, 5) == 6

"""The HorizontalPodAutoscaler's stabilization window rule (stabilizeRecommendationWithBehaviors), pure.

Shared by Lagpilot's policy (on slots) and the KEDA model (on replicas, as the HPA behind KEDA does it),
so the two are compared under one rule and not two copies of it.
"""

from __future__ import annotations

from collections.abc import Iterable


def stabilized(current: int, recommendation: int, history: Iterable[tuple[float, int]], now: float,
               up_window_seconds: float, down_window_seconds: float) -> int:
    """`current` moved no further than every recommendation of each window agrees: up to at most the
    smallest of the scale-up window, down to at least the largest of the scale-down window.
    `history` holds earlier (time, recommendation) pairs; `recommendation` is the one made `now`."""
    past = list(history)
    up_cut = now - up_window_seconds
    down_cut = now - down_window_seconds
    up = min([recommendation, *(r for t, r in past if t > up_cut)])
    down = max([recommendation, *(r for t, r in past if t > down_cut)])
    return min(max(current, up), down)

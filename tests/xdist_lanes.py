"""The test run's pytest-xdist scheduling (conftest.py's `pytest_xdist_make_scheduler`)."""

from __future__ import annotations

from typing import Any

LANE_PREFIX = "e2e-lane"  # the e2e scenarios' xdist groups (e2e/conftest.py)


def lane_scheduling() -> type:
    """pytest-xdist's `loadgroup` scheduler, except that a worker running an e2e lane is given no other
    test until its lane is done.

    xdist tops a worker up with the next unit once it has two tests or fewer pending: a lane worker
    with two scenarios left (three minutes) took the next unit too, and a 50 s integration test
    queued there ran after the lane, alone, at the end of the run. Other workers take it instead."""
    from xdist.scheduler import LoadGroupScheduling

    class LaneScheduling(LoadGroupScheduling):
        def _reschedule(self, node: Any) -> None:
            lane_running = any(scope.startswith(LANE_PREFIX) and not all(tests.values())
                               for scope, tests in self.assigned_work.get(node, {}).items())
            if lane_running and self.workqueue:
                return
            super()._reschedule(node)

    return LaneScheduling

"""The test run's pytest-xdist scheduling (conftest.py's `pytest_xdist_make_scheduler`).

`make test` runs `--dist loadgroup`: each e2e lane (e2e/conftest.py) is one unit of five scenarios sent
to one worker at once; every other test is a unit of its own. Stock xdist tops a worker up with the
queue's next unit once it has two tests or fewer pending. For a lane worker that is when two scenarios
(about three minutes) are left, and the next unit is one of the long integration tests the queue holds
first: in a warm run a 52 s share-group test waited there for the lane and then ran alone at the end of
the run. Refusing a lane worker everything until its lane is done fails the other way: an xdist worker
runs a test only once it knows the one after it (or is told to stop), so the lane's last scenario then
waited for the whole queue to empty (78 s in the run that tried it).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

LANE_PREFIX = "e2e-lane"  # the e2e scenarios' xdist groups (e2e/conftest.py)


class TopUp(Enum):
    STOCK = "stock"  # xdist's own rule: the queue's next unit once two tests or fewer are pending
    NOTHING = "nothing"  # the lane's next scenario is already known to the worker
    CHEAPEST = "cheapest"  # one unit from the queue's end (a unit test of milliseconds)


def top_up(lane_pending: int, pending: int) -> TopUp:
    """What a worker is given when one of its tests ends, from its pending tests (those of its lane).

    While a lane has scenarios left, its worker is given nothing as long as it has a next test to run,
    and when only one test is pending (the lane's last scenario, which the worker will not start before
    it knows a next one) it is given the cheapest unit there is: the last scenario starts at once, and
    nothing long waits behind it."""
    if lane_pending == 0:
        return TopUp.STOCK
    return TopUp.CHEAPEST if pending <= 1 else TopUp.NOTHING


def lane_scheduling() -> type:
    """pytest-xdist's `loadgroup` scheduler with `top_up`'s rule for workers running an e2e lane."""
    from xdist.scheduler import LoadGroupScheduling

    class LaneScheduling(LoadGroupScheduling):
        def _reschedule(self, node: Any) -> None:
            work = self.assigned_work.get(node, {})
            lane_pending = sum(list(tests.values()).count(False)
                               for scope, tests in work.items() if scope.startswith(LANE_PREFIX))
            decision = top_up(lane_pending, self._pending_of(work))
            if decision is TopUp.STOCK or node.shutting_down or not self.workqueue:
                super()._reschedule(node)
            elif decision is TopUp.CHEAPEST:
                # The queue is ordered longest first (conftest.py): its end is a unit test.
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
                self._assign_work_unit(node)

    return LaneScheduling

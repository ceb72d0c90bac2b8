"""`make test` keeps the e2e scenarios in two lanes with pytest-xdist's `--dist loadgroup`
(e2e/conftest.py). That only holds while xdist can tag the grouped tests' node ids: with pytest 9.2 and
pytest-xdist 3.8 it cannot, every test is scheduled on its own, and five scenarios ran at once again.
This runs the scheduler for real on a throwaway suite and checks that a lane stays on one worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

from xdist_lanes import TopUp, top_up

SUITE = '''
import pytest

LANE = pytest.mark.xdist_group("lane")


@LANE
def test_lane_1() -> None:
    pass


@LANE
def test_lane_2() -> None:
    pass


@LANE
def test_lane_3() -> None:
    pass


def test_free_1() -> None:
    pass


def test_free_2() -> None:
    pass
'''


def test_loadgroup_runs_every_test_of_a_group_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "test_lanes.py").write_text(SUITE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    workers: dict[str, str] = {}
    for match in re.finditer(r"\[(gw\d)\].*PASSED \S*::(test_\w+)(@\w+)?", result.stdout):
        workers[match.group(2)] = match.group(1)
    assert set(workers) == {"test_lane_1", "test_lane_2", "test_lane_3", "test_free_1", "test_free_2"}, result.stdout
    assert len({workers[f"test_lane_{i}"] for i in (1, 2, 3)}) == 1, workers


def test_a_lane_worker_is_topped_up_only_when_its_last_scenario_is_pending() -> None:
    assert top_up(lane_pending=0, pending=2) is TopUp.STOCK  # no lane: xdist's own rule
    assert top_up(lane_pending=0, pending=0) is TopUp.STOCK
    assert top_up(lane_pending=3, pending=3) is TopUp.NOTHING
    assert top_up(lane_pending=2, pending=2) is TopUp.NOTHING  # stock xdist would queue a unit here
    assert top_up(lane_pending=1, pending=2) is TopUp.NOTHING  # its last scenario has a next test
    assert top_up(lane_pending=1, pending=1) is TopUp.CHEAPEST  # it waits for a next test to start


LANE_SUITE = '''
import json
import os
import time

import pytest

LANE = pytest.mark.xdist_group("e2e-lane-x")


def _run(name: str, seconds: float) -> None:
    start = time.monotonic()
    time.sleep(seconds)
    with open(os.environ["TIMELINE"], "a") as timeline:
        timeline.write(json.dumps({"test": name, "worker": os.environ["PYTEST_XDIST_WORKER"],
                                   "start": start, "end": time.monotonic()}) + "\\n")


@LANE
@pytest.mark.parametrize("step", [1, 2, 3])
def test_lane(step: int) -> None:
    _run(f"lane-{step}", 2.0)


@pytest.mark.parametrize("n", range(40))
def test_free(n: int) -> None:
    _run(f"free-{n}", 0.3)
'''

LANE_CONFTEST = f'''
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from xdist_lanes import lane_scheduling


def pytest_xdist_make_scheduler(config, log):
    return lane_scheduling()(config, log)
'''


def test_a_lane_runs_without_a_pause_and_takes_only_the_last_unit_beside_it(tmp_path: Path) -> None:
    """A lane of three 2 s tests beside forty 0.3 s tests on two workers (the free tests alone take
    12 s on one worker). Stock xdist gives the lane's worker the queue's next free test when the lane's
    first test ends; refusing it everything holds the lane's last test until the queue is empty (about
    8 s). With `top_up` the lane's tests run back to back, and the lane's worker takes the queue's last
    free test when its last scenario is pending, and nothing before."""
    (tmp_path / "test_lanes.py").write_text(LANE_SUITE)
    (tmp_path / "conftest.py").write_text(LANE_CONFTEST)
    timeline = tmp_path / "timeline.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120,
        env={**os.environ, "TIMELINE": str(timeline)})
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted((json.loads(line) for line in timeline.read_text().splitlines()), key=lambda run: run["start"])
    lane = [run for run in runs if run["test"].startswith("lane-")]
    assert [run["test"] for run in lane] == ["lane-1", "lane-2", "lane-3"], runs
    lane_worker = {run["worker"] for run in lane}
    assert len(lane_worker) == 1, runs
    gaps = [later["start"] - earlier["end"] for earlier, later in pairwise(lane)]
    assert max(gaps) < 1.0, f"the lane paused between its tests: gaps {gaps}"
    beside_lane = [run["test"] for run in runs if run["worker"] in lane_worker and run["test"].startswith("free-")]
    assert beside_lane and beside_lane[0] == "free-39", (
        f"the lane's worker ran {beside_lane[:3]} first, not the queue's last unit")
    assert all(run["start"] >= lane[-1]["end"] for run in runs
               if run["worker"] in lane_worker and run["test"].startswith("free-")), runs

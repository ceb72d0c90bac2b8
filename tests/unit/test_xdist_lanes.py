"""`make test` keeps the e2e scenarios in two lanes with pytest-xdist's `--dist loadgroup`
(e2e/conftest.py). That only holds while xdist can tag the grouped tests' node ids: with pytest 9.2 and
pytest-xdist 3.8 it cannot, every test is scheduled on its own, and five scenarios ran at once again.
This runs the scheduler for real on a throwaway suite and checks that a lane stays on one worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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


LANE_SUITE = '''
import time

import pytest

LANE = pytest.mark.xdist_group("e2e-lane-x")


@LANE
@pytest.mark.parametrize("step", [1, 2, 3])
def test_lane(step: int) -> None:
    time.sleep(3)


@pytest.mark.parametrize("n", range(16))
def test_free(n: int) -> None:
    time.sleep(0.3)
'''

LANE_CONFTEST = f'''
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from xdist_lanes import lane_scheduling


def pytest_xdist_make_scheduler(config, log):
    return lane_scheduling()(config, log)
'''


def test_a_worker_running_a_lane_is_given_no_other_test_until_the_lane_is_done(tmp_path: Path) -> None:
    """xdist tops a worker up once it has two tests or fewer pending: without the lane scheduler the
    lane's worker takes a free test when the lane's first test ends (3 s: the other worker has run about
    ten of the sixteen and holds three), and that test waits for the lane (9 s) while the other worker
    could have run it (all sixteen take 4.8 s there)."""
    (tmp_path / "test_lanes.py").write_text(LANE_SUITE)
    (tmp_path / "conftest.py").write_text(LANE_CONFTEST)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    ran: dict[str, set[str]] = {}
    for match in re.finditer(r"\[(gw\d)\].*PASSED \S*::(test_\w+)\[", result.stdout):
        ran.setdefault(match.group(2), set()).add(match.group(1))
    assert len(ran["test_lane"]) == 1, result.stdout
    assert not ran["test_lane"] & ran["test_free"], result.stdout

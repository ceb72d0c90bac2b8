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

"""The e2e scenarios' lanes (e2e/conftest.py): every scenario is placed on purpose, and the two lanes,
which run side by side, take about as long as each other, so neither finishes minutes after the other."""

from __future__ import annotations

import ast
from pathlib import Path

from e2e.conftest import DEFAULT_LANE, E2E_LANES, e2e_lane

E2E = Path(__file__).resolve().parents[2] / "e2e"


def _scenarios() -> set[str]:
    found = set()
    for path in E2E.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.add(f"{path.name}::{node.name}")
    return found


def test_every_scenario_has_a_lane_and_the_table_names_only_scenarios() -> None:
    assert _scenarios() == set(E2E_LANES)


def test_the_two_lanes_are_balanced_within_ten_percent() -> None:
    totals: dict[str, int] = {}
    for lane, seconds in E2E_LANES.values():
        totals[lane] = totals.get(lane, 0) + seconds
    assert len(totals) == 2, totals
    short, long = sorted(totals.values())
    assert long <= 1.1 * short, totals


def test_a_node_id_maps_to_its_lane_with_or_without_path_and_parameters() -> None:
    key = "test_burst.py::test_burst_scales_up_drains_and_returns_to_min"
    assert e2e_lane(f"e2e/{key}") == E2E_LANES[key][0]
    assert e2e_lane(f"e2e/{key}[node]") == E2E_LANES[key][0]
    assert e2e_lane("e2e/test_new.py::test_not_in_the_table") == DEFAULT_LANE

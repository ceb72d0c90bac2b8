"""The KEDA model stays calibrated against the real KEDA's measured run (bench/data): a model change that
moves it out of issue 15's bounds fails here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lagpilot_operator.core import calibration

RECORDED = Path(__file__).resolve().parents[3] / "bench" / "data" / "real_keda_loop_2026-12-06.json"


@pytest.fixture(scope="module")
def measurement() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


def test_model_is_within_10_percent_of_replica_seconds_and_one_polling_period_per_step(
        measurement: dict[str, Any]) -> None:
    runs = calibration.calibrate(measurement)
    assert [r.run for r in runs] == ["keda-pool-1", "keda-pool-4", "keda-pool-16"]
    table = calibration.format_table(runs)
    for run in runs:
        assert abs(run.replica_seconds_error) <= 0.10, table
        assert run.steps and all(s.difference is not None and abs(s.difference) <= 30.0 for s in run.steps), table
        # The model takes the same steps as the real HPA (1 -> 4 -> 8, not the behavior path's 1 -> 5 -> 8).
        assert [s.model_replicas for s in run.steps] == [s.real_replicas for s in run.steps], table
        assert run.passed
    assert calibration.summary(runs)["passed"] is True


def test_steps_of_the_large_pools_are_within_one_hpa_sync(measurement: dict[str, Any]) -> None:
    by_name = {r.run: r for r in calibration.calibrate(measurement)}
    for name in ("keda-pool-1", "keda-pool-4"):
        assert all(step.within(15.0) for step in by_name[name].steps)


def test_integral_and_steps_of_a_timeline() -> None:
    timeline = [(0.0, 1), (10.0, 4), (20.0, 8)]
    assert calibration.integral(timeline, 30.0) == 10 + 40 + 80
    assert calibration.integral(timeline, 15.0) == 10 + 20
    assert calibration.scale_steps(timeline) == [(10.0, 4), (20.0, 8)]


def test_unmatched_steps_fail_the_bound() -> None:
    steps = calibration.match_steps([(0.0, 1), (29.0, 2)], [(0.0, 1), (30.0, 2), (60.0, 3)])
    assert [s.difference for s in steps] == [1.0, None]
    assert steps[0].within(30.0) and not steps[1].within(30.0)


def test_a_measurement_without_keda_runs_is_not_calibratable(measurement: dict[str, Any]) -> None:
    assert calibration.calibratable(measurement)
    assert not calibration.calibratable({**measurement, "runs": {}})
    assert not calibration.calibratable({"runs": measurement["runs"]})

"""The KEDA model stays calibrated against the real KEDA's measured runs (bench/data): the run it was first
fitted to (2026-12-06) and the re-measurement at 9da9dd0. A model change that moves it out of issue 15's
bounds fails here.

Both runs are replayed in one world measured from both (`calibration.measure_world`). At the commit
trail's mean the replay reproduces the fitted run; the re-measurement's keda-pool-16 went the other way
at a reading that sat exactly on the HPA's tolerance (1,760 against 1,600: ratio 1.100, held), which no
deterministic replay of the same trace can follow both ways (431 against 602 replica-seconds, 40 % apart,
where the bound allows 22 %): it is reproduced within the commit trail's measured noise band.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lagpilot_operator.core import calibration

DATA = Path(__file__).resolve().parents[3] / "bench" / "data"
RECORDED = DATA / "real_keda_loop_2026-12-06.json"
REMEASURED = DATA / "real_keda_loop_2026-12-06_9da9dd0.json"
RUNS = ["keda-pool-1", "keda-pool-4", "keda-pool-16"]


@pytest.fixture(scope="module")
def measurement() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RECORDED.read_text())
    return data


@pytest.fixture(scope="module")
def remeasured() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(REMEASURED.read_text())
    return data


@pytest.fixture(scope="module")
def observations(measurement: dict[str, Any], remeasured: dict[str, Any]) -> list[calibration.RunObservation]:
    return calibration.observe(measurement, "2026-12-06") + calibration.observe(remeasured, "9da9dd0")


@pytest.fixture(scope="module")
def world(observations: list[calibration.RunObservation]) -> calibration.MeasuredWorld:
    return calibration.measure_world(observations)


@pytest.fixture(scope="module")
def bands(measurement: dict[str, Any], remeasured: dict[str, Any], world: calibration.MeasuredWorld
          ) -> dict[str, dict[str, calibration.NoiseBand]]:
    return {label: {b.run: b for b in calibration.noise_bands(m, world)}
            for label, m in (("2026-12-06", measurement), ("9da9dd0", remeasured))}


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


def test_the_measured_world_is_one_worker_in_both_runs(observations: list[calibration.RunObservation],
                                                       world: calibration.MeasuredWorld) -> None:
    """The quantities the replay's world is made of, as measured from both runs' timelines."""
    assert [o.run for o in observations] == RUNS + RUNS
    # One pod alone in the burst: about 58 ms of a slot per message (the handler's 50 and the worker's own),
    # the same within 6 % at every pool in both runs, not the simulator's 50.
    assert world.seconds_per_message == pytest.approx(0.0577, abs=0.0005)
    for o in observations:
        assert o.per_slot_rate is not None
        assert o.per_slot_rate * world.seconds_per_message == pytest.approx(1.0, abs=0.06), o
    # A new pod consumes about 6 s after its step; the old ones go on (cooperative-sticky).
    assert world.start_to_consuming_seconds == pytest.approx(6.0, abs=0.3)
    assert world.rebalance_seconds == 0.0
    # What the HPA reads above the true backlog while one pod's backlog grows: about half the backlog at
    # 16 slots, none at 4 (every pool-1 reading in the burst is KEDA's cap: no sample).
    trail_16, trail_4, trail_1 = (world.commit_trail(pool) for pool in (16, 4, 1))
    assert trail_16.samples == pytest.approx((0.568, 0.469, 0.437), abs=0.005)
    assert trail_16.central == pytest.approx(0.491, abs=0.005)
    assert trail_16.band == pytest.approx((0.355, 0.628), abs=0.005)
    assert abs(trail_4.central) < 0.01 and len(trail_4.samples) == 2
    assert trail_1.samples == () and trail_1.band == (0.0, 0.0)


def test_both_runs_in_the_measured_world_at_the_central_commit_trail(
        measurement: dict[str, Any], remeasured: dict[str, Any], world: calibration.MeasuredWorld) -> None:
    fitted = calibration.calibrate(measurement, world)
    again = calibration.calibrate(remeasured, world)
    assert [r.run for r in fitted] == [r.run for r in again] == RUNS
    table = calibration.format_table(fitted) + "\n" + calibration.format_table(again)
    for run in fitted + again[:2]:  # the re-measured pool 16: see the noise band below
        assert abs(run.replica_seconds_error) <= 0.02, table
        assert run.steps and all(s.within(calibration.HPA_SYNC_SECONDS) for s in run.steps), table
        assert [s.model_replicas for s in run.steps] == [s.real_replicas for s in run.steps], table
        assert run.passed
    assert calibration.summary(fitted)["passed"] is True
    # The fitted run's pool 16 is now within a second of the real step (it was 16 s late).
    pool_16 = fitted[2]
    assert [(s.model_replicas, abs(s.difference or 99) <= 1.0) for s in pool_16.steps] == [(2, True)], table


def test_both_runs_are_reproduced_within_the_commit_trails_noise(
        bands: dict[str, dict[str, calibration.NoiseBand]], measurement: dict[str, Any],
        remeasured: dict[str, Any]) -> None:
    """Over the pool's commit trail band (its mean +/- 2 sd) the replay of pool 16 takes exactly the two
    steps the two real runs took, split where the first reading crosses the HPA's tolerance: each run is
    within the bounds for a stretch of the band, and no realization does anything neither run did."""
    for label in bands:
        assert list(bands[label]) == RUNS
        for band in bands[label].values():
            assert band.reproduced, calibration.format_noise(list(bands[label].values()))
            assert all(r.passed for r in band.realizations) or band.run == "keda-pool-16"
    real = {label: [(round(t), n) for t, n in calibration.scale_steps(m["runs"]["keda-pool-16"]["replica_timeline"])]
            for label, m in (("2026-12-06", measurement), ("9da9dd0", remeasured))}
    assert real == {"2026-12-06": [(29, 2)], "9da9dd0": [(44, 3)]}
    for label, by_run in bands.items():
        outcomes = by_run["keda-pool-16"].outcomes()
        (low_steps, low_from, low_to, low_ok), (high_steps, high_from, high_to, high_ok) = outcomes
        # 3 Pods at the sync after 44 s (the 9da9dd0 run: 43.9 s), or 2 at the one after 29 s (the fitted: 29.0 s).
        assert [(round(t), n) for t, n in low_steps + high_steps] == [(45, 3), (30, 2)]
        assert low_ok is (label == "9da9dd0") and high_ok is (label == "2026-12-06")
        # The split: below it the first reading stays within 1.1 x the threshold (hold, then 3 at the next
        # sync); above, it crosses (2 at once). The 9da9dd0 run's stretch is a fair part of the band.
        assert low_from == pytest.approx(0.36) and high_to == pytest.approx(0.62)
        assert 0.44 <= low_to < high_from <= 0.49
        assert (low_to - low_from) / (high_to - low_from) > 0.3


def test_the_remeasured_run_is_reproduced_without_its_own_deciding_reading(
        observations: list[calibration.RunObservation], world: calibration.MeasuredWorld,
        remeasured: dict[str, Any]) -> None:
    """The band that reproduces the 9da9dd0 run does not need the sample of its deciding reading (29.8 s)."""
    own = next(o for o in observations if o.measurement == "9da9dd0" and o.run == "keda-pool-16")
    deciding = next(r for r in own.readings if r.measures_commit_trail)
    assert (deciding.time, round(deciding.metric), deciding.desired) == (29.8, 1760, 1)
    others = tuple(s for s in world.commit_trail(16).samples if s != deciding.excess_fraction)
    assert len(others) == 2
    without = calibration.MeasuredWorld(world.seconds_per_message, world.start_to_consuming_seconds,
                                        (calibration.CommitTrail(16, others),))
    band = next(b for b in calibration.noise_bands(remeasured, without) if b.run == "keda-pool-16")
    assert band.reproduced and min(band.reproducing) < 0.4


def test_the_deciding_readings_sit_either_side_of_the_hpa_tolerance(
        observations: list[calibration.RunObservation]) -> None:
    """Why the two runs differ: their first reading in the burst was 2,093 (ratio 1.31: 2 Pods) and 1,760
    (ratio exactly 1.1: within the tolerance, held), 333 apart at 0.2 s apart."""
    first = {o.measurement: next(r for r in o.readings if r.during_build_up)
             for o in observations if o.run == "keda-pool-16"}
    assert {k: (r.time, round(r.metric), r.desired) for k, r in first.items()} == {
        "2026-12-06": (30.0, 2093, 2), "9da9dd0": (29.8, 1760, 1)}
    assert first["9da9dd0"].metric / 1600 == 1.1


def test_quantities_and_sampled_timelines() -> None:
    assert calibration.quantity("2500m") == 2.5 and calibration.quantity("1760") == 1760.0
    assert calibration.quantity("736334m") == pytest.approx(736.334)
    timeline = [[0.0, 0.0], [10.0, 100.0], [20.0, 50.0]]
    assert calibration.value_at(timeline, 5.0) == 50.0
    assert calibration.value_at(timeline, 15.0) == 75.0
    assert calibration.value_at(timeline, -1.0) == 0.0 and calibration.value_at(timeline, 30.0) == 50.0


def test_a_measurement_without_start_delays_cannot_make_a_world(measurement: dict[str, Any]) -> None:
    flat = {**measurement, "runs": {name: {**run, "replica_timeline": [[0.0, 1]]}
                                    for name, run in measurement["runs"].items()}}
    with pytest.raises(ValueError, match="start delay"):
        calibration.measure_world(calibration.observe(flat, "flat"))

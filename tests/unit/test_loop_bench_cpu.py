"""The loop benchmark's CPU-bound scenario (issue 15 on the real loop): its config, the worker's CPU limit,
what a run records about capacity per Pod, and what the simulator expects of the scenario."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import load_script

BENCH = Path(__file__).resolve().parents[2] / "bench"
CHART_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("loop_bench", BENCH / "loop_bench.py")


# --- config ------------------------------------------------------------------------------------------------


def test_the_cpu_scenario_burns_cpu_in_pods_limited_to_a_quarter_core_within_a_core_of_the_machine(
        bench: ModuleType) -> None:
    cfg = bench.bench_config("cpu")
    assert (cfg.cpu_ms, cfg.cost_ms, cfg.pod_cpu_limit) == (5.0, 0, "250m")
    assert (cfg.partitions, cfg.replicas_max, cfg.pool_min, cfg.pool_initial, cfg.pool_max) == (8, 8, 1, 1, 16)
    assert cfg.profile().description == "steps:30@10,120@120,60@10"
    # The workers' handler CPU at the burst's rate: what the 2-core machine spares beside Kafka and the
    # control plane (at most ~1 core), and more than one Pod's limit (else nothing needs to move).
    cores = cfg.burst_rate * cfg.cpu_ms / 1000
    assert bench.cpu_cores(cfg.pod_cpu_limit) < cores <= 0.75
    assert bench.SCENARIO_RUNS["cpu"] == ("drainTime",)
    assert bench.bench_config("burst") == bench.BenchConfig()


def test_flags_override_the_scenario_and_none_removes_its_limit(bench: ModuleType) -> None:
    cfg = bench.bench_config("cpu", overrides={"cpu_ms": 4.0, "cost_ms": 2, "burst_rate": 150.0,
                                               "pod_cpu_limit": "300m", "pod_cpu_request": "200m"})
    assert (cfg.cpu_ms, cfg.cost_ms, cfg.burst_rate, cfg.pod_cpu_limit, cfg.pod_cpu_request) == (
        4.0, 2, 150.0, "300m", "200m")
    assert cfg.before_seconds == bench.CPU_BOUND.before_seconds
    assert bench.bench_config("cpu", overrides={"pod_cpu_limit": "none"}).pod_cpu_limit is None


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"quick": True}, "burst scenario only"),
    ({"overrides": {"pod_cpu_limit": "lots"}}, "could not convert"),
    ({"overrides": {"pod_cpu_limit": "0m"}}, "must be > 0"),
    ({"overrides": {"pod_cpu_request": "300m"}}, "above the limit 250m"),
    ({"overrides": {"cpu_ms": 0.0}}, "must cost something"),
])
def test_a_config_that_cannot_run_is_refused_before_any_pod(bench: ModuleType, kwargs: dict[str, Any],
                                                            words: str) -> None:
    with pytest.raises(ValueError, match=words):
        bench.bench_config("cpu", **kwargs)


def test_cpu_quantities_in_cores(bench: ModuleType) -> None:
    assert [bench.cpu_cores(q) for q in ("250m", "1", "1.5", " 500m ")] == [0.25, 1.0, 1.5, 0.5]


def test_the_limit_goes_in_limits_and_the_chart_request_stays_when_below_it(bench: ModuleType) -> None:
    base = copy.deepcopy(CHART_RESOURCES)
    out = bench.container_resources(base, "250m", None)
    assert out == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi", "cpu": "250m"}}
    assert base == CHART_RESOURCES  # the chart's dict is shared by every worker container: never changed


def test_a_limit_below_the_chart_request_lowers_the_request_and_a_given_request_wins(bench: ModuleType) -> None:
    assert bench.container_resources(CHART_RESOURCES, "50m", None)["requests"]["cpu"] == "50m"
    assert bench.container_resources(CHART_RESOURCES, "250m", "250m")["requests"]["cpu"] == "250m"
    assert bench.container_resources({}, "250m", None) == {"limits": {"cpu": "250m"}, "requests": {"cpu": "250m"}}
    assert bench.container_resources(CHART_RESOURCES, None, None) == CHART_RESOURCES
    with pytest.raises(ValueError, match="above the limit"):
        bench.container_resources(CHART_RESOURCES, "250m", "1")


def test_the_manifest_carries_the_bounds_the_policy_and_the_container_crd_defaults_for_the_rest(
        bench: ModuleType) -> None:
    cfg = bench.bench_config("cpu")
    container = {"name": "worker", "resources": bench.container_resources(CHART_RESOURCES, "250m", None)}
    spec = bench.lagpilot_manifest(cfg, "drainTime", name="g", topic="t", bootstrap="k:9092", container=container,
                                   pod_spec_extra={})["spec"]
    assert spec["replicas"] == {"min": 1, "max": 8}
    assert spec["pool"] == {"min": 1, "max": 16, "initial": 1}
    assert spec["policy"] == {"mode": "drainTime", "lagThreshold": {"lagPerConsumer": cfg.lag_threshold}}
    assert "lag" not in spec  # the CRD's 5 s polls
    (worker,) = spec["template"]["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["cpu"] == "250m"


# --- what a run records ------------------------------------------------------------------------------------


def _status(replicas: int, pool: int, reason: str | None, lag: int = 0, ceiling: int | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"desiredReplicas": replicas, "poolSize": pool, "totalLag": lag,
                              "consumeRatePerSecond": 40.0, "policyMemory": {"poolCeiling": ceiling}}
    if reason is not None:
        status["lastDecision"] = reason
    return status


def test_the_decision_timeline_keeps_each_new_reason_or_shape_and_marks_the_shape_changes(bench: ModuleType) -> None:
    found = f"pool 4→8 raised a pod's drain only 45→46 msg/s with work waiting: {bench.CPU_BOUND_FOUND} of pool ≤ 4"
    snapshots = [
        (100.0, _status(1, 1, None)),                                    # before any decision: left out
        (101.0, _status(1, 1, "hold 1 replica, pool 1")),
        (102.0, _status(1, 1, "hold 1 replica, pool 1", lag=5)),         # same decision, other numbers: once
        (106.0, _status(1, 4, "grow pool 1→4", lag=300)),
        (111.0, _status(1, 4, "keeping 4 slots", lag=600)),              # new words, same shape
        (121.0, _status(4, 4, "scale up 1→4 replicas, pool 8→4: " + found, lag=900, ceiling=4)),
    ]
    decisions = bench.decision_timeline(snapshots, start=100.0)
    assert [(d["t"], d["replicas"], d["pool"]) for d in decisions] == [(1.0, 1, 1), (6.0, 1, 4), (11.0, 1, 4),
                                                                       (21.0, 4, 4)]
    assert decisions[-1]["pool_ceiling"] == 4 and decisions[-1]["lag"] == 900
    assert [(d["t"], d["pool"]) for d in bench.shape_changes(decisions)] == [(1.0, 1), (6.0, 4), (21.0, 4)]
    assert [d["t"] for d in decisions if bench.CPU_BOUND_FOUND in d["reason"]] == [21.0]


def test_pod_rates_count_each_pods_ledger_entries_per_window_with_empty_windows_as_zero(bench: ModuleType) -> None:
    entries = ([{"worker": "w-a", "processedMs": 1_000_000 + 100 * i} for i in range(50)]      # 10/s over 0-5 s
               + [{"worker": "w-b", "processedMs": 1_010_500 + 200 * i} for i in range(10)])  # 5/s over 10.5-12.5 s
    rates = bench.pod_rates(entries, start=1000.0)
    assert rates == {"w-a": [[0.0, 10.0]], "w-b": [[10.0, 2.0]]}
    entries.append({"worker": "w-a", "processedMs": 1_012_000})
    assert bench.pod_rates(entries, start=1000.0)["w-a"] == [[0.0, 10.0], [5.0, 0.0], [10.0, 0.2]]


def test_cores_timeline_is_cpu_seconds_per_wall_second_between_samples_a_step_apart(bench: ModuleType) -> None:
    samples = [(1000.0 + t, 0.25 * t) for t in range(0, 11)] + [(1011.0, 2.5 + 1.0), (1015.0, 2.5 + 2.0)]
    assert bench.cores_timeline(samples, start=1000.0) == [[5.0, 0.25], [10.0, 0.25], [15.0, 0.4]]


def test_shape_periods_show_a_bigger_pool_draining_no_more_and_a_second_pod_doubling_it(bench: ModuleType) -> None:
    start = 1000.0
    shapes = [(start, 1, 1), (start + 30, 1, 4), (start + 60, 2, 4)]
    # Pod a finishes 45 msg/s throughout, whatever its pool; pod b joins at 63 s at the same rate.
    entries = ([{"worker": "w-a", "processedMs": int(1000 * (start + i / 45))} for i in range(90 * 45)]
               + [{"worker": "w-b", "processedMs": int(1000 * (start + 63 + i / 45))} for i in range(27 * 45)])
    cpu = {"w-a": [(start + t, 0.25 * t) for t in range(91)], "w-b": [(start + 63 + t, 0.24 * t) for t in range(28)]}
    backlog = [(start + t, 1000 + 10 * t) for t in range(91)]
    periods = bench.shape_periods(shapes, entries, backlog, cpu, start, start + 90)
    assert [(p["from"], p["to"], p["replicas"], p["pool"], p["pods_working"]) for p in periods] == [
        (0.0, 30.0, 1, 1, 1), (30.0, 60.0, 1, 4, 1), (60.0, 90.0, 2, 4, 2)]
    # Each shape from 5 s after it began: b started at 63 s, so it worked all of 65-90 s.
    assert [p["msgs_per_s_per_pod"] for p in periods] == [45.0, 45.0, 45.0]
    assert [p["msgs_per_s"] for p in periods] == [45.0, 45.0, 90.0]
    assert [p["cores_per_pod"] for p in periods] == [0.25, 0.25, 0.245]
    assert (periods[0]["backlog_from"], periods[0]["backlog_to"]) == (1050, 1300)
    # A shape held less than twice the settle time says nothing: left out.
    assert bench.shape_periods([(start, 1, 1), (start + 8, 1, 2)], entries, backlog, cpu, start, start + 8) == []


def test_shape_history_has_one_shape_per_change_though_the_pool_is_read_at_every_status_write(
        bench: ModuleType) -> None:
    # The pool's series is a point per status write: 1 x 1 written three times, then 1 x 5, then 4 x 5.
    pools = [(0.0, 1), (5.0, 1), (10.0, 1), (34.0, 5), (39.0, 5), (54.0, 5)]
    replicas = [(0.0, 1), (54.0, 4)]
    assert bench.shape_history(replicas, pools, 1) == [(0.0, 1, 1), (34.0, 1, 5), (54.0, 4, 5)]


def test_cpu_per_message_sums_each_pods_cgroup_over_the_messages(bench: ModuleType) -> None:
    cpu = {"a": [(0.0, 10.0), (60.0, 25.0)], "b": [(30.0, 1.0), (60.0, 4.0)], "c": [(59.0, 0.5)]}
    assert bench.cpu_ms_per_message(cpu, 3000) == 6.0   # (15 + 3) s over 3000 messages
    assert bench.cpu_ms_per_message(cpu, 0) is None


# --- what the model expects of the scenario ---------------------------------------------------------------


def test_the_model_grows_the_pool_finds_no_gain_then_moves_capacity_to_pods(bench: ModuleType) -> None:
    cfg = bench.bench_config("cpu")
    expected = bench.simulated(cfg, "drainTime")
    into_burst = expected["cpu_bound_found_seconds"]
    assert into_burst is not None and 0 < into_burst < 60
    found, burst_end = cfg.before_seconds + into_burst, cfg.before_seconds + cfg.burst_seconds
    before = [(r, p) for t, r, p in expected["shape_timeline"] if t <= found]
    held = [(r, p) for t, r, p in expected["shape_timeline"] if t <= burst_end][-1]
    # One Pod, its pool grown beyond 4 x pool.initial (the growth that is not read), before the finding ...
    assert {r for r, _ in before} == {1} and max(p for _, p in before) > 4 * cfg.pool_initial
    # ... then, to the burst's end, Pods of a smaller pool: capacity moved to replicas.
    assert held[0] >= 3 and held[1] < max(p for _, p in before)
    assert expected["unprocessed_at_end"] == 0


def test_without_the_pod_limit_one_pod_holds_the_burst_and_nothing_is_cpu_bound(bench: ModuleType) -> None:
    # The control: the same handler with a whole core a Pod (the GIL's) needs no second Pod, so the shift
    # above is the limit's doing.
    expected = bench.simulated(dataclasses.replace(bench.bench_config("cpu"), pod_cpu_limit=None), "drainTime")
    assert expected["cpu_bound_found_seconds"] is None
    assert expected["max_replicas"] == 1
    assert not any(bench.CPU_BOUND_FOUND in reason for _, reason in expected["reasons"])


def test_a_pods_cgroup_gives_its_enforced_quota_and_throttling(bench: ModuleType, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "CGROUP_CPU", tmp_path)
    limited, unlimited = tmp_path / "burstable" / "poduid-1", tmp_path / "besteffort" / "poduid-2"
    for path, quota in ((limited, "25000"), (unlimited, "-1")):
        path.mkdir(parents=True)
        (path / "cpu.cfs_quota_us").write_text(quota + "\n")
        (path / "cpu.cfs_period_us").write_text("100000\n")
        (path / "cpu.stat").write_text("nr_periods 1200\nnr_throttled 900\nthrottled_time 61500000000\n")
    assert bench.pod_cgroup_cpu("uid-1") == {"quota_cores": 0.25, "periods": 1200, "throttled_periods": 900,
                                             "throttled_seconds": 61.5}
    assert bench.pod_cgroup_cpu("uid-2")["quota_cores"] is None   # no limit: no quota
    assert bench.pod_cgroup_cpu("uid-3") is None                  # gone

"""The loop benchmark's pure parts: the ScaledObject a KEDA user writes, slot-seconds, rebalance rounds,
and the comparison against the real KEDA's runs (ratios and the Pareto frontier)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from support import load_script

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("loop_bench", BENCH / "loop_bench.py")


def test_the_scaled_object_scales_the_worker_deployment_on_the_group_lag_with_keda_defaults(
        bench: ModuleType) -> None:
    scaled = bench.scaled_object(name="so", deployment="workers", bootstrap="127.0.0.1:19092", group="g",
                                 topic="t", lag_threshold=400, min_replicas=1, max_replicas=8)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "workers"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)
    # KEDA's defaults stay KEDA's: nothing of pollingInterval, cooldownPeriod or the HPA behavior is set.
    assert not {"pollingInterval", "cooldownPeriod", "advanced"} & set(spec)
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"] == {"bootstrapServers": "127.0.0.1:19092", "consumerGroup": "g", "topic": "t",
                                   "lagThreshold": "400", "offsetResetPolicy": "earliest"}
    # KEDA parses trigger metadata from strings only.
    assert all(isinstance(v, str) for v in trigger["metadata"].values())


def test_keda_lag_threshold_is_the_per_slot_lag_times_the_pool(bench: ModuleType) -> None:
    assert [bench.keda_lag_threshold(100, pool) for pool in (1, 4, 16)] == [100, 400, 1600]


def test_the_runs_are_both_lagpilot_policies_and_keda_at_pools_1_4_16(bench: ModuleType) -> None:
    assert [(r.scaler, r.policy, r.pool) for r in bench.RUNS] == [
        ("lagpilot", "drainTime", None), ("lagpilot", "lagThreshold", None),
        ("keda", None, 1), ("keda", None, 4), ("keda", None, 16)]


def test_slot_seconds_follow_replicas_times_pool_through_changes_of_either(bench: ModuleType) -> None:
    replicas = [(0.0, 1), (10.0, 4)]
    pools = [(5.0, 8)]
    product = bench.product_history(replicas, pools, initial_pool=2)
    assert product == [(0.0, 2), (5.0, 8), (10.0, 32)]
    assert bench.pod_seconds(product, 0.0, 20.0) == 2 * 5 + 8 * 5 + 32 * 10


def test_rebalance_rounds_group_the_members_log_lines_of_one_round(bench: ModuleType) -> None:
    assert bench.rebalance_rounds([]) == 0
    assert bench.rebalance_rounds([100.0, 100.4, 101.0, 130.0, 131.5, 200.0], gap=5.0) == 3
    assert bench.parse_log_time("1970-01-01T00:01:40.250Z") == pytest.approx(100.25)
    assert bench.parse_log_time("not a time") is None


def test_latency_quantiles_take_the_upper_rank(bench: ModuleType) -> None:
    latencies = [float(i) for i in range(1, 1001)]
    assert bench.latency_quantiles(latencies) == {"p50_latency_seconds": 500.0, "p99_latency_seconds": 990.0,
                                                  "p999_latency_seconds": 999.0}


def run(scaler: str, pod_seconds: float, p99: float, **extra: Any) -> dict[str, Any]:
    return {"scaler": scaler, "pod_seconds": pod_seconds, "p99_latency_seconds": p99,
            "p50_latency_seconds": p99 / 10, "p999_latency_seconds": p99 * 2, "slot_seconds": pod_seconds * 4,
            "time_to_drain_seconds": extra.get("drain", 100.0)}


def test_frontier_position_behind_on_and_beyond(bench: ModuleType) -> None:
    keda = [(1000.0, 10.0), (500.0, 60.0), (1200.0, 50.0)]  # the last is dominated by the first
    assert bench.frontier_position((1100.0, 20.0), keda) == "behind"
    assert bench.frontier_position((800.0, 30.0), keda) == "on"        # between the two frontier points
    assert bench.frontier_position((1000.0, 10.0), keda) == "on"       # on a frontier point
    assert bench.frontier_position((900.0, 9.0), keda) == "beyond"
    # Dominating only the dominated point is not beyond the frontier.
    assert bench.frontier_position((1100.0, 40.0), keda) == "behind"


def test_comparison_gives_every_policy_against_every_keda_run(bench: ModuleType) -> None:
    results = {
        "drainTime": run("lagpilot", 400.0, 5.0, drain=50.0),
        "lagThreshold": run("lagpilot", 1100.0, 20.0),
        "keda-pool-1": run("keda", 1000.0, 100.0, drain=200.0),
        "keda-pool-4": run("keda", 800.0, 10.0),
        "keda-pool-16": run("keda", 1600.0, 10.0),
    }
    out = bench.comparison(results)
    assert out["keda_frontier"] == ["keda-pool-4"]
    assert set(out["policies"]) == {"drainTime", "lagThreshold"}
    drain = out["policies"]["drainTime"]
    assert set(drain["vs_keda"]) == {"keda-pool-1", "keda-pool-4", "keda-pool-16"}
    assert drain["vs_keda"]["keda-pool-1"] == {
        "p50_latency_ratio": 0.05, "p99_latency_ratio": 0.05, "p999_latency_ratio": 0.05,
        "pod_seconds_ratio": 0.4, "slot_seconds_ratio": 0.4, "drain_time_ratio": 0.25}
    assert drain["pareto_position"] == "beyond"
    assert out["policies"]["lagThreshold"]["pareto_position"] == "behind"


def test_a_ratio_against_a_missing_or_zero_value_is_none(bench: ModuleType) -> None:
    assert bench.ratio(None, 10.0) is None
    assert bench.ratio(5.0, 0.0) is None
    assert bench.ratio(5.0, None) is None

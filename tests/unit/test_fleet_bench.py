"""The fleet benchmark's pure parts: how the fleet is laid out, and what it reads from /metrics texts."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from support import load_script

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("fleet_bench", BENCH / "fleet_bench.py")


def test_the_fleet_spreads_groups_over_clusters_and_partitions_over_groups(bench: ModuleType) -> None:
    fleet = bench.plan_fleet(7, ["a:1", "b:1", "c:1"], 23, "p")
    assert [g.cluster for g in fleet] == ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1", "a:1"]
    assert [g.partitions for g in fleet] == [4, 4, 3, 3, 3, 3, 3]     # 23 = 7 x 3 + 2: the first two get one more
    assert sum(g.partitions for g in fleet) == 23
    assert len({g.topic for g in fleet}) == len({g.group_id for g in fleet}) == len({g.name for g in fleet}) == 7


def test_a_fleet_with_fewer_partitions_than_groups_is_refused(bench: ModuleType) -> None:
    with pytest.raises(ValueError, match="cannot give each"):
        bench.plan_fleet(10, ["a:1"], 9, "p")


def request_line(verb: str, group: str, resource: str, subresource: str, code: str, value: int) -> str:
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
            f'resource="{resource}",scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


APISERVER = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
    "# TYPE apiserver_request_total counter",
    request_line("PATCH", "lagpilot.io", "kafkaconsumergroups", "status", "200", 10),
    request_line("PATCH", "lagpilot.io", "kafkaconsumergroups", "status", "409", 2),
    request_line("GET", "lagpilot.io", "kafkaconsumergroups", "status", "200", 99),
    request_line("POST", "", "events", "", "201", 4),
    request_line("PATCH", "apps", "deployments", "scale", "200", 3),
    request_line("POST", "", "pods", "", "201", 50),
    'apiserver_request_total_other{verb="PATCH"} 1',
    "",
])


def test_writes_are_counted_per_verb_and_kind_the_operator_writes(bench: ModuleType) -> None:
    counts = bench.write_counts(APISERVER)
    assert counts == {"PATCH lagpilot.io/kafkaconsumergroups/status": 12.0, "POST core/events": 4.0,
                      "PATCH apps/deployments/scale": 3.0}   # reads and Pods (the operator writes none) left out
    later = {**counts, "POST core/events": 9.0}
    assert bench.deltas(counts, later) == {"POST core/events": 5.0}


OPERATOR = """\
# TYPE lagpilot_reconcile_duration_seconds histogram
lagpilot_reconcile_duration_seconds_bucket{le="0.005"} 1.0
lagpilot_reconcile_duration_seconds_count 42.0
lagpilot_reconcile_duration_seconds_sum 1.5
# TYPE lagpilot_consumergroup_total_lag gauge
lagpilot_consumergroup_total_lag{name="g-0",namespace="ns"} 7.0
lagpilot_consumergroup_total_lag{name="g-1",namespace="ns"} 0.0
# TYPE lagpilot_consumergroup_lag gauge
lagpilot_consumergroup_lag{name="g-0",namespace="ns",partition="0",topic="t"} 7.0
# TYPE lagpilot_reconcile_errors_total counter
lagpilot_reconcile_errors_total{kind="kafka",name="g-1",namespace="ns"} 2.0
# TYPE lagpilot_kafka_admin_requests_total counter
lagpilot_kafka_admin_requests_total{cluster="a:1",request="metadata"} 3.0
lagpilot_kafka_admin_requests_total{cluster="b:1",request="offset_fetch"} 5.0
"""


def test_the_operator_metrics_give_polls_errors_each_resources_lag_and_kafka_requests(bench: ModuleType) -> None:
    found = bench.parse_operator_metrics(OPERATOR)
    assert (found.polls, found.errors, found.kafka_requests) == (42.0, 2.0, 8.0)
    assert found.total_lag == {"g-0": 7.0, "g-1": 0.0}


def test_an_operator_without_the_kafka_request_metric_reports_none(bench: ModuleType) -> None:
    text = "\n".join(line for line in OPERATOR.splitlines() if "kafka_admin" not in line)
    assert bench.parse_operator_metrics(text).kafka_requests is None

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
# TYPE lagpilot_status_writes_total counter
lagpilot_status_writes_total{reason="first"} 2.0
lagpilot_status_writes_total{reason="maxTimeLagSeconds"} 11.0
lagpilot_status_writes_created{reason="first"} 1.7e+09
# TYPE lagpilot_early_polls_total counter
lagpilot_early_polls_total{cluster="a:1"} 4.0
lagpilot_early_polls_total{cluster="b:1"} 6.0
"""


def test_the_operator_metrics_give_polls_errors_each_resources_lag_and_kafka_requests(bench: ModuleType) -> None:
    found = bench.parse_operator_metrics(OPERATOR)
    assert (found.polls, found.errors, found.kafka_requests) == (42.0, 2.0, 8.0)
    assert found.total_lag == {"g-0": 7.0, "g-1": 0.0}
    assert found.status_writes == {"first": 2.0, "maxTimeLagSeconds": 11.0}
    assert found.early_polls == 10.0


def test_early_polls_are_counted_between_two_scrapes_and_none_for_a_version_without_them(bench: ModuleType) -> None:
    found = bench.parse_operator_metrics(OPERATOR)
    later = bench.parse_operator_metrics(OPERATOR.replace("} 6.0", "} 9.0"))
    assert bench.early_polls_between(found, later) == 3
    without = bench.parse_operator_metrics("\n".join(line for line in OPERATOR.splitlines() if "early" not in line))
    assert without.early_polls is None and bench.early_polls_between(without, without) is None
    none_yet = bench.parse_operator_metrics("\n".join(line for line in OPERATOR.splitlines()
                                                     if not line.startswith("lagpilot_early_polls_total{")))
    assert none_yet.early_polls == 0.0  # the family without a sample: a version with them, none woken yet
    merged = bench.merge_metrics({"op-0": found, "op-1": without}, None)
    assert merged.early_polls == 10.0


def test_an_operator_without_the_kafka_request_metric_reports_none(bench: ModuleType) -> None:
    text = "\n".join(line for line in OPERATOR.splitlines() if "kafka_admin" not in line)
    assert bench.parse_operator_metrics(text).kafka_requests is None


# -- several replicas -------------------------------------------------------------------------------


def test_shards_are_balanced_once_every_shard_is_held_and_each_replica_has_its_share(bench: ModuleType) -> None:
    replicas = ["op-0", "op-1", "op-2"]
    assert bench.shards_balanced({0: "op-1", 1: "op-0", 2: "op-2"}, replicas, 3)
    # The first replica up holds every shard until the others join: not balanced yet.
    assert not bench.shards_balanced({0: "op-0", 1: "op-0", 2: "op-0"}, replicas, 3)
    assert not bench.shards_balanced({0: "op-1", 1: "op-0", 2: ""}, replicas, 3)          # one released
    assert not bench.shards_balanced({0: "op-1", 1: "op-0"}, replicas, 3)                 # one Lease not made yet
    assert not bench.shards_balanced({0: "op-1", 1: "op-0", 2: "gone"}, replicas, 3)      # a replica of another run
    # 5 shards over 2 replicas: the first in sorted order gets the one more.
    assert bench.shards_balanced({0: "op-0", 1: "op-0", 2: "op-0", 3: "op-1", 4: "op-1"}, ["op-1", "op-0"], 5)
    assert not bench.shards_balanced({0: "op-1", 1: "op-1", 2: "op-1", 3: "op-0", 4: "op-0"}, ["op-0", "op-1"], 5)


def test_each_resource_is_owned_by_the_holder_of_its_shard(bench: ModuleType) -> None:
    from lagpilot_operator.kube.shards import shard_of

    names = [f"g-{i}" for i in range(30)]
    holders = {0: "op-0", 1: "op-1", 2: "op-2"}
    owner = bench.owners(names, "ns", 3, holders)
    assert owner == {name: f"op-{shard_of('ns', name, 3)}" for name in names}
    assert set(owner.values()) == {"op-0", "op-1", "op-2"}      # 30 names fall in every shard
    unheld = bench.owners(names, "ns", 3, {0: "op-0", 1: "", 2: "op-2"})
    assert set(unheld) == {name for name in names if shard_of("ns", name, 3) != 1}


def metrics(bench: ModuleType, polls: float, lag: dict[str, float], requests: float | None = None,
            errors: float = 0.0) -> object:
    return bench.OperatorMetrics(polls=polls, errors=errors, total_lag=lag, kafka_requests=requests)


def test_replicas_metrics_merge_into_one_operator_with_each_lag_from_its_owner(bench: ModuleType) -> None:
    per_replica = {
        # op-0 served g-1 before its shard moved to op-1: its old value stays in op-0's /metrics.
        "op-0": metrics(bench, 10, {"g-0": 5.0, "g-1": 1.0}, requests=4.0, errors=1.0),
        "op-1": metrics(bench, 7, {"g-1": 9.0}, requests=3.0),
    }
    merged = bench.merge_metrics(per_replica, {"g-0": "op-0", "g-1": "op-1"})
    assert (merged.polls, merged.errors, merged.kafka_requests) == (17.0, 1.0, 7.0)
    assert merged.total_lag == {"g-0": 5.0, "g-1": 9.0}
    # A resource whose owner has not polled it yet is missing, not filled in from a stale series.
    assert bench.merge_metrics(per_replica, {"g-0": "op-0", "g-1": "op-2"}).total_lag == {"g-0": 5.0}


def test_one_replica_merges_to_its_own_metrics(bench: ModuleType) -> None:
    found = bench.parse_operator_metrics(OPERATOR)
    merged = bench.merge_metrics({"op-0": found}, None)
    assert merged == found


def test_kafka_requests_are_none_only_when_no_replica_has_the_metric(bench: ModuleType) -> None:
    without = metrics(bench, 1, {})
    assert bench.merge_metrics({"a": without, "b": metrics(bench, 1, {})}, None).kafka_requests is None
    assert bench.merge_metrics({"a": without, "b": metrics(bench, 1, {}, 2.0)}, None).kafka_requests == 2.0


def window(bench: ModuleType, identity: str, cpu: float, polls: float, rss: float | None = 100 * 1024,
           peak: float | None = None, requests: float | None = 60.0) -> object:
    return bench.ReplicaWindow(identity=identity, cpu_seconds=cpu, polls=polls, errors=1.0, kafka_requests=requests,
                               rss_kib_steady_median=rss, rss_kib_peak=peak, resources=10, shards_held=1)


def test_fleet_totals_sum_the_replicas_and_divide_summed_cpu_by_summed_polls(bench: ModuleType) -> None:
    replicas = [window(bench, "op-0", cpu=3.0, polls=100, rss=100 * 1024, peak=150 * 1024),
                window(bench, "op-1", cpu=1.0, polls=300, rss=50 * 1024, peak=80 * 1024)]
    totals = bench.fleet_totals(replicas, 20.0)
    assert totals["cpu_ms_per_poll"] == 10.0      # 4 s / 400 polls; the mean of 30 and 3.33 ms would be 16.67
    assert (totals["cpu_seconds"], totals["cpu_cores"]) == (4.0, 0.2)
    assert (totals["polls"], totals["polls_per_second"]) == (400, 20.0)
    assert (totals["rss_mib_steady_median"], totals["rss_mib_peak"]) == (150.0, 230.0)
    assert (totals["kafka_requests_per_second"], totals["reconcile_errors"]) == (6.0, 2)


def test_fleet_totals_leave_out_what_a_replica_did_not_measure(bench: ModuleType) -> None:
    replicas = [window(bench, "op-0", 1.0, 0, rss=None, requests=None), window(bench, "op-1", 1.0, 0)]
    totals = bench.fleet_totals(replicas, 10.0)
    assert totals["cpu_ms_per_poll"] is None and totals["rss_mib_steady_median"] is None
    assert totals["kafka_requests_per_second"] is None
    assert "rss_mib_peak" not in totals        # the peaks are read after the lag change


def test_one_replica_report_has_its_own_numbers(bench: ModuleType) -> None:
    report = bench.replica_report(window(bench, "op-1", cpu=2.0, polls=50, rss=2048, peak=4096), 10.0)
    assert report == {"identity": "op-1", "resources": 10, "shards_held": 1, "polls": 50, "polls_per_second": 5.0,
                      "reconcile_errors": 1, "cpu_seconds": 2.0, "cpu_cores": 0.2, "cpu_ms_per_poll": 40.0,
                      "rss_mib_steady_median": 2.0, "rss_mib_peak": 4.0, "kafka_requests_per_second": 6.0}


def test_the_lag_change_per_replica_is_its_slowest_resource_or_none_if_one_never_saw_it(bench: ModuleType) -> None:
    owner = {"a": "op-0", "b": "op-0", "c": "op-1", "d": "op-2"}
    seen = {"a": 2.04, "b": 6.31, "c": 3.0}
    assert bench.all_seen_by_replica(seen, owner, ["op-0", "op-1", "op-2", "op-3"]) == {
        "op-0": 6.3, "op-1": 3.0, "op-2": None, "op-3": None}


def test_the_read_that_carried_a_burst_is_the_last_one_ended_before_its_last_resource_saw_it(
        bench: ModuleType) -> None:
    # (end, duration) of each read after the burst, seconds from its acknowledgement
    assert bench.read_that_carried([(1.0, 1.5), (6.0, 1.0), (11.0, 1.0)], seen=7.5) == {
        "read_started": 5.0, "read_seconds": 1.0, "decided_within_seconds_after_read": 1.5,
        "missed_a_read_started_after_burst": False}
    # the read of 1.0-2.0 started after the burst and did not carry it: the one of 5.0-6.0 did
    assert bench.read_that_carried([(2.0, 1.0), (6.0, 1.0)], seen=6.5)["missed_a_read_started_after_burst"]
    assert bench.read_that_carried([(6.0, 1.0)], seen=0.2) == {}  # seen before any read ended after it


def test_over_the_bursts_the_slowest_counts_and_every_clusters_carrying_read(bench: ModuleType) -> None:
    fast = {"start": 4.0, "read_seconds": 1.0, "decided_within_seconds_after_read": 0.5,
            "missed_a_read_started_after_burst": False}
    late = dict(fast, decided_within_seconds_after_read=2.5)
    bursts = [{"all_seen_seconds": 5.5, "p50_seconds": 3.0, "within_one_interval": False,
               "seen_seconds_by_cluster": {"a": {"first": 0.2, "last": 0.4},
                                           "b": dict(fast, read_started=4.0)}},
              {"all_seen_seconds": 4.9, "p50_seconds": 2.0, "within_one_interval": True,
               "seen_seconds_by_cluster": {"a": dict(late, read_started=1.0)}}]
    summary = bench.over_bursts(bursts)
    assert summary["all_seen_seconds"] == 5.5 and summary["all_seen_seconds_each_burst"] == [5.5, 4.9]
    assert not summary["within_one_interval"] and summary["every_change_carried_by_the_first_read_after_it"]
    assert summary["read_start_to_last_decision_seconds_max"] == 3.5
    missed = dict(late, read_started=6.0, missed_a_read_started_after_burst=True)
    bursts[1]["seen_seconds_by_cluster"]["a"] = missed
    assert not bench.over_bursts(bursts)["every_change_carried_by_the_first_read_after_it"]
    bursts[1]["all_seen_seconds"] = None  # a burst some resource never saw
    assert bench.over_bursts(bursts)["all_seen_seconds"] is None
    for burst in bursts:  # several replicas: no read attributed
        burst["seen_seconds_by_cluster"] = {"a": {"first": 0.2, "last": 4.0}}
    unattributed = bench.over_bursts(bursts)
    assert unattributed["every_change_carried_by_the_first_read_after_it"] is None
    assert unattributed["read_start_to_last_decision_seconds_max"] is None


READS = """# TYPE lagpilot_kafka_cluster_read_duration_seconds histogram
lagpilot_kafka_cluster_read_duration_seconds_count{cluster="a:1",groups="all"} 5.0
lagpilot_kafka_cluster_read_duration_seconds_sum{cluster="a:1",groups="all"} 2.5
lagpilot_kafka_cluster_read_duration_seconds_count{cluster="a:1",groups="woken"} 3.0
lagpilot_kafka_cluster_read_duration_seconds_sum{cluster="a:1",groups="woken"} 0.6
lagpilot_kafka_cluster_read_duration_seconds_count{cluster="b:1"} 4.0
lagpilot_kafka_cluster_read_duration_seconds_sum{cluster="b:1"} 1.0
"""


def test_reads_of_every_group_are_told_from_the_reads_of_the_groups_a_probe_woke(bench: ModuleType) -> None:
    found = bench.parse_operator_metrics(READS)
    # b:1 is a version without the label: every read of its was of all the groups.
    assert found.cluster_reads == {"a:1": (5.0, 2.5), "b:1": (4.0, 1.0)}
    assert found.woken_reads == 3.0
    assert bench.merge_metrics({"op-0": found, "op-1": found}, None).woken_reads == 6.0


def test_probes_are_counted_per_outcome_with_their_mean_duration(bench: ModuleType) -> None:
    def probes(answered: float, seconds: float) -> str:
        return ("# TYPE lagpilot_kafka_lag_probe_duration_seconds histogram\n"
                f'lagpilot_kafka_lag_probe_duration_seconds_count{{cluster="a:1",outcome="answered"}} {answered}\n'
                f'lagpilot_kafka_lag_probe_duration_seconds_sum{{cluster="a:1",outcome="answered"}} {seconds}\n'
                'lagpilot_kafka_lag_probe_duration_seconds_count{cluster="b:1",outcome="answered"} 1.0\n'
                'lagpilot_kafka_lag_probe_duration_seconds_sum{cluster="b:1",outcome="answered"} 0.5\n'
                'lagpilot_kafka_lag_probe_duration_seconds_count{cluster="a:1",outcome="failed"} 2.0\n'
                'lagpilot_kafka_lag_probe_duration_seconds_sum{cluster="a:1",outcome="failed"} 5.0\n')

    before, after = bench.parse_operator_metrics(probes(3.0, 0.3)), bench.parse_operator_metrics(probes(7.0, 1.1))
    assert after.probes == {"answered": (8.0, 1.6), "failed": (2.0, 5.0)}
    assert bench.probes_between(before, after) == {"answered": {"probes": 4, "mean_seconds": 0.2}}
    assert bench.probes_between(bench.parse_operator_metrics(""), after)["failed"] == {"probes": 2, "mean_seconds": 2.5}

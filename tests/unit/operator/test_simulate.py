"""The simulator: world model, traces, the built-in burst comparison, and the `lagpilot simulate` command."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lagpilot_operator.core import simulate
from lagpilot_operator.core.policy import PolicyConfig
from lagpilot_operator.core.simulate import BUILTIN_TRACES, Segment, Trace, World, WorldModel


@pytest.fixture(scope="module")
def burst_results() -> dict[str, simulate.RunResult]:
    return simulate.compare(BUILTIN_TRACES["burst"], WorldModel(), PolicyConfig())


def test_keda_baseline_is_what_a_keda_user_configures() -> None:
    """A fixed pool of pool.initial slots per pod, maxReplicaCount = replicas.max capped at partitions."""
    config = PolicyConfig()
    assert simulate.keda_config_for(config, partitions=4).max_replicas == 4
    assert simulate.keda_config_for(config, partitions=12).max_replicas == config.replicas.max == 10
    assert simulate.keda_config_for(config).max_replicas == config.replicas.max
    results = simulate.compare(BUILTIN_TRACES["burst"], WorldModel(partitions=4), config, policies=["keda"])
    assert {p.pool for p in results["keda"].points} == {config.pool.initial} == {8}
    assert max(p.replicas for p in results["keda"].points) <= 4


def test_burst_against_keda_with_the_same_fixed_pool(burst_results: dict[str, simulate.RunResult]) -> None:
    """Against a KEDA user's ScaledObject (8 slots per pod, maxReplicaCount 10 <= 12 partitions), both
    keep up with the burst, so the drain time is the same (120 s: the burst's own length). The KEDA model,
    calibrated against the real KEDA (its HPA reads the lag afresh at every 15 s sync), reaches a lower
    peak lag and p99 latency, with six times the pod-seconds: Lagpilot's advantage here is the
    pod-seconds (it grows the pool first). This world has no CPU: slots are free, which flatters the
    pool; see docs/benchmarks.md."""
    ours, keda = burst_results["drainTime"].summary, burst_results["keda"].summary
    assert ours.time_to_drain_seconds == keda.time_to_drain_seconds == 120.0
    assert keda.max_pool == 8 and keda.max_replicas <= 10
    assert keda.peak_lag < ours.peak_lag and keda.p99_latency_seconds < ours.p99_latency_seconds
    assert ours.p99_latency_seconds <= 2 * keda.p99_latency_seconds
    assert ours.pod_seconds * 3 <= keda.pod_seconds
    threshold = burst_results["lagThreshold"].summary
    assert threshold.time_to_drain_seconds == keda.time_to_drain_seconds
    assert threshold.pod_seconds < keda.pod_seconds
    summary = simulate.comparison_json(burst_results)
    assert summary["drain_speedup_vs_keda"] == 1.0 and summary["pod_seconds_ratio_vs_keda"] <= 1 / 3
    assert set(summary["policies"]) == {"drainTime", "lagThreshold", "keda"}


def test_keda_pool_flag_sets_the_fixed_pool() -> None:
    """One slot per pod is the weakest KEDA set-up (KEDA itself does not limit in-pod concurrency)."""
    single = simulate.compare(BUILTIN_TRACES["burst"], WorldModel(), PolicyConfig(), keda_pool=1,
                              policies=["keda"])["keda"]
    assert {p.pool for p in single.points} == {1}
    assert single.summary.time_to_drain_seconds is not None and single.summary.time_to_drain_seconds > 120.0


def test_every_message_is_processed_and_bounds_hold(burst_results: dict[str, simulate.RunResult]) -> None:
    config = PolicyConfig()
    for name, result in burst_results.items():
        assert result.summary.unprocessed_at_end == 0, name
        for point in result.points:
            assert point.lag >= -1e-6 and point.committed_lag >= 0
            assert config.replicas.min <= point.replicas <= config.replicas.max
            if name != "keda":
                assert config.pool.min <= point.pool <= config.pool.max
            else:
                assert point.pool == config.pool.initial


def test_keda_reacts_no_earlier_than_its_hpa_sync(burst_results: dict[str, simulate.RunResult]) -> None:
    first_keda = next(t for t, _ in burst_results["keda"].reasons if t >= 60.0)
    first_ours = next(t for t, _ in burst_results["drainTime"].reasons if t >= 60.0)
    # burst at 60; the HPA syncs at 7.5 + 15k on a fresh metric (KEDA's metrics server asks the scaler)
    assert first_keda == 67.5
    assert first_ours <= 60.0 + 5.0  # one Lagpilot poll interval


def test_world_conserves_messages_and_commits_lag_behind_consumption() -> None:
    trace = Trace("t", (Segment(30, 100.0),))
    world = World(WorldModel(partitions=4, commit_interval_seconds=5.0), trace, replicas=1, pool=2)
    for _ in range(60):
        world.step()
        produced = trace.produced_until(world.time)
        assert sum(world.consumed) + world.backlog == pytest.approx(produced)
        for p in range(4):
            assert world.committed[p] <= world.consumed[p] + 1e-6 <= world.produced[p] + 1e-6
    # 2 slots x 20 msg/s = 40 msg/s against 100 msg/s: the backlog grows by ~60 msg/s.
    assert world.backlog == pytest.approx(60.0 * 30, rel=0.01)
    assert world.committed_lag >= world.backlog


def test_a_commit_trail_leaves_that_fraction_of_the_backlog_above_the_committed_offsets() -> None:
    """A worker committing its lowest unfinished offset while its slots serve keys in turn: a lag reader
    sees the backlog and `commit_trail` x the backlog more (calibration measured ~0.5 at 16 slots)."""
    trace = Trace("t", (Segment(20, 100.0), Segment(20, 0.0)))
    plain = World(WorldModel(partitions=4, commit_interval_seconds=0.5), trace, replicas=1, pool=2)
    trailing = World(WorldModel(partitions=4, commit_interval_seconds=0.5, commit_trail=0.5), trace, replicas=1,
                     pool=2)
    for _ in range(40):  # 20 s: 40 msg/s against 100 msg/s, the backlog grows
        plain.step()
        trailing.step()
    assert trailing.consumed == plain.consumed  # the trail changes what is read, not what is done
    assert plain.committed_lag == pytest.approx(plain.backlog, abs=4)
    assert trailing.committed_lag == pytest.approx(1.5 * trailing.backlog, abs=4)
    for _ in range(40):  # no production: the backlog shrinks, and the trail with it; commits never go back
        before = list(trailing.committed)
        trailing.step()
        assert all(now >= then for now, then in zip(trailing.committed, before, strict=True))
    assert trailing.backlog == pytest.approx(1200 - 40 * 20, abs=1)
    assert trailing.committed_lag == pytest.approx(1.5 * trailing.backlog, abs=4)
    with pytest.raises(ValueError, match="commit trail"):
        WorldModel(commit_trail=-0.1)


def test_new_pods_start_late_and_rebalances_pause_everyone() -> None:
    model = WorldModel(partitions=2, startup_seconds=5.0, rebalance_seconds=3.0, tick_seconds=0.5)
    world = World(model, Trace("t", (Segment(100, 1000.0),)), replicas=1, pool=1)
    world.set_replicas(2)
    consumed = []
    for _ in range(20):
        before = sum(world.consumed)
        world.step()
        consumed.append(sum(world.consumed) - before)
    # 0..5 s: one pod works (1 slot = 20 msg/s -> 10 per tick); 5..8 s: rebalance, nobody works.
    assert consumed[:10] == pytest.approx([10.0] * 10)
    assert consumed[10:16] == pytest.approx([0.0] * 6)
    assert consumed[16:] == pytest.approx([20.0] * 4)
    assert world.rebalances == 1 and world.members == 2
    world.set_replicas(1)  # a pod leaving is a rebalance too
    assert world.rebalances == 2 and world.pod_seconds == pytest.approx(20 * 0.5 * 2)


def test_pool_changes_are_live_and_cost_no_rebalance() -> None:
    model = WorldModel(partitions=1, pool_apply_seconds=1.0)
    world = World(model, Trace("t", (Segment(100, 1000.0),)), replicas=1, pool=1)
    world.set_pool(4)
    assert world.desired_pool == 4 and world.pool == 1
    for _ in range(4):
        world.step()
    assert world.pool == 4 and world.rebalances == 0


def test_idle_pods_beyond_partitions_do_nothing() -> None:
    model = WorldModel(partitions=2, tick_seconds=0.5)
    world = World(model, Trace("t", (Segment(10, 1000.0),)), replicas=4, pool=1)
    world.step()
    assert sum(world.consumed) == pytest.approx(2 * 20 * 0.5)


def test_trace_helpers() -> None:
    trace = BUILTIN_TRACES["burst"]
    assert trace.duration == 900 and trace.peak() == (60.0, 180.0, 10.0)
    assert trace.rate_at(59.9) == 10 and trace.rate_at(60) == 500 and trace.rate_at(900) == 0
    assert trace.produced_until(70) == pytest.approx(600 + 5000)
    assert trace.time_of(600 + 5000) == pytest.approx(70)
    assert Trace("s", (Segment(10, 5.0),)).peak() == (0.0, 10.0, None)
    assert {"burst", "steady", "sine", "steps"} <= set(BUILTIN_TRACES)
    with pytest.raises(ValueError, match="at least one segment"):
        Trace("empty", ())
    with pytest.raises(ValueError, match="bad segment"):
        Trace("neg", (Segment(10, -1.0),))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 100.0), st.floats(0.0, 1000.0)), min_size=1, max_size=8), st.floats(0, 1))
def test_time_of_inverts_produced_until(segments: list[tuple[float, float]], where: float) -> None:
    trace = Trace("t", tuple(Segment(s, r) for s, r in segments))
    total = trace.produced_until(trace.duration)
    if total <= 0:
        return
    amount = where * total
    assert trace.produced_until(trace.time_of(amount)) == pytest.approx(amount, abs=1e-6 * max(1.0, total))


def test_parse_trace() -> None:
    assert simulate.parse_trace([{"seconds": 10, "rate": 5}]).segments == (Segment(10.0, 5.0),)
    assert simulate.parse_trace({"segments": [{"seconds": "3", "rate": 1.5}]}).segments == (Segment(3.0, 1.5),)
    for bad, message in (({"rate": 1}, "list of"), ([{"seconds": 1}], "expected a mapping"),
                         ([{"seconds": "x", "rate": 1}], "must be numbers")):
        with pytest.raises(ValueError, match=message):
            simulate.parse_trace(bad)


@settings(max_examples=12, deadline=None)
@given(st.floats(5.0, 2_000.0), st.floats(0.005, 0.3), st.integers(1, 24))
# Found by random runs (CI's derandomized profile never drew them): a steady deficit of ~1 % that
# crossed the saturation bar late and doubled (then stepped back down), and pods sized for an even
# share when some carry one partition more than the others.
@example(rate=1611.0, cost=0.005, partitions=1)
@example(rate=30.0, cost=0.26953125, partitions=1)
@example(rate=1991.0, cost=0.15625, partitions=10)
@example(rate=1595.821473870834, cost=0.1272226297937284, partitions=6)
@example(rate=599.0, cost=0.296875, partitions=9)
def test_drain_time_does_not_flap_under_steady_load(rate: float, cost: float, partitions: int) -> None:
    trace = Trace("steady", (Segment(1200, rate),))
    result = simulate.compare(trace, WorldModel(partitions=partitions, message_cost_seconds=cost), PolicyConfig(),
                              policies=["drainTime"])["drainTime"]
    capacity = [p.replicas * p.pool for p in result.points]
    changes = [(i * 0.5, b - a) for i, (a, b) in enumerate(itertools.pairwise(capacity)) if a != b]
    reversals = sum(1 for (_, x), (_, y) in itertools.pairwise(changes) if (x > 0) != (y > 0))
    assert reversals <= 4, changes
    assert not [c for c in changes if c[0] > 800], changes  # settled well before the end


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = simulate.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_main_prints_summary_table_and_json_last_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--trace", "burst", "--table", "--table-step", "60"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("trace burst: 900 s, peak 500 msg/s from 60 s to 180 s")
    assert any(line.split()[:1] == ["180"] for line in lines)  # a table row every 60 s
    assert any(line.startswith("drainTime ") for line in lines) and any(line.startswith("keda ") for line in lines)
    result = json.loads(lines[-1])
    assert set(result) >= {"policies", "drain_speedup_vs_keda", "pod_seconds_ratio_vs_keda"}
    assert result["drain_speedup_vs_keda"] == 1.0 and result["pod_seconds_ratio_vs_keda"] <= 1 / 3
    assert "KEDA pods run a fixed 8 consumer threads, maxReplicaCount 10" in lines[0]


def test_main_keda_pool_flag_and_partition_cap(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--trace", "burst", "--keda-pool", "1", "--partitions", "6", "--policies", "keda"],
                            capsys)
    lines = out.strip().splitlines()
    assert code == 0 and "KEDA pods run a fixed 1 consumer thread, maxReplicaCount 6" in lines[0]
    result = json.loads(lines[-1])["policies"]["keda"]
    assert result["max_pool"] == 1 and result["max_replicas"] <= 6


def test_main_with_trace_and_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([{"seconds": 30, "rate": 5}, {"seconds": 60, "rate": 300}, {"seconds": 120,
                                                                                               "rate": 5}]))
    kcg = tmp_path / "kcg.yaml"
    kcg.write_text(
        "apiVersion: lagpilot.io/v1alpha1\nkind: KafkaConsumerGroup\nmetadata: {name: orders}\n"
        "spec:\n  replicas: {min: 1, max: 4}\n  pool: {min: 1, max: 16, initial: 2}\n"
        "  policy:\n    drainTime: {targetDrainSeconds: 30}\n"
    )
    code, out, _ = run_main(["--trace", str(trace), "--config", str(kcg), "--partitions", "4",
                             "--policies", "drainTime,keda"], capsys)
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result["policies"]) == {"drainTime", "keda"}
    assert result["policies"]["drainTime"]["max_replicas"] <= 4 and result["policies"]["drainTime"]["max_pool"] <= 16


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--trace", "nope"], "not a built-in"),
        (["--policies", "drainTime,hpa"], "unknown policy"),
        (["--partitions", "0"], "partitions >= 1"),
        (["--keda-pool", "0"], "--keda-pool"),
    ],
)
def test_main_reports_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2 and message in err


def test_main_rejects_a_config_without_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ConfigMap\ndata: {}\n")
    code, _, err = run_main(["--config", str(bad)], capsys)
    assert code == 2 and "no KafkaConsumerGroup" in err


# --- CPU: a message costs CPU plus waiting, a pod has a CPU limit --------------------------------------------


def test_cost_syntax_old_and_new() -> None:
    assert simulate.parse_cost("0.05") == simulate.MessageCost(io_seconds=0.05)
    assert simulate.parse_cost("50ms") == simulate.MessageCost(io_seconds=0.05)
    assert simulate.parse_cost("cpu=2ms,io=20ms") == simulate.MessageCost(cpu_seconds=0.002, io_seconds=0.02)
    assert simulate.parse_cost("cpu=0.005") == simulate.MessageCost(cpu_seconds=0.005)
    assert simulate.parse_cost(" io = 1s , cpu=1e-3 ") == simulate.MessageCost(cpu_seconds=0.001, io_seconds=1.0)
    for bad, message in (("cpu=2ms,gpu=1ms", "expected cpu="), ("cpu=2ms,cpu=3ms", "given twice"),
                         ("fast", "not a duration"), ("cpu=0,io=0", "more than 0"), ("io=-1ms", "not a duration")):
        with pytest.raises(ValueError, match=message):
            simulate.parse_cost(bad)


def test_a_pods_throughput_grows_with_slots_until_its_cpu_is_saturated() -> None:
    io_only = WorldModel(message_cost_seconds=0.022)
    assert simulate.pod_throughput(io_only, 64) == pytest.approx(64 / 0.022)
    assert simulate.saturating_pool(io_only) == float("inf")
    cpu_bound = WorldModel.with_cost(simulate.MessageCost(cpu_seconds=0.002, io_seconds=0.02), pod_cpu=1.0)
    assert simulate.saturating_pool(cpu_bound) == pytest.approx(11.0)
    assert simulate.pod_throughput(cpu_bound, 4) == pytest.approx(4 / 0.022)
    assert simulate.pod_throughput(cpu_bound, 11) == pytest.approx(500.0)
    assert simulate.pod_throughput(cpu_bound, 64) == pytest.approx(500.0)  # one core: 1 / 2 ms
    two_cores = replace(cpu_bound, pod_cpu=2.0)
    assert simulate.pod_throughput(two_cores, 64) == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="between 0 and the whole cost"):
        WorldModel(message_cost_seconds=0.01, cpu_seconds=0.02)
    with pytest.raises(ValueError, match="pod CPU"):
        WorldModel(pod_cpu=0.0)


def test_the_world_consumes_no_faster_than_a_pods_cpu_and_waiting_counts_in_latency() -> None:
    model = WorldModel.with_cost(simulate.MessageCost(cpu_seconds=0.005, io_seconds=0.02), partitions=4,
                                 commit_interval_seconds=1.0)
    world = World(model, Trace("t", (Segment(100, 10_000.0),)), replicas=1, pool=64)
    for _ in range(20):
        world.step()
    # 64 slots would do 2,560 msg/s; one core does 200 msg/s of 5 ms CPU each.
    assert sum(world.consumed) == pytest.approx(200 * 10.0)
    # A message holds its slot while 63 others queue for the core: 64 x 5 ms, not 25 ms.
    last = world.latencies[-1]
    assert last[0] >= 64 * 0.005
    free = World(WorldModel(message_cost_seconds=0.025, partitions=4), Trace("t", (Segment(100, 10_000.0),)),
                 replicas=1, pool=64)
    for _ in range(20):
        free.step()
    assert sum(free.consumed) == pytest.approx(64 / 0.025 * 10.0)


def test_cli_takes_cpu_and_io_cost_and_a_pod_cpu_limit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["--trace", "steady", "--cost", "cpu=5ms,io=20ms", "--pod-cpu", "2",
                             "--policies", "keda"], capsys)
    lines = out.strip().splitlines()
    assert code == 0
    assert "5 ms CPU + 20 ms I/O per msg, 2 cores per pod (slots stop adding throughput at pool 10.0)" in lines[0]
    code, out, _ = run_main(["--trace", "steady", "--cost", "0.05", "--policies", "keda"], capsys)
    assert code == 0 and "50 ms/msg per slot" in out.splitlines()[0]
    code, _, err = run_main(["--cost", "cpu=1ms,disk=2ms"], capsys)
    assert code == 2 and "expected cpu=" in err


# --- traces with timestamps ----------------------------------------------------------------------------------


def test_csv_trace_of_timestamped_rates(tmp_path: Path) -> None:
    trace = simulate.parse_csv_trace("t_seconds,msgs_per_s\n0,10\n60,500\n180,10\n190,10\n")
    assert trace.segments == (Segment(60, 10), Segment(120, 500), Segment(10, 10), Segment(60, 10))
    # Epoch seconds (a Prometheus export), no header, quoted cells, comments and blank lines.
    epoch = simulate.parse_csv_trace('# exported\n"1796400000","5"\n\n1796400010,7.5\n1796400030,0\n')
    assert epoch.segments == (Segment(10, 5), Segment(20, 7.5), Segment(15, 0))
    iso = simulate.parse_csv_trace("Time,Value\n2026-12-04T10:00:00Z,1\n2026-12-04T10:00:30Z,2\n")
    assert iso.segments == (Segment(30, 1), Segment(30, 2))
    one = simulate.parse_csv_trace("0,100\n")
    assert one.segments == (Segment(60, 100),)
    path = tmp_path / "grafana.csv"
    path.write_text("t_seconds,msgs_per_s\n0,10\n60,500\n")
    assert simulate.load_trace(str(path)).segments == (Segment(60, 10), Segment(60, 500))


@pytest.mark.parametrize(("text", "message"), [
    ("t_seconds,msgs_per_s\n0,10\n60\n", "line 3: expected 2 comma-separated values"),
    ("t_seconds,msgs_per_s\n0,10\n60,lots\n", "line 3: '60','lots' is not a time and a rate"),
    ("0,10\nt,r\n", "line 2: 't','r' is not a time and a rate"),
    ("t_seconds,msgs_per_s\n0,10\n0,20\n", "line 3: t_seconds must increase"),
    ("t_seconds,msgs_per_s\n0,10\n10,-1\n", "line 3: msgs_per_s must be >= 0"),
    ("t_seconds,msgs_per_s\n", "no data"),
    ("0,10,5\n", "line 1: expected 2"),
    ("0,nan\n", "line 1: t_seconds and msgs_per_s must be finite"),
])
def test_malformed_csv_traces_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        simulate.parse_csv_trace(text)


def test_a_timestamped_yaml_list_is_a_trace_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 'seconds must be > 0' (the first timestamp, 0, was read as a duration)."""
    assert simulate.parse_trace([{"t_seconds": 0, "msgs_per_s": 5}, {"t_seconds": 30, "msgs_per_s": 300},
                                 {"t": 90, "rate": 5}]).segments == (Segment(30, 5), Segment(60, 300),
                                                                     Segment(45, 5))
    with pytest.raises(ValueError, match="point 1: expected a mapping"):
        simulate.parse_trace([{"t_seconds": 0, "msgs_per_s": 5}, {"seconds": 3}])
    path = tmp_path / "export.csv"
    path.write_text("t_seconds,msgs_per_s\n0,10\n30,400\n150,10\n900,10\n")
    code, out, _ = run_main(["--trace", str(path), "--policies", "drainTime"], capsys)
    assert code == 0 and out.startswith("trace export: ")
    bad = tmp_path / "bad.csv"
    bad.write_text("t_seconds,msgs_per_s\n0,10\n30\n")
    code, _, err = run_main(["--trace", str(bad)], capsys)
    assert code == 2 and "bad.csv: line 3: expected 2 comma-separated values" in err


# --- a sub-second latency target -----------------------------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(st.floats(5.0, 2_000.0), st.floats(0.005, 0.3), st.integers(1, 24), st.sampled_from([1.0, 5.0]))
@example(rate=839.0, cost=0.076, partitions=18, commit=5.0)    # a scale-down's rebalance lag, absorbed by the pool
@example(rate=1084.0, cost=0.173, partitions=18, commit=1.0)
@example(rate=961.0, cost=0.198, partitions=20, commit=1.0)    # three removals, each absorbed once: 7 turns of slots
@example(rate=5.0, cost=0.25, partitions=8, commit=5.0)        # the commit sawtooth at 5 msg/s: no late run
def test_a_200ms_target_does_not_flap_under_steady_load(rate: float, cost: float, partitions: int,
                                                         commit: float) -> None:
    # The late rule and the committed-offset floor under a steady load with the commit sawtooth (the worker's
    # 1 s commits, librdkafka's 5 s): the pods go one way at a time, nothing moves after 800 s. Capacity is
    # read once per poll, after each decision applied (a scale-down that consolidates pods, 5 x 58 -> 4 x 61,
    # removes the pod at once and grows the pool a second later: per tick that reads as down-then-up). The
    # slots may turn twice more per pod removed: its rebalance pauses the group for 3 s, a time lag above the
    # 1 s floor, which the remaining pods' pool absorbs (live, no pod) and gives back after the down window.
    config = PolicyConfig.from_spec({"policy": {"drainTime": {"targetTimeLag": "200ms"}}})
    model = WorldModel(partitions=partitions, message_cost_seconds=cost, commit_interval_seconds=commit)
    result = simulate.compare(Trace("steady", (Segment(1200, rate),)), model, config, policies=["drainTime"])
    polled = [p for p in result["drainTime"].points if p.time % 5.0 == 0.0]

    def turns(values: list[tuple[float, int]]) -> tuple[list[tuple[float, int]], int]:
        changes = [(t, b - a) for (_, a), (t, b) in itertools.pairwise(values) if a != b]
        return changes, sum(1 for (_, x), (_, y) in itertools.pairwise(changes) if (x > 0) != (y > 0))

    pod_changes, pod_turns = turns([(p.time, p.replicas) for p in polled])
    slot_changes, slot_turns = turns([(p.time, p.replicas * p.pool) for p in polled])
    removals = sum(1 for _, change in pod_changes if change < 0)
    assert pod_turns <= 1, pod_changes
    assert slot_turns <= 4 + 2 * removals, slot_changes
    assert not [c for c in slot_changes if c[0] > 800], slot_changes


def test_the_seed_step_gets_capacity_before_the_saturation_bar() -> None:
    """The seed benchmark's shape in the simulator: 100 -> 300 msg/s on 32 partitions, a Pod that gets 0.14
    cores for 0.5 ms of CPU per message (280 msg/s whatever its pool: 7 % short), 1 s commits. The deficit is
    inside the falling-behind rule's 10 % band and 10 s of consumption takes 140 s to build: the group was
    held at 1 x 4 until the trend rule saw it at 162.5 s. Late (the time lag grew past the floor at each of
    3 polls, with the lag), it grows 28 s after the step, and the CPU-bound pool sends the rest to a second
    pod."""
    config = PolicyConfig.from_spec({"replicas": {"min": 1, "max": 8}, "pool": {"min": 1, "max": 64, "initial": 4},
                                     "policy": {"drainTime": {"targetTimeLag": "200ms"}}})
    model = WorldModel(partitions=32, message_cost_seconds=0.0025, cpu_seconds=0.0005, pod_cpu=0.14,
                       commit_interval_seconds=1.0, tick_seconds=0.05)
    trace = Trace("seed", (Segment(60, 100.0), Segment(240, 300.0)))
    result = simulate.compare(trace, model, config, policies=["drainTime"])["drainTime"]
    first = next(p for p in result.points if p.replicas * p.pool > 4)
    assert first.time < 95.0, result.reasons[:2]
    assert max(p.replicas for p in result.points if p.time < 110) == 2, result.reasons[:3]
    assert result.summary.peak_lag < 3_000 and result.summary.unprocessed_at_end == 0


def test_a_200ms_time_lag_target_holds_under_steady_load() -> None:
    """Steady 300 msg/s at 20 ms a message, starting short (one pod, one slot: 50 msg/s) with the worker's
    1 s commits: with `targetTimeLag: 200ms` the backlog of the start is drained at the target's pace and
    then every message is done within 200 ms of being produced; with only the default 60 s drain target
    the same start leaves messages seconds late for minutes."""
    spec = {"pool": {"min": 1, "initial": 1, "max": 64}, "policy": {"drainTime": {"targetTimeLag": "200ms"}}}
    config = PolicyConfig.from_spec(spec)
    assert config.drain_time.target_time_lag_seconds == pytest.approx(0.2)
    # A tick well below the target: a message is dated to its tick, so latency resolution is tick / 2.
    model = WorldModel(message_cost_seconds=0.02, commit_interval_seconds=1.0, tick_seconds=0.05)
    trace = Trace("steady", (Segment(600, 300.0),))
    results = {name: simulate.compare(trace, model, c, policies=["drainTime"])["drainTime"]
               for name, c in (("200ms", config), ("default", PolicyConfig.from_spec({**spec, "policy": {}})))}
    late = [p for p in results["200ms"].points if p.time >= 120]
    assert max(p.latency or 0.0 for p in late) <= 0.2
    needed = 300 * 0.02  # 6 slots
    assert max(p.replicas * p.pool for p in late) <= 4 * needed  # holds it without running away
    default_late = [p.latency or 0.0 for p in results["default"].points if 30 <= p.time <= 120]
    assert max(default_late) > 1.0
    assert results["200ms"].summary.unprocessed_at_end == 0


# --- pictures ------------------------------------------------------------------------------------------------


def test_plot_draws_one_column_per_policy_on_a_shared_time_axis(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from lagpilot_operator.core import plot

    results = simulate.compare(BUILTIN_TRACES["burst"], WorldModel(), PolicyConfig())
    fig = plot.figure(results, title="burst")
    try:
        assert plot.panel_titles(fig) == ["drainTime", "lagThreshold", "keda"]
        assert len(fig.axes) == 3 * len(plot.ROWS)
        grid = fig.axes[0].get_gridspec()
        assert (grid.nrows, grid.ncols) == (3, 3)
        for axis in fig.axes[1:]:  # one time axis for every panel
            assert axis.get_shared_x_axes().joined(fig.axes[0], axis)
        assert [fig.axes[i].get_ylabel() for i in (0, 3, 6)] == list(plot.ROWS)
        slots_line = fig.axes[3].get_lines()[0]  # drainTime's replicas x pool
        drain = results["drainTime"].points
        assert list(slots_line.get_ydata()) == [p.replicas * p.pool for p in drain]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    out = tmp_path / "burst.png"
    code, printed, _ = run_main(["--trace", "burst", "--plot", str(out), "--policies", "drainTime,keda"], capsys)
    assert code == 0 and f"plot written to {out}" in printed
    assert json.loads(printed.strip().splitlines()[-1])["policies"].keys() == {"drainTime", "keda"}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_without_matplotlib_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = run_main(["--trace", "steady", "--plot", str(tmp_path / "x.png"), "--policies", "keda"], capsys)
    assert code == 2 and "pip install 'lagpilot[plot]'" in err
    assert not (tmp_path / "x.png").exists()

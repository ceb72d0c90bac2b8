"""The seed benchmark's pure parts: the messages and their schema, the per-minute latency table, the rate
search's decisions and the CPU attribution."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from support import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("seed_bench", ROOT / "bench" / "seed_bench.py")


@pytest.fixture(scope="module")
def handlers() -> ModuleType:
    return load_script("e2e_handlers_for_seed", ROOT / "e2e" / "handlers.py")


# --- messages -------------------------------------------------------------------------------------------


def test_every_rendered_message_is_1200_bytes_and_validates_with_its_id_and_timestamp(
        bench: ModuleType, handlers: ModuleType) -> None:
    messages = bench.SeedMessages(count=16)
    for seq in range(40):
        ident = f"abcdefghij-{seq:09d}"   # the load generator's ids: 10-character prefix, 9 digits
        body = messages.render(seq, ident, 1_765_000_000_123 + seq)
        assert len(body) == 1200
        order = handlers.SeedOrder.model_validate_json(body)
        assert (order.id, order.ts) == (ident, 1_765_000_000_123 + seq)
        assert order.total_cents == sum(line.quantity * line.unit_price_cents for line in order.lines)


def test_messages_differ_from_one_body_to_the_next(bench: ModuleType) -> None:
    messages = bench.SeedMessages(count=8)
    bodies = {json.loads(messages.render(seq, "x" * 20, 0))["customer"]["id"] for seq in range(8)}
    assert len(bodies) > 1


def test_the_schema_refuses_a_message_that_breaks_it(bench: ModuleType, handlers: ModuleType) -> None:
    order = bench.seed_order(random.Random(1), "id-1", 1_765_000_000_000)
    handlers.SeedOrder.model_validate(order)
    for broken in ({**order, "currency": "euro"}, {**order, "lines": []}, {**order, "unexpected": 1},
                   {**order, "customer": {**order["customer"], "email": "nobody"}}):
        with pytest.raises(ValidationError):
            handlers.SeedOrder.model_validate(broken)


# --- latency ----------------------------------------------------------------------------------------------


def test_latencies_keep_each_ids_first_processing(bench: ModuleType) -> None:
    latencies = bench.Latencies()
    entry = {"id": "a", "producedMs": 1000, "processedMs": 1300}
    assert latencies(b"a", json.dumps(entry).encode()) == "a"
    latencies(b"a", json.dumps({**entry, "processedMs": 1100}).encode())   # a duplicate, processed earlier
    latencies(b"a", json.dumps({**entry, "processedMs": 1500}).encode())
    assert latencies(None, b"not json") is None
    assert latencies.first == {"a": (1000, 1100)}
    assert latencies.between(1000, 1001) == [0.1]
    assert latencies.between(1001, 2000) == []


def test_the_latency_table_has_one_row_per_minute_of_produce_time(bench: ModuleType) -> None:
    start = 1_000_000
    first = {f"m0-{i}": (start + i * 100, start + i * 100 + 10 + i) for i in range(100)}       # minute 0
    first |= {f"m2-{i}": (start + 120_000 + i, start + 120_000 + i + 500) for i in range(10)}  # minute 2
    first["late"] = (start + 180_000, start + 180_001)                                        # at the end: out
    rows = bench.latency_by_minute(first, start, start + 180_000)
    assert [(row.minute, row.messages) for row in rows] == [(0, 100), (2, 10)]
    assert (rows[0].p50_ms, rows[0].p99_ms, rows[0].p999_ms, rows[0].max_ms) == (59, 108, 109, 109)
    assert rows[1].p99_ms == 500
    assert bench.minutes_over_target(rows, 0, 200) == [2]
    assert bench.minutes_over_target(rows, 3, 200) == []


def test_minutes_are_judged_from_the_first_that_starts_after_the_settling_time(bench: ModuleType) -> None:
    assert bench.first_judged_minute(120, 60) == 3
    assert bench.first_judged_minute(120, 61) == 4
    assert bench.first_judged_minute(60, 0) == 1


def test_quantile_is_nearest_rank(bench: ModuleType) -> None:
    values = list(range(1, 1001))
    assert (bench.quantile(values, 0.5), bench.quantile(values, 0.99), bench.quantile(values, 0.999)) == (500, 990,
                                                                                                         999)
    assert bench.quantile([], 0.99) == 0.0


# --- the rate search ---------------------------------------------------------------------------------------


def test_a_step_passes_only_when_the_rate_was_kept_the_p99_held_and_nothing_was_left(bench: ModuleType) -> None:
    judge = bench.judge_step
    assert judge(planned_rate=1000, achieved_rate=990, p99_s=0.15, target_s=0.2, unprocessed=0).passed
    assert not judge(planned_rate=1000, achieved_rate=900, p99_s=0.05, target_s=0.2, unprocessed=0).passed
    assert not judge(planned_rate=1000, achieved_rate=1000, p99_s=0.21, target_s=0.2, unprocessed=0).passed
    late = judge(planned_rate=1000, achieved_rate=1000, p99_s=0.1, target_s=0.2, unprocessed=3)
    assert not late.passed and "3 messages" in late.reason


def test_the_search_doubles_until_a_failure_then_bisects_to_the_resolution(bench: ModuleType) -> None:
    ok, bad = bench.StepVerdict(True, ""), bench.StepVerdict(False, "")
    sustainable = 1500.0
    search = bench.RateSearch(start=400, maximum=12_000, resolution=0.15)
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search = search.record(rate, ok if rate <= sustainable else bad)
    assert tried[:3] == [400, 800, 1600]
    assert search.best is not None and search.best <= sustainable
    assert min(search.failed) <= search.best * 1.15
    assert search.best >= sustainable / 1.15


def test_the_search_stops_at_the_ceiling_and_halves_when_even_the_start_fails(bench: ModuleType) -> None:
    ok, bad = bench.StepVerdict(True, ""), bench.StepVerdict(False, "")
    search = bench.RateSearch(start=8000, maximum=12_000)
    search = search.record(8000, ok)
    assert search.next_rate() == 12_000
    assert search.record(12_000, ok).next_rate() is None
    failing = bench.RateSearch(start=400, maximum=12_000).record(400, bad)
    assert failing.next_rate() == 200
    assert failing.best is None


# --- CPU ----------------------------------------------------------------------------------------------------


def test_cores_used_is_cpu_seconds_over_wall_seconds(bench: ModuleType) -> None:
    assert bench.cores_used([(0.0, 10.0), (5.0, 12.5), (10.0, 15.0)]) == 0.5
    assert bench.cores_used([(0.0, 1.0)]) == 0.0


def test_the_bottleneck_is_the_saturated_producer_else_the_busiest_on_a_full_machine(bench: ModuleType) -> None:
    assert bench.bottleneck({"producer": 0.95, "broker": 0.5}, 1.5, 2).startswith("producer")
    full = bench.bottleneck({"producer": 0.4, "broker": 0.3, "workers": 1.1}, 1.95, 2)
    assert full.startswith("the machine") and "workers" in full
    assert bench.bottleneck({"producer": 0.4, "workers": 0.5}, 1.0, 2).startswith("none")


def test_worker_pods_are_summed_the_operator_pod_named_and_the_rest_of_the_machine_is_others(
        bench: ModuleType) -> None:
    summary = bench.summarize_cores({"pod/grp-abc-1": 0.25, "pod/grp-abc-2": 0.5, "pod/lagpilot-6958f-x": 0.05,
                                     "broker": 0.7, "producer": 0.4, "machine": 1.95}, "grp-abc")
    assert summary == {"workers": 0.75, "operator": 0.05, "broker": 0.7, "producer": 0.4, "others": 0.05}
    assert "others" not in bench.summarize_cores({"pod/grp-abc-1": 0.25}, "grp-abc")


def test_the_capacity_timeline_lists_changes_only(bench: ModuleType) -> None:
    points = [{"t": 100.0, "replicas": 1, "pool": 4}, {"t": 101.0, "replicas": 1, "pool": 4},
              {"t": 102.0, "replicas": 1, "pool": 16}, {"t": 103.0, "replicas": 3, "pool": 16}]
    assert bench.capacity_timeline(points, 100.0) == [[0.0, 1, 4], [2.0, 1, 16], [3.0, 3, 16]]


# --- policies and runs side by side -------------------------------------------------------------------------


def test_policies_are_parsed_in_the_order_given_once_each_and_unknown_ones_refused(bench: ModuleType) -> None:
    known = ("lagpilot", "keda-pool-8")
    assert bench.parse_policies("keda-pool-8, lagpilot,keda-pool-8", known) == ["keda-pool-8", "lagpilot"]
    assert bench.parse_policies("lagpilot", known) == ["lagpilot"]
    with pytest.raises(ValueError, match="keda-pool-4"):
        bench.parse_policies("lagpilot,keda-pool-4", known)
    with pytest.raises(ValueError):
        bench.parse_policies(" , ", known)


def test_the_policy_flag_takes_a_list_and_keda_pool_8_is_a_policy(bench: ModuleType) -> None:
    args = bench.parser().parse_args(["--policy", "lagpilot,keda-pool-8", "--stack-env", "/tmp/env"])
    assert bench.parse_policies(args.policy, bench.POLICIES) == ["lagpilot", "keda-pool-8"]
    assert str(args.stack_env) == "/tmp/env"
    assert bench.parser().parse_args([]).policy == "lagpilot"
    assert [bench.uses_keda(p) for p in ("lagpilot", "keda-pool-8")] == [False, True]


def test_keda_s_lag_threshold_is_loop_bench_s_lag_per_slot_times_the_fixed_pool(bench: ModuleType) -> None:
    args = bench.parser().parse_args([])
    assert bench.keda_lag_threshold(args.keda_lag_per_slot, 8) == 800


def test_a_bad_policy_list_stops_the_bench_before_it_touches_the_stack(bench: ModuleType,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        bench.main(["--policy", "lagpilot,keda"])
    assert stopped.value.code == 2
    assert "unknown policies ['keda']" in capsys.readouterr().err


TIMELINE = [[0.0, 1, 8], [75.0, 2, 8], [90.0, 4, 8], [200.0, 1, 8]]


def test_pod_and_slot_seconds_integrate_the_capacity_timeline_over_the_produce_window(bench: ModuleType) -> None:
    seconds = bench.capacity_seconds(TIMELINE, 180.0)
    assert seconds == {"pod_seconds": 75 * 1 + 15 * 2 + 90 * 4, "slot_seconds": (75 + 30 + 360) * 8}
    # A timeline that begins just before the window, and a pool not published yet, count as what they are.
    assert bench.capacity_seconds([[-0.5, 1, None], [10.0, 1, 4]], 20.0) == {"pod_seconds": 20.0,
                                                                             "slot_seconds": 40.0}


def test_capacity_in_a_minute_is_the_value_at_its_start_then_each_change_within_it(bench: ModuleType) -> None:
    assert bench.capacity_in_minute(TIMELINE, 0) == "1x8"
    assert bench.capacity_in_minute(TIMELINE, 1) == "1x8→2x8→4x8"
    assert bench.capacity_in_minute(TIMELINE, 2) == "4x8"
    assert bench.capacity_in_minute(TIMELINE, 3) == "4x8→1x8"
    assert bench.capacity_in_minute([[5.0, 1, 4]], 0) == "1x4"
    assert bench.capacity_in_minute([], 0) == "?"


def headline_run(policy: str, minutes: list[tuple[int, float]], timeline: list[list[Any]], **totals: Any,
                 ) -> dict[str, Any]:
    return {"policy": policy, "profile": "steps", "capacity_timeline": timeline,
            "latency_per_minute": [{"minute": m, "messages": 100, "p50_ms": p99 / 10, "p99_ms": p99,
                                    "p999_ms": p99 * 2, "max_ms": p99 * 3} for m, p99 in minutes],
            **{key: None for key in ("produced", "lost", "duplicates", "backlog_when_producing_stopped",
                                     "seconds_to_drain_after_producing_stopped", "committed_lag_at_end",
                                     "high_phase_p99_ms", "minutes_over_target", "goal_met")},
            **totals}


def test_side_by_side_puts_each_runs_minutes_and_totals_next_to_the_others(bench: ModuleType) -> None:
    runs = {"lagpilot": headline_run("lagpilot", [(0, 150.0), (1, 9650.0), (2, 120.0)], [[0.0, 1, 4], [85.0, 1, 8]],
                                     pod_seconds=180.0, lost=0, duplicates=0, backlog_when_producing_stopped=45,
                                     goal_met=False, minutes_over_target=[1]),
            "keda-pool-8": headline_run("keda-pool-8", [(0, 110.0), (2, 300.0)], [[0.0, 1, 8], [100.0, 2, 8]],
                                        pod_seconds=260.0, lost=0, duplicates=3, backlog_when_producing_stopped=0,
                                        goal_met=False, minutes_over_target=[2])}
    side = bench.side_by_side(runs)
    assert side["policies"] == ["lagpilot", "keda-pool-8"]
    assert [entry["minute"] for entry in side["minutes"]] == [0, 1, 2]
    minute_1 = side["minutes"][1]
    assert minute_1["lagpilot"] == {"messages": 100, "p50_ms": 965.0, "p99_ms": 9650.0, "p999_ms": 19300.0,
                                    "capacity": "1x4→1x8"}
    assert minute_1["keda-pool-8"] is None          # no message of that minute processed in that run
    assert side["minutes"][2]["keda-pool-8"]["capacity"] == "2x8"
    assert side["totals"]["lagpilot"]["pod_seconds"] == 180.0
    assert side["totals"]["keda-pool-8"]["duplicates"] == 3
    assert side["totals"]["keda-pool-8"]["minutes_over_target"] == [2]

    text = bench.side_by_side_table(side)
    lines = text.splitlines()
    assert lines[0] == ("| minute | lagpilot p50 / p99 / p99.9 ms | lagpilot replicas x pool "
                        "| keda-pool-8 p50 / p99 / p99.9 ms | keda-pool-8 replicas x pool |")
    assert "| 1 | 965 / 9,650 / 19,300 | 1x4→1x8 | - | - |" in lines
    assert "| pod_seconds | 180 | 260 |" in lines
    assert "| goal_met | no | no |" in lines
    assert "| minutes_over_target | 1 | 2 |" in lines


def test_a_runs_minute_table_lists_its_rows_with_the_capacity_of_each_minute(bench: ModuleType) -> None:
    run = headline_run("keda-pool-8", [(0, 12.5), (1, 480.0)], [[0.0, 1, 8], [70.0, 2, 8]])
    lines = bench.minute_table(run).splitlines()
    assert lines[0] == "keda-pool-8: steps"
    assert lines[3:] == ["| 0 | 100 | 1.2 | 12.5 | 25 | 37.5 | 1x8 |",
                         "| 1 | 100 | 48 | 480 | 960 | 1,440 | 1x8→2x8 |"]

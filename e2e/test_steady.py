"""Scenario 2, steady high load: the operator finds a size and keeps it. No flapping, lag bounded."""

from __future__ import annotations

import time

from e2e.harness import Scenario, duplicate_report, finish_load, phase, read_entries
from e2e.loadgen import constant

PARTITIONS = 4
COST_MS = 20
RATE = 150                 # ≈ 4 slots at 20 ms, with the 20 % headroom ≈ 5
SECONDS = 80
WARM_UP_SECONDS = 25       # time to measure the rates and grow to size


def test_steady_load_does_not_flap_and_keeps_lag_bounded(scenario: Scenario) -> None:
    topic = scenario.make_topic("steady", PARTITIONS)
    group = scenario.create_group(topic=topic, cost_ms=COST_MS, replicas_min=1, replicas_max=4,
                                  pool_min=1, pool_initial=1, pool_max=4, poll_seconds=2,
                                  target_drain_seconds=20)
    scenario.wait_ready(group)
    ledger = scenario.ledger(group.processed_topic)
    start = time.time()
    load = scenario.load(topic, constant(RATE, SECONDS))
    phase(WARM_UP_SECONDS)
    settled = time.time()
    result = finish_load(load)

    accounting = ledger.wait_for(result.ids, 90)
    assert accounting.complete, f"lost messages: {accounting.summary()}"

    changes = group.watch.direction_changes(start)
    lag_after_warm_up = group.watch.max_status("totalLag", settled)
    replicas_after_warm_up = {c.replicas for c in group.watch.replica_history(settled)}
    print(f"steady: produced {result.produced}, direction changes {changes}, max lag after warm-up "
          f"{lag_after_warm_up:.0f}, replicas after warm-up {sorted(replicas_after_warm_up)}, duplicates "
          f"{accounting.duplicates}; {group.watch.describe(start)}")
    print("operator decisions:\n" + group.watch.decisions(start))
    if accounting.duplicates:
        print(duplicate_report(read_entries(scenario.bootstrap, group.processed_topic, ledger.records)))
    assert changes <= 2, f"replicas flapped: {group.watch.describe(start)}"
    # Bounded: never more than ~10 s of production behind once the group has its size.
    assert lag_after_warm_up <= RATE * 10, group.watch.describe(start)
    assert len(replicas_after_warm_up) <= 2, f"replicas kept moving under steady load: {group.watch.describe(start)}"
    # Only the warm-up's rebalances may duplicate work (about 1 % in our runs); never a replay.
    assert accounting.duplicates <= 0.1 * result.produced, accounting.summary()

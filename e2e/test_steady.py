"""Scenario 2, steady high load: the operator finds a size and keeps it. No flapping, lag bounded."""

from __future__ import annotations

import time

from e2e.harness import Scenario, duplicate_report, finish_load, phase, read_entries
from e2e.loadgen import constant

PARTITIONS = 4
COST_MS = 20
RATE = 150                 # ≈ 4 slots at 20 ms, with the 20 % headroom ≈ 5
SECONDS = 80
WARM_UP_SECONDS = 25       # time to measure the rates and grow to size, at the least
# On the real node a scale-up is a Pod that starts (2-19 s create -> Running in a full test run on 2 cores),
# imports, joins and waits out a cooperative rebalance: the group may reach its size later than 25 s in.
SIZED_WITHIN_SECONDS = 45
DRAIN_SECONDS = 20         # target_drain_seconds: the backlog of the ramp is worked off in this time


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
    result = finish_load(load)
    load_ended = time.time()

    accounting = ledger.wait_for(result.ids, 90)
    assert accounting.complete, f"lost messages: {accounting.summary()}"

    changes = group.watch.direction_changes(start)
    # "Once the group has its size": the last growth of replicas or capacity while the load ran, then the
    # drain time the policy targets for the backlog the ramp left. Measured, not assumed to be 25 s.
    sized_at = max([t for t in group.watch.growth_times(start) if t <= load_ended], default=start)
    settled = max(start + WARM_UP_SECONDS, sized_at + DRAIN_SECONDS)
    lag_after_warm_up = group.watch.max_status("totalLag", settled)
    replicas_after_warm_up = {c.replicas for c in group.watch.replica_history(settled)}
    print(f"steady: sized {sized_at - start:.0f}s in, lag measured from {settled - start:.0f}s; "
          f"produced {result.produced}, direction changes {changes}, max lag after warm-up "
          f"{lag_after_warm_up:.0f}, replicas after warm-up {sorted(replicas_after_warm_up)}, duplicates "
          f"{accounting.duplicates}; {group.watch.describe(start)}")
    print("operator decisions:\n" + group.watch.decisions(start))
    print("workers:\n" + scenario.worker_counters(group))
    if accounting.duplicates:
        print(duplicate_report(read_entries(scenario.bootstrap, group.processed_topic, ledger.records)))
    assert changes <= 2, f"replicas flapped: {group.watch.describe(start)}"
    assert sized_at - start <= SIZED_WITHIN_SECONDS, f"the group took {sized_at - start:.0f}s to reach its size: " \
        f"{group.watch.describe(start)}"
    # Bounded: never more than ~10 s of production behind once the group has its size.
    assert lag_after_warm_up <= RATE * 10, group.watch.describe(start)
    assert len(replicas_after_warm_up) <= 2, f"replicas kept moving under steady load: {group.watch.describe(start)}"
    # Only the warm-up's rebalances may duplicate work (about 1 % in our runs); never a replay.
    assert accounting.duplicates <= 0.1 * result.produced, accounting.summary()

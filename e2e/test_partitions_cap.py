"""Scenario 5, the partition cap: replicas.max above the partition count never yields idle consumers.

lagThreshold with a small lag per consumer asks for far more slots than the topic's 2 partitions
times the largest pool, so without the cap the operator would go to replicas.max (6). It must stop
at 2 replicas and put the rest of the capacity into the pool.
"""

from __future__ import annotations

import time

from e2e.harness import Scenario, finish_load
from e2e.loadgen import constant
from support import wait_for

PARTITIONS = 2
REPLICAS_MAX = 6
POOL_MAX = 8
RATE = 200
SECONDS = 35


def test_replicas_never_exceed_partitions_pool_grows_instead(scenario: Scenario) -> None:
    topic = scenario.make_topic("cap", PARTITIONS)
    group = scenario.create_group(topic=topic, cost_ms=20, replicas_min=1, replicas_max=REPLICAS_MAX,
                                  pool_min=1, pool_initial=1, pool_max=POOL_MAX, poll_seconds=2,
                                  mode="lagThreshold", lag_per_consumer=10)
    scenario.wait_ready(group)
    ledger = scenario.ledger(group.processed_topic)
    start = time.time()
    load = scenario.load(topic, constant(RATE, SECONDS))

    wait_for(lambda: group.watch.max_status("poolSize", start) >= POOL_MAX, 60,
             f"the pool to grow to its max ({group.watch.describe(start)})")
    wait_for(lambda: group.watch.max_replicas(start) >= PARTITIONS, 60, "replicas up to the partition count")
    result = finish_load(load)
    accounting = ledger.wait_for(result.ids, 90)

    desired = [int(s.status.get("desiredReplicas") or 0) for s in group.watch.status_history(start)]
    decisions = {str(s.status.get("lastDecision")) for s in group.watch.status_history(start)}
    print(f"cap: produced {result.produced}, peak replicas {group.watch.max_replicas(start)}, desired "
          f"{max(desired, default=0)}, peak pool {group.watch.max_status('poolSize', start):.0f}; "
          f"{group.watch.describe(start)}")
    assert group.watch.max_replicas(start) == PARTITIONS, group.watch.describe(start)
    assert max(desired, default=0) <= PARTITIONS, f"status asked for more replicas than partitions: {desired}"
    assert any("partitions" in d for d in decisions), f"no decision says the partition cap applied: {decisions}"
    assert accounting.complete, f"lost messages: {accounting.summary()}"

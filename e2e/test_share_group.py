"""Scenario: a share group (KIP-932) on a 2-partition topic, scaled by the operator past its partition count.

A consumer group on 2 partitions stops at 2 useful consumers; with a pool of 1 slot and 100 ms a record that
is 20 records/s however many Pods run. A share group's consumers share the partitions record by record, so
the operator (`spec.groupType: share`, lag from the broker's DescribeShareGroupOffsets) scales the worker Pods
past 2, up to replicas.max, and the throughput grows with them. One worker is SIGKILLed mid-load: the records
it had acquired and not acknowledged are delivered again once their acquisition lock runs out; nothing is lost.
"""

from __future__ import annotations

import time
from functools import partial

from e2e import chaos
from e2e.harness import Scenario, finish_load, read_entries
from e2e.loadgen import constant
from support import configure_share_group, wait_for

PARTITIONS = 2
COST_MS = 100                          # 10 records/s per slot
POOL = 1                               # capacity grows by Pods only
CONSUMER_GROUP_CEILING = PARTITIONS * POOL * 1000 / COST_MS    # 20 records/s: 2 consumers, 1 slot each
RATE = 50                              # 2.5 x that ceiling
SECONDS = 60
REPLICAS_MAX = 8
SLICE_SECONDS = 5


def test_share_group_scales_past_its_partitions_and_a_killed_worker_loses_nothing(scenario: Scenario) -> None:
    topic = scenario.make_topic("share", PARTITIONS)
    group = scenario.create_group(topic=topic, cost_ms=COST_MS, replicas_min=1, replicas_max=REPLICAS_MAX,
                                  pool_min=POOL, pool_initial=POOL, pool_max=POOL, poll_seconds=2,
                                  target_drain_seconds=20, extra_spec={"groupType": "share"},
                                  # Before any worker joins: at the group's default, `latest`, a worker is
                                  # Ready before its assignment arrives and the first records are skipped
                                  # (one run lost the first 207 that way).
                                  before_apply=partial(configure_share_group, scenario.bootstrap))
    scenario.wait_ready(group)
    ledger = scenario.ledger(group.processed_topic)
    start = time.time()
    load = scenario.load(topic, constant(RATE, SECONDS))

    wait_for(lambda: group.watch.max_replicas(start) > PARTITIONS + 1, 90,
             f"the share group to scale past its {PARTITIONS} partitions ({group.watch.describe(start)})")
    wait_for(lambda: len(scenario.worker_pods(group)) > PARTITIONS, 90, "more worker Pods running than partitions")
    victim = scenario.worker_pods(group)[0]
    scenario.backend.kill_worker(scenario.namespace, victim)
    killed_at = time.time()

    result = finish_load(load)
    # The killed worker's acquired records come back after the group's lock duration (30 s by default).
    accounting = ledger.wait_for(result.ids, 150)
    assert accounting.complete, f"lost messages: {accounting.summary()}; {group.watch.describe(start)}"
    entries = read_entries(scenario.bootstrap, group.processed_topic, ledger.records)

    until = chaos.last_processed(entries)
    slices = chaos.progress_slices(entries, start, until, SLICE_SECONDS)
    peak_rate = max(slices) / SLICE_SECONDS
    width = (until - start) / len(slices)
    busy_workers = max(len({e["worker"] for e in entries
                            if start + i * width <= float(e["processedMs"]) / 1000 < start + (i + 1) * width})
                       for i in range(len(slices)))
    desired = max(int(s.status.get("desiredReplicas") or 0) for s in group.watch.status_history(start))
    decisions = {str(s.status.get("lastDecision")) for s in group.watch.status_history(start)}
    print(f"\nshare group: produced {result.produced}, duplicates {accounting.duplicates}; peak replicas "
          f"{group.watch.max_replicas(start)}, desired {desired}; processed per {SLICE_SECONDS} s {slices}; "
          f"peak {peak_rate:.0f} records/s against a consumer group's {CONSUMER_GROUP_CEILING:.0f}; "
          f"{busy_workers} workers busy in one slice; {victim} SIGKILLed {killed_at - start:.0f}s in")
    print("operator decisions:\n" + group.watch.decisions(start))

    assert desired > PARTITIONS, f"the operator never asked for more replicas than partitions: {decisions}"
    assert any("share group" in d for d in decisions), f"no decision says the share-group rule applied: {decisions}"
    # More members than partitions did work at the same time, faster than any consumer group on 2 partitions.
    assert busy_workers > PARTITIONS, f"at most {busy_workers} workers processed in any {SLICE_SECONDS} s slice"
    assert peak_rate > 1.2 * CONSUMER_GROUP_CEILING, f"peak {peak_rate:.1f} records/s: {slices}"

"""Scenario 3a, crashes mid-load: a worker pod's process is SIGKILLed, and the operator is SIGKILLed
while it is scaling up and started again. Nothing is lost, the restarted operator resumes from status
without a spurious scale-down, and the group converges back to its minimum afterwards.

(The broker outage is in test_broker_outage.py, on a broker of its own.)
"""

from __future__ import annotations

import time

from e2e import chaos
from e2e.harness import Scenario, duplicate_report, end_load_after, phase, read_entries
from e2e.loadgen import burst
from support import wait_for

PARTITIONS = 4
COST_MS = 20
RATE = 200
SECONDS = 60
OPERATOR_DOWN_SECONDS = 6
AFTER_FAULT_SECONDS = 10
"""The load goes on this long after the killed worker is back (as in test_chaos): the 60 s load outlasts
both crashes, and what it would still produce after that only has to be waited out."""


def test_worker_and_operator_crashes_lose_nothing(scenario: Scenario) -> None:
    topic = scenario.make_topic("faults", PARTITIONS)
    group = scenario.create_group(topic=topic, cost_ms=COST_MS, replicas_min=1, replicas_max=4,
                                  pool_min=1, pool_initial=1, pool_max=4, poll_seconds=2,
                                  target_drain_seconds=20)
    scenario.wait_ready(group)
    ledger = scenario.ledger(group.processed_topic)
    start = time.time()
    load = scenario.load(topic, burst(RATE, SECONDS, before=2))

    # The operator dies in the middle of scaling up: right after its first scale-up.
    wait_for(lambda: group.watch.max_replicas(start) >= 2, 45, "a first scale-up")
    scenario.operator.kill()
    killed_at = time.time()
    replicas_at_kill = group.watch.current_replicas or 0
    phase(OPERATOR_DOWN_SECONDS)
    scenario.operator.start()

    # A worker crashes while it holds partitions and work in flight.
    pods = scenario.worker_pods(group)
    assert pods, "no running worker pod to kill"
    killed_pod = pods[0]
    scenario.backend.kill_worker(scenario.namespace, killed_pod)
    worker_killed_at = time.time()

    # Restart resumes from status: no scale-down while the load still runs (before the operator had even
    # a scale-down window of samples again).
    restarted_at = time.time()
    phase(10)
    after_restart = [c.replicas for c in group.watch.replica_history(restarted_at)]
    assert min(after_restart) >= replicas_at_kill, (
        f"the restarted operator scaled down under load: {replicas_at_kill} at the kill, then {after_restart}; "
        f"{group.watch.describe(start)}")

    def restart_count() -> int:
        out = scenario.kubectl("get", "pod", killed_pod, "-n", scenario.namespace, "-o",
                               "jsonpath={.status.containerStatuses[0].restartCount}", check=False).stdout
        return int(out or 0)

    wait_for(lambda: restart_count() >= 1, 30, f"pod {killed_pod} restarted after the SIGKILL")
    worker_restarted_at = time.time()

    result = end_load_after(load, AFTER_FAULT_SECONDS)
    accounting = ledger.wait_for(result.ids, 120)
    assert accounting.complete, f"lost messages: {accounting.summary()}; {group.watch.describe(start)}"
    wait_for(lambda: group.watch.status.get("totalLag") == 0, 60, "the lag to drain")
    wait_for(lambda: group.watch.current_replicas == 1, 90,
             f"replicas back to min after the faults ({group.watch.describe(start)})")

    print(f"faults: produced {result.produced}, duplicates {accounting.duplicates}, operator down "
          f"{restarted_at - killed_at:.0f}s at {replicas_at_kill} replicas, "
          f"{group.watch.describe(start)}")
    entries = read_entries(scenario.bootstrap, group.processed_topic, ledger.records)
    print(duplicate_report(entries))
    print(f"  worker {killed_pod}: SIGKILL -> restarted {worker_restarted_at - worker_killed_at:.1f}s; the group "
          f"processed {chaos.processed_between(entries, worker_killed_at, worker_restarted_at)} records meanwhile")
    for label, since, until in (("operator down and restarting", killed_at, restarted_at + 10),
                                ("worker killed and restarting", worker_killed_at, worker_restarted_at + 10)):
        lines = chaos.decision_timeline(group.watch.status_history(), since, until, start)
        print(f"  operator decisions, {label}:\n" + "\n".join(f"    {line}" for line in lines))
    # A SIGKILL replays at most the killed pod's uncommitted window (commits every second).
    assert accounting.duplicates <= 0.1 * result.produced, accounting.summary()
    assert scenario.operator.starts == 2

"""Scenario 3b, the broker is unresponsive for 30 s mid-load.

The node backend SIGSTOPs the broker's JVM (a local process) and SIGCONTs it 30 s later: connections hang and every
request times out, as with a broker that is down, but its data survives (`hack/stack.py` formats
fresh storage whenever it starts Kafka, so a real stop/start would lose every topic). Nothing may be
lost, the operator must say it is blind (KafkaReachable=False) and hold the replicas (never fewer
than before, never zero), and everything converges once the broker answers again.

The scenario has a broker of its own (`PrivateBroker`, the stack's recipe on free ports, with a listener
for Pods on the node's bridge address): the scenarios and tests running alongside it on the shared
broker never see the outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Scenario, duplicate_report, end_load_after, phase, read_entries
from e2e.loadgen import constant
from support import WaitTimeout, wait_for

PARTITIONS = 4
COST_MS = 20
RATE = 120
SECONDS = 75
OUTAGE_SECONDS = 30
AFTER_OUTAGE_SECONDS = 10   # the load outlasts the outage by this much once the operator sees Kafka again


@pytest.fixture(scope="module")
def backend(backend: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's backend, but with a broker of this module's own."""
    if not hasattr(backend, "with_broker"):
        pytest.skip(f"the {backend.name} backend has no private broker to take down")
    from e2e.node_backend import PrivateBroker

    node_ip = backend.pod_kafka_bootstrap.rsplit(":", 1)[0]
    broker = PrivateBroker(Path(tmp_path_factory.mktemp("outage-broker")), node_ip).start()
    try:
        yield backend.with_broker(broker)
    finally:
        broker.stop()


def test_broker_outage_holds_replicas_and_loses_nothing(scenario: Scenario) -> None:
    topic = scenario.make_topic("outage", PARTITIONS)
    group = scenario.create_group(topic=topic, cost_ms=COST_MS, replicas_min=1, replicas_max=4,
                                  pool_min=1, pool_initial=1, pool_max=4, poll_seconds=2,
                                  target_drain_seconds=20)
    scenario.wait_ready(group)
    ledger = scenario.ledger(group.processed_topic)
    start = time.time()
    load = scenario.load(topic, constant(RATE, SECONDS))
    wait_for(lambda: group.watch.max_replicas(start) >= 2, 45, "the group to scale up for the load")
    phase(5)

    replicas_before = group.watch.current_replicas or 0
    paused_at = time.time()
    with scenario.backend.broker_unresponsive():
        blind = wait_for(lambda: _condition(group.watch.status, "KafkaReachable") == "False", OUTAGE_SECONDS - 2,
                         "KafkaReachable=False while the broker does not answer")
        blind_at = time.time()
        phase(max(0.0, OUTAGE_SECONDS - (time.time() - paused_at)))
    resumed_at = time.time()

    try:
        wait_for(lambda: _condition(group.watch.status, "KafkaReachable") == "True", 90,
                 "KafkaReachable=True after the broker answers again")
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; the condition says {_condition_text(group.watch.status, 'KafkaReachable')}; "
                          f"{group.watch.describe(start)}") from None
    seen_again_at = time.time()
    blind_replicas = [c.replicas for c in group.watch.replica_history(paused_at) if c.time <= seen_again_at]
    assert min(blind_replicas) >= replicas_before, (
        f"replicas dropped while the operator could not read lag: {replicas_before} before, {blind_replicas} "
        f"during the outage; {group.watch.describe(start)}")

    result = end_load_after(load, AFTER_OUTAGE_SECONDS)
    accounting = ledger.wait_for(result.ids, 150)
    assert accounting.complete, f"lost messages: {accounting.summary()}; {group.watch.describe(start)}"
    wait_for(lambda: group.watch.status.get("totalLag") == 0, 60, "the lag to drain after the outage")
    wait_for(lambda: group.watch.current_replicas == 1, 90,
             f"replicas back to min after the outage ({group.watch.describe(start)})")
    assert (group.watch.min_replicas(start) or 0) >= 1, f"scaled to zero: {group.watch.describe(start)}"
    print(f"outage: produced {result.produced}, blind {blind_at - paused_at:.0f}s after the pause ({blind}), "
          f"seen again {seen_again_at - resumed_at:.0f}s after the resume, replicas during {blind_replicas}, "
          f"duplicates {accounting.duplicates}; {group.watch.describe(start)}")
    if accounting.duplicates:
        print(duplicate_report(read_entries(scenario.bootstrap, group.processed_topic, ledger.records)))
    assert accounting.duplicates <= 0.1 * result.produced, accounting.summary()


def _find_condition(status: dict[str, object], kind: str) -> dict[str, object] | None:
    for item in status.get("conditions") or []:  # type: ignore[attr-defined]
        if isinstance(item, dict) and item.get("type") == kind:
            return item
    return None


def _condition(status: dict[str, object], kind: str) -> str | None:
    found = _find_condition(status, kind)
    return None if found is None else str(found.get("status"))


def _condition_text(status: dict[str, object], kind: str) -> str:
    found = _find_condition(status, kind)
    if found is None:
        return "no condition"
    return f"{found.get('status')} {found.get('reason')}: {found.get('message')}"

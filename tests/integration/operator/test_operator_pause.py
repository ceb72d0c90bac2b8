"""Pause on the real stack: `lagpilot.io/paused` and `lagpilot.io/paused-replicas` on a live resource,
with the real operator (kopf), kube-apiserver and Kafka, scaling a real Deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from operator_testkit import (
    FAST,
    OperatorProcess,
    annotate,
    apply_kcg,
    commit,
    condition,
    create_deployment,
    poll_time,
    produce,
    replicas_of,
    status_of,
)

from support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def polls_hold(stack: Any, namespace: str, name: str, deployment: str, replicas: int, polls: int,
               also: Callable[[dict[str, Any]], bool] = lambda _: True, timeout: float = 30) -> dict[str, Any]:
    """Wait for `polls` new reconciles, asserting after each that the Deployment kept `replicas`."""
    seen: set[float] = {poll_time(status_of(stack, namespace, name))}
    latest: dict[str, Any] = {}

    def another() -> bool:
        nonlocal latest
        latest = status_of(stack, namespace, name)
        assert replicas_of(stack, namespace, deployment) == replicas, latest.get("lastDecision")
        if also(latest):
            seen.add(poll_time(latest))
        return len(seen) > polls

    wait_for(another, timeout, f"{polls} reconciles holding {replicas} replicas")
    return latest


@pytest.mark.slow
def test_pause_annotations_hold_pin_and_resume(stack: Any, namespace: str, operator: OperatorProcess,
                                              create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-pause", partitions=PARTITIONS), unique_name("g")
    produce(stack.kafka_bootstrap, topic, PARTITIONS, 20)
    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(PARTITIONS), 20))  # caught up: lag 0
    create_deployment(stack, namespace, "worker", 1)
    apply_kcg(stack, namespace, "orders", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": "worker"}, "replicas": {"min": 1, "max": 8},
        "pool": {"min": 1, "max": 1, "initial": 1}, **FAST})
    status = wait_for(lambda: (s := status_of(stack, namespace, "orders")).get("totalLag") == 0
                      and condition(s, "Paused").get("status") == "False" and s, 30, "an active, caught-up group")
    assert condition(status, "Paused")["reason"] == "NotPaused"

    # Paused: a backlog that would scale to 4 replicas is read and reported, and nothing moves.
    annotate(stack, namespace, "orders", "lagpilot.io/paused=true")
    wait_for(lambda: condition(status_of(stack, namespace, "orders"), "Paused").get("reason") == "PausedByAnnotation",
             20, "Paused=True from the annotation")
    produce(stack.kafka_bootstrap, topic, PARTITIONS, 10)  # lag 40: 4 slots at 10 per consumer
    status = polls_hold(stack, namespace, "orders", "worker", 1, 3, also=lambda s: s.get("totalLag") == 40)
    assert status["totalLag"] == 40 and status["currentReplicas"] == 1 and status["desiredReplicas"] == 1
    paused = condition(status, "Paused")
    assert paused["status"] == "True" and 'lagpilot.io/paused="true"' in paused["message"]
    scaling = condition(status, "Scaling")
    assert (scaling["status"], scaling["reason"]) == ("False", "Paused")
    table = stack.kubectl("get", "kcg", "orders", "-n", namespace).stdout.splitlines()
    header = table[0].split()
    assert table[1].split()[header.index("PAUSED")] == "True"
    assert table[1].split()[header.index("LAG")] == "40"

    # Pinned: replicas go to N and stay there, whatever the lag says; the pool is not touched.
    annotate(stack, namespace, "orders", "lagpilot.io/paused-replicas=3")
    wait_for(lambda: replicas_of(stack, namespace, "worker") == 3, 20, "replicas pinned at 3")
    status = polls_hold(stack, namespace, "orders", "worker", 3, 2)
    assert condition(status, "Paused")["reason"] == "PausedAtReplicas" and status["poolSize"] == 1

    # An unreadable pin is a condition, not a crash: the resource keeps being reconciled, replicas held.
    annotate(stack, namespace, "orders", "lagpilot.io/paused-replicas=three")
    status = polls_hold(stack, namespace, "orders", "worker", 3, 2,
                        also=lambda s: condition(s, "Paused").get("reason") == "InvalidPausedReplicas")
    paused = condition(status, "Paused")
    assert paused["status"] == "True" and 'lagpilot.io/paused-replicas="three"' in paused["message"]
    assert condition(status, "Ready")["status"] == "True"

    # Resume where the policy agrees with the pin (lag 30 = 3 slots): no jump either way.
    commit(stack.kafka_bootstrap, group, topic, {0: 30, 1: 20, 2: 20, 3: 20})
    annotate(stack, namespace, "orders", "lagpilot.io/paused-", "lagpilot.io/paused-replicas-")
    status = polls_hold(stack, namespace, "orders", "worker", 3, 3,
                        also=lambda s: condition(s, "Paused").get("status") == "False" and s.get("totalLag") == 30)
    assert condition(status, "Scaling")["status"] == "True" and status["desiredReplicas"] == 3
    # And scaling is live again: more lag, more replicas (capped at the partition count).
    produce(stack.kafka_bootstrap, topic, PARTITIONS, 10)
    wait_for(lambda: replicas_of(stack, namespace, "worker") == PARTITIONS, 20, "scale up after the resume")

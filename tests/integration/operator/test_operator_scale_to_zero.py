"""Scale to zero and wake on the real loop (kopf + kube-apiserver + Kafka, a real Deployment), and
never to zero while the lag cannot be read."""

from __future__ import annotations

import time
from typing import Any

import pytest
from operator_testkit import (
    FAST,
    OperatorProcess,
    apply_kcg,
    commit,
    condition,
    create_deployment,
    event_messages,
    free_port,
    patch_spec,
    produce,
    quiet_group,
    replicas_of,
    status_of,
)

from support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
WINDOW = FAST["policy"]["scaleDown"]["stabilizationSeconds"]


@pytest.mark.slow
def test_quiet_topic_goes_to_zero_after_the_window_and_a_burst_wakes_it(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-zero", partitions=PARTITIONS), unique_name("g")
    quiet_group(stack, namespace, "sleepy", topic, group, PARTITIONS, replicas=2, replicas_min=0, replicas_max=4)
    first = wait_for(lambda: (s := status_of(stack, namespace, "sleepy")).get("totalLag") == 0 and s, 30,
                     "the first reconcile")
    idle_from = first["policyMemory"]["idleSince"]

    status = wait_for(lambda: replicas_of(stack, namespace, "sleepy") == 0 and status_of(stack, namespace, "sleepy"),
                      WINDOW + 30, "scale to zero")
    status = wait_for(lambda: (s := status_of(stack, namespace, "sleepy")).get("currentReplicas") == 0 and s, 10,
                      "zero replicas in status")
    downs = event_messages(stack, namespace, "ScaledDown")
    assert any(m.startswith(f"scale to zero: lag 0 ≤ activation 0 for {WINDOW} s") for m in downs), downs
    # Not before the window: the scale happened at least WINDOW seconds after the group went quiet.
    assert status["policyMemory"]["lastReplicaChange"] - idle_from >= WINDOW
    assert condition(status, "Ready")["status"] == "True"

    woke_at = time.monotonic()
    produce(stack.kafka_bootstrap, topic, PARTITIONS, 15)  # a burst: lag 30
    wait_for(lambda: replicas_of(stack, namespace, "sleepy") >= 1, 20, "a burst to wake the group")
    assert time.monotonic() - woke_at < 2 + 8, "waking took more than a poll and a few seconds"
    wait_for(lambda: any(m.startswith("wake from zero: lag ") for m in event_messages(stack, namespace, "ScaledUp")),
             10, "the wake's ScaledUp event")
    wait_for(lambda: status_of(stack, namespace, "sleepy").get("currentReplicas", 0) >= 1, 10, "the wake in status")


@pytest.mark.slow
def test_idle_group_is_not_scaled_to_zero_while_its_lag_cannot_be_read(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    window = 10  # shorter than the blind spell: two failed reads take over 20 s (10 s read timeout each)
    topic, group = create_topic("op-blind-zero", partitions=PARTITIONS), unique_name("g")
    produce(stack.kafka_bootstrap, topic, PARTITIONS, 5)
    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(PARTITIONS), 5))
    create_deployment(stack, namespace, "idle", 1)
    policy = {**FAST["policy"], "scaleDown": {**FAST["policy"]["scaleDown"], "stabilizationSeconds": window}}
    apply_kcg(stack, namespace, "idle", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": "idle"}, "replicas": {"min": 0, "max": 4},
        "pool": {"min": 1, "max": 1, "initial": 1}, **FAST, "policy": policy})
    wait_for(lambda: status_of(stack, namespace, "idle").get("totalLag") == 0, 30, "an idle group")

    # The cluster becomes unreachable for this resource before the idle window ends.
    patch_spec(stack, namespace, "idle", {"kafka": {"bootstrapServers": f"127.0.0.1:{free_port()}"}})
    blind_from = time.monotonic()

    def blind_past_the_window() -> bool:
        assert replicas_of(stack, namespace, "idle") == 1, "scaled while the lag could not be read"
        status = status_of(stack, namespace, "idle")
        return status.get("consecutiveLagFailures", 0) >= 2 and time.monotonic() - blind_from > window + 5

    wait_for(blind_past_the_window, 120, "failed lag reads for longer than the idle window")
    status = status_of(stack, namespace, "idle")
    assert condition(status, "Scaling")["reason"] == "LagUnavailable"
    assert condition(status, "KafkaReachable")["status"] == "False"

    # Readable again: the quiet window starts over from the first good read, not from before the outage.
    patch_spec(stack, namespace, "idle", {"kafka": {"bootstrapServers": stack.kafka_bootstrap}})
    restored = time.monotonic()
    wait_for(lambda: replicas_of(stack, namespace, "idle") == 0, window + 60, "scale to zero after a fresh window")
    assert time.monotonic() - restored >= window, "went to zero without a whole quiet window of readable lag"

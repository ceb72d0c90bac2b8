"""The operator reads its target Deployment and pool ConfigMap from its watch (kube/watch_cache), on the real
loop: no GET per poll once both are watched, a change someone else makes is seen on the next poll, and
the operator's own scale is seen by the poll after it (no second decision from the old replicas)."""

from __future__ import annotations

from typing import Any

import pytest
from operator_testkit import (
    FAST,
    OperatorProcess,
    poll_time,
    quiet_group,
    replicas_of,
    status_of,
)

from support import metric_value, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 2
INTERVAL = FAST["lag"]["pollIntervalSeconds"]


def reads(process: OperatorProcess, kind: str, via: str) -> float:
    return metric_value(process.metrics_text(), "lagpilot_kube_reads_total", {"kind": kind, "via": via}) or 0.0


def decisions(process: OperatorProcess, namespace: str, name: str, direction: str) -> float:
    return metric_value(process.metrics_text(), "lagpilot_scale_decisions_total",
                        {"namespace": namespace, "name": name, "direction": direction}) or 0.0


def polls_later(stack: Any, namespace: str, name: str, polls: int) -> dict[str, Any]:
    """The status once `polls` more reconciles have run."""
    start = poll_time(status_of(stack, namespace, name))
    return wait_for(lambda: poll_time(s := status_of(stack, namespace, name)) >= start + polls * INTERVAL - 0.5 and s,
                    polls * INTERVAL + 20, f"{polls} more polls")


def test_polls_read_the_watch_and_see_changes_and_their_own_scale(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-watch", partitions=PARTITIONS), unique_name("g")
    quiet_group(stack, namespace, "watched", topic, group, PARTITIONS, replicas=1, replicas_min=1, replicas_max=4)
    wait_for(lambda: status_of(stack, namespace, "watched").get("totalLag") == 0, 30, "the first reconcile")
    polls_later(stack, namespace, "watched", 2)  # the pool ConfigMap it created is watched by now

    # Steady state: every read from the watch.
    deployment_gets, configmap_gets = reads(operator, "deployment", "api"), reads(operator, "configmap", "api")
    from_watch = reads(operator, "deployment", "watch")
    polls_later(stack, namespace, "watched", 3)
    assert reads(operator, "deployment", "api") == deployment_gets
    assert reads(operator, "configmap", "api") == configmap_gets
    assert reads(operator, "deployment", "watch") >= from_watch + 3

    # Someone else scales it: the next poll reads 3 from the watch and, the lag being 0 for longer than the
    # scale-down window, scales back to the minimum, once: the polls after its own write read 1, not 3.
    assert decisions(operator, namespace, "watched", "down") == 0
    stack.kubectl("scale", "-n", namespace, "deployment/watched", "--replicas=3")
    wait_for(lambda: replicas_of(stack, namespace, "watched") == 3, 10, "kubectl's scale")
    wait_for(lambda: replicas_of(stack, namespace, "watched") == 1, 2 * INTERVAL + 10,
             "the operator to see the scale it did not make, and undo it")
    polls_later(stack, namespace, "watched", 3)
    assert decisions(operator, namespace, "watched", "down") == 1
    assert status_of(stack, namespace, "watched")["currentReplicas"] == 1
    assert reads(operator, "deployment", "api") == deployment_gets

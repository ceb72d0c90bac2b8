"""Writes only when something changed: status, resumed memory, the owned Deployment (pure)."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from lagpilot_operator.observations import LagSample, PartitionOffsets
from lagpilot_operator.policy import (
    LagThresholdConfig,
    Observation,
    PolicyConfig,
    PolicyMemory,
    ScalingBehavior,
    decide,
)
from lagpilot_operator.status_writes import differs, leading_digit, material, resumed_memory, should_write

STATUS: dict[str, Any] = {
    "observedGeneration": 3, "desiredReplicas": 2, "currentReplicas": 2, "poolSize": 4,
    "lastDecision": "hold 2 x 4: lag 1,234", "consecutiveLagFailures": 0, "totalLag": 1234, "partitions": 12,
    "topPartitions": [{"topic": "orders", "partition": 1, "lag": 700, "verdict": "OK"}],
    "policyMemory": {"lastTime": 100.0, "recommendations": [[100.0, 8]]},
    "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled", "message": "lag 1,234",
                    "observedGeneration": 3, "lastTransitionTime": "2026-12-04T00:00:00Z"}],
}


def changed(**fields: Any) -> dict[str, Any]:
    status = copy.deepcopy(STATUS)
    status.update(fields)
    return status


def test_the_first_status_of_a_process_is_written() -> None:
    assert should_write(STATUS, None, 0.0, 100.0)


def test_readings_that_move_every_poll_are_not_written_every_poll() -> None:
    moved = changed(totalLag=1301, lastDecision="hold 2 x 4: lag 1,301",
                    policyMemory={"lastTime": 105.0, "recommendations": [[105.0, 8]]},
                    topPartitions=[{"topic": "orders", "partition": 1, "lag": 750, "verdict": "OK"}])
    moved["conditions"][0]["message"] = "lag 1,301"
    assert not should_write(moved, STATUS, 100.0, 105.0, refresh_seconds=60)
    assert should_write(moved, STATUS, 100.0, 160.0, refresh_seconds=60), "refreshed after 60 s"
    assert not should_write(changed(policyMemory={"lastTime": 500.0}), STATUS, 100.0, 500.0, refresh_seconds=60), \
        "the memory alone is never worth a write"
    assert should_write(moved, STATUS, 100.0, 105.0, refresh_seconds=0), "0: every poll, as before"


def test_decisions_and_large_lag_moves_are_written_at_once() -> None:
    for fields in ({"desiredReplicas": 3}, {"poolSize": 5}, {"totalLag": 2001}, {"totalLag": 0},
                   {"observedGeneration": 4}, {"partitions": 13}, {"consecutiveLagFailures": 1},
                   {"topPartitions": [{"topic": "orders", "partition": 1, "lag": 700, "verdict": "STALLED"}]}):
        assert should_write(changed(**fields), STATUS, 100.0, 101.0, refresh_seconds=60), fields
    flipped = changed()
    flipped["conditions"][0]["status"] = "False"
    assert should_write(flipped, STATUS, 100.0, 101.0, refresh_seconds=60)
    assert not should_write(copy.deepcopy(STATUS), STATUS, 100.0, 1000.0, refresh_seconds=60)


def test_leading_digit_buckets() -> None:
    assert [leading_digit(v) for v in (0, -3, 7, 80, 89, 200, 2999, 31_000)] == [0, 0, 7, 80, 80, 200, 2000, 30_000]
    assert material(changed(totalLag=1999)) == material(STATUS)


WINDOW = 120
CONFIG = replace(PolicyConfig(), mode="lagThreshold", lag_threshold=LagThresholdConfig(lag_per_consumer=10),
                 scale_up=ScalingBehavior(stabilization_seconds=0, max_step_percent=1000, min_step=100,
                                          period_seconds=1),
                 scale_down=ScalingBehavior(stabilization_seconds=WINDOW, max_step_percent=100, min_step=100,
                                            period_seconds=1))


def idle(now: float) -> Observation:
    sample = LagSample(now, tuple(PartitionOffsets("orders", p, 20, 20) for p in range(4)), 4)
    return Observation(sample=sample, current_replicas=4, current_pool=1, partitions=4)


def test_a_restart_from_an_older_memory_does_not_end_the_window_early() -> None:
    # Lag was high until 1000 (4 replicas recommended), then 0; the live operator keeps 4 until 1000+WINDOW.
    # Its status last held the memory of 900 (the polls after that changed nothing a reader acts on).
    persisted = PolicyMemory(recommendations=((900.0, 4),), last_time=900.0, last_lag=40)
    restart = 1050.0
    assert decide(CONFIG, idle(restart), persisted, restart).replicas < 4, "the stale memory alone scales down"
    resumed = resumed_memory(persisted, restart, current_capacity=4)
    decision = decide(CONFIG, idle(restart), resumed, restart)
    assert decision.replicas == 4
    later = decide(CONFIG, idle(restart + WINDOW + 5), decision.memory, restart + WINDOW + 5)
    assert later.replicas < 4, "the window still ends"


def test_a_fresh_memory_is_left_to_the_policy() -> None:
    assert resumed_memory(PolicyMemory(), 10.0, 4) == PolicyMemory()


DESIRED = {"metadata": {"labels": {"app": "w"}},
           "spec": {"selector": {"matchLabels": {"app": "w"}},
                    "template": {"spec": {"containers": [{"name": "w", "image": "w:1", "env": [{"name": "A",
                                                                                               "value": "1"}],
                                                          "resources": {}}]}}}}


def test_a_deployment_with_defaults_filled_in_needs_no_patch() -> None:
    served = copy.deepcopy(DESIRED)
    served["metadata"]["labels"]["pod-template-hash"] = "x"
    served["metadata"]["resourceVersion"] = "7"
    served["spec"]["strategy"] = {"type": "RollingUpdate"}
    container = served["spec"]["template"]["spec"]["containers"][0]
    container.pop("resources")
    container["imagePullPolicy"] = "IfNotPresent"
    assert not differs(DESIRED, served)


def test_a_real_difference_needs_a_patch() -> None:
    for change in (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(image="w:2"),
                   lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "B"}),
                   lambda d: d["metadata"]["labels"].update(app="other")):
        served = copy.deepcopy(DESIRED)
        change(served)
        assert differs(DESIRED, served)

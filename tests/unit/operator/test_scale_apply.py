"""A refused scale leaves the policy's memory as it was, and its condition says who refused and why."""

from __future__ import annotations

import json

import pytest

from lagpilot_operator.core.observations import LagSample, PartitionOffsets
from lagpilot_operator.core.policy import Observation, PolicyConfig, PolicyMemory, decide
from lagpilot_operator.kube import scale_apply


def scale_up_decision(cooldown: int = 600) -> tuple[PolicyConfig, Observation, PolicyMemory]:
    config = PolicyConfig.from_spec({"replicas": {"min": 1, "max": 8}, "pool": {"min": 1, "max": 1, "initial": 1},
                                     "policy": {"mode": "lagThreshold", "cooldownSeconds": cooldown}})
    sample = LagSample(1000.0, tuple(PartitionOffsets("t", p, 100, 0) for p in range(4)))
    observation = Observation(sample=sample, current_replicas=1, current_pool=1, partitions=4, lag_only=True)
    return config, observation, PolicyMemory()


def test_an_applied_scale_is_remembered_and_a_refused_one_is_not() -> None:
    config, observation, before = scale_up_decision()
    decision = decide(config, observation, before, 1000.0)
    assert decision.replicas == 4 and decision.memory.last_replica_change == 1000.0
    assert scale_apply.memory_after_apply(before, decision, refused=False) is decision.memory
    assert scale_apply.memory_after_apply(before, decision, refused=True) is before


def test_after_a_refusal_the_next_poll_may_scale_at_once_despite_the_cooldown() -> None:
    config, observation, before = scale_up_decision(cooldown=600)
    first = decide(config, observation, before, 1000.0)
    kept = scale_apply.memory_after_apply(before, first, refused=True)
    assert decide(config, observation, kept, 1005.0).replicas == 4
    # Had the refused scale been remembered, the cooldown would hold the group at one replica.
    assert decide(config, observation, first.memory, 1005.0).replicas == 1


@pytest.mark.parametrize(("status", "reason", "hint"), [
    (403, "ScaleForbidden", "patch on deployments/scale"),
    (409, "ScaleConflict", "next poll retries"),
    (422, "ScaleRejected", "admission webhook or policy"),
    (500, "ScaleFailed", "next poll retries"),
    (None, "ScaleFailed", "next poll retries"),
])
def test_the_refusal_names_the_cause(status: int | None, reason: str, hint: str) -> None:
    body = json.dumps({"kind": "Status", "message": "deployments.apps \"w\" is forbidden: nope", "code": status})
    found = scale_apply.refusal("scaling Deployment ns/w from 1 to 4 replicas", status, body, "replicas stay at 1")
    assert found.reason == reason
    assert found.message.startswith("scaling Deployment ns/w from 1 to 4 replicas was refused by the API server")
    assert "is forbidden: nope" in found.message and hint in found.message and "replicas stay at 1" in found.message


def test_a_body_that_is_not_a_status_is_shown_shortened() -> None:
    assert scale_apply.api_message(b"x" * 2000) == "x" * 500
    assert scale_apply.api_message(None) == "" and scale_apply.api_message("[1]") == "[1]"


def test_the_current_pool_is_the_one_last_published_not_a_status_behind_it() -> None:
    # The seed benchmark: the pool grew 4 -> 8; a later poll was handed the watch stream's copy of the status,
    # still at poolSize 4. Read from it, the policy sees 1 x 4, "holds" it and publishes 4: a silent shrink.
    from test_policy_time_lag import SEED, SEED_RUN, replay, seed_observation

    grown = replay()[-1]
    assert (grown.replicas, grown.pool) == (1, 8)
    seconds, lag, produce, floor, time_lag = SEED_RUN[len(replay())]
    stale_status = {"poolSize": 4, "currentReplicas": 1}

    def next_decision(pool: int) -> tuple[int, str]:
        observation = seed_observation(seconds, lag, produce, floor, time_lag, replicas=1, pool=pool)
        decision = decide(SEED, observation, grown.memory, 1_000.0 + seconds)
        return decision.pool, decision.reason

    stale_pool, stale_reason = next_decision(int(stale_status["poolSize"]))
    assert stale_pool == 4 and stale_reason.startswith("hold 1 replica, pool 4")  # what the run did
    pool = scale_apply.current_pool(stale_status, published=8, initial=4)
    assert pool == 8 and next_decision(pool)[0] >= 8
    # Nothing published yet by this process (a restart, another shard term): the status, else pool.initial.
    assert scale_apply.current_pool(stale_status, published=None, initial=2) == 4
    assert scale_apply.current_pool({}, published=None, initial=2) == 2

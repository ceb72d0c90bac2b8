"""A reconcile parses its resource's spec and status conditions again only when they changed
(`reconcile._parse_spec`, `reconcile._parse_conditions`), and an unchanged condition stays the same object."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from lagpilot_operator import reconcile
from lagpilot_operator.kube.conditions import conditions_to_k8s, set_condition

SPEC: dict[str, Any] = {"kafka": {"bootstrapServers": "kafka:9092"}, "groupId": "orders", "topics": ["orders"],
                        "scaleTargetRef": {"name": "orders-worker"}, "replicas": {"min": 1, "max": 10}}


def test_the_same_spec_is_parsed_once_and_a_changed_one_again() -> None:
    state = reconcile.ResourceState()
    spec, config = reconcile._parse_spec(state, SPEC)
    assert (spec.replicas.max, config.replicas.max) == (10, 10)
    again = reconcile._parse_spec(state, copy.deepcopy(SPEC))   # equal content, another object (a new event)
    assert again[0] is spec and again[1] is config

    edited = copy.deepcopy(SPEC)
    edited["replicas"]["max"] = 4
    spec, config = reconcile._parse_spec(state, edited)
    assert (spec.replicas.max, config.replicas.max) == (4, 4)
    edited["replicas"]["max"] = 6   # edited in place after the parse: the kept copy is not the caller's dict
    spec, config = reconcile._parse_spec(state, edited)
    assert (spec.replicas.max, config.replicas.max) == (6, 6)


def test_an_invalid_spec_raises_every_time_and_keeps_the_last_valid_one() -> None:
    state = reconcile.ResourceState()
    reconcile._parse_spec(state, SPEC)
    invalid = {**SPEC, "replicas": {"min": 1, "max": "ten"}}
    for _ in range(2):
        with pytest.raises(ValidationError):
            reconcile._parse_spec(state, invalid)
    assert reconcile._parse_spec(state, SPEC)[0].replicas.max == 10


def test_conditions_are_parsed_again_only_when_the_status_changed() -> None:
    state = reconcile.ResourceState()
    written = conditions_to_k8s(set_condition([], "Ready", "True", "Reconciled", "hold 2x8", 3, 100.0))
    first = reconcile._parse_conditions(state, written)
    again = reconcile._parse_conditions(state, copy.deepcopy(written))
    assert again == first and again[0] is first[0]
    changed = [{**written[0], "status": "False", "reason": "NotReady"}]
    assert reconcile._parse_conditions(state, changed)[0].status == "False"


def test_an_unchanged_condition_is_kept_and_a_change_keeps_its_rules() -> None:
    conditions = set_condition([], "Ready", "True", "Reconciled", "hold 2x8", 3, 100.0)
    same = set_condition(conditions, "Ready", "True", "Reconciled", "hold 2x8", 3, 200.0)
    assert same[0] is conditions[0]
    reworded = set_condition(conditions, "Ready", "True", "Reconciled", "hold 3x8", 3, 200.0)[0]
    assert (reworded.message, reworded.last_transition_time) == ("hold 3x8", conditions[0].last_transition_time)
    flipped = set_condition(conditions, "Ready", "False", "NotReady", "see TargetFound", 3, 200.0)[0]
    assert flipped.last_transition_time != conditions[0].last_transition_time

"""A reconcile parses its resource's spec again only when the spec changed (`reconcile._parse_spec`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from lagpilot_operator import reconcile

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

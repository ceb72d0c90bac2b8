"""Build and merge `status.conditions` (Kubernetes conventions). Pure: no I/O, `now` is passed in.

    conditions = set_condition(status.get("conditions", []), "KafkaReachable", "False", "BrokersUnreachable",
                               "no broker answered at kafka:9092 within 5 s; check spec.kafka.bootstrapServers",
                               body["metadata"]["generation"], now)
    patch.status["conditions"] = conditions_to_k8s(conditions)

`lastTransitionTime` changes only when `status` changes, so a condition that stays False for an
hour says since when; reason, message and observedGeneration always take the new values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from lagpilot_operator.kube.models import Condition, ConditionStatus, condition_reason_ok, rfc3339

ConditionInput = Condition | Mapping[str, Any]


def _as_condition(item: ConditionInput) -> Condition:
    return item if isinstance(item, Condition) else Condition.from_k8s(item)


def set_condition(
    conditions: Iterable[ConditionInput],
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime | float | str,
) -> list[Condition]:
    """A new list with `condition_type` set; other conditions keep their place and values.

    `now` is an aware datetime, epoch seconds or an RFC 3339 string. A new type is appended.
    """
    if not condition_reason_ok(reason):
        raise ValueError(f"condition reason must be one CamelCase word, got {reason!r}")

    def timestamp() -> str:  # formatted only for a transition: most polls change no condition
        return now if isinstance(now, str) else rfc3339(now)

    result: list[Condition] = []
    found = False
    for existing in map(_as_condition, conditions):
        if existing.type != condition_type:
            result.append(existing)
            continue
        if found:
            continue  # a duplicate type (a hand-edited status): the list is keyed by type
        found = True
        if (existing.status, existing.reason, existing.message, existing.observed_generation) == \
                (status, reason, message, generation):
            result.append(existing)  # unchanged (most polls): the same immutable condition, not a new model
            continue
        since = existing.last_transition_time if existing.status == status else timestamp()
        result.append(Condition(type=condition_type, status=status, reason=reason, message=message,
                                last_transition_time=since, observed_generation=generation))
    if not found:
        result.append(Condition(type=condition_type, status=status, reason=reason, message=message,
                                last_transition_time=timestamp(), observed_generation=generation))
    return result


def get_condition(conditions: Iterable[ConditionInput], condition_type: str) -> Condition | None:
    for item in map(_as_condition, conditions):
        if item.type == condition_type:
            return item
    return None


def is_true(conditions: Iterable[ConditionInput], condition_type: str) -> bool:
    found = get_condition(conditions, condition_type)
    return found is not None and found.status == "True"


def remove_condition(conditions: Iterable[ConditionInput], condition_type: str) -> list[Condition]:
    return [item for item in map(_as_condition, conditions) if item.type != condition_type]


def conditions_to_k8s(conditions: Sequence[Condition]) -> list[dict[str, Any]]:
    """The list as it goes into `status.conditions` (camelCase dicts)."""
    return [item.to_k8s() for item in conditions]

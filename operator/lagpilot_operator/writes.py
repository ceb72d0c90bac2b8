"""What changed enough to write (pure): the templated Deployment, and Events.

A patch per group per poll does not scale to thousands of groups: the owned Deployment is patched
only when the live object lacks something the template sets, and an Event is posted only when its
subject says something new (docs/operator.md, "Apply").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# --- the templated Deployment --------------------------------------------------------------------------


def _named(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def contained(desired: Any, live: Any) -> bool:
    """Whether `live` already holds everything `desired` sets (what a strategic merge patch would write).

    Dicts: every desired key is in live with a contained value (the API server adds defaults). Lists of
    named items (containers, env, volumes, ports with names) merge by name; other lists must match
    item for item.
    """
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(k in live and contained(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list):
            return False
        if _named(desired) and _named(live):
            by_name = {item["name"]: item for item in live}
            return all(item["name"] in by_name and contained(item, by_name[item["name"]]) for item in desired)
        return len(desired) == len(live) and all(contained(d, v) for d, v in zip(desired, live, strict=True))
    return bool(desired == live)


def deployment_patch(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any] | None:
    """The patch that brings the live Deployment to the template (labels and spec except replicas, which
    the scale subresource owns), or None when the live object already has it."""
    patch = {"metadata": {"labels": dict((desired.get("metadata") or {}).get("labels") or {})},
             "spec": {k: v for k, v in (desired.get("spec") or {}).items() if k != "replicas"}}
    return None if contained(patch, {"metadata": live.get("metadata") or {}, "spec": live.get("spec") or {}}) \
        else patch


# --- Events ----------------------------------------------------------------------------------------


EVENT_TOPICS = {"ScaledUp": "scale", "ScaledDown": "scale"}
"""Reasons that report on one subject: a scale up, then down, then the same up again is news each time."""


@dataclass
class EventMemory:
    """The last Event per subject (its reason, or `EVENT_TOPICS`) a resource posted; kept in the operator's
    memory so the same news is not posted again (a decision re-applied after a failed status write, the
    same dead-letter finding on the next look)."""

    last: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    def admit(self, kind: str, reason: str, message: str) -> bool:
        """Whether to post: not when the subject's last Event said exactly this."""
        topic = EVENT_TOPICS.get(reason, reason)
        if self.last.get(topic) == (kind, reason, message):
            return False
        self.last[topic] = (kind, reason, message)
        return True

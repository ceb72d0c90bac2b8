"""What a refused scale means for the policy and for the person reading the status (pure).

The policy's memory (cooldown, step limits, rebalance grace, stabilization windows) must describe
what happened to the Deployment, not what was asked: a patch the API server refused (RBAC 403, an
admission webhook or ValidatingAdmissionPolicy, a conflict) leaves the memory as it was before the
decision, and a condition names the refusal. Otherwise a refused scale-up would start a cooldown
and block the next, allowed one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lagpilot_operator.core.policy import Decision, PolicyMemory

_REASONS = {403: "ScaleForbidden", 409: "ScaleConflict", 400: "ScaleRejected", 422: "ScaleRejected"}
_HINTS = {
    403: "grant the operator's ServiceAccount patch on deployments/scale, or lift the admission rule that "
         "forbids it",
    409: "someone else changed the Deployment at the same moment; the next poll retries",
    400: "an admission webhook or policy rejected the new size",
    422: "an admission webhook or policy rejected the new size",
}


@dataclass(frozen=True)
class Refusal:
    """Why the API server did not apply a decision (condition reason and message; no secrets)."""

    reason: str
    message: str


def api_message(body: str | bytes | None) -> str:
    """The `message` of a Kubernetes Status body, or the raw body (short) when it is not one."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:500]
    return str(parsed.get("message", "")) if isinstance(parsed, dict) else text[:500]


def refusal(what: str, status: int | None, body: str | bytes | None, held: str) -> Refusal:
    """The condition material for a refused write: `what` was asked, `held` is what stays."""
    code = status or 0
    reason = _REASONS.get(code, "ScaleFailed")
    detail = api_message(body) or "no message"
    hint = _HINTS.get(code, "the API server failed the request; the next poll retries")
    return Refusal(reason, f"{what} was refused by the API server (HTTP {code}: {detail}); {held}, and the "
                           f"policy's memory is unchanged: {hint}")


def memory_after_apply(before: PolicyMemory, decision: Decision, refused: bool) -> PolicyMemory:
    """The memory to keep after applying `decision`: its own if applied, the previous one if refused."""
    return before if refused else decision.memory


def current_pool(status: Mapping[str, Any], published: int | None, initial: int) -> int:
    """The pool the workers run now: what this process last published to their ConfigMap, else the status's
    `poolSize` (written by whoever served the group before: a restart, another shard term), else pool.initial.

    `status` is the status as stored (`writes.stored_status`: the watch's copy, which can trail this
    process's own writes by a poll, with its last successful write over it; read from the watch's copy alone,
    a pool grown 4→8 in the seed benchmark was "held" at 4 twenty seconds later). The published pool still
    goes first: a status write can fail after the ConfigMap was written, and the workers run what it says.
    """
    if published is not None:
        return published
    return int(status.get("poolSize") or initial)

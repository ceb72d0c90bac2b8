"""When the status (and the owned Deployment) is written: only when something a reader acts on changed (pure).

A status write is an API write, a watch event for every watcher of the resource, and an etcd revision.
The decision fields (replicas, pool, conditions' status and reason, the stuck set, the partition count,
dead-letter and redrive state) are written as soon as they change. The readings that move on every poll
(lag, time lag, rates, the decision's text, the failure count, the policy's memory) are coarse: lag
is written at once when its leading digit changes (0 -> 80, 80 -> 200, 2,000 -> 3,000), and
otherwise with the next write, or at most every `refresh_seconds` (operator setting
`LAGPILOT_STATUS_REFRESH_SECONDS`, 60 s; 0 writes every poll). With nothing changing, nothing is written.

Because `policyMemory` is written with those, a restarted operator may resume from a memory older than
its last decision. `resumed_memory` makes that safe: the decisions it did not persist held the current
capacity (a change of capacity is always written), so the current capacity counts as recommended at the
restart, and no window ends early.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from lagpilot_operator.policy import PolicyMemory

REFRESH_SECONDS = float(os.environ.get("LAGPILOT_STATUS_REFRESH_SECONDS", "60"))
COARSE_FIELDS = frozenset({"totalLag", "topPartitions", "maxTimeLagSeconds", "meanTimeLagSeconds",
                           "produceRatePerSecond", "consumeRatePerSecond", "lastDecision",
                           "consecutiveLagFailures", "policyMemory"})


def leading_digit(value: int) -> int:
    """`value` rounded down to its leading digit: 0, 1..9, 10, 20, ..., 90, 100, 200, ..."""
    if value <= 0:
        return 0
    scale = int(10 ** (len(str(value)) - 1))
    return value // scale * scale


def material(status: Mapping[str, Any]) -> dict[str, Any]:
    """What a person or a controller acts on: a change here is written at once."""
    key = {k: v for k, v in status.items() if k not in COARSE_FIELDS and k != "conditions"}
    key["conditions"] = sorted((c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration"))
                               for c in status.get("conditions") or [])
    key["coarseFields"] = sorted(k for k in COARSE_FIELDS if k in status)
    key["lagLeadingDigit"] = leading_digit(int(status.get("totalLag") or 0))
    key["verdicts"] = sorted((p.get("topic"), p.get("partition"), p.get("verdict"))
                             for p in status.get("topPartitions") or [] if p.get("verdict") not in (None, "OK"))
    key["lagFailing"] = bool(status.get("consecutiveLagFailures"))
    return key


def should_write(new: Mapping[str, Any], last_written: Mapping[str, Any] | None, last_write_time: float,
                 now: float, refresh_seconds: float = REFRESH_SECONDS) -> bool:
    """Whether `new` is patched, given the status written last (None: nothing written by this process)."""
    if last_written is None:
        return True
    if refresh_seconds <= 0:
        return dict(new) != dict(last_written)
    if material(new) != material(last_written):
        return True
    readings_moved = {k: v for k, v in new.items() if k != "policyMemory"} != {
        k: v for k, v in last_written.items() if k != "policyMemory"}
    return readings_moved and now - last_write_time >= refresh_seconds


def resumed_memory(persisted: PolicyMemory, now: float, current_capacity: int) -> PolicyMemory:
    """The memory a (re)started operator decides with, from the one the status holds."""
    if persisted.last_time is None or current_capacity <= 0:
        return persisted  # fresh: the policy seeds the current capacity itself
    return replace(persisted, recommendations=(*persisted.recommendations, (now, current_capacity)))


def differs(desired: Any, current: Any) -> bool:
    """Whether `current` (a Deployment as the API server returns it, defaults filled in) lacks something
    `desired` sets: a patch is sent only then. Empty values in `desired` match missing ones."""
    if isinstance(desired, Mapping):
        if not isinstance(current, Mapping):
            return bool(desired) or current is not None
        return any(differs(value, current.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(current, list):
            return bool(desired) or current is not None
        return len(desired) != len(current) or any(differs(d, c) for d, c in zip(desired, current, strict=True))
    return bool(desired != current)

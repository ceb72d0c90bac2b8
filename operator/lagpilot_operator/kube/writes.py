"""What changed enough to write (pure): status patches, the templated Deployment, and Events.

The reconcile computes the full status every poll; most polls change nothing a person or a
controller reads, and a write to the API server per group per poll does not scale to thousands of
groups. The rules (docs/operator.md, "Writes"):

* Immediately, when it changes: every status field except the coarse ones below — observedGeneration,
  desired/current replicas, pool size, partitions, lastScaleTime, deadLetter, redrive, conditions
  (type, status, reason, observedGeneration, and message wording), lastDecision's wording, a lag-read
  failure run starting or ending (and its first 10 reads, then powers of two), and the policy's
  memory (except what a restart restores conservatively, below).
* Coarse: totalLag, topPartitions (its lags, not its order), time lags and rates are written when one
  moves by at least `RELATIVE_CHANGE` and an absolute floor (from zero too; for time lags at least two
  poll intervals, `time_lag_floor`), totalLag also when it reaches
  zero, and with any other write; time lags (topPartitions' too) and rates are also paced: such a move
  is written once `PACED_SECONDS` (LAGPILOT_STATUS_PACED_SECONDS, default 30) have passed since the
  last write. Numbers inside lastDecision and condition messages, why a hold holds
  (`decision_wording`), consecutiveLagFailures and the memory's timestamp refreshes ride along.
* At least every `refresh_seconds` (LAGPILOT_STATUS_REFRESH_SECONDS, default 300) the whole status
  is written, so nothing shown is older than that.

The policy's memory is what a restarted operator resumes from. A refresh-only change (its `lastTime`,
recommendations of sizes already written, every size up to the fewest slots the bounds allow counting as
one, the rate floor decaying on schedule, step changes expiring) is skipped; `resume_memory` moves the first
two forward on a restart, to the latest time the dead operator can have polled without writing (each size
written taken as recommended then), which holds every window at least as long as the live memory would have
(never an earlier scale); the floor decays from the time it was written to now exactly as the live one did.
(A group that keeps up with sparse traffic recommends its capacity with a record waiting and nothing with
none, poll after poll: each flip was a write.)
Everything else in the memory (the changes, cooldown and grace times, saturation, idleness, the deficit clock,
the rates, the last lag and member count) is written on the poll it changes, except the last lag moving down
or up by at most `LAST_LAG_BAND` above the one written, which a restart resumes at that band's top. The lag
trend (minute buckets of the smallest lag, for the steady deficit) is not a reason to write: a restarted
operator starts it again (`resume_memory`), as the policy itself does at every capacity or membership change,
so a deficit must show again over two consume-rate windows before it counts — a restart can delay that
measurement, never advance it. The busy span (polls at one shape with work waiting, which measure the slots
before a consume-rate window) is not one either, and starts again on a restart for the same reason.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from lagpilot_operator.core.decision_steps import FLOOR_HALF_LIFE_SECONDS
from lagpilot_operator.core.policy import PolicyMemory

REFRESH_SECONDS = float(os.environ.get("LAGPILOT_STATUS_REFRESH_SECONDS", "300"))
RELATIVE_CHANGE = 0.10
"""A coarse number is written when it moves by at least this fraction of its last written value..."""
ABSOLUTE_FLOORS = {"totalLag": 100.0, "maxTimeLagSeconds": 5.0, "meanTimeLagSeconds": 5.0,
                   "produceRatePerSecond": 1.0, "consumeRatePerSecond": 1.0}
"""...and by at least this much (lag 0 -> 3 is not news)."""
TIME_LAG_FIELDS = frozenset({"maxTimeLagSeconds", "meanTimeLagSeconds"})
RATE_FIELDS = frozenset({"produceRatePerSecond", "consumeRatePerSecond"})
PACED_FIELDS = TIME_LAG_FIELDS | RATE_FIELDS
"""Coarse numbers that are also paced: a move is written only once `PACED_SECONDS` have passed since the
last write. The time lag of a backlog nobody consumes grows by the interval every poll, past every
threshold until it is ten intervals old: at 1,000 stalled groups that was 200 writes/s of a number the
clock predicts (the fleet bench's bursts)."""
PACED_SECONDS = float(os.environ.get("LAGPILOT_STATUS_PACED_SECONDS", "30"))
LAST_LAG_BAND = 100
"""The memory's last lag moving down, or up by at most LAST_LAG_BAND above the one written, is not written on its
own (a group keeping up with sparse traffic reads 0, 10, 0 records: 2,000 writes a minute at the fleet bench's
1,000 groups; a stalled fleet's lag going 30 -> 120 in a burst, 623 writes); a restarted operator resumes from
the top of that band (`resume_memory`)."""
FAILURES_EACH = 10
TEXT_FIELDS = ("lastDecision",)
_NUMBER = re.compile(r"\d[\d,.]*")


def wording(text: str) -> str:
    """A message with its numbers masked: what it says, not how much."""
    return _NUMBER.sub("#", text)


def decision_wording(text: str) -> str:
    """What a decision's text says, for the write rules: a change, all of its wording; a hold, only what it
    holds ("hold # replicas, pool #"). Why it holds follows the branch the policy took, and on a topic with
    sparse traffic that alternates poll by poll ("no backlog and no production" / "backlog # msgs + # msg/s")
    with nothing changed; it rides along with the next write (the fleet bench's 200 groups that keep up wrote
    on a fifth of their polls for it)."""
    said = wording(text)
    return said.split(":", 1)[0] if said.startswith("hold ") else said


def _moved(old: Any, new: Any, floor: float, *, reaching_zero: bool = False) -> bool:
    """Moved by the floor and by RELATIVE_CHANGE of the last value; with `reaching_zero` (the lag: the group caught
    up), any move to zero too. Leaving zero is no exception: a group that keeps up with sparse traffic reads 0, 3,
    0, 1 records, and time lags and rates to match, which is no news; a backlog of the floor is."""
    if not isinstance(old, int | float) or not isinstance(new, int | float):
        return bool(old != new)
    if reaching_zero and new == 0 and old != 0:
        return True
    delta = abs(float(new) - float(old))
    return delta >= floor and delta >= RELATIVE_CHANGE * abs(float(old))


def time_lag_floor(poll_interval: float) -> float:
    """The smallest move of a time lag worth writing: `ABSOLUTE_FLOORS`' 5 s, or two poll intervals. A time lag
    is read from offsets sampled once a poll, so it is known to about an interval: a group that keeps up
    with sparse traffic and commits once a poll reads 0, then about one interval, then 0 (at the fleet bench's
    5 s, half of its steady status writes were that, and the lag reaching zero after it)."""
    return max(ABSOLUTE_FLOORS["maxTimeLagSeconds"], 2.0 * poll_interval)


def _top_change(old: Any, new: Any, time_lag_move: float) -> Literal["now", "paced"] | None:
    """topPartitions: "now" for a partition entering or leaving it, a verdict change, or a lag that moved;
    "paced" for a time lag that moved by `time_lag_move` (`PACED_FIELDS`); None for neither. The order follows
    the lags, so partitions of about the same lag trading places is not news by itself (with a few partitions,
    every new record reordered them: a write on most polls)."""
    before, after = _top_entries(old), _top_entries(new)
    if before is None or after is None:
        return "now" if old != new else None
    if before.keys() != after.keys():
        return "now"
    found: Literal["paced"] | None = None
    for key, b in after.items():
        a = before[key]
        if a.get("verdict") != b.get("verdict") or _moved(a.get("lag"), b.get("lag"), ABSOLUTE_FLOORS["totalLag"]):
            return "now"
        if _moved(a.get("timeLagSeconds"), b.get("timeLagSeconds"), time_lag_move):
            found = "paced"
    return found


def _top_entries(value: Any) -> dict[tuple[Any, Any], Mapping[str, Any]] | None:
    """topPartitions by (topic, partition); None when it is not a list of distinct partitions."""
    if not isinstance(value, list) or not all(isinstance(entry, Mapping) for entry in value):
        return None
    entries = {(entry.get("topic"), entry.get("partition")): entry for entry in value}
    return entries if len(entries) == len(value) else None


def _failures_news(old: Any, new: Any) -> bool:
    """A lag-read failure run starting or ending, each of its first `FAILURES_EACH` reads (where the
    fallback thresholds usually are), then at each power of two: 16, 32, 64..."""
    if not isinstance(old, int) or not isinstance(new, int):
        return bool(old != new)
    return old == 0 or new == 0 or new <= FAILURES_EACH or (new & (new - 1)) == 0


def _conditions_key(conditions: Any) -> Any:
    if not isinstance(conditions, list):
        return conditions
    return [(c.get("type"), c.get("status"), c.get("reason"), decision_wording(str(c.get("message", ""))),
             c.get("observedGeneration"), c.get("lastTransitionTime")) if isinstance(c, dict) else c
            for c in conditions]


def memory_refresh_only(persisted: PolicyMemory, new: PolicyMemory, floor_slots: int = 0) -> bool:
    """`new` differs from `persisted` only by timestamp refreshes that `resume_memory` restores safely.
    `floor_slots`: the fewest slots the bounds allow (replicas.min x pool.min); every recommendation up to it
    makes the same shape, so sizes up to it count as one (a quiet fleet waking, lag 0 -> 30, recommends 1
    slot where it recommended 0: a write per group, 836 of them in one of the fleet bench's bursts)."""
    if persisted.last_time is None or new.last_time is None or new.last_time < persisted.last_time:
        return False
    old_recs, new_recs = persisted.recommendations, new.recommendations
    if not {max(slots, floor_slots) for _, slots in new_recs} <= {max(slots, floor_slots) for _, slots in old_recs}:
        return False  # a recommendation of another size: the windows' bounds may move
    if not _floor_refresh(persisted, new):
        return False
    last_lag = persisted.last_lag if _within_lag_band(persisted.last_lag, new.last_lag) else new.last_lag
    # Step changes only leave the memory once older than every step period, and the step limits count only
    # the changes within their period: one gone is no news (the last one of a scale-down, 30 s after it).
    changes = persisted.changes if _expired_only(persisted.changes, new.changes) else new.changes
    return replace(new, last_time=persisted.last_time, recommendations=old_recs, trend=persisted.trend,
                   busy_span=persisted.busy_span, slot_rate_floor=persisted.slot_rate_floor,
                   floor_time=persisted.floor_time, last_lag=last_lag, changes=changes) == persisted


def _expired_only(persisted: tuple[tuple[float, int, int], ...], new: tuple[tuple[float, int, int], ...]) -> bool:
    """`new` is `persisted` less its oldest entries (the policy drops the expired ones, oldest first)."""
    return len(new) <= len(persisted) and persisted[len(persisted) - len(new):] == new


def _within_lag_band(written: int | None, last_lag: int | None) -> bool:
    """`last_lag` is at most the top of the band above the `written` one (`_lag_band_top`)."""
    return written is not None and last_lag is not None and last_lag <= _lag_band_top(written)


def _lag_band_top(written: int) -> int:
    return written + LAST_LAG_BAND


def _floor_refresh(persisted: PolicyMemory, new: PolicyMemory) -> bool:
    if persisted.slot_rate_floor is None or new.slot_rate_floor is None:
        return (persisted.slot_rate_floor, persisted.floor_time) == (new.slot_rate_floor, new.floor_time)
    if persisted.floor_time is None or new.floor_time is None:
        return False
    decayed = persisted.slot_rate_floor * 0.5 ** (max(0.0, new.floor_time - persisted.floor_time)
                                                 / FLOOR_HALF_LIFE_SECONDS)
    return math.isclose(decayed, new.slot_rate_floor, rel_tol=1e-9, abs_tol=1e-12)


def resume_memory(persisted: PolicyMemory, now: float, refresh_seconds: float = REFRESH_SECONDS) -> PolicyMemory:
    """The memory a restarted operator decides from: `persisted` with its refreshable timestamps moved
    to the latest poll the previous operator can have made without writing (before its next refresh).

    Every skipped write was a refresh of the newest recommendation (same value, later time); moving it
    later keeps that value in the stabilization windows at least as long as the live memory did.
    """
    if persisted.last_time is None:
        return persisted
    latest = min(now, persisted.last_time + refresh_seconds)
    if latest <= persisted.last_time:
        return persisted
    # Every size written may have been recommended again until `latest` (`memory_refresh_only` skips those
    # writes): each one is taken as recommended then, which holds the scale-down window's largest at least as
    # high, and the scale-up window's smallest at least as low, as the live memory's.
    sizes = dict.fromkeys(slots for _, slots in persisted.recommendations)
    recs = tuple((latest, slots) for slots in sizes)
    # The rate floor stays as written: the policy decays it from its floorTime to now, which is what the
    # live memory's skipped refreshes held (`memory_refresh_only` checks exactly that). The lag trend
    # starts again, as the policy starts it at every capacity or membership change, and so does the busy
    # span: nothing says work was waiting while no operator polled, and a span read across that time could
    # take idle slots for slow ones.
    # The live last lag may be anywhere up to the top of the band above the written one (`memory_refresh_only`):
    # the top reads "not grown" wherever the live one can have read either, and "grown" only where the live one
    # did too (above it). Growth, the one thing the policy reads from it, is then read on the first poll after
    # the restart later or on the same poll, never earlier; that poll's lag is the last lag from then on.
    last_lag = None if persisted.last_lag is None else _lag_band_top(persisted.last_lag)
    return replace(persisted, recommendations=recs, last_time=latest, trend=(), busy_span=None, last_lag=last_lag)


def stored_status(watched: Mapping[str, Any], written: Mapping[str, Any] | None) -> dict[str, Any]:
    """The status as the API server holds it, for the next reconcile to start from: the resource's copy
    from the watch (kopf's body), with this process's last successful write over it.

    The watch delivers our own write a moment later, and under load more than a poll later: started from
    the watched copy alone, a reconcile took the pool it had just published for the one before it and
    published the same change again (a second "pool 1→2" Event in a test run). Only the operator writes
    the status, and the shard's holder alone while it holds the shard (its state is dropped with the
    term), so its last write is never older than what it watches. Written fields replace the watched
    ones whole: each write is the whole status, or the conditions alone after an unexpected error."""
    return {**watched, **(written or {})}


def status_write_reason(written: Mapping[str, Any] | None, written_at: float | None, new: Mapping[str, Any],
                        now: float, refresh_seconds: float = REFRESH_SECONDS,
                        paced_seconds: float = PACED_SECONDS, poll_interval: float = 0.0,
                        floor_slots: int = 0) -> str | None:
    """Why `new` must be written given the status last written at `written_at` (None: skip this poll).
    `poll_interval`: the resource's; a time lag is read at that resolution (`time_lag_floor`). `floor_slots`:
    the fewest slots its bounds allow (`memory_refresh_only`)."""
    if written is None or written_at is None:
        return "first"
    if now - written_at >= refresh_seconds:
        return "refresh"
    paced: str | None = None
    """The first paced field that moved: written once `paced_seconds` have passed, unless news comes first."""
    time_lag_move = time_lag_floor(poll_interval)
    for key in sorted(set(written) | set(new)):
        old, value = written.get(key), new.get(key)
        if old == value:
            continue
        if key in ABSOLUTE_FLOORS:
            floor = time_lag_move if key in TIME_LAG_FIELDS else ABSOLUTE_FLOORS[key]
            if _moved(old, value, floor, reaching_zero=key == "totalLag"):
                # A rate shown (known from the second read on) or gone is news; only its moves are paced.
                if key not in PACED_FIELDS or (key in RATE_FIELDS and (old is None or value is None)):
                    return key
                paced = paced or key
        elif key == "topPartitions":
            change = _top_change(old, value, time_lag_move)
            if change == "now":
                return key
            if change == "paced":
                paced = paced or key
        elif key in TEXT_FIELDS:
            if not isinstance(old, str) or not isinstance(value, str) or \
                    decision_wording(old) != decision_wording(value):
                return key
        elif key == "conditions":
            if _conditions_key(old) != _conditions_key(value):
                return key
        elif key == "consecutiveLagFailures":
            if _failures_news(old, value):
                return key
        elif key == "policyMemory":
            if not isinstance(old, Mapping) or not isinstance(value, Mapping) or not memory_refresh_only(
                    PolicyMemory.from_dict(old), PolicyMemory.from_dict(value), floor_slots):
                return key
        else:
            return key
    return paced if paced is not None and now - written_at >= paced_seconds else None


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

"""Early polls: when a probe between two polls shows a group's lag risen past noise, it decides then. Pure.

A resource decides once per poll interval, right after its cluster's paced read. A burst that lands just
after that read waits the whole interval for the next one, then the read itself and the decisions: more
than one interval from the burst to the decision. So each cluster's log ends are also probed between two
paced reads (`kafka.cluster_observer`), and a resource whose lag a probe shows risen past what noise
explains polls at once, on a read of its group, instead of waiting for its turn; the others wait, so a
steady fleet pays the probes, not extra decisions. A probe's lag overstates the real one (fresh log ends,
the committed offsets last read), never understates it, so a bar it does not pass is not passed.

The noise of a group that keeps up is its commits: committed offsets move in steps, one commit interval's
arrivals at a time (`decision_steps.commit_step_seconds`, which the time-lag floor uses too), so its
lag moves within about `produce rate x commit interval` of where it was between polls. On top of that the
rise must be one record per partition, so a slow group's lone record is no reason to decide early.

A group whose lag keeps growing past that bar (it falls behind) is brought forward once between two
paced reads (`cluster_observer` wakes a resource once until its next paced read): it decides twice per
interval while its lag climbs, not at every probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lagpilot_operator.core.decision_steps import commit_step_seconds
from lagpilot_operator.core.observations import LagSample, OffsetResetPolicy, total_lag


@dataclass(frozen=True)
class EarlyPoll:
    """When a read between polls brings a resource's poll forward: its lag above `above`, counted as its
    decisions count it (`offset_reset_policy`)."""

    above: int
    offset_reset_policy: OffsetResetPolicy = "latest"

    def wakes(self, sample: LagSample) -> bool:
        return total_lag(sample, self.offset_reset_policy) > self.above


def early_poll_after(decided_lag: int, partitions: int, produce_rate: float | None,
                     declared_commit_interval: float | None = None,
                     offset_reset_policy: OffsetResetPolicy = "latest") -> EarlyPoll:
    """The early-poll bar after a decision that read `decided_lag` over `partitions` partitions: that lag,
    plus one commit step's arrivals at `produce_rate` (msg/s; None before the history has one), plus one
    record per partition. `declared_commit_interval`: the workers' own (None: the Lagpilot worker's)."""
    noise = math.ceil(max(produce_rate or 0.0, 0.0) * commit_step_seconds(declared_commit_interval))
    return EarlyPoll(above=decided_lag + noise + max(partitions, 1), offset_reset_policy=offset_reset_policy)

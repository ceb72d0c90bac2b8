"""Early polls: when a probe between two polls shows records arrived beyond the pace, the group decides then. Pure.

A resource decides once per poll interval, right after its cluster's paced read. A burst that lands just
after that read waits the whole interval for the next one, then the read itself and the decisions: more
than one interval from the burst to the decision. So each cluster's log ends are also probed between two
paced reads (`kafka.cluster_observer`), and a resource whose lag a probe shows risen past its bar polls at
once, on a read of its group, instead of waiting for its turn; the others wait, so a steady fleet pays the
probes, not extra decisions.

A probe's lag is its log ends minus the committed offsets of the read the decision was made on: it grows
with every record produced since that read, consumed or not. So the bar is:
* the lag decided on;
* plus the arrivals at the produce rate since that read: a group that keeps up, or falls behind at the
  pace it was falling behind at, is no news (its next paced read shows how it goes);
* plus one commit step's arrivals (`decision_steps.commit_step_seconds`, which the time-lag floor uses
  too): producers are uneven, and the rate is measured from commits that move one step at a time;
* plus one record per partition, so a slow group's lone record is no reason to decide early.
What passes it is records arrived beyond the pace: a burst. A consumer that slows or stops while the
producers keep their pace shows at the paced read, as without probes.

`cluster_observer` brings a resource forward at most twice between two paced reads: a burst that a
probe caught half-produced gets a second early poll for the rest, and a group whose producers keep
bursting decides at most three times per interval, not at every probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lagpilot_operator.core.decision_steps import commit_step_seconds
from lagpilot_operator.core.observations import LagSample, OffsetResetPolicy, total_lag


@dataclass(frozen=True)
class EarlyPoll:
    """When a probe between polls brings a resource's poll forward: its lag, counted as its decisions count
    it (`offset_reset_policy`), above `above` plus the arrivals expected at `arrivals_per_second` since
    `since` (epoch seconds: the read the decision was made on).

    The expected arrivals are there because a probe's lag is the probe's log ends minus the committed
    offsets of the last read: it grows with every record produced since that read, consumed or not. A
    group that keeps up, or falls behind at the pace it was falling behind at, is no news; records beyond
    the pace are.
    """

    above: int
    offset_reset_policy: OffsetResetPolicy = "latest"
    arrivals_per_second: float = 0.0
    since: float = 0.0

    def wakes(self, sample: LagSample) -> bool:
        expected = math.ceil(self.arrivals_per_second * max(0.0, sample.time - self.since))
        return total_lag(sample, self.offset_reset_policy) > self.above + expected


def early_poll_after(decided_lag: int, partitions: int, produce_rate: float | None,
                     declared_commit_interval: float | None = None,
                     offset_reset_policy: OffsetResetPolicy = "latest", decided_at: float = 0.0) -> EarlyPoll:
    """The early-poll bar after a decision that read `decided_lag` over `partitions` partitions in a read made
    at `decided_at` (epoch seconds): that lag, plus one commit step's arrivals at `produce_rate` (msg/s; None
    before the history has one), plus one record per partition, plus the arrivals at `produce_rate` since
    `decided_at`. `declared_commit_interval`: the workers' own (None: the Lagpilot worker's)."""
    rate = max(produce_rate or 0.0, 0.0)
    noise = math.ceil(rate * commit_step_seconds(declared_commit_interval))
    return EarlyPoll(above=decided_lag + noise + max(partitions, 1), offset_reset_policy=offset_reset_policy,
                     arrivals_per_second=rate, since=decided_at)

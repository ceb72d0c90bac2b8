"""How long this member spends in each rebalance it takes part in, and why (pure; the clock is passed in).

A consumer sees a rebalance only through its callbacks, so the measured span is this member's:
- `join`: from subscribing (start-up) to its first assignment: how long a new Pod waits for work;
- `revoke`: from the revocation of some of its partitions to the assignment that ends that
  rebalance (with the cooperative and the consumer protocol the kept partitions keep flowing
  meanwhile; the revoked ones are unowned until the new owner gets them, which is about this span);
- `lost`: from the loss of its partitions (session timeout, fenced) to its next assignment.
An assignment that merely adds partitions, with nothing taken away first, has no observable start
and is counted only by the partitions it brings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RebalanceReason(StrEnum):
    JOIN = "join"
    REVOKE = "revoke"
    LOST = "lost"


@dataclass(frozen=True)
class RebalanceSpan:
    reason: RebalanceReason
    seconds: float


class RebalanceClock:
    def __init__(self) -> None:
        self._started: tuple[RebalanceReason, float] | None = None

    @property
    def in_rebalance(self) -> RebalanceReason | None:
        return self._started[0] if self._started is not None else None

    def subscribed(self, now: float) -> None:
        self._started = (RebalanceReason.JOIN, now)

    def revoked(self, now: float) -> None:
        # A second revocation before the assignment belongs to the same rebalance (the classic
        # protocol may revoke again when the group rebalances twice): keep the first start.
        if self._started is None:
            self._started = (RebalanceReason.REVOKE, now)

    def lost(self, now: float) -> None:
        # Losing everything says more than a pending join or revoke: it is why the next assignment
        # came, so it names the span; the span still starts at the earliest moment work stopped.
        start = self._started[1] if self._started is not None else now
        self._started = (RebalanceReason.LOST, start)

    def assigned(self, now: float) -> RebalanceSpan | None:
        """The assignment that ends the pending span, if any: its reason and length."""
        if self._started is None:
            return None
        reason, start = self._started
        self._started = None
        return RebalanceSpan(reason, max(0.0, now - start))

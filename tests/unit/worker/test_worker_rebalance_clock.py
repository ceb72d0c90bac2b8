"""The pure rebalance clock: which span an assignment ends, and how long it was."""

from __future__ import annotations

from lagpilot_worker.rebalance_clock import RebalanceClock, RebalanceReason, RebalanceSpan


def test_the_first_assignment_ends_the_join_span() -> None:
    clock = RebalanceClock()
    clock.subscribed(10.0)
    assert clock.in_rebalance is RebalanceReason.JOIN
    assert clock.assigned(13.5) == RebalanceSpan(RebalanceReason.JOIN, 3.5)
    assert clock.in_rebalance is None


def test_an_assignment_that_only_adds_partitions_has_no_span() -> None:
    clock = RebalanceClock()
    clock.subscribed(0.0)
    clock.assigned(1.0)
    assert clock.assigned(50.0) is None


def test_a_revocation_starts_a_span_that_a_second_revocation_does_not_restart() -> None:
    clock = RebalanceClock()
    clock.revoked(20.0)
    clock.revoked(21.0)
    assert clock.assigned(20.75 + 1.0) == RebalanceSpan(RebalanceReason.REVOKE, 1.75)


def test_a_loss_names_the_span_but_keeps_its_earliest_start() -> None:
    clock = RebalanceClock()
    clock.revoked(5.0)
    clock.lost(7.0)
    assert clock.assigned(9.0) == RebalanceSpan(RebalanceReason.LOST, 4.0)
    clock.lost(30.0)
    assert clock.assigned(30.5) == RebalanceSpan(RebalanceReason.LOST, 0.5)


def test_a_span_is_never_negative_when_the_clock_is_not_monotonic() -> None:
    clock = RebalanceClock()
    clock.revoked(10.0)
    assert clock.assigned(9.0) == RebalanceSpan(RebalanceReason.REVOKE, 0.0)

"""The early-poll bar (core/early_poll): pure."""

from __future__ import annotations

from lagpilot_operator.core.early_poll import early_poll_after
from lagpilot_operator.core.observations import LagSample, PartitionOffsets


def test_the_early_poll_bar_is_the_decided_lag_plus_a_commit_steps_arrivals_and_a_record_per_partition() -> None:
    # Lagpilot workers commit every second: 50 msg/s arrive in a commit step.
    assert early_poll_after(1_000, 10, 50.0).above == 1_000 + 50 + 10
    # Workers declaring 5 s commits: five times the arrivals; a shorter declared interval does not lower it.
    assert early_poll_after(1_000, 10, 50.0, declared_commit_interval=5.0).above == 1_000 + 250 + 10
    assert early_poll_after(1_000, 10, 50.0, declared_commit_interval=0.1).above == 1_000 + 50 + 10
    # No produce rate yet (a young history): a record per partition; a group with no partitions read: one.
    assert early_poll_after(0, 4, None).above == 4 and early_poll_after(0, 0, 0.0).above == 1
    bar = early_poll_after(0, 2, None, offset_reset_policy="earliest")
    never_committed = LagSample(time=0.0, partitions=(PartitionOffsets("t", 0, 5, None, 0),))
    assert bar.wakes(never_committed)  # under earliest, 5 records to read: above 2
    assert not early_poll_after(0, 2, None).wakes(never_committed)  # under latest, nothing to read yet


def test_the_bar_grows_with_the_arrivals_expected_since_the_read_decided_on() -> None:
    bar = early_poll_after(1_000, 10, 50.0, decided_at=100.0)
    assert (bar.arrivals_per_second, bar.since) == (50.0, 100.0)

    def lag(total: int, at: float) -> LagSample:
        return LagSample(time=at, partitions=(PartitionOffsets("t", 0, total, 0, 0),))

    # 2 s after the read: 100 arrivals are the pace; the bar is 1,000 + 50 + 10 + 100.
    assert not bar.wakes(lag(1_160, 102.0)) and bar.wakes(lag(1_161, 102.0))
    # A sample older than the read (clock skew between the reader's threads) expects no arrivals.
    assert bar.wakes(lag(1_061, 99.0))
    # No produce rate: nothing expected, however long since.
    assert early_poll_after(0, 2, None, decided_at=0.0).wakes(lag(3, 1_000.0))

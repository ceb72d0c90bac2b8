"""When the operator looks at the DLQ and retry topics again (pure rule, no Kafka)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_operator.dead_letter import dead_letter_check_due

INTERVAL = 30.0


@pytest.mark.parametrize(("since_check", "reported", "last_failed", "due"), [
    (0.0, False, False, True),      # nothing in the status yet
    (5.0, True, False, False),      # a good look 5 s ago: wait for the interval
    (29.9, True, False, False),
    (30.0, True, False, True),
    (5.0, True, True, True),        # the last look failed (timeout, ACL): look again now
])
def test_check_due(since_check: float, reported: bool, last_failed: bool, due: bool) -> None:
    checked_at = 1_000.0
    assert dead_letter_check_due(checked_at + since_check, checked_at, INTERVAL, reported=reported,
                                 last_failed=last_failed) is due


@given(since_check=st.floats(min_value=0, max_value=1e6), reported=st.booleans(), last_failed=st.booleans())
def test_a_good_report_is_kept_for_less_than_one_interval_only(since_check: float, reported: bool,
                                                              last_failed: bool) -> None:
    due = dead_letter_check_due(since_check, 0.0, INTERVAL, reported=reported, last_failed=last_failed)
    assert due or (reported and not last_failed and since_check < INTERVAL)

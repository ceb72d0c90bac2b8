"""When the operator looks at the DLQ and retry topics again (pure rule, no Kafka)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_operator.kafka.dead_letter import next_dead_letter_check

INTERVAL = 30.0


@pytest.mark.parametrize(("since_look", "kafka_failed", "due"), [
    (5.0, False, False),      # a good look 5 s ago: wait for the interval
    (29.9, False, False),
    (30.0, False, True),
    (5.0, True, True),        # the last look failed (timeout, ACL): look again now
])
def test_check_due(since_look: float, kafka_failed: bool, due: bool) -> None:
    looked_at = 1_000.0
    due_at = next_dead_letter_check(looked_at, INTERVAL, kafka_failed=kafka_failed)
    assert (looked_at + since_look >= due_at) is due


@given(looked_at=st.floats(min_value=0, max_value=1e6), since_look=st.floats(min_value=0, max_value=1e6),
       kafka_failed=st.booleans())
def test_a_good_report_is_kept_for_less_than_one_interval_only(looked_at: float, since_look: float,
                                                              kafka_failed: bool) -> None:
    due = looked_at + since_look >= next_dead_letter_check(looked_at, INTERVAL, kafka_failed=kafka_failed)
    assert due or (not kafka_failed and since_look < INTERVAL)

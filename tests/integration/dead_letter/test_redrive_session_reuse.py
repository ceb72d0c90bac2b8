"""A redrive that moves one batch per poll keeps one transactional producer (one init_transactions)
for all its steps, on the real broker, and closes it when the redrive is done."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from dead_letter_support import produce_dead_letters

from lagpilot_contract.naming import dead_letter_topic
from lagpilot_operator.kafka.dead_letter import reconcile_dead_letter
from lagpilot_operator.kafka.kafka_lag import AdminClientPool
from lagpilot_operator.kafka.redrive import RedriveSessions, run_redrive_step
from support import read_all

pytestmark = pytest.mark.integration


def test_one_session_serves_every_step_and_closes_when_done(admin_config: dict[str, str], kafka_bootstrap: str,
                                                            group_id: str, create_topic: Callable[..., str]) -> None:
    source = create_topic("src", partitions=2)
    # The DLQ look and the snapshot use the operator's shared admin client for this cluster.
    pool = AdminClientPool()
    admin = pool.get(admin_config, owner=("ns", "kcg"))
    outcome = reconcile_dead_letter(admin_config, group_id, [source], {"enabled": True}, time.time(), admin=admin)
    assert outcome.condition.status == "True", outcome.condition
    dlq = dead_letter_topic(group_id)
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(30), 2)

    sessions = RedriveSessions()
    status = run_redrive_step(admin_config, group_id, dlq, {"requestId": "r-1"}, None, max_batch=10,
                              sessions=sessions, admin=admin)
    assert status is not None and status.total == 30 and not sessions.is_open  # the snapshot needs no producer
    steps = 0
    while not status.finished:
        # Through the status dict each time, as the operator loop does.
        stepped = run_redrive_step(admin_config, group_id, dlq, {"requestId": "r-1"}, status.to_status(),
                                   max_batch=10, sessions=sessions, admin=admin)
        assert stepped is not None and stepped.error is None, stepped
        status, steps = stepped, steps + 1
        assert sessions.opened == 1  # one init_transactions for the whole redrive
    assert steps >= 3 and (status.state.value, status.done) == ("Done", 30)
    assert not sessions.is_open  # closed when done: no idle producer per resource
    assert sorted(int(r.value or b"-1") for r in read_all(kafka_bootstrap, source)) == list(range(30))
    assert len(pool) == 1

"""DLQ depth in status matches what was produced; growth is announced."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from confluent_kafka import Producer
from dead_letter_support import produce_dead_letters

from lagpilot_contract.naming import dead_letter_topic, retry_topic
from lagpilot_operator.kafka.dead_letter import DeadLetterMemory, reconcile_dead_letter

pytestmark = pytest.mark.integration

SPEC = {"enabled": True, "partitions": 3, "retryTiers": [{"delaySeconds": 10}]}


def parse_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def test_depth_in_status_matches_what_was_produced(admin_config: dict[str, str], kafka_bootstrap: str,
                                                   group_id: str) -> None:
    memory = DeadLetterMemory()
    first = reconcile_dead_letter(admin_config, group_id, [], SPEC, time.time(), memory=memory)
    assert first.status is not None
    dlq, retry = dead_letter_topic(group_id), retry_topic(group_id, 1)

    before = time.time()
    produce_dead_letters(kafka_bootstrap, dlq, "orders", group_id, range(37), partitions=3)
    retry_producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(5):
        retry_producer.produce(retry, value=str(i).encode(), partition=i % 3)
    assert retry_producer.flush(30) == 0
    after = time.time()

    second = reconcile_dead_letter(admin_config, group_id, [], SPEC, time.time(),
                                   previous_status=first.status, memory=memory)
    assert second.status is not None
    dlq_status, retry_status = second.status["topics"]
    assert (dlq_status["name"], dlq_status["messages"]) == (dlq, 37)
    assert (retry_status["name"], retry_status["messages"]) == (retry, 5)
    assert second.messages_by_topic == {dlq: 37, retry: 5}
    # Second precision in status: the records were written between `before` and `after`.
    oldest, newest = parse_time(dlq_status["oldestTime"]), parse_time(dlq_status["newestTime"])
    assert int(before) <= oldest <= newest <= after + 1
    assert [(e.type, e.reason, e.message) for e in second.events] == [
        ("Warning", "DeadLetterGrew", f"DLQ {dlq} grew by 37 messages (now 37)")]
    assert "holds 37 messages" in second.condition.message

    # More failures soon after: counted in status at once, announced at most once a minute.
    produce_dead_letters(kafka_bootstrap, dlq, "orders", group_id, range(37, 40), partitions=3)
    announced_at = time.time()
    third = reconcile_dead_letter(admin_config, group_id, [], SPEC, announced_at + 1,
                                  previous_status=second.status, memory=memory)
    assert third.status is not None
    assert third.status["topics"][0]["messages"] == 40
    assert third.status["topics"][0]["oldestTime"] == dlq_status["oldestTime"]
    assert third.events == ()
    produce_dead_letters(kafka_bootstrap, dlq, "orders", group_id, range(40, 42), partitions=3)
    fourth = reconcile_dead_letter(admin_config, group_id, [], SPEC, announced_at + 61,
                                   previous_status=third.status, memory=memory)
    assert [e.message for e in fourth.events] == [f"DLQ {dlq} grew by 5 messages (now 42)"]

    quiet = reconcile_dead_letter(admin_config, group_id, [], SPEC, announced_at + 200,
                                  previous_status=fourth.status, memory=memory)
    assert quiet.events == ()
    # Without memory, growth is measured against the status passed in, on every call.
    stateless = reconcile_dead_letter(admin_config, group_id, [], SPEC, time.time(),
                                      previous_status=second.status)
    assert [e.message for e in stateless.events] == [f"DLQ {dlq} grew by 5 messages (now 42)"]

"""Redrive through the operator: `spec.redrive` on a live KafkaConsumerGroup puts the dead-lettered
records back on their source topic exactly once, and status.redrive shows the progress. Real
operator (kopf), kube-apiserver and Kafka; the DLQ created by the operator itself."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient
from operator_testkit import (
    FAST,
    OperatorProcess,
    apply_kcg,
    create_deployment,
    patch_spec,
    poll_time,
    produce_dead_letters,
    status_of,
)

from lagpilot_contract.naming import dead_letter_topic
from support import read_all, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 3
RECORDS = 1_200  # more than one step moves (500 per transaction), so progress is visible in between


@pytest.fixture
def group(unique_name: Any, kafka_bootstrap: str) -> Iterator[str]:
    """A group id; the topics the operator creates for it (`<group>.dlq`) are deleted afterwards."""
    name = unique_name("op-redrive")
    yield name
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    leftovers = [t for t in admin.list_topics(timeout=10).topics if t.startswith(name)]
    for future in (admin.delete_topics(leftovers, operation_timeout=30) if leftovers else {}).values():
        future.result(timeout=60)


@pytest.mark.slow
def test_spec_redrive_moves_every_dead_letter_back_once(stack: Any, namespace: str, operator: OperatorProcess,
                                                        create_topic: Any, group: str) -> None:
    source = create_topic("op-redrive-src", partitions=PARTITIONS)
    dlq = dead_letter_topic(group)
    create_deployment(stack, namespace, "worker", 1)
    apply_kcg(stack, namespace, "orders", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [source],
        "scaleTargetRef": {"name": "worker"}, **FAST, "deadLetter": {"enabled": True}})
    wait_for(lambda: any(t["name"] == dlq and t["exists"]
                         for t in (status_of(stack, namespace, "orders").get("deadLetter") or {}).get("topics", [])),
             60, "the operator to create the DLQ")
    produce_dead_letters(stack.kafka_bootstrap, dlq, source, group, range(RECORDS), PARTITIONS)

    patch_spec(stack, namespace, "orders", {"redrive": {"requestId": "r-1"}})
    seen: list[tuple[str, int]] = []

    def done() -> dict[str, Any] | None:
        redrive = status_of(stack, namespace, "orders").get("redrive") or {}
        if redrive.get("requestId") != "r-1":
            return None
        assert redrive["state"] in ("Pending", "Running", "Done"), redrive
        assert redrive["total"] == RECORDS, redrive
        if not seen or seen[-1] != (redrive["state"], redrive["done"]):
            seen.append((redrive["state"], redrive["done"]))
        return redrive if redrive["state"] == "Done" else None

    final = wait_for(done, 120, "the redrive to finish")
    assert final["done"] == RECORDS and final["skipped"] == 0
    assert final["message"] == f"redrove {RECORDS} of {RECORDS} records from {dlq}"
    assert sum(b["endOffset"] - b["startOffset"] for b in final["snapshot"]) == RECORDS
    moved = [done for _, done in seen]
    assert moved == sorted(moved), f"progress went backwards: {seen}"
    assert any(state == "Running" and 0 < done < RECORDS for state, done in seen), \
        f"status never showed a redrive in progress: {seen}"

    def exactly_once() -> None:
        records = read_all(stack.kafka_bootstrap, source)
        counts = Counter(int(r.value or b"") for r in records)
        assert sorted(counts) == list(range(RECORDS)) and set(counts.values()) == {1}, \
            f"missing {RECORDS - len(counts)}, duplicated {[i for i, n in counts.items() if n > 1][:10]}"
        for record in records:
            i = int(record.value or b"")
            assert record.partition == i % PARTITIONS and record.key == f"k{i}".encode()
            assert record.headers == [("trace-id", f"t-{i}".encode())]  # the lagpilot.* headers stay behind

    exactly_once()
    # The same request is not run again on later polls.
    last = poll_time(status_of(stack, namespace, "orders"))
    wait_for(lambda: poll_time(status_of(stack, namespace, "orders")) > last + 4, 30, "two more polls")
    assert (status_of(stack, namespace, "orders").get("redrive") or {}).get("state") == "Done"
    exactly_once()

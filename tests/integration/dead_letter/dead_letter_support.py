"""Helpers for the dead-letter tests: write DLQ records the way the worker does, read topics back."""

from __future__ import annotations

import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from lagpilot_contract import headers as h


def dlq_headers(source_topic: str, partition: int, offset: int, group: str) -> list[tuple[str, bytes]]:
    """Headers as the worker writes them (lagpilot_contract.headers), plus one of the record's own."""
    values = {
        h.ORIGINAL_TOPIC: source_topic,
        h.ORIGINAL_PARTITION: str(partition),
        h.ORIGINAL_OFFSET: str(offset),
        h.ORIGINAL_TIMESTAMP: str(int(time.time() * 1000)),
        h.ORIGINAL_TIMESTAMP_TYPE: "CreateTime",
        h.CONSUMER_GROUP: group,
        h.EXCEPTION_CLASS: "mypkg.errors.Permanent",
        h.EXCEPTION_MESSAGE: "boom",
        h.ATTEMPTS: "1",
        h.WORKER_ID: "test:1",
        h.FAILURE_KIND: h.FAILURE_PERMANENT,
    }
    return [("trace-id", f"t-{offset}".encode()), *((k, v.encode()) for k, v in values.items())]


def produce_dead_letters(bootstrap: str, dlq: str, source_topic: str, group: str, ids: range,
                         partitions: int) -> None:
    """Record i: key k<i % 5>, value str(i), from source partition i % partitions, into the same
    DLQ partition (the worker keeps the partition when the DLQ has as many)."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": "true"})
    for i in ids:
        partition = i % partitions
        producer.produce(dlq, key=f"k{i % 5}".encode(), value=str(i).encode(), partition=partition,
                         headers=dlq_headers(source_topic, partition, i, group))
    assert producer.flush(30) == 0




def topic_level_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    """The topic's dynamic (topic-level) config overrides."""
    (future,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    entries = future.result(timeout=30)
    return {k: e.value for k, e in entries.items() if int(e.source) == 1}  # DYNAMIC_TOPIC_CONFIG


def partition_count(admin: AdminClient, topic: str) -> int | None:
    metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return None
    return len(metadata.partitions)

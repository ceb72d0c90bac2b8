"""Helpers for the dead-letter tests: write DLQ records the way the worker does, read topics back."""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
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


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


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


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed",
             timeout: float = 30) -> list[Record]:
    """Every readable record of `topic` (up to the end each partition has now), per partition in order."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dl-test-reader",
                         "enable.auto.commit": "false", "enable.partition.eof": "true",
                         "isolation.level": isolation, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Record] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            records.append(Record(message.partition(), message.offset(), message.key(), message.value(),
                                  list(message.headers() or [])))
    finally:
        consumer.close()
    return records


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

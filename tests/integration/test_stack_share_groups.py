"""The local broker runs share groups (KIP-932): consumers of one share group split a topic's records, a
released record comes back with a higher delivery count, and an accepted one is never delivered again."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from confluent_kafka import AcknowledgeType, Producer, ShareConsumer

from support import configure_share_group

RECORDS = 300
CONSUMERS = 3  # on a 2-partition topic: a consumer group would leave one idle


def test_three_share_consumers_split_a_two_partition_topic(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                         unique_name: Callable[[str], str]) -> None:
    topic = create_topic("share", partitions=2)
    # A share group starts at the end of the log unless its (broker-side) group config says otherwise.
    group = configure_share_group(kafka_bootstrap, unique_name("sg"))
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(RECORDS):
        producer.produce(topic, key=f"k{i % 11}".encode(), value=str(i).encode())
    assert producer.flush(30) == 0

    accepted: Counter[str] = Counter()
    by_consumer: Counter[int] = Counter()
    released: dict[str, int] = {}
    redelivered: dict[str, int] = {}
    lock = threading.Lock()
    done = threading.Event()
    errors: list[str] = []
    # The broker may hand the whole backlog to the first consumer that fetches (one run: all 300 to one).
    # That consumer gives its first batch back (RELEASE) and fetches no more until another consumer has
    # accepted a record: what it released can then only go to the others, once they are assigned.
    first: list[int] = []
    another_accepted = threading.Event()

    def consume(index: int) -> None:
        consumer = ShareConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                                  "share.acknowledgement.mode": "explicit"})
        consumer.subscribe([topic])
        try:
            while not done.is_set():
                batch = consumer.poll(0.5)
                with lock:
                    yields = bool(batch) and not first
                    if yields:
                        first.append(index)
                if yields:
                    for message in batch:
                        consumer.acknowledge(message, AcknowledgeType.RELEASE)
                    consumer.commit_sync()
                    another_accepted.wait(60)
                    continue
                for message in batch:
                    if message.error() is not None:
                        errors.append(str(message.error()))
                        continue
                    value = message.value().decode()
                    with lock:
                        if index != first[0]:
                            another_accepted.set()
                        if value == "7" and not released:  # once: back to the group, to be delivered again
                            released[value] = message.delivery_count()
                            consumer.acknowledge(message, AcknowledgeType.RELEASE)
                            continue
                        if value in released:
                            redelivered[value] = message.delivery_count()
                        accepted[value] += 1
                        by_consumer[index] += 1
                        if len(accepted) == RECORDS:
                            done.set()
                    consumer.acknowledge(message, AcknowledgeType.ACCEPT)
                consumer.commit_async()
        finally:
            consumer.close()

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(CONSUMERS)]
    for thread in threads:
        thread.start()
    done.wait(90)
    done.set()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(accepted) == RECORDS, f"{len(accepted)} of {RECORDS} records accepted"
    assert set(accepted.values()) == {1}, "a record accepted twice"
    # Released once more than the first consumer's batch gave back: delivered again with a count one higher.
    assert list(released) == ["7"] and redelivered == {"7": released["7"] + 1}, (released, redelivered)
    # Shared out: a consumer other than the first accepted records, what the share-group worker mode builds on.
    assert set(by_consumer) - set(first), (by_consumer, first)

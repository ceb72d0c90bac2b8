"""The operator's share-group lag read (share_lag, KIP-932) against a real Kafka 4.4 broker: after a share
consumer accepted some records of a 2-partition topic and released the rest, the lag read per partition is
exactly what is left."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from lagpilot_operator import share_lag
from lagpilot_operator.observations import LagSample, partition_lag
from support import WaitTimeout, configure_share_group, wait_for

PER_PARTITION = 50
ACCEPT = {0: 15, 1: 25}  # records accepted per partition; every other delivery is released


def lags(sample: LagSample) -> dict[int, int]:
    # "earliest" is the group's share.auto.offset.reset below: a partition without share state is all lag.
    return {p.partition: partition_lag(p, "earliest") for p in sample.partitions}


def test_share_lag_is_the_count_of_records_not_yet_acknowledged(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str]) -> None:
    topic = create_topic("share-lag", partitions=2)
    group = configure_share_group(kafka_bootstrap, unique_name("sg"))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    settings = {"bootstrap.servers": kafka_bootstrap}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            producer.produce(topic, value=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0

    # No member yet: no share state, the whole partition is lag (committed None, like a new consumer group).
    before = asyncio.run(share_lag.read_share_lag(admin, settings, group, [topic]))
    assert before.protocol == "share"
    assert [(p.partition, p.end_offset, p.committed) for p in before.partitions] == [
        (0, PER_PARTITION, None), (1, PER_PARTITION, None)]

    accepted: Counter[int] = Counter()
    consumer = ShareConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                              "share.acknowledgement.mode": "explicit"})
    consumer.subscribe([topic])

    def consume_some() -> bool:
        for message in consumer.poll(0.5):
            assert message.error() is None, message.error()
            if accepted[message.partition()] < ACCEPT[message.partition()]:
                accepted[message.partition()] += 1
                consumer.acknowledge(message, AcknowledgeType.ACCEPT)
            else:
                consumer.acknowledge(message, AcknowledgeType.RELEASE)
        consumer.commit_sync()  # the acknowledgements reach the broker before the next poll
        return accepted == Counter(ACCEPT)

    try:
        wait_for(consume_some, 60, f"{ACCEPT} records accepted per partition")
    finally:
        consumer.close()

    expected = {partition: PER_PARTITION - count for partition, count in ACCEPT.items()}
    # The share coordinator persists acknowledged state asynchronously: read until it reports what was
    # acknowledged (a wrong count would still fail here, with the last reading).
    readings: list[dict[int, int]] = []

    def settled() -> LagSample | None:
        sample = asyncio.run(share_lag.read_share_lag(admin, settings, group, [topic]))
        readings.append(lags(sample))
        return sample if readings[-1] == expected else None

    try:
        sample = wait_for(settled, 30, f"share lag {expected}")
    except WaitTimeout:
        assert readings[-1] == expected, f"share lag per partition, every reading: {readings}"
        raise
    # The broker's own per-partition lag (v1), not the overcounting SPSO fallback: both partitions have
    # share state, so neither is counted from the offsetResetPolicy.
    assert all(p.committed is not None for p in sample.partitions), sample
    assert [p.end_offset for p in sample.partitions] == [PER_PARTITION, PER_PARTITION]

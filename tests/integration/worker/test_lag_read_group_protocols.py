"""The operator reads a group's lag and membership whichever protocol its workers use: the classic one
(cooperative-sticky) and KIP-848's consumer protocol, whose groups the broker describes through its
own API (ConsumerGroupDescribe). Real broker, a real worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from worker_testkit import running_worker

from lagpilot_operator.kafka import kafka_lag
from lagpilot_worker.config import GroupProtocol, WorkerConfig
from lagpilot_worker.record import Record
from support import wait_for

pytestmark = pytest.mark.integration


def test_lag_and_members_of_a_group_of_either_protocol(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                       unique_name: Callable[[str], str],
                                                       group_protocol: str) -> None:
    topic = create_topic("protocols", partitions=4)
    group = unique_name("g")
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(400):
        producer.produce(topic, key=f"k{i % 40}".encode(), value=b"x")
    producer.flush(30)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    before = kafka_lag.read_lag(admin, kafka_bootstrap, group, [topic])
    assert before.members == 0 and all(p.committed is None for p in before.partitions)

    def drained(record: Record) -> None:
        pass

    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[topic], pool_size=2,
                          http_port=None, group_protocol=GroupProtocol(group_protocol))
    with running_worker(config, drained):
        def all_committed() -> kafka_lag.LagSample | None:
            sample = kafka_lag.read_lag(admin, kafka_bootstrap, group, [topic])
            return sample if sample.members == 1 and all(p.committed == p.end_offset for p in sample.partitions) \
                else None

        sample = wait_for(all_committed, 60, f"every record committed by the one member of the {group_protocol} group")
        description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    assert sum(p.end_offset for p in sample.partitions) == 400 and len(sample.partitions) == 4
    # The broker says which protocol the group runs: the one the worker asked for.
    assert str(description.type).lower().endswith(group_protocol), description.type
    assert sample.protocol == group_protocol  # what the policy reads to relax its rebalance rules

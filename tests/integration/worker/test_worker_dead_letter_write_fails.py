"""A dead-letter write that keeps failing on the real broker (the DLQ topic does not exist and the
broker does not auto-create topics; or an ACL denies the write): retried with backoff up to a bound,
then the partition pauses,
/readyz and a gauge say so, nothing is committed past the record; once the cause is gone the next
retry goes through and the partition resumes on its own."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from worker_testkit import Topics, committed_offsets, http_get, metric, produce, read_topic, running_worker

from lagpilot_contract import naming
from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError
from lagpilot_worker.write_retry import WriteRetryPolicy
from support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(kafka_bootstrap)
    yield made
    made.delete_all()


def test_failing_dead_letter_write_pauses_the_partition_and_resumes_when_the_topic_exists(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    source = create_topic("dlq-missing", partitions=1)
    group = unique_name("g")
    dlq = naming.dead_letter_topic(group)            # not created: auto.create.topics.enable=false
    produce(kafka_bootstrap, source, [(b"k", b"ok-0"), (b"k", b"bad"), (b"k", b"ok-2")])
    handled: list[bytes] = []

    def handler(record: Record) -> None:
        if record.value == b"bad":
            raise PermanentError("poison")
        handled.append(record.value)

    bound = 3
    config = WorkerConfig(
        bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], ordering=OrderingMode.PARTITION,
        pool_size=2, http_port=0, http_host="127.0.0.1", commit_interval_seconds=0.2, dead_letter_enabled=True,
        # A write to a missing topic fails when its delivery times out; keep each attempt short, and
        # let the producer look for the topic again soon (it is created later in the test).
        producer_config={"message.timeout.ms": 1500, "topic.metadata.refresh.interval.ms": 1000},
        write_retry=WriteRetryPolicy(attempts_before_pause=bound, backoff_initial_seconds=0.2,
                                     backoff_max_seconds=1.0))
    labels = {"topic": source, "partition": "0"}
    with running_worker(config, handler) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: metric(port, "lagpilot_worker_dead_letter_write_stalled", labels) == 1, 60,
                 "the failing DLQ write to stall the partition")
        errors = metric(port, "lagpilot_worker_dead_letter_write_errors_total")
        assert errors is not None and errors >= bound
        status, body = http_get(port, "/readyz")
        ready = json.loads(body)
        assert status == 503 and "dead-letter/retry topic writes failing" in ready["reasons"]
        assert ready["failing_writes"] == [f"{source}[0]"]
        wait_for(lambda: metric(port, "lagpilot_worker_paused_partitions") == 1, 10, "the partition paused")
        # Records produced now are not fetched while the write is stuck; wait for two more failed
        # retries (the write keeps being tried, at the longest backoff) to let fetch rounds pass.
        produce(kafka_bootstrap, source, [(b"k", b"ok-3")])
        wait_for(lambda: (metric(port, "lagpilot_worker_dead_letter_write_errors_total") or 0) >= errors + 2, 30,
                 "two more failed retries")
        assert b"ok-3" not in handled
        # Never committed past the record whose dead letter is not written.
        assert (committed_offsets(kafka_bootstrap, group, source, 1)[0] or 0) <= 1

        topics.create(dlq, partitions=1)
        wait_for(lambda: metric(port, "lagpilot_worker_dead_letter_write_stalled", labels) == 0, 60,
                 "the write to go through once the DLQ exists")
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, 1)[0] == 4, 30,
                 "everything committed after the DLQ write")
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 10, "ready again")
        assert metric(port, "lagpilot_worker_messages_dead_lettered_total", {"kind": "permanent"}) == 1
    assert handled == [b"ok-0", b"ok-2", b"ok-3"]
    dead = read_topic(kafka_bootstrap, dlq)
    assert [(r.value, r.header("lagpilot.original.offset")) for r in dead] == [(b"bad", "1")]


def test_dead_letter_write_denied_by_an_acl_pauses_the_partition_until_the_acl_goes(
        stack: Any, create_topic: Callable[..., str], unique_name: Callable[[str], str], topics: Topics) -> None:
    """The worker connects on the stack's SASL listener as a user whom an ACL denies writing to the DLQ:
    the broker refuses every write at once (no delivery timeout to wait for)."""
    source = create_topic("dlq-denied", partitions=1)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})   # the super user
    deny = AclBinding(ResourceType.TOPIC, dlq, ResourcePatternType.LITERAL, f"User:{stack.kafka_sasl_username}",
                      "*", AclOperation.WRITE, AclPermissionType.DENY)
    admin.create_acls([deny])[deny].result(timeout=30)
    try:
        produce(stack.kafka_bootstrap, source, [(b"k", b"bad"), (b"k", b"ok-1")])
        handled: list[bytes] = []

        def handler(record: Record) -> None:
            if record.value == b"bad":
                raise PermanentError("poison")
            handled.append(record.value)

        config = WorkerConfig(
            bootstrap_servers=stack.kafka_sasl_bootstrap, group_id=group, topics=[source],
            ordering=OrderingMode.PARTITION, pool_size=2, http_port=0, http_host="127.0.0.1",
            commit_interval_seconds=0.2, dead_letter_enabled=True,
            kafka_config={"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
                          "sasl.username": stack.kafka_sasl_username, "sasl.password": stack.kafka_sasl_password},
            write_retry=WriteRetryPolicy(attempts_before_pause=2, backoff_initial_seconds=0.2, backoff_max_seconds=1.0))
        labels = {"topic": source, "partition": "0"}
        with running_worker(config, handler) as worker:
            port = worker.http_port
            assert port is not None
            wait_for(lambda: metric(port, "lagpilot_worker_dead_letter_write_stalled", labels) == 1, 60,
                     "the denied DLQ write to stall the partition")
            status, body = http_get(port, "/readyz")
            assert status == 503 and json.loads(body)["failing_writes"] == [f"{source}[0]"]
            assert (metric(port, "lagpilot_worker_dead_letter_write_errors_total") or 0) >= 2
            assert committed_offsets(stack.kafka_bootstrap, group, source, 1)[0] in (None, 0)   # not past it
            admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, dlq, ResourcePatternType.LITERAL,
                                                None, None, AclOperation.ANY, AclPermissionType.ANY)])
            wait_for(lambda: metric(port, "lagpilot_worker_dead_letter_write_stalled", labels) == 0, 60,
                     "the write to go through once the ACL is gone")
            wait_for(lambda: committed_offsets(stack.kafka_bootstrap, group, source, 1)[0] == 2, 30,
                     "both records committed")
        assert handled == [b"ok-1"]
        assert [r.value for r in read_topic(stack.kafka_bootstrap, dlq)] == [b"bad"]
    finally:
        admin.delete_acls([AclBindingFilter(ResourceType.TOPIC, dlq, ResourcePatternType.LITERAL,
                                            None, None, AclOperation.ANY, AclPermissionType.ANY)])

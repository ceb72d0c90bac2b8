"""Dead-letter and retry records on the real broker: headers exactly as documented, poison pills,
retry tiers honoured, and the source offset committed only once the write is acknowledged."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from worker_testkit import Topics, committed_offsets, produce, read_topic, running_worker

from lagpilot_contract import headers as h
from lagpilot_contract import naming
from lagpilot_worker.config import GroupProtocol, WorkerConfig
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError, RetryLaterError, RetryPolicy
from support import wait_for

pytestmark = pytest.mark.integration

LAGPILOT_HEADERS = {h.ORIGINAL_TOPIC, h.ORIGINAL_PARTITION, h.ORIGINAL_OFFSET, h.ORIGINAL_TIMESTAMP,
                    h.ORIGINAL_TIMESTAMP_TYPE, h.CONSUMER_GROUP, h.EXCEPTION_CLASS, h.EXCEPTION_MESSAGE,
                    h.EXCEPTION_STACKTRACE, h.ATTEMPTS, h.WORKER_ID, h.FAILURE_KIND}


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(kafka_bootstrap)
    yield made
    made.delete_all()


class OrderRejected(PermanentError):
    pass


def test_dead_letter_record_and_headers_exactly_as_documented(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics, group_protocol: str) -> None:
    source = create_topic("orders", partitions=3)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=3)
    own_headers = [("trace-id", b"abc-123"), ("empty", b"")]
    produce(kafka_bootstrap, source, [(b"order-7", b"\x00\xffraw bytes")], headers=own_headers, partition=2)
    produce(kafka_bootstrap, source, [(b"order-8", b"fine")], partition=2)
    original = next(r for r in read_topic(kafka_bootstrap, source) if r.key == b"order-7")
    handled: list[bytes | None] = []

    def handler(record: Record) -> None:
        if record.key == b"order-7":
            raise OrderRejected("order 7 is invalid: ünïcode stays intact")
        handled.append(record.key)

    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], pool_size=2,
                          dead_letter_enabled=True, http_port=None, worker_id="worker-under-test",
                          group_protocol=GroupProtocol(group_protocol))
    with running_worker(config, handler):
        records = wait_for(lambda: read_topic(kafka_bootstrap, dlq) or None, 60, "a dead-letter record")
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, 3)[2] == 2, 30,
                 "the source offsets committed past the dead-lettered record")
    assert handled == [b"order-8"]
    [dead] = records
    assert (dead.key, dead.value) == (b"order-7", b"\x00\xffraw bytes")
    assert dead.partition == 2                      # the original partition, the DLQ has as many
    own = [(k, v) for k, v in dead.headers if not k.startswith("lagpilot.")]
    assert own == own_headers                       # untouched, in order
    names = [k for k, _ in dead.headers if k.startswith("lagpilot.")]
    assert sorted(names) == sorted(LAGPILOT_HEADERS)  # each exactly once, no retry headers
    assert dead.header(h.ORIGINAL_TOPIC) == source
    assert dead.header(h.ORIGINAL_PARTITION) == "2"
    assert dead.header(h.ORIGINAL_OFFSET) == str(original.offset)
    assert dead.header(h.ORIGINAL_TIMESTAMP) == str(original.timestamp[1])
    assert dead.header(h.ORIGINAL_TIMESTAMP_TYPE) == "CreateTime"
    assert dead.header(h.CONSUMER_GROUP) == group
    assert dead.header(h.EXCEPTION_CLASS) == f"{__name__}.OrderRejected"
    assert dead.header(h.EXCEPTION_MESSAGE) == "order 7 is invalid: ünïcode stays intact"
    stacktrace = dead.header(h.EXCEPTION_STACKTRACE) or ""
    assert stacktrace.startswith("Traceback") and "OrderRejected: order 7 is invalid" in stacktrace
    assert dead.header(h.ATTEMPTS) == "1"           # permanent: no retry
    assert dead.header(h.WORKER_ID) == "worker-under-test"
    assert dead.header(h.FAILURE_KIND) == h.FAILURE_PERMANENT


def test_poison_pill_goes_to_the_dead_letter_topic(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    source = create_topic("json", partitions=1)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    produce(kafka_bootstrap, source, [(b"a", b'{"n": 1}'), (b"b", b"{not json"), (b"c", b'{"n": 3}')])
    values: list[object] = []

    def handler(record: Record) -> None:
        values.append(record.value)

    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], pool_size=2,
                          dead_letter_enabled=True, http_port=None,
                          value_deserializer=lambda raw: json.loads(raw) if raw else None)
    with running_worker(config, handler):
        [dead] = wait_for(lambda: read_topic(kafka_bootstrap, dlq) or None, 60, "the poison pill in the DLQ")
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, 1)[0] == 3, 30, "all committed")
    assert sorted(v["n"] for v in values) == [1, 3]  # type: ignore[index]
    assert (dead.key, dead.value) == (b"b", b"{not json")
    assert dead.header(h.FAILURE_KIND) == h.FAILURE_POISON_PILL
    assert dead.header(h.EXCEPTION_CLASS) == "json.decoder.JSONDecodeError"
    assert dead.header(h.ORIGINAL_OFFSET) == "1"


def test_retry_tier_runs_the_record_after_its_delay_not_before(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    source = create_topic("pay", partitions=1)
    group = unique_name("g")
    topics.create(naming.dead_letter_topic(group), partitions=1)
    retry_1 = topics.create(naming.retry_topic(group, 1), partitions=1)
    produce(kafka_bootstrap, source, [(b"p-1", b"pay me")])
    calls: list[tuple[float, int, int, str]] = []
    lock = threading.Lock()

    def handler(record: Record) -> None:
        with lock:
            calls.append((time.time(), record.retry_tier, record.attempt, record.topic))
        if record.retry_tier == 0:
            raise RetryLaterError("payment service down")

    delay = 4.0
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], pool_size=2,
                          dead_letter_enabled=True, http_port=None,
                          retry=RetryPolicy(tier_delays_seconds=(delay, 60.0)))
    with running_worker(config, handler):
        wait_for(lambda: len(calls) >= 2, 60, "the record handled again from retry tier 1")
        [retry_record] = read_topic(kafka_bootstrap, retry_1)
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, retry_1, 1)[0] == 1, 30,
                 "the retry record committed")
    assert retry_record.header(h.RETRY_TIER) == "1"
    assert retry_record.header(h.ORIGINAL_TOPIC) == source
    assert retry_record.header(h.ATTEMPTS) == "1"
    assert (retry_record.key, retry_record.value) == (b"p-1", b"pay me")
    due_ms = int(retry_record.header(h.RETRY_DUE) or "0")
    (failed_at, tier0, attempt0, _), (retried_at, tier1, attempt1, topic1) = calls[:2]
    assert (tier0, attempt0, tier1, attempt1, topic1) == (0, 1, 1, 2, source)
    assert retried_at * 1000 >= due_ms, "the retry ran before it was due"
    assert due_ms - failed_at * 1000 >= delay * 1000 - 50      # the due time is the tier's delay later
    assert retried_at - failed_at < delay + 10                  # ... and it did run soon after
    assert len(calls) == 2


def test_source_offset_waits_for_the_dead_letter_write(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    """While the DLQ cannot be written (it does not exist yet), nothing is committed past the record."""
    from worker_testkit import metric

    source = create_topic("nodlq", partitions=1)
    group = unique_name("g")
    produce(kafka_bootstrap, source, [(b"k", b"0"), (b"k", b"1"), (b"k", b"2")])

    def handler(record: Record) -> None:
        if record.offset == 1:
            raise PermanentError("rejected")

    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source], pool_size=2,
                          dead_letter_enabled=True, http_port=0, http_host="127.0.0.1", commit_interval_seconds=0.2,
                          retry=RetryPolicy(backoff_initial_seconds=0.5, backoff_max_seconds=1.0),
                          producer_config={"message.timeout.ms": 2000, "topic.metadata.refresh.interval.ms": 500})
    with running_worker(config, handler) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: (metric(port, "lagpilot_worker_dead_letter_write_errors_total") or 0) >= 1, 60,
                 "a failed DLQ write")
        assert committed_offsets(kafka_bootstrap, group, source, 1)[0] == 1   # 0 done; 1 waits for its write
        dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, 1)[0] == 3, 60,
                 "the write retried and acknowledged, then committed")
    assert [r.value for r in read_topic(kafka_bootstrap, dlq)] == [b"1"]

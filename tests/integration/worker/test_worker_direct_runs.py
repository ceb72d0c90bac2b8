"""While the poll thread runs records itself, a fetched run of an idle partition skips the key
lanes (runs_directly): every record still runs once, in key order, and is committed; failures in
such a run are handled as on the lane path; a handler that turns slow sends the work back to the
slots without losing or reordering anything."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import pytest
from worker_testkit import (
    Topics,
    assert_each_record_ran_once_in_order_and_committed,
    committed_offsets,
    metric,
    produce,
    read_topic,
    running_worker,
)

from lagpilot_contract import naming
from lagpilot_worker import runtime
from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.inline import InlinePolicy
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError, RetryLaterError, RetryPolicy, TransientError
from support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = 64


@pytest.fixture
def generous_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline execution that a loaded test host does not switch off: what runs where is then known
    (the default thresholds are for production hosts; the path under test is the same). A record
    preempted for tens of milliseconds would lift the smoothed handler time past a threshold of a
    few milliseconds and send a phase of the test to the slots, so only a stall or a hand-back
    (which the tests cause on purpose) ends it here."""
    policy = InlinePolicy(enter_seconds_per_record=0.5, leave_seconds_per_record=1.0, budget_seconds=0.02,
                          stall_seconds=1.0)
    monkeypatch.setattr(runtime, "InlinePolicy", lambda: policy)


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(kafka_bootstrap)
    yield made
    made.delete_all()


def records(count: int, start: int = 0) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"k{i % KEYS}".encode(), str(i).encode()) for i in range(start, start + count)]


def test_key_mode_direct_runs_once_in_order_and_commit(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        generous_inline: None) -> None:
    topic = create_topic("direct", partitions=PARTITIONS)
    # Until the handler is measured fast, records go to the slots: warm up, then count.
    warm_up = 20_000
    count = 2 * warm_up
    produce(kafka_bootstrap, topic, records(warm_up))
    seen: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
    lock = threading.Lock()

    def handle(record: Record) -> None:
        with lock:
            seen[(record.partition, record.key)].append(record.offset)

    group = unique_name("g")
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[topic],
                          ordering=OrderingMode.KEY, pool_size=4, http_port=0, http_host="127.0.0.1",
                          dead_letter_enabled=False)
    with running_worker(config, handle) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: metric(port, "lagpilot_worker_messages_processed_total") == warm_up, 60, "warmed up")
        before = worker.direct_records
        produce(kafka_bootstrap, topic, records(count - warm_up, warm_up))
        wait_for(lambda: metric(port, "lagpilot_worker_messages_processed_total") == count, 60, "all processed")
        direct = worker.direct_records - before
        assert direct > (count - warm_up) // 2, f"only {direct} records skipped the lanes"
        assert_each_record_ran_once_in_order_and_committed(kafka_bootstrap, group, topic, PARTITIONS, seen, count)


def test_failures_in_direct_runs_keep_the_documented_order(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics, generous_inline: None) -> None:
    """Retry later (tier) and permanent (DLQ) failures give up their place; a retry in place hands
    the rest back to the slots, and the key's later records still run after the retried one."""
    source = create_topic("direct-fail", partitions=PARTITIONS)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    topics.create(naming.retry_topic(group, 1), partitions=1)
    produced = [0]

    def produce_more(count: int) -> None:
        produce(kafka_bootstrap, source, records(count, produced[0]))
        produced[0] += count

    # Failures come after a warm-up: until the handler is measured fast, records go to the slots.
    warm_up = 5_000
    produce_more(warm_up)
    base = 6 * warm_up            # the warm-up takes at most 6 rounds
    to_tier = {str(base + i).encode() for i in (2_003, 5_017)}
    to_dlq = {str(base + i).encode() for i in (3_011, 8_029)}
    # Produced only once the others have failed: its hand-back ends inline execution for a while,
    # and partitions progress at their own pace, so a record produced earlier is not always run earlier.
    transient = str(base + 25_005).encode()
    attempts: dict[bytes, int] = defaultdict(int)
    successes: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
    from_tier: list[bytes] = []
    on_poll_thread: list[bytes] = []
    direct_before_failure: list[int] = []
    lock = threading.Lock()
    worker_box: list[object] = []

    source_ends: dict[int, int | None] = {p: 0 for p in range(PARTITIONS)}

    def handle(record: Record) -> None:
        value = bytes(record.value)
        with lock:
            source_ends[record.partition] = max(source_ends[record.partition] or 0, record.offset + 1)
            attempts[value] += 1
            first = attempts[value] == 1
        if first and (value in to_tier or value in to_dlq or value == transient):
            if threading.current_thread().name == "test-worker":
                on_poll_thread.append(value)
            direct_before_failure.append(getattr(worker_box[0], "direct_records", 0))
            if value in to_tier:
                raise RetryLaterError("later")
            if value in to_dlq:
                raise PermanentError("never")
            raise TransientError("once")
        with lock:
            if record.retry_tier:
                from_tier.append(value)
            else:
                successes[(record.partition, record.key)].append(record.offset)

    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[source],
                          ordering=OrderingMode.KEY, pool_size=4, http_port=0, http_host="127.0.0.1",
                          dead_letter_enabled=True,
                          retry=RetryPolicy(attempts_in_place=3, backoff_initial_seconds=0.01,
                                            backoff_max_seconds=0.02, tier_delays_seconds=(0.5,)))
    with running_worker(config, handle) as worker:
        worker_box.append(worker)
        port = worker.http_port
        assert port is not None
        for _ in range(6):
            wait_for(lambda: sum(len(s) for s in successes.values()) == produced[0], 60, "warmed up")
            if worker.direct_records and metric(port, "lagpilot_worker_inline_execution") == 1:
                break
            produce_more(warm_up)
        assert worker.direct_records, "no run skipped the lanes in the warm-up"
        produce_more(base - produced[0])
        before = worker.direct_records
        produce_more(20_000)
        wait_for(lambda: len(direct_before_failure) == len(to_tier) + len(to_dlq), 60, "the first failures")
        produce_more(10_000)
        count = produced[0]
        wait_for(lambda: sorted(from_tier) == sorted(to_tier) and
                 sum(len(s) for s in successes.values()) == count - len(to_tier) - len(to_dlq),
                 90, "every record handled")
        wait_for(lambda: len(read_topic(kafka_bootstrap, dlq)) == len(to_dlq), 30, "the dead letters written")
        wait_for(lambda: committed_offsets(kafka_bootstrap, group, source, PARTITIONS) == source_ends, 30,
                 "every offset committed")
        assert worker.direct_records > before
    assert sorted(on_poll_thread) == sorted([*to_tier, *to_dlq, transient]), \
        "a failure did not happen on the poll thread: the test no longer covers direct runs"
    assert all(d > before for d in direct_before_failure), "a failure came before any direct run of its phase"
    assert sorted(r.value for r in read_topic(kafka_bootstrap, dlq)) == sorted(to_dlq)
    assert attempts[transient] == 2, "the retried record ran again exactly once"
    for lane, offsets in successes.items():
        # The retried-in-place record ran before its key's later records: offsets stay sorted.
        assert offsets == sorted(offsets), f"{lane} ran out of order"
        assert len(offsets) == len(set(offsets)), f"{lane} ran a record twice"


def test_handler_turning_slow_falls_back_to_the_slots_in_order(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        generous_inline: None) -> None:
    topic = create_topic("direct-slow", partitions=PARTITIONS)
    count = 30_000
    produce(kafka_bootstrap, topic, records(count))
    seen: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
    lock = threading.Lock()
    slow = threading.Event()
    handled = [0]
    stalled: list[str] = []
    worker_box: list[object] = []

    def handle(record: Record) -> None:
        with lock:
            seen[(record.partition, record.key)].append(record.offset)
            handled[0] += 1
            total = handled[0]
        if total >= count // 2 and not slow.is_set() and getattr(worker_box[0], "direct_records", 0) > 0:
            slow.set()
            stalled.append(threading.current_thread().name)
            time.sleep(1.2)        # holds the poll thread past stall_seconds: inline execution must end

    group = unique_name("g")
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=group, topics=[topic],
                          ordering=OrderingMode.KEY, pool_size=4, http_port=0, http_host="127.0.0.1",
                          dead_letter_enabled=False)
    with running_worker(config, handle) as worker:
        worker_box.append(worker)
        port = worker.http_port
        assert port is not None
        wait_for(lambda: metric(port, "lagpilot_worker_messages_processed_total") == count, 60, "all processed")
        assert stalled == ["test-worker"], "the slow record did not run on the poll thread"
        assert metric(port, "lagpilot_worker_inline_execution") == 0, "inline execution did not end"
        assert_each_record_ran_once_in_order_and_committed(kafka_bootstrap, group, topic, PARTITIONS, seen, count)

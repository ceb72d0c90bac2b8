"""`cluster_observer.read_cluster` turning the AdminClient's answers into a `ClusterRead`, against a fake client
answering as confluent-kafka does (metadata, one OffsetFetch future per group, one ListOffsets future per offset
kind keyed by TopicPartition, a group description): offsets, never-committed partitions, missing topics and
failures where they belong."""

from __future__ import annotations

import concurrent.futures
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupType, KafkaError, KafkaException, TopicPartition

from lagpilot_operator.kafka import cluster_observer, kafka_lag
from lagpilot_operator.kafka.cluster_reads import GroupDescription, LogStarts, TopicLayout, stale_log_starts

# (log-start, log-end) per partition; committed per group (absent: never committed).
TOPICS = {"orders": {0: (0, 100), 1: (10, 50), 2: (-1, 7)}, "audit": {0: (0, 3)}}
COMMITTED = {"g1": {("orders", 0): 40, ("orders", 1): 5}, "g2": {("audit", 0): 3}}


def done(value: Any) -> concurrent.futures.Future[Any]:
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    future.set_result(value)
    return future


class FakeAdmin:
    """The calls `read_cluster` makes, answered from TOPICS and COMMITTED; `failing` partitions' offsets fail."""

    def __init__(self, failing: frozenset[tuple[str, int]] = frozenset()) -> None:
        self.failing = failing
        self.sent: list[list[TopicPartition]] = []
        self.metadata_requests = 0

    def list_topics(self, timeout: float) -> Any:
        self.metadata_requests += 1
        return SimpleNamespace(topics={t: SimpleNamespace(error=None, partitions=dict.fromkeys(reversed(ps)))
                                       for t, ps in TOPICS.items()})

    def list_consumer_group_offsets(self, requests: list[Any], request_timeout: float) -> dict[str, Any]:
        group = requests[0].group_id
        answer = [TopicPartition(tp.topic, tp.partition, COMMITTED[group].get((tp.topic, tp.partition), -1001))
                  for tp in reversed(requests[0].topic_partitions)]
        return {group: done(SimpleNamespace(topic_partitions=answer))}

    def describe_consumer_groups(self, groups: list[str], request_timeout: float) -> dict[str, Any]:
        return {g: done(SimpleNamespace(members=[object()] * 2, type=ConsumerGroupType.CONSUMER)) for g in groups}

    def send_list_offsets(self, partitions: list[TopicPartition], request: concurrent.futures.Future[Any],
                          request_timeout: float) -> None:
        """confluent-kafka's C `list_offsets`: one answer for the call, keyed by new TopicPartitions."""
        self.sent.append(partitions)
        latest = partitions[0].offset == -1
        answer: dict[TopicPartition, Any] = {}
        for tp in reversed(partitions):
            start, end = TOPICS[tp.topic][tp.partition]
            answer[TopicPartition(tp.topic, tp.partition)] = (
                KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION) if (tp.topic, tp.partition) in self.failing
                else SimpleNamespace(offset=end if latest else start))
        request.set_result(answer)

    def poll(self, timeout: float) -> int:
        return 0


@pytest.fixture(autouse=True)
def c_list_offsets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`kafka_lag._list_offsets` takes its one-future-per-call path for the fake, as for a real client."""
    monkeypatch.setattr(kafka_lag, "AdminClient", FakeAdmin)
    monkeypatch.setattr(kafka_lag, "_AdminClientImpl", SimpleNamespace(list_offsets=FakeAdmin.send_list_offsets))


def test_offsets_of_every_wanted_partition_and_each_groups_committed_offsets() -> None:
    wanted = {"g1": frozenset({"orders"}), "g2": frozenset({"audit", "gone"})}
    read = cluster_observer.read_cluster(FakeAdmin(), "kafka:9092", wanted)  # type: ignore[arg-type]
    assert read.cluster_error is None and read.group_errors == {}
    assert dict(read.partitions) == {"orders": (0, 1, 2), "audit": (0,)}
    assert dict(read.log_offsets) == {("orders", 0): (0, 100), ("orders", 1): (10, 50), ("orders", 2): (0, 7),
                                      ("audit", 0): (0, 3)}  # a negative offset counts as 0
    assert {g: dict(c) for g, c in read.committed.items()} == {
        "g1": {("orders", 0): 40, ("orders", 1): 5, ("orders", 2): -1001}, "g2": {("audit", 0): 3}}
    assert dict(read.groups) == {"g1": GroupDescription(2, "consumer"), "g2": GroupDescription(2, "consumer")}
    assert list(read.topic_errors) == ["gone"] and isinstance(read.topic_errors["gone"], kafka_lag.TopicMissing)


def test_a_partition_whose_offsets_fail_fails_its_topic_only() -> None:
    wanted = {"g1": frozenset({"orders"}), "g2": frozenset({"audit"})}
    read = cluster_observer.read_cluster(FakeAdmin(failing=frozenset({("orders", 1)})), "kafka:9092",  # type: ignore[arg-type]
                                         wanted)
    assert list(read.topic_errors) == ["orders"] and "orders" in str(read.topic_errors["orders"])
    assert ("orders", 1) not in read.log_offsets and read.log_offsets[("orders", 0)] == (0, 100)
    assert read.log_offsets[("audit", 0)] == (0, 3)


def test_an_answer_missing_a_partition_is_a_bug_not_an_offset() -> None:
    offsets = kafka_lag.LogOffsets([TopicPartition("orders", 0), TopicPartition("orders", 1)],
                                   request=done({TopicPartition("orders", 1, -1): SimpleNamespace(offset=4)}))
    with pytest.raises(RuntimeError, match="answered 1 partitions of the 2 asked"):
        offsets.collect(1.0)


def test_answers_are_per_partition_in_the_order_asked() -> None:
    asked = [TopicPartition("orders", 1), TopicPartition("orders", 0)]
    answer = {TopicPartition("orders", 0, -1): SimpleNamespace(offset=9),
              TopicPartition("orders", 1, -1): KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION)}
    found = kafka_lag.LogOffsets(asked, request=done(answer)).collect(1.0)
    assert list(found) == [("orders", 1), ("orders", 0)] and found[("orders", 0)] == 9
    assert isinstance(found[("orders", 1)], KafkaException)
    failed: concurrent.futures.Future[Any] = concurrent.futures.Future()
    failed.set_exception(KafkaException(KafkaError(KafkaError._TIMED_OUT)))
    assert all(isinstance(v, KafkaException) for v in kafka_lag.LogOffsets(asked, request=failed).collect(1.0).values())


def test_a_clusters_next_read_of_the_same_partitions_sends_the_same_requests() -> None:
    admin, requests = FakeAdmin(), kafka_lag.OffsetRequests()
    wanted = {"g1": frozenset({"orders"})}
    first = cluster_observer.read_cluster(admin, "kafka:9092", wanted, requests=requests)  # type: ignore[arg-type]
    again = cluster_observer.read_cluster(admin, "kafka:9092", wanted, requests=requests)  # type: ignore[arg-type]
    assert replace(again, time=first.time) == first
    assert [[(tp.topic, tp.partition, tp.offset) for tp in sent] for sent in admin.sent[:2]] == [
        [("orders", p, -1) for p in (0, 1, 2)], [("orders", p, -2) for p in (0, 1, 2)]]
    assert admin.sent[2] is admin.sent[0] and admin.sent[3] is admin.sent[1]  # not made again
    wider = cluster_observer.read_cluster(admin, "kafka:9092", {"g1": frozenset({"orders", "audit"})},  # type: ignore[arg-type]
                                          requests=requests)
    assert [(tp.topic, tp.partition, tp.offset) for tp in admin.sent[4]] == [("audit", 0, -1)] + [
        ("orders", p, -1) for p in (0, 1, 2)]
    assert wider.log_offsets[("audit", 0)] == (0, 3)


def sent_offsets(admin: FakeAdmin) -> list[list[tuple[str, int, int]]]:
    return [[(tp.topic, tp.partition, tp.offset) for tp in sent] for sent in admin.sent]


def test_log_starts_are_asked_for_once_per_refresh_and_in_between_only_where_a_lag_depends_on_them() -> None:
    admin, requests, starts = FakeAdmin(), kafka_lag.OffsetRequests(), LogStarts(refresh_seconds=3600)
    wanted = {"g1": frozenset({"orders"})}
    first = cluster_observer.read_cluster(admin, "kafka:9092", wanted, requests=requests, starts=starts)  # type: ignore[arg-type]
    assert sent_offsets(admin) == [[("orders", p, -1) for p in (0, 1, 2)], [("orders", p, -2) for p in (0, 1, 2)]]
    again = cluster_observer.read_cluster(admin, "kafka:9092", wanted, requests=requests, starts=starts)  # type: ignore[arg-type]
    assert replace(again, time=first.time) == first
    # orders-1: g1 committed 5, below the log start 10; orders-2: never committed. orders-0 (40 >= 0): not asked.
    assert sent_offsets(admin)[2:] == [[("orders", p, -1) for p in (0, 1, 2)], [("orders", 1, -2), ("orders", 2, -2)]]
    starts.refreshed_at = -3600.0  # the refresh is due: every start again
    cluster_observer.read_cluster(admin, "kafka:9092", wanted, requests=requests, starts=starts)  # type: ignore[arg-type]
    assert sent_offsets(admin)[4:] == [[("orders", p, -1) for p in (0, 1, 2)], [("orders", p, -2) for p in (0, 1, 2)]]


def test_a_log_start_that_failed_is_asked_for_again_on_the_next_read() -> None:
    admin, starts = FakeAdmin(failing=frozenset({("audit", 0)})), LogStarts(refresh_seconds=3600)
    wanted = {"g2": frozenset({"audit"})}
    read = cluster_observer.read_cluster(admin, "kafka:9092", wanted, starts=starts)  # type: ignore[arg-type]
    assert "audit" in read.topic_errors and starts.known == {}
    admin.failing = frozenset()
    read = cluster_observer.read_cluster(admin, "kafka:9092", wanted, starts=starts)  # type: ignore[arg-type]
    assert read.log_offsets == {("audit", 0): (0, 3)} and sent_offsets(admin)[-1] == [("audit", 0, -2)]


def test_stale_log_starts() -> None:
    known = {("t", 0): 10, ("t", 1): 10, ("t", 2): 10, ("t", 3): 10}
    ends = {("t", 0): 50, ("t", 1): 50, ("t", 2): 5, ("t", 3): 50, ("t", 4): 50}
    committed = {"a": {("t", 0): 20, ("t", 1): 9, ("t", 3): -1001}, "b": {("t", 0): 10, ("t", 9): 0}}
    # 1: committed below the start; 2: the end below the start (made again); 3: never committed; 4: unknown.
    # 0: every group at or above the start. 9: no end read (its topic failed): nothing to ask.
    assert stale_log_starts(ends, committed, known) == [("t", 1), ("t", 2), ("t", 3), ("t", 4)]
    assert stale_log_starts(ends, {}, {**known, ("t", 4): 0, ("t", 2): 0}) == []


def test_log_starts_forget_what_a_full_read_no_longer_finds() -> None:
    starts = LogStarts(refresh_seconds=60)
    assert starts.full_read_due(0.0)
    starts.remember({("t", 0): 1, ("t", 1): 2}, full=True, now=100.0)
    assert not starts.full_read_due(159.0) and starts.full_read_due(160.0)
    starts.remember({("t", 1): 3}, full=False, now=120.0)
    assert starts.known == {("t", 0): 1, ("t", 1): 3} and starts.refreshed_at == 100.0
    starts.remember({("u", 0): 0}, full=True, now=170.0)
    assert starts.known == {("u", 0): 0}


def test_the_metadata_is_asked_for_once_per_refresh_and_at_once_for_a_topic_not_found_before() -> None:
    admin, requests, layout = FakeAdmin(), kafka_lag.OffsetRequests(), TopicLayout(refresh_seconds=3600)
    orders = {"g1": frozenset({"orders"})}
    first = cluster_observer.read_cluster(admin, "kafka:9092", orders, requests=requests, layout=layout)  # type: ignore[arg-type]
    again = cluster_observer.read_cluster(admin, "kafka:9092", orders, requests=requests, layout=layout)  # type: ignore[arg-type]
    assert admin.metadata_requests == 1 and replace(again, time=first.time) == first
    wider = {"g1": frozenset({"orders"}), "g2": frozenset({"audit"})}  # a new resource's topic
    read = cluster_observer.read_cluster(admin, "kafka:9092", wider, requests=requests, layout=layout)  # type: ignore[arg-type]
    assert admin.metadata_requests == 2 and read.log_offsets[("audit", 0)] == (0, 3)
    layout.read_at = -3600.0  # the refresh is due
    cluster_observer.read_cluster(admin, "kafka:9092", wider, requests=requests, layout=layout)  # type: ignore[arg-type]
    assert admin.metadata_requests == 3


def test_a_missing_topic_is_looked_for_on_every_read_and_found_once_made(monkeypatch: pytest.MonkeyPatch) -> None:
    admin, layout = FakeAdmin(), TopicLayout(refresh_seconds=3600)
    wanted = {"g1": frozenset({"orders", "refunds"})}
    for expected in (1, 2):
        read = cluster_observer.read_cluster(admin, "kafka:9092", wanted, layout=layout)  # type: ignore[arg-type]
        assert admin.metadata_requests == expected and isinstance(read.topic_errors["refunds"], kafka_lag.TopicMissing)
        assert read.log_offsets[("orders", 0)] == (0, 100)
    monkeypatch.setitem(TOPICS, "refunds", {0: (0, 4)})
    read = cluster_observer.read_cluster(admin, "kafka:9092", wanted, layout=layout)  # type: ignore[arg-type]
    assert read.topic_errors == {} and read.log_offsets[("refunds", 0)] == (0, 4)
    cluster_observer.read_cluster(admin, "kafka:9092", wanted, layout=layout)  # type: ignore[arg-type]
    assert admin.metadata_requests == 3  # all found: the layout serves


def test_offsets_that_fail_for_a_partition_make_the_next_read_ask_for_the_metadata() -> None:
    admin, layout = FakeAdmin(failing=frozenset({("orders", 1)})), TopicLayout(refresh_seconds=3600)
    wanted = {"g1": frozenset({"orders"})}
    cluster_observer.read_cluster(admin, "kafka:9092", wanted, layout=layout)  # type: ignore[arg-type]
    admin.failing = frozenset()
    read = cluster_observer.read_cluster(admin, "kafka:9092", wanted, layout=layout)  # type: ignore[arg-type]
    assert admin.metadata_requests == 2 and read.topic_errors == {}
    cluster_observer.read_cluster(admin, "kafka:9092", wanted, layout=layout)  # type: ignore[arg-type]
    assert admin.metadata_requests == 2


def test_the_topic_layout_is_due_when_never_read_stale_forgotten_or_missing_a_topic() -> None:
    layout = TopicLayout(refresh_seconds=30)
    assert layout.metadata_due(["t"], 0.0)
    layout.remember({"t": (0, 1)}, now=100.0)
    assert not layout.metadata_due(["t"], 129.9) and layout.metadata_due(["t"], 130.0)
    assert layout.metadata_due(["t", "u"], 101.0)
    layout.forget()
    assert layout.metadata_due(["t"], 101.0)
    every_read = TopicLayout(refresh_seconds=0)
    every_read.remember({"t": (0,)}, now=5.0)
    assert every_read.metadata_due(["t"], 5.0)


def test_each_topics_topic_partitions_are_made_once_while_its_partitions_stay() -> None:
    requests = kafka_lag.OffsetRequests()
    first = requests.of_topic("orders", (0, 1))
    assert requests.of_topic("orders", (0, 1)) is first and [(tp.topic, tp.partition) for tp in first] == [
        ("orders", 0), ("orders", 1)]
    grown = requests.of_topic("orders", (0, 1, 2))
    assert grown is not first and len(grown) == 3
    requests.keep_only(["audit"])
    assert requests.of_topic("orders", (0, 1, 2)) is not grown

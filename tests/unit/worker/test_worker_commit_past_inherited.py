"""The commit path over an earlier owner's offset map: the offset sent moves past the records that map marks
done and this owner has not fetched, and a failed commit of that offset is sent again (no broker: the
consumer only records what it was asked to commit)."""

from __future__ import annotations

from confluent_kafka import TopicPartition

from lagpilot_worker.breaker import PartitionBreaker
from lagpilot_worker.commits import OffsetCommits
from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.flow import FlowControl
from lagpilot_worker.metrics import WorkerMetrics
from lagpilot_worker.offset_map import decode, encode
from lagpilot_worker.partition import PartitionState


class RecordingConsumer:
    def __init__(self) -> None:
        self.sent: list[list[TopicPartition]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> bool:
        self.sent.append(offsets)
        return True


def commits_over_inherited_map(done: set[int]) -> tuple[OffsetCommits, PartitionState, RecordingConsumer]:
    """A partition committed at 100 by an earlier owner whose map marks `done` finished; this owner
    fetched and finished 100 only."""
    config = WorkerConfig(bootstrap_servers="b:1", group_id="g", topics=["t"])
    state = PartitionState("t", 0, 0, PartitionBreaker(config.breaker))
    flags = bytes(1 if 100 + i in done else 0 for i in range(max(done) - 100 + 1))
    text = encode(100, flags)
    assert text is not None
    state.done_map = decode(text, 100)
    state.tracker.add_many([100])
    state.tracker.done_many([100])
    commits = OffsetCommits(config, WorkerMetrics(), {("t", 0): state}, FlowControl(config),
                            update_pauses=lambda: None)
    consumer = RecordingConsumer()
    commits.consumer = consumer  # type: ignore[assignment]
    return commits, state, consumer


def test_the_commit_skips_the_earlier_owner_s_finished_records_ahead_of_the_fetch() -> None:
    commits, state, consumer = commits_over_inherited_map({101, 102, 105})
    assert commits.commit([state], asynchronous=True)
    [[sent]] = consumer.sent
    # 101 and 102 were finished by the earlier owner: committed at 101 they would run again (the committed
    # offset is unfinished in the map's format). 105 stays in the map above 103.
    assert sent.offset == 103
    done_map = decode(sent.metadata or "", 103)
    assert done_map is not None and [o for o in range(103, 106) if o in done_map] == [105]
    # The tracker keeps its own offset: nothing more to commit until this owner finishes more.
    assert state.tracker.committed == 101 and not state.tracker.needs_commit()


def test_a_failed_commit_past_the_inherited_records_is_sent_again() -> None:
    commits, state, consumer = commits_over_inherited_map({101, 102})
    assert commits.commit([state], asynchronous=True)
    commits.on_commit_error(None, [TopicPartition("t", 0, 103)])  # type: ignore[arg-type]
    assert state.tracker.needs_commit()
    assert commits.commit([state], asynchronous=True)
    assert [tps[0].offset for tps in consumer.sent] == [103, 103]

"""One assigned partition as the consumer-group worker's parts share it, and fast accessors of records.

Every part (admission, dispatch, results, failures, commits, flow control) reads and writes the same
`PartitionState`; the poll thread is the only writer except for `revoked`/`halted`, which the slots
read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import Message, TopicPartition

from .breaker import PartitionBreaker
from .offset_map import DoneOffsets
from .offsets import PartitionOffsets
from .ordering import Lane, Segment

# Message methods, unbound: map() and groupby() call them from C, with no Python loop per record.
# (A consumed record, unlike an error event, always has a topic, a partition and an offset.)
message_error = Message.error
message_partition = cast(Callable[[Message], int], Message.partition)
message_offset = cast(Callable[[Message], int], Message.offset)
message_key = Message.key


def topic_partition(message: Message) -> tuple[str, int]:
    return cast(str, message.topic()), cast(int, message.partition())


class PartitionState:
    """One assigned partition, for one assignment (a re-assignment gets a fresh object).

    The scheduler uses the object itself as the partition's identity, so nothing started under
    an earlier assignment can touch a later one.
    """

    __slots__ = ("breaker", "committed_past_inherited", "done_map", "halted", "held", "kafka_tp", "out_segments",
                 "partition", "pending_writes", "revoked", "tier", "topic", "tracker")

    def __init__(self, topic: str, partition: int, tier: int, breaker: PartitionBreaker) -> None:
        self.topic = topic
        self.partition = partition
        self.tier = tier                      # 0: source topic; n: retry tier n
        self.tracker = PartitionOffsets()
        self.breaker = breaker
        self.revoked = False                  # read by slots: stop working on this partition
        self.halted = False                   # read by slots: breaker open, start nothing more
        self.out_segments = 0                 # segments handed to slots, not yet reported back
        self.pending_writes = 0               # DLQ/retry writes not yet acknowledged
        self.held: list[tuple[Message, Lane[Any, Any] | None]] = []   # refused by the open breaker
        self.kafka_tp = TopicPartition(topic, partition)
        # Records an earlier owner finished above the committed offset (the commit's offset map):
        # skipped when fetched; dropped once fetching passes its highest offset.
        self.done_map: DoneOffsets | None = None
        # The last commit sent past the tracker's offset over records the earlier owner finished
        # (offset_map.past_inherited_done): (offset sent, the tracker's offset), to fail the right one.
        self.committed_past_inherited: tuple[int, int] | None = None

    def log_extra(self, offset: int | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {"topic": self.topic, "partition": self.partition}
        if offset is not None:
            extra["offset"] = offset
        return extra

    def __repr__(self) -> str:
        return f"PartitionState({self.topic}[{self.partition}])"


class DirectSegment(Segment[PartitionState, Message]):
    """A run the poll thread formed itself, without lanes, to run inline (see dispatch.Dispatcher)."""

    __slots__ = ()


PartitionStates = dict[tuple[str, int], PartitionState]

"""What one observation of a Kafka cluster reads for all the groups the operator serves there (pure).

The cluster observer (`cluster_observer`) reads a cluster once per round for every resource waiting on
it: one metadata request, the start and end offsets of every watched partition in batched ListOffsets
calls, each group's committed offsets, one describe of all the groups. This module plans those reads
and maps the answers back to each resource's `LagSample`; it does no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from lagpilot_operator.observations import LagSample, PartitionOffsets

PartitionKey = tuple[str, int]
T = TypeVar("T")

# librdkafka splits a ListOffsets call per partition leader; bounding a call keeps one request (and
# one failure) to a known size on clusters with tens of thousands of partitions.
MAX_PARTITIONS_PER_LIST_OFFSETS = 5000


@dataclass(frozen=True)
class Watch:
    """One resource's need: its group's offsets on its topics."""

    group_id: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class ReadPlan:
    """The reads of one round."""

    partitions: tuple[PartitionKey, ...]
    """Every partition of every watched topic that exists, each once."""
    group_partitions: Mapping[str, tuple[PartitionKey, ...]]
    """Per group, the partitions of all the topics its resources watch (one committed-offsets call each)."""
    missing_topics: frozenset[str]


def plan(watches: Iterable[Watch], topic_partitions: Mapping[str, Sequence[int]]) -> ReadPlan:
    """The reads for `watches`, given the cluster metadata (topic -> partition ids of existing topics)."""
    topics: set[str] = set()
    group_topics: dict[str, set[str]] = {}
    for watch in watches:
        topics.update(watch.topics)
        group_topics.setdefault(watch.group_id, set()).update(watch.topics)
    missing = frozenset(t for t in topics if t not in topic_partitions)

    def partitions_of(names: Iterable[str]) -> tuple[PartitionKey, ...]:
        return tuple((t, p) for t in sorted(names) if t in topic_partitions for p in sorted(topic_partitions[t]))

    return ReadPlan(partitions=partitions_of(topics),
                    group_partitions={g: partitions_of(ts) for g, ts in sorted(group_topics.items())},
                    missing_topics=missing)


def batches(items: Sequence[T], size: int = MAX_PARTITIONS_PER_LIST_OFFSETS) -> list[Sequence[T]]:
    """`items` in slices of at most `size` (one request each)."""
    return [items[start:start + size] for start in range(0, len(items), size)]


@dataclass
class ClusterReading:
    """What a round read. Errors are kept per partition and per group, so one bad group or topic fails
    only the resources that use it (texts are already condition messages, without secrets)."""

    time: float
    ends: dict[PartitionKey, int] = field(default_factory=dict)
    starts: dict[PartitionKey, int] = field(default_factory=dict)
    committed: dict[str, dict[PartitionKey, int]] = field(default_factory=dict)
    members: dict[str, int] = field(default_factory=dict)
    partition_errors: dict[PartitionKey, Exception] = field(default_factory=dict)
    group_errors: dict[str, Exception] = field(default_factory=dict)


@dataclass(frozen=True)
class TopicsMissing:
    """The watch names topics the cluster does not have."""

    topics: tuple[str, ...]


def sample_for(watch: Watch, reading: ClusterReading, read_plan: ReadPlan) -> LagSample | Exception | TopicsMissing:
    """The resource's sample from the round's reading, or what failed for it."""
    missing = tuple(t for t in watch.topics if t in read_plan.missing_topics)
    if missing:
        return TopicsMissing(missing)
    if watch.group_id in reading.group_errors:
        return reading.group_errors[watch.group_id]
    wanted = set(watch.topics)
    keys = [key for key in read_plan.group_partitions.get(watch.group_id, ()) if key[0] in wanted]
    for key in keys:
        if key in reading.partition_errors:
            return reading.partition_errors[key]
    committed = reading.committed.get(watch.group_id, {})
    offsets = tuple(
        PartitionOffsets(
            topic=topic, partition=partition,
            end_offset=max(0, reading.ends[(topic, partition)]),
            # librdkafka reports "no committed offset" as a negative logical offset (-1001).
            committed=c if (c := committed.get((topic, partition), -1)) >= 0 else None,
            start_offset=max(0, reading.starts[(topic, partition)]),
        )
        for topic, partition in keys
    )
    return LagSample(time=reading.time, partitions=offsets, members=reading.members.get(watch.group_id, 0))


"""One read of a Kafka cluster for every group the operator serves on it, and each resource's share of it.

Pure: no I/O. A lag exporter reads a cluster once per interval for all its groups; so does the operator
(`cluster_observer` runs the reads, `kafka_lag.read_cluster` talks to Kafka). This module holds what
such a read asked for (`wanted_union`), what it found (`ClusterRead`), whether a resource may take its
sample from a read already made or under way (`covers`, `fresh_enough`), when a cluster's paced reads
start (`tick_phase`, `spread_phases`, `next_tick`), when a read asks for the metadata (`TopicLayout`),
which log-start offsets it must ask for (`LogStarts`, `stale_log_starts`), what a probe of the log ends
between reads is measured against and the lags it shows (`merged_read`, `probed_read`), and the split of
the cluster-wide result into one resource's `LagSample` (`sample_for`), including which failures are that
resource's: a missing topic or a refused group fails only the resources that name it, a cluster that
does not answer fails them all.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from lagpilot_operator.core.observations import GroupProtocol, LagSample, PartitionKey, PartitionOffsets
from lagpilot_operator.kafka.kafka_lag import LagReadError, TopicMissing

# Group id -> the topics whose committed offsets a read asks for, for that group.
Wanted = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class Want:
    """What one resource reads from its cluster: its group's offsets on its topics."""

    group_id: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class GroupDescription:
    members: int
    protocol: GroupProtocol | None


@dataclass(frozen=True)
class ClusterRead:
    """What one coalesced read of a cluster found, for the `wanted` groups and topics.

    Failures are kept where they belong: `cluster_error` when nothing could be read (the metadata call
    failed, the client refused a request), `topic_errors` per topic (missing, or its offsets unreadable),
    `group_errors` per group (its committed offsets or its description unreadable: not authorized, a
    coordinator that does not answer; the first such failure of the group).
    """

    time: float
    """Epoch seconds when the read started: the time of every sample split from it (as `read_lag`)."""
    wanted: Wanted
    answered: float | None = None
    """Epoch seconds when its last answer came (None: taken as `time`). A read's age counts from here:
    a slow read is as new as its last answer when the resources waiting for it decide."""
    partitions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Partition numbers of every wanted topic that exists."""
    log_offsets: Mapping[PartitionKey, tuple[int, int]] = field(default_factory=dict)
    """(log-start, log-end) per partition."""
    committed: Mapping[str, Mapping[PartitionKey, int]] = field(default_factory=dict)
    """Committed offset per group and partition, negative (librdkafka's -1001) when never committed."""
    groups: Mapping[str, GroupDescription] = field(default_factory=dict)
    cluster_error: LagReadError | None = None
    topic_errors: Mapping[str, LagReadError] = field(default_factory=dict)
    group_errors: Mapping[str, LagReadError] = field(default_factory=dict)

    def errors(self) -> list[LagReadError]:
        """Every failure in the read (to decide whether its client should be retired)."""
        found = [self.cluster_error] if self.cluster_error is not None else []
        return found + list(self.topic_errors.values()) + list(self.group_errors.values())


def wanted_union(wants: Iterable[Want]) -> dict[str, frozenset[str]]:
    """Per group, the union of the topics the resources reading that group name (two resources may
    name one group with different topics)."""
    union: dict[str, set[str]] = {}
    for want in wants:
        union.setdefault(want.group_id, set()).update(want.topics)
    return {group: frozenset(topics) for group, topics in union.items()}


def all_topics(wanted: Wanted) -> list[str]:
    """The topics a read needs metadata and log offsets of, each once, in a stable order."""
    return sorted(set().union(*wanted.values())) if wanted else []


def covers(wanted: Wanted, want: Want) -> bool:
    """Whether a read that asked for `wanted` answers `want` (its group, on all its topics)."""
    return want.group_id in wanted and set(want.topics) <= wanted[want.group_id]


def freshness_seconds(interval_seconds: float) -> float:
    """How old a read may be and still give a resource polling every `interval_seconds` its sample.

    Half the interval: resources whose polls fall within half an interval of each other share one read,
    and a sample is never older than half a poll interval when the decision is made.
    """
    return interval_seconds / 2


def fresh_enough(read: ClusterRead, want: Want, interval_seconds: float, now: float,
                 last_taken: float | None = None) -> bool:
    """Whether `want` may take its sample from `read`, made already, at `now`.

    Its age counts from its last answer: the resources that wait for a cluster's paced read (`next_tick`)
    decide one after another once it is answered, however long it took. `last_taken` is the time of the
    read the resource took its previous sample from: a resource never gets the same read twice (a
    reconcile run again at once, a benchmark's tight loop), so its history, rates and verdicts see a new
    sample every poll, as with a read of its own.
    """
    answered = read.time if read.answered is None else read.answered
    return covers(read.wanted, want) and 0 <= now - answered <= freshness_seconds(interval_seconds) and \
        (last_taken is None or read.time > last_taken)


PHASE_SPREAD_SECONDS = 60.0


def tick_phase(cluster_key: str) -> float:
    """Where a cluster's paced reads fall: phase + k x interval, in seconds, for every interval.

    Spread by the cluster's key over a minute, so the resources of several clusters do not all decide
    in the same instant of every interval (each cluster's resources decide together, right after its
    read). One phase for all intervals, so intervals that divide each other coincide: the 10 s reads are
    every other 5 s read, and `ClusterObserver` makes them one.
    """
    fraction = int(hashlib.sha256(cluster_key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000
    return fraction * PHASE_SPREAD_SECONDS


def spread_phases(first: float, count: int, period: float) -> list[float]:
    """The phases of `count` clusters read by one operator, in the order they came: evenly over `period`
    (the shortest interval polled), the first keeping its own.

    Each cluster's resources decide together right after its read, and a lag change after a burst makes
    each of them write its status: a few ms of the operator's one core per resource. Phases drawn from
    the clusters' keys alone can fall in the same second, and then one cluster's resources wait behind
    another's (measured: 666 resources of two clusters deciding together took 3.8-4.3 s after their
    reads, 0.6-1.8 s for one cluster's 333). Evenly spread, each cluster's read and decisions have
    `period / count` to themselves.
    """
    return [first + index * period / count for index in range(count)]


def next_tick(now: float, interval_seconds: float, phase: float) -> float:
    """The first paced read at or after `now` (monotonic seconds): phase + k x interval. Every observer of
    one cluster with one interval reads at the same instants, so intervals that coincide share reads."""
    periods = math.ceil((now - phase) / interval_seconds)
    return phase + periods * interval_seconds


def next_probe(last: float, probe_seconds: float, now: float) -> float:
    """The instant of the probe after the one due at `last` (monotonic seconds): the first instant of the grid
    `last` + k x `probe_seconds` after `now`. An instant that passed while the probe (or the paced read
    before it) ran is not probed late: the probe that just answered is newer than it would have been."""
    return last + max(1, math.floor((now - last) / probe_seconds) + 1) * probe_seconds


# How long a cluster's log-start offsets serve its reads before all are asked again. Retention moves them
# (by default checked every 5 minutes: log.retention.check.interval.ms), or DeleteRecords; a read always asks
# again for the partitions where a stale start would change a lag (`stale_log_starts`). 0: every read.
LOG_START_REFRESH_SECONDS = float(os.environ.get("LAGPILOT_LOG_START_REFRESH_SECONDS", "60"))


# How long a cluster's partitions, as its last metadata request found them, serve its reads (`TopicLayout`).
# 0: every read asks for the metadata.
METADATA_REFRESH_SECONDS = float(os.environ.get("LAGPILOT_METADATA_REFRESH_SECONDS", "30"))


@dataclass
class TopicLayout:
    """A cluster's wanted topics and their partitions as its last metadata request found them, so most reads
    skip the request for the metadata of the whole cluster.

    On the fleet benchmark (1,000 groups, 3 clusters of 3,333 partitions; py-spy, samples holding the GIL)
    that request, its answer made into Python objects on every read, was 8.5 % of the operator's Python
    time. The partitions of a topic change only when it is made, deleted or grown. So a read asks for the
    metadata once per `refresh_seconds`, and at once when it wants a topic not found last time (a new
    resource's, or one still missing: its resources' TopicMissing clears on the first read after the topic
    is made), or when the last read's offsets failed for a partition (`forget`: the topic may be gone or
    smaller). What it misses: partitions added to a topic, for at most `refresh_seconds`. Consumers
    themselves find those on their metadata refresh (librdkafka's `topic.metadata.refresh.interval.ms`,
    5 minutes by default).
    """

    refresh_seconds: float = METADATA_REFRESH_SECONDS
    partitions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Each topic found, its partition numbers in order."""
    read_at: float | None = None
    """Monotonic seconds of the last metadata request; None: the next read asks."""

    def metadata_due(self, topics: Iterable[str], now: float) -> bool:
        return self.read_at is None or now - self.read_at >= self.refresh_seconds or \
            any(topic not in self.partitions for topic in topics)

    def remember(self, partitions: Mapping[str, tuple[int, ...]], now: float) -> None:
        self.partitions, self.read_at = dict(partitions), now

    def forget(self) -> None:
        """The next read asks for the metadata again."""
        self.read_at = None


@dataclass
class LogStarts:
    """A cluster's log-start offsets as its reads last found them, so most reads ask only for log ends.

    A ListOffsets call for 1,000 partitions costs the operator about 6.5 ms of CPU (the client's
    conversions both ways and librdkafka's work), and the log start of a partition changes only when
    retention or DeleteRecords removes its oldest records. A log start matters to a lag only where a group
    has no committed offset or is below it (`observations.partition_lag`); everywhere else the lag is
    end - committed. So a read asks for every log start once per `refresh_seconds`, and in between only for
    the partitions `stale_log_starts` names. The one case it misses: retention overtaking a group's
    committed offset since the last full refresh; that group's lag then counts the deleted records too,
    as KEDA's does, until the next refresh (at most `refresh_seconds`).
    """

    refresh_seconds: float = LOG_START_REFRESH_SECONDS
    known: dict[PartitionKey, int] = field(default_factory=dict)
    refreshed_at: float | None = None
    """Monotonic seconds of the last read that asked for every log start."""

    def full_read_due(self, now: float) -> bool:
        return self.refreshed_at is None or now - self.refreshed_at >= self.refresh_seconds

    def remember(self, starts: Mapping[PartitionKey, int], *, full: bool, now: float) -> None:
        """Keep what a read found: every start after a full read (partitions no longer read are forgotten),
        else the few it asked for."""
        if full:
            self.known, self.refreshed_at = dict(starts), now
        else:
            self.known.update(starts)


def stale_log_starts(ends: Mapping[PartitionKey, int], committed: Mapping[str, Mapping[PartitionKey, int]],
                     known: Mapping[PartitionKey, int]) -> list[PartitionKey]:
    """The partitions whose log start a read asks for although the last full read of them is recent: no
    known start, a log end below the known start (the topic was deleted and made again), or a group that
    never committed there or committed below the known start (its lag is counted from the log start)."""
    stale = {key for key, end in ends.items() if (start := known.get(key)) is None or end < start}
    for offsets in committed.values():
        for key, offset in offsets.items():
            if key in ends and key not in stale and offset < known[key]:  # never committed: negative
                stale.add(key)
    return sorted(stale)


def sample_for(read: ClusterRead, want: Want) -> LagSample:
    """The resource's sample from the cluster-wide read, or the failure that concerns it (raised).

    The same failures as a read of its own (`kafka_lag.read_lag`), the widest first: the cluster, a
    missing topic (the first of its topics), its group (committed offsets or description), its topics'
    log offsets.
    """
    if not covers(read.wanted, want):
        raise ValueError(f"the read did not ask for group {want.group_id} on {', '.join(want.topics)}")
    if read.cluster_error is not None:
        raise read.cluster_error
    for topic in want.topics:
        error = read.topic_errors.get(topic)
        if isinstance(error, TopicMissing):
            raise error
    if want.group_id in read.group_errors:
        raise read.group_errors[want.group_id]
    for topic in want.topics:
        if topic in read.topic_errors:
            raise read.topic_errors[topic]
    committed = read.committed.get(want.group_id, {})
    log_offsets = read.log_offsets
    partitions: list[PartitionOffsets] = []
    for topic in want.topics:
        for partition in read.partitions[topic]:
            key = (topic, partition)
            start, end = log_offsets[key]
            offset = committed.get(key, -1)
            # librdkafka reports "no committed offset" as a negative logical offset (-1001).
            # (Positional: PartitionOffsets(topic, partition, end_offset, committed, start_offset).)
            partitions.append(PartitionOffsets(topic, partition, end, offset if offset >= 0 else None, start))
    group = read.groups.get(want.group_id)
    return LagSample(time=read.time, partitions=tuple(partitions), members=group.members if group else None,
                     protocol=group.protocol if group else None)


def merged_read(whole: ClusterRead, part: ClusterRead) -> ClusterRead:
    """`whole` (a read of every group on the cluster) updated with what a later read of some of its groups
    (`part`) found: their committed offsets, descriptions and their partitions' log offsets. What a probe of
    the log ends is measured against (`probed_read`): the newest committed offset known of each group, so a
    group just read on its own is not woken again for what it consumed before that read. A failed `part`
    changes nothing; nor does one older than `whole`."""
    if part.cluster_error is not None or part.time < whole.time:
        return whole
    return dataclasses.replace(whole, committed={**whole.committed, **part.committed},
                               log_offsets={**whole.log_offsets, **part.log_offsets},
                               groups={**whole.groups, **part.groups})


def probed_read(basis: ClusterRead, ends: Mapping[PartitionKey, int],
                at: float) -> tuple[ClusterRead, frozenset[str]]:
    """`basis` with the log ends a probe asked for at `at` (epoch seconds: the samples' time), and the topics
    where one of them moved forward.

    The lags this read gives are the probe's log ends minus the committed offsets `basis` knows: each
    group's lag when its committed offsets were read plus every record produced since. Committed offsets
    only move forward (short of a reset), so that is at least the group's lag at the probe's instant. A log
    end that went back (the topic deleted and made again) or a partition `basis` does not know is left as
    `basis` has it: the next paced read answers for them.
    """
    log_offsets = dict(basis.log_offsets)
    moved: set[str] = set()
    for key, end in ends.items():
        known = log_offsets.get(key)
        if known is not None and end > known[1]:
            log_offsets[key] = (known[0], end)
            moved.add(key[0])
    return dataclasses.replace(basis, time=at, log_offsets=log_offsets), frozenset(moved)

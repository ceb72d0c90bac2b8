"""One lag read per Kafka cluster for all the resources on it (I/O).

Reading every resource on its own costs each resource a metadata request, two ListOffsets, an
OffsetFetch and a DescribeGroups per poll, so a fleet of groups on one cluster multiplies the load on
its brokers (and on the operator's threads). Lag exporters read a cluster once per interval for all
groups; the operator does the same:

* `read_cluster` reads one cluster for many groups: one metadata call for the union of the topics, one
  ListOffsets call per offset kind (earliest, latest) for the union of their partitions, the committed
  offsets of every group, one DescribeGroups call for all of them. confluent-kafka 2.16's
  `list_consumer_group_offsets` takes a single group per call (it raises for more: "Currently we support
  listing offsets for a single consumer group only"), so the groups' OffsetFetch calls are all sent
  before any answer is awaited: they run concurrently, one request per group.
* `ClusterObserver` (one per cluster connection: bootstrap servers and credentials, the key of the
  `AdminClientPool`) coalesces the resources' reads: a resource takes its sample from a read answered
  less than half its poll interval ago, or joins a read under way that covers its group and topics, or
  else starts a read for every resource registered on the cluster (after a short gathering delay when the
  resource is new there, so the resources starting together at the operator's start share their first
  read). One read of a cluster runs at a time; the next one gathers until it may start.
* It also paces them. Once a resource has polled, its next polls follow the cluster's paced reads: one
  read of the whole cluster every interval, at fixed instants (`cluster_reads.next_tick`, each cluster
  at its own phase, the clusters in use spread evenly over the interval: `spread_phases`), and every
  resource with that interval decides right after it is answered (`next_poll`). So a lag change
  reaches every resource's decision at the first read after it, and no resource takes a read that is
  most of an interval old because its own poll fell just before the cluster's next read.
* Between two paced reads, *probes* (`probe_log_ends`, every `LAGPILOT_LAG_PROBE_SECONDS` counted from the
  instant of the paced read, however long it takes to answer) ask for the log
  ends alone: one ListOffsets call for the partitions of the last read, not the OffsetFetch per group
  and the DescribeGroups a read makes. The lag a probe shows is its log ends minus the committed offsets
  last read (`cluster_reads.probed_read`): the lag decided on plus every record produced since. Records
  beyond the pace the group's producers keep pass its bar (`core.early_poll`, from the resource's last
  decision): a burst. The resources a probe shows above their bar poll at once, on a
  read of their groups alone (a *targeted read*), at most twice between two paced reads; the others keep
  waiting. A burst then waits about a probe period for a read that carries it to the decisions, not up
  to a whole interval, and a steady fleet pays one ListOffsets call per probe (`LAGPILOT_EARLY_POLLS=false`:
  none, every poll paced). Probes run only while some resource on the cluster has a bar, and stop half a
  probe period before the paced read, so they do not push it back.
* `cluster_reads.sample_for` (pure) splits a read into each resource's sample and failure.

Each cluster's reads run in their own thread, so a cluster that does not answer holds only the
resources on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator.core.early_poll import EarlyPoll
from lagpilot_operator.core.observations import LagSample, PartitionKey
from lagpilot_operator.kafka import kafka_lag
from lagpilot_operator.kafka.cluster_reads import (
    ClusterRead,
    GroupDescription,
    LogStarts,
    TopicLayout,
    Want,
    Wanted,
    all_topics,
    covers,
    fresh_enough,
    merged_read,
    next_probe,
    next_tick,
    probed_read,
    sample_for,
    spread_phases,
    stale_log_starts,
    tick_phase,
    wanted_union,
)
from lagpilot_operator.kafka.heap_trim import HeapTrimmer, libc_malloc_trim
from lagpilot_operator.kafka.kafka_lag import LagReadError, TopicMissing

log = logging.getLogger(__name__)

# How long the read started by a resource new on a cluster waits for others to ask before it is sent, so
# resources starting together share it. Short against any poll interval (>= 1 s), long against the
# scheduling jitter of daemons started together.
GATHER_SECONDS = float(os.environ.get("LAGPILOT_KAFKA_READ_GATHER_SECONDS", "0.05"))
READ_TIMEOUT_SECONDS = 10.0
# Probes of the log ends between paced reads (see the module's docstring): on unless set to false.
EARLY_POLLS = os.environ.get("LAGPILOT_EARLY_POLLS", "true").strip().lower() in ("true", "1", "yes", "on")
# Seconds between two probes, and from a paced read's instant to the first probe. Intervals shorter than two
# probe periods are not probed: their paced reads come as often. 2.5 s: one probe halfway through a 5 s
# interval (a burst waits at most about half an interval for a read that carries it). A probe of 3,340
# partitions costs about 57 ms of CPU through confluent-kafka's ListOffsets; at 1 s (four probes per 5 s
# interval) the fleet bench measured 0.8-1.0 ms more CPU per poll at 1,000 groups (docs/benchmarks.md).
LAG_PROBE_SECONDS = float(os.environ.get("LAGPILOT_LAG_PROBE_SECONDS", "2.5"))
# How often probes may bring one resource's poll forward between two paced reads: twice, so a burst a probe
# caught half-produced gets a second early poll for the rest; a group whose producers keep bursting then
# decides at most three times per interval (core/early_poll).
EARLY_POLLS_BETWEEN_READS = 2


# A probe of a cluster's log ends (`probe_log_ends`): the wanted groups, a timeout; None when it could not ask.
Probe = Callable[[Wanted, float], Mapping[PartitionKey, int] | None]


def read_cluster(admin: AdminClient, bootstrap: str, wanted: Wanted, timeout: float = READ_TIMEOUT_SECONDS,
                 requests: kafka_lag.OffsetRequests | None = None, starts: LogStarts | None = None,
                 layout: TopicLayout | None = None) -> ClusterRead:
    """One read of the cluster for the `wanted` groups and topics; failures are kept in the result, each
    with what it concerns (the cluster, a topic, a group), never raised. `requests`: the cluster's
    ListOffsets requests and TopicPartitions, reused from its last read while the partitions are the same.
    `starts`: the cluster's log-start offsets from its earlier reads; this read asks for all of them only
    when a full refresh is due, else for those `stale_log_starts` names (None: every read asks for every
    one). `layout`: the cluster's topics from its last metadata request; this read asks again only when
    `TopicLayout.metadata_due` (None: every read asks)."""
    started = time.time()
    full_starts = starts is None or starts.full_read_due(time.monotonic())
    requests = requests if requests is not None else kafka_lag.OffsetRequests()

    def failure(exc: BaseException, what: str) -> LagReadError:
        return kafka_lag.translate_error(exc, what, bootstrap, admin)

    def refused(exc: BaseException, what: str) -> ClusterRead:
        """A request refused before it was sent: nothing of this read is usable."""
        return ClusterRead(time=started, wanted=wanted, cluster_error=failure(exc, what))

    topics = all_topics(wanted)
    if layout is None or layout.metadata_due(topics, time.monotonic()):
        try:
            kafka_lag.count_requests(bootstrap, "metadata")
            metadata = admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            return refused(exc, "reading cluster metadata")
        known = {topic: tuple(sorted(found.partitions)) for topic in topics
                 if (found := metadata.topics.get(topic)) is not None and found.error is None}
        requests.keep_only(known)
        if layout is not None:
            layout.remember(known, time.monotonic())
    else:
        known = layout.partitions
    partitions = {topic: known[topic] for topic in topics if topic in known}
    topic_errors: dict[str, LagReadError] = {
        topic: TopicMissing(f"topic {topic} does not exist in the cluster at {bootstrap}; create it or fix spec.topics")
        for topic in topics if topic not in known}
    by_topic, every, keys = _offset_requests(partitions, requests)
    # Each group's partitions from its own topics (in the metadata's order): a filter of `every` per group
    # cost groups x partitions on each read (1,000 x 3,334 at the fleet benchmark's size).
    order = {topic: index for index, topic in enumerate(by_topic)}
    # A group whose topics are all missing is not asked about: its resources fail on TopicMissing.
    per_group = {group: [tp for topic in sorted((t for t in topics if t in by_topic), key=order.__getitem__)
                         for tp in by_topic[topic]] for group, topics in wanted.items()}
    per_group = {group: tps for group, tps in per_group.items() if tps}
    try:
        committed_futures = _ask_committed(admin, bootstrap, per_group, timeout)
        end_answers = kafka_lag.send_offset_requests(admin, bootstrap, every, "latest", timeout, requests, keys)
        start_answers = kafka_lag.send_offset_requests(admin, bootstrap, every, "earliest", timeout, requests,
                                                       keys) if full_starts else None
        described: dict[str, Any] = {}
        if per_group:
            kafka_lag.count_requests(bootstrap, "describe_groups")
            described = admin.describe_consumer_groups(sorted(per_group), request_timeout=timeout)
    except KafkaException as exc:
        return refused(exc, "reading offsets")

    group_errors: dict[str, LagReadError] = {}
    committed: dict[str, dict[PartitionKey, int]] = {}
    for group, future in committed_futures.items():
        try:
            committed[group] = {(tp.topic, tp.partition): tp.offset
                                for tp in future.result(timeout=timeout).topic_partitions}
        except (KafkaException, TimeoutError) as exc:
            group_errors[group] = failure(exc, f"reading offsets of group {group}")
    ends, end_failures = end_answers.split(timeout)
    if start_answers is None:  # most reads: the known starts, and a fresh one where a lag depends on it
        assert starts is not None
        stale = stale_log_starts(ends, committed, starts.known)
        stale_partitions = [TopicPartition(topic, partition) for topic, partition in stale]
        try:
            start_answers = kafka_lag.send_offset_requests(admin, bootstrap, stale_partitions, "earliest", timeout)
        except KafkaException as exc:
            return refused(exc, "reading offsets")
    found_starts, start_failures = start_answers.split(timeout)
    if starts is not None:  # from here on the known starts, this read's among them
        starts.remember(found_starts, full=full_starts, now=time.monotonic())
        found_starts = starts.known
    for failures in (end_failures, start_failures):
        for key, error in failures.items():
            topic_errors.setdefault(key[0], failure(error, f"reading the offsets of topic {key[0]}"))
    if (end_failures or start_failures) and layout is not None:
        layout.forget()  # the topic may be gone or smaller: the next read asks for the metadata
    groups: dict[str, GroupDescription] = {}
    for group, future in described.items():
        try:
            found = future.result(timeout=timeout)
            groups[group] = GroupDescription(members=len(found.members), protocol=kafka_lag.group_protocol(found.type))
        except (KafkaException, TimeoutError) as exc:
            group_errors.setdefault(group, failure(exc, f"describing group {group}"))
    # (max(0, start), max(0, end)), spelled out: a read of 1,000 partitions makes this 1,000 times.
    log_offsets = {key: (start if (start := found_starts[key]) > 0 else 0, end if end > 0 else 0)
                   for key, end in ends.items() if key in found_starts}
    read = ClusterRead(time=started, wanted=wanted, partitions=partitions, log_offsets=log_offsets,
                       committed=committed, groups=groups, topic_errors=topic_errors, group_errors=group_errors)
    if not read.errors():
        kafka_lag.forget_client_errors(admin)  # a read that worked: older login errors are history
    return read


def probe_log_ends(admin: AdminClient, bootstrap: str, wanted: Wanted, layout: TopicLayout,
                   requests: kafka_lag.OffsetRequests, timeout: float) -> dict[PartitionKey, int] | None:
    """The log end of every partition of `wanted`'s topics that `layout` knows, from one ListOffsets call: a
    probe between reads. The partitions and their requests are the last read's (`layout`, `requests`), so a
    probe asks for no metadata and makes no TopicPartition anew. None when the layout is to be asked again
    (the last read found a topic gone or smaller): the paced read finds out. A partition whose offset the
    answer does not give is left out (the paced read reports it)."""
    if layout.read_at is None:
        return None
    known = layout.partitions
    _, every, keys = _offset_requests({topic: known[topic] for topic in all_topics(wanted) if topic in known},
                                      requests)
    ends, _failures = kafka_lag.send_offset_requests(admin, bootstrap, every, "latest", timeout, requests,
                                                     keys).split(timeout)
    return ends


def _offset_requests(partitions: Mapping[str, tuple[int, ...]], requests: kafka_lag.OffsetRequests,
                     ) -> tuple[dict[str, list[TopicPartition]], list[TopicPartition], list[PartitionKey]]:
    """For `partitions` (their numbers per topic): each topic's TopicPartitions, all of them in order, and
    their keys. Reads and probes build them here alike, so a probe's ListOffsets call asks for the same
    keys as the read before it and `requests` sends that call's TopicPartitions again."""
    by_topic = {topic: requests.of_topic(topic, numbers) for topic, numbers in partitions.items()}
    every = [tp for tps in by_topic.values() for tp in tps]
    keys = [(topic, partition) for topic, numbers in partitions.items() for partition in numbers]
    return by_topic, every, keys


def _ask_committed(admin: AdminClient, bootstrap: str, per_group: Mapping[str, list[TopicPartition]],
                   timeout: float) -> dict[str, Any]:
    """Send every group's OffsetFetch (one group per call: confluent-kafka 2.16 refuses more); the answers
    are awaited after all are sent, so they are in flight together."""
    futures: dict[str, Any] = {}
    for group, tps in sorted(per_group.items()):
        kafka_lag.count_requests(bootstrap, "offset_fetch")
        futures[group] = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)],
                                                           request_timeout=timeout)[group]
    return futures


@dataclass
class _Flight:
    """A read under way: `wanted` is None while it still gathers (whoever registers meanwhile is in)."""

    result: asyncio.Future[ClusterRead]
    wanted: Wanted | None = None
    task: asyncio.Task[None] | None = None
    targeted: bool = False
    """Asks for the groups of the resources a probe woke (`wanted`, set from the start), not for everyone."""


@dataclass
class _Tick:
    """The next paced read of one interval: when it starts (monotonic), and set once it is answered."""

    at: float
    answered: asyncio.Future[None]


@dataclass
class ClusterObserver:
    """The coalesced and paced reads of one cluster connection, for the resources registered on it."""

    read: Callable[[Wanted], ClusterRead]
    """Blocking: runs in a thread."""
    probe: Probe | None = None
    """Blocking, in the same thread: the log ends of the partitions of the wanted groups' topics, within the
    timeout given (`probe_log_ends`); None: no probes."""
    gather_seconds: float = GATHER_SECONDS
    clock: Callable[[], float] = time.time
    phase: float = 0.0
    """Seconds: this cluster's paced reads fall at phase + k x interval, for every interval (`tick_phase`,
    `spread_phases`). A change takes effect from the read after the one already due."""
    monotonic: Callable[[], float] = time.monotonic
    early_polls: bool = EARLY_POLLS
    """Whether probes between paced reads bring the polls of resources whose lag rose forward."""
    probe_seconds: float = LAG_PROBE_SECONDS
    cluster: str = ""
    """The cluster's name in the metrics (its bootstrap servers)."""
    _wants: dict[Hashable, Want] = field(default_factory=dict)
    _intervals: dict[Hashable, float] = field(default_factory=dict)
    """Per owner, its poll interval as of its last sample."""
    _taken: dict[Hashable, float] = field(default_factory=dict)
    """Per owner, the time of the read its last sample came from."""
    _paced: dict[Hashable, float] = field(default_factory=dict)
    """Per owner, the interval of the paced read it last waited for."""
    _latest: ClusterRead | None = None
    """The newest read of everyone on the cluster."""
    _targeted: ClusterRead | None = None
    """The newest targeted read (the resources it woke take their samples from it)."""
    _basis: ClusterRead | None = None
    """What probes are measured against: `_latest` with the targeted reads since (`merged_read`)."""
    _flights: list[_Flight] = field(default_factory=list)
    _ticks: dict[float, _Tick] = field(default_factory=dict)
    """Per interval, its next paced read."""
    _pacers: dict[float, asyncio.Task[None]] = field(default_factory=dict)
    _early: dict[Hashable, tuple[EarlyPoll, asyncio.Future[None]]] = field(default_factory=dict)
    """Per resource waiting for its next poll, its early-poll bar and what a probe sets to wake it."""
    _woken: dict[Hashable, int] = field(default_factory=dict)
    """Per resource, how often a probe woke it since the last paced read of its interval (at most
    `EARLY_POLLS_BETWEEN_READS`)."""
    _thread: ThreadPoolExecutor | None = None
    """The cluster's own thread for its reads (one at a time): not the I/O threads the reconciles' API calls
    queue in, which after a lag change hold a status write per resource, so a paced read is never queued
    behind them, and a cluster that does not answer holds only this thread."""

    async def sample(self, owner: Hashable, want: Want, interval_seconds: float) -> LagSample:
        """`owner`'s sample (raises its `LagReadError`); registers `want` for the reads to come."""
        # A resource new on this cluster (or wanting other topics) is in no read yet, so its read waits for
        # the others starting with it (the operator's start). A known one's read goes out at once: it joins
        # a read under way or takes a fresh one when the others poll about together, so the steady state
        # adds no delay.
        gather = self.gather_seconds if self._wants.get(owner) != want else 0.0
        self._wants[owner] = want
        self._intervals[owner] = interval_seconds
        read = await self._read_for(want, interval_seconds, self._taken.get(owner), gather)
        self._taken[owner] = read.time
        return sample_for(read, want)

    async def next_poll(self, owner: Hashable, interval_seconds: float, poll_started: float,
                        early: EarlyPoll | None = None) -> None:
        """Returns when `owner` (registered by a sample) polls next: once the cluster's next paced read for
        its interval is answered. Its first paced read (or the first after a change of interval) starts
        at least half an interval after `poll_started` (monotonic), so a resource that just polled off
        the pace does not poll again at once; after that, it is always the next read not answered yet,
        however long the read or the resource's own reconcile took (an overrun waits for the next).
        With `early`, a probe that shows its lag above the bar returns it at once, a targeted read of its
        group under way."""
        not_before = -float("inf") if self._paced.get(owner) == interval_seconds else \
            poll_started + interval_seconds / 2
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if early is not None and self.early_polls and self._woken.get(owner, 0) < EARLY_POLLS_BETWEEN_READS:
            self._early[owner] = (early, woken)
        try:
            while True:
                tick = self._tick(interval_seconds)
                # asyncio.wait, not await: a tick cancelled with its pacer (the cluster left) ends the wait,
                # and the caller's cancellation does not reach the tick shared with the other resources.
                await asyncio.wait([tick.answered, woken], return_when=asyncio.FIRST_COMPLETED)
                if woken.done() or tick.at >= not_before or owner not in self._wants:
                    break
        finally:
            if self._early.get(owner, (None, None))[1] is woken:
                del self._early[owner]
        self._paced[owner] = interval_seconds

    def shortest_interval(self) -> float | None:
        """The shortest poll interval of the resources on this cluster; None before any has sampled."""
        return min(self._intervals.values(), default=None)

    def release(self, owner: Hashable) -> bool:
        """`owner` reads elsewhere or is gone; True when nobody is left on this cluster."""
        self._wants.pop(owner, None)
        self._intervals.pop(owner, None)
        self._taken.pop(owner, None)
        self._paced.pop(owner, None)
        self._early.pop(owner, None)
        self._woken.pop(owner, None)
        if self._wants:
            return False
        self.close()
        return True

    def close(self) -> None:
        """Stop pacing: nobody reads this cluster any more (the waiting resources are let go)."""
        for pacer in self._pacers.values():
            pacer.cancel()
        if self._thread is not None:
            self._thread.shutdown(wait=False)  # a read under way ends on its own timeout

    def _tick(self, interval: float) -> _Tick:
        tick = self._ticks.get(interval)
        if tick is None:
            loop = asyncio.get_running_loop()
            tick = self._ticks[interval] = _Tick(next_tick(self.monotonic(), interval, self.phase),
                                                 loop.create_future())
            self._pacers[interval] = asyncio.create_task(self._pace(interval))
        return tick

    async def _pace(self, interval: float) -> None:
        """One read of the cluster for everybody at each tick of `interval`, while a resource polls at it,
        and probes of the log ends before each tick (`_probe_until`)."""
        tick = self._ticks[interval]
        since = self.monotonic()  # the grid of the probes: from now, then from each paced read's instant
        try:
            while interval in self._intervals.values():
                await self._probe_until(tick, interval, since)
                await asyncio.sleep(max(0.0, tick.at - self.monotonic()))
                # A bug in the read (raised) is reported by each resource's own sample, which reads again.
                with contextlib.suppress(Exception):
                    await self._read_for_everyone()
                # The next tick is in place before the waiters wake, so each waits for a read still to come.
                at = next_tick(self.monotonic(), interval, self.phase)
                done = tick
                since = done.at
                tick = _Tick(at if at > done.at else at + interval, asyncio.get_running_loop().create_future())
                self._ticks[interval] = tick
                for owner in [owner for owner in self._woken if self._intervals.get(owner) == interval]:
                    del self._woken[owner]
                done.answered.set_result(None)
        finally:
            del self._ticks[interval]
            del self._pacers[interval]
            if not tick.answered.done():
                tick.answered.set_result(None)

    def _probe_due(self, interval: float) -> bool:
        """Probes for `interval`: on, a probe to call, an interval at least two probe periods long, a read to
        measure them against, and some resource waiting at `interval` with a bar."""
        return self.early_polls and self.probe is not None and 2 * self.probe_seconds <= interval and \
            self._basis is not None and any(self._intervals.get(owner) == interval for owner in self._early)

    async def _probe_until(self, tick: _Tick, interval: float, since: float) -> None:
        """Probes every `probe_seconds` from `since` (the instant of the paced read before `tick`, not its
        answer) until half a probe period before `tick`, each waking the resources whose lag it shows above
        their bar (`_wake_risen`). On the grid of the paced reads, so a slow paced read (a second and more
        at 1,000 groups, with the status writes of a burst on the same core) does not push its interval's
        probes past the next read: counted from the answer, a 5 s interval's one probe at 2.5 s fell after
        3.75 s, and was dropped, once the read took 1.25 s. A probe whose instant passed while the read (or
        the probe before it) ran goes out at once, and the next keeps to the grid. Each may take up to half
        the interval: a probe that waits for a busy broker still answers sooner than the paced read would."""
        at = since + self.probe_seconds
        while at <= tick.at - self.probe_seconds / 2 and self._probe_due(interval):
            await asyncio.sleep(max(0.0, at - self.monotonic()))
            basis = self._basis
            if self.probe is None or basis is None or not self._probe_due(interval):
                return
            sent, started = self.clock(), self.monotonic()
            try:
                ends = await asyncio.get_running_loop().run_in_executor(
                    self._executor(), self.probe, basis.wanted, interval / 2)
            except Exception:  # a cluster that does not answer: its paced read reports it to each resource
                metrics.KAFKA_LAG_PROBE_SECONDS.labels(self.cluster, "failed").observe(self.monotonic() - started)
                log.debug("probe of %s failed", self.cluster, exc_info=True)
                return
            answered = "failed" if not ends else "partial" if len(ends) < len(basis.log_offsets) else "answered"
            metrics.KAFKA_LAG_PROBE_SECONDS.labels(self.cluster, answered).observe(self.monotonic() - started)
            if ends:
                self._wake_risen(interval, ends, sent)
            at = next_probe(at, self.probe_seconds, self.monotonic())

    def _wake_risen(self, interval: float, ends: Mapping[PartitionKey, int], probed_at: float) -> None:
        """Wakes each resource waiting at `interval` whose lag with the probe's log `ends` (asked for at
        `probed_at`, epoch seconds) is above its bar, after starting a targeted read of their groups. A
        failure concerning one wakes nobody: the paced read reports it."""
        assert self._basis is not None
        probed, moved = probed_read(self._basis, ends, probed_at)
        risen: list[tuple[Hashable, Want, asyncio.Future[None]]] = []
        for owner, (early, waiting) in list(self._early.items()):
            want = self._wants.get(owner)
            if waiting.done() or want is None or self._intervals.get(owner) != interval \
                    or moved.isdisjoint(want.topics):
                continue
            try:
                if early.wakes(sample_for(probed, want)):
                    risen.append((owner, want, waiting))
            except (LagReadError, ValueError):
                continue
        if risen:
            # In flight before they wake, so each one's sample joins it (`_flight_covering`).
            self._start_flight(0.0, wanted_union(want for _, want, _ in risen))
            for owner, _, waiting in risen:
                waiting.set_result(None)
                self._woken[owner] = self._woken.get(owner, 0) + 1
            metrics.EARLY_POLLS.labels(self.cluster).inc(len(risen))
        log.debug("probe of %s: %d of %d waiting resource(s) polled early", self.cluster, len(risen),
                  len(self._early))

    def _executor(self) -> ThreadPoolExecutor:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="lagpilot-cluster-read")
        return self._thread

    async def _read_for(self, want: Want, interval_seconds: float, last_taken: float | None,
                        gather_seconds: float) -> ClusterRead:
        for latest in (self._latest, self._targeted):
            if latest is not None and fresh_enough(latest, want, interval_seconds, self.clock(), last_taken):
                return latest
        # A read under way started after the owner's last read was answered: a new read for it.
        flight = self._flight_covering([want]) or self._start_flight(gather_seconds)
        # Shielded: one resource's loop being cancelled must not cancel the others' read.
        return await asyncio.shield(flight.result)

    async def _read_for_everyone(self) -> ClusterRead:
        """A paced read: joins a read under way that covers every resource, or starts one at once."""
        flight = self._flight_covering(self._wants.values()) or self._start_flight(0.0)
        return await asyncio.shield(flight.result)

    def _flight_covering(self, wants: Iterable[Want]) -> _Flight | None:
        """A read under way that answers all of `wants`: one still gathering (it asks for everyone registered
        when it goes out) or one whose groups and topics cover them; None when there is none."""
        wanted = list(wants)
        for flight in self._flights:
            if flight.wanted is None or all(covers(flight.wanted, want) for want in wanted):
                return flight
        return None

    def _start_flight(self, gather_seconds: float, targeted: Wanted | None = None) -> _Flight:
        """A read of everyone registered when it goes out, or of the `targeted` groups and topics alone."""
        flight = _Flight(asyncio.get_running_loop().create_future(), wanted=targeted, targeted=targeted is not None)
        self._flights.append(flight)
        flight.task = asyncio.create_task(self._fly(flight, gather_seconds))
        return flight

    async def _fly(self, flight: _Flight, gather_seconds: float) -> None:
        try:
            # One read of a cluster at a time: a read asks for every group and partition on the cluster, so
            # reads side by side (resources new on it while one is under way, at the operator's start)
            # multiplied the memory of a read and the load on the brokers. This one waits, still gathering:
            # whoever needs a read meanwhile joins it.
            earlier = [other.result for other in self._flights if other is not flight]
            if earlier:
                await asyncio.wait(earlier)
            await asyncio.sleep(gather_seconds)
            if not flight.targeted:
                flight.wanted = wanted_union(self._wants.values())
            assert flight.wanted is not None
            sent = time.monotonic()
            read = await asyncio.get_running_loop().run_in_executor(self._executor(), self.read, flight.wanted)
            metrics.KAFKA_CLUSTER_READ_SECONDS.labels(self.cluster, "woken" if flight.targeted else "all").observe(
                time.monotonic() - sent)
            read = dataclasses.replace(read, answered=self.clock())
        except asyncio.CancelledError:  # the operator stopping: the waiters stop too
            flight.result.cancel()
            raise
        except Exception as exc:  # a bug: every waiter's reconcile reports it
            flight.result.set_exception(exc)
            flight.result.exception()  # retrieved: no "never retrieved" warning when nobody waits any more
        else:
            self._remember(read, flight.targeted)
            flight.result.set_result(read)
        finally:
            self._flights.remove(flight)


    def _remember(self, read: ClusterRead, targeted: bool) -> None:
        if targeted:
            self._targeted = read
            if self._basis is not None:
                self._basis = merged_read(self._basis, read)
        elif self._latest is None or read.time >= self._latest.time:
            self._latest = self._basis = read


class ClusterObservers:
    """One `ClusterObserver` per cluster connection in use, keyed like the `AdminClientPool`."""

    def __init__(self, clients: kafka_lag.AdminClientPool, gather_seconds: float = GATHER_SECONDS,
                 trimmer: HeapTrimmer | None = None) -> None:
        self._clients = clients
        self._gather_seconds = gather_seconds
        # A read's thousands of short-lived futures leave the C heap fragmented: see heap_trim.
        self._trimmer = trimmer if trimmer is not None else HeapTrimmer(libc_malloc_trim())
        self._observers: dict[str, ClusterObserver] = {}
        self._cluster_of: dict[Hashable, str] = {}

    async def sample(self, settings: Mapping[str, str], owner: Hashable, want: Want,
                     interval_seconds: float) -> LagSample:
        key = kafka_lag.settings_fingerprint(settings)
        previous = self._cluster_of.get(owner)
        if previous is not None and previous != key:  # new credentials or another cluster
            self._leave(owner, previous)
        self._cluster_of[owner] = key
        observer = self._observers.get(key)
        if observer is None:
            read, probe = self._reader(dict(settings))
            observer = self._observers[key] = ClusterObserver(read, probe, self._gather_seconds, phase=tick_phase(key),
                                                              cluster=settings["bootstrap.servers"])
            metrics.EARLY_POLLS.labels(observer.cluster)  # exported from 0, not from the first early poll
            self._spread(interval_seconds)
        return await observer.sample(owner, want, interval_seconds)

    def next_poll(self, owner: Hashable, interval_seconds: float, poll_started: float,
                  early: EarlyPoll | None = None) -> Awaitable[None] | None:
        """What `owner` awaits until its next poll: its cluster's next paced read, or a probe that
        shows its lag above `early` (`ClusterObserver.next_poll`); None when it reads no consumer group
        from Kafka (paced by its own interval then)."""
        key = self._cluster_of.get(owner)
        observer = self._observers.get(key) if key is not None else None
        return observer.next_poll(owner, interval_seconds, poll_started, early) if observer is not None else None

    def release(self, owner: Hashable) -> None:
        """`owner` no longer reads a consumer group from Kafka (gone, or another lag source)."""
        key = self._cluster_of.pop(owner, None)
        if key is not None:
            self._leave(owner, key)

    def __len__(self) -> int:
        return len(self._observers)

    def phases(self) -> list[float]:
        """Each cluster's read phase, in the order the clusters came."""
        return [observer.phase for observer in self._observers.values()]

    def _leave(self, owner: Hashable, key: str) -> None:
        observer = self._observers.get(key)
        if observer is not None and observer.release(owner):
            del self._observers[key]
            self._spread(None)

    def _spread(self, new_interval: float | None) -> None:
        """When a cluster comes or goes: the clusters' reads spread evenly over the shortest interval polled
        (`spread_phases`), so no two clusters' resources decide in the same instant."""
        observers = list(self._observers.values())
        intervals = [interval for interval in (o.shortest_interval() for o in observers) if interval is not None]
        if new_interval is not None:
            intervals.append(new_interval)
        if not observers or not intervals:
            return
        period = min(intervals)
        for observer, phase in zip(observers, spread_phases(observers[0].phase, len(observers), period), strict=True):
            observer.phase = phase
        log.info("%d Kafka cluster(s) read every %g s, at %s s of it", len(observers), period,
                 ", ".join(f"{observer.phase % period:.2f}" for observer in observers))

    def _reader(self, settings: dict[str, str]) -> tuple[Callable[[Wanted], ClusterRead], Probe]:
        """A cluster's read and its probe, sharing what its last read learned (partitions, requests)."""
        bootstrap = settings["bootstrap.servers"]
        requests = kafka_lag.OffsetRequests()
        starts = LogStarts()
        layout = TopicLayout()

        def read(wanted: Wanted) -> ClusterRead:
            result = read_cluster(self._clients.get(settings), bootstrap, wanted, requests=requests, starts=starts,
                                  layout=layout)
            if any(kafka_lag.retire_client_after(error) for error in result.errors()):
                self._clients.discard(settings)  # see AdminClientPool.discard
            self._trimmer.after_read()
            return result

        def probe(wanted: Wanted, timeout: float) -> Mapping[PartitionKey, int] | None:
            return probe_log_ends(self._clients.get(settings), bootstrap, wanted, layout, requests, timeout)

        return read, probe

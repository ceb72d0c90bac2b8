"""One observation per Kafka cluster per round, shared by every resource that reads that cluster (I/O).

A resource asks its cluster's observer for a sample (`ClusterObserver.sample`). Requests are served
by the first round that starts after they arrive (so a sample is never older than the request: a
lag change reaches the decision of the next poll), and a round serves every request waiting when it
starts: the reconcile loops wake on a shared grid (handlers.py), so resources with the same or
multiple intervals ask together and share one round. Rounds of one cluster run one at a time; each
cluster has its own observer, so a slow or dead cluster holds only the resources that use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from lagpilot_operator import fleet_reads, kafka_lag
from lagpilot_operator.fleet_reads import ClusterReading, ReadPlan, TopicsMissing, Watch
from lagpilot_operator.observations import LagSample

GATHER_SECONDS = 0.05
"""How long a round waits after the first request for the others of the same tick."""


# ListOffsets' special timestamps: the log-end and the log-start offset of each partition.
LATEST, EARLIEST = -1, -2


def offsets_client(settings: Mapping[str, str]) -> Consumer:
    """The client the rounds read start and end offsets with: a consumer's `offsets_for_times` answers a
    whole batch in one call, where the admin API builds a future per partition (3x the CPU at 1,000
    partitions). It never joins its group or commits."""
    config: dict[str, Any] = {**settings, "group.id": "lagpilot-operator-offsets", "enable.auto.commit": False,
                              "isolation.level": "read_uncommitted",  # the high watermark, as the admin API
                              "client.id": "lagpilot-operator"}
    if kafka_lag.STATISTICS_INTERVAL_MS > 0:
        config["statistics.interval.ms"] = str(kafka_lag.STATISTICS_INTERVAL_MS)
        config["stats_cb"] = kafka_lag.count_requests()
    return Consumer(config)


def read_cluster(admin: AdminClient, offsets: Consumer, bootstrap: str, watches: list[Watch],
                 timeout: float = 10.0) -> tuple[ReadPlan, ClusterReading]:
    """One round's reads (blocking). Raises `LagReadError` when the cluster cannot be read at all."""
    reading = ClusterReading(time=time.time())
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise kafka_lag.translate_error(exc, "reading cluster metadata", bootstrap, admin) from exc
    topic_partitions = {name: sorted(t.partitions) for name, t in metadata.topics.items() if t.error is None}
    read_plan = fleet_reads.plan(watches, topic_partitions)
    # The group calls first: they run in the admin client's thread while the offsets are read here.
    committed_futures = {
        group: admin.list_consumer_group_offsets(  # librdkafka takes one group per call
            [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in keys])],
            request_timeout=timeout)[group]
        for group, keys in read_plan.group_partitions.items() if keys
    }
    groups = sorted(read_plan.group_partitions)
    described = admin.describe_consumer_groups(groups, request_timeout=timeout) if groups else {}
    for batch in fleet_reads.batches(read_plan.partitions):
        for target, which in ((reading.ends, LATEST), (reading.starts, EARLIEST)):
            try:
                answered = offsets.offsets_for_times([TopicPartition(t, p, which) for t, p in batch], timeout=timeout)
            except KafkaException as exc:
                error = kafka_lag.translate_error(exc, "reading partition offsets", bootstrap, admin)
                reading.partition_errors.update(dict.fromkeys(batch, error))
                continue
            for tp in answered:
                if tp.error is not None:
                    reading.partition_errors[(tp.topic, tp.partition)] = kafka_lag.translate_error(
                        KafkaException(tp.error), f"reading offsets of {tp.topic}[{tp.partition}]", bootstrap, admin)
                else:
                    target[(tp.topic, tp.partition)] = tp.offset
    for group, committed_future in committed_futures.items():
        try:
            reading.committed[group] = {(tp.topic, tp.partition): tp.offset
                                        for tp in committed_future.result(timeout=timeout).topic_partitions}
            reading.members[group] = len(described[group].result(timeout=timeout).members)
        except (KafkaException, TimeoutError) as exc:
            reading.group_errors[group] = kafka_lag.translate_error(exc, f"reading offsets of group {group}",
                                                                    bootstrap, admin)
    admin.poll(0)  # serves the statistics callbacks (the request counter)
    offsets.poll(0)
    return read_plan, reading


@dataclass
class _Request:
    watch: Watch
    answer: asyncio.Future[LagSample]


@dataclass
class ClusterObserver:
    """The rounds of one cluster (one set of client settings)."""

    admin: Callable[[], AdminClient]
    settings: Mapping[str, str]
    offsets: Consumer | None = None
    waiting: dict[Hashable, _Request] = field(default_factory=dict)
    running: asyncio.Task[None] | None = None
    rounds: int = 0

    @property
    def bootstrap(self) -> str:
        return self.settings["bootstrap.servers"]

    def _read(self, watches: list[Watch]) -> tuple[ReadPlan, ClusterReading]:
        if self.offsets is None:
            self.offsets = offsets_client(self.settings)
        return read_cluster(self.admin(), self.offsets, self.bootstrap, watches)

    def close(self) -> None:
        offsets, self.offsets = self.offsets, None
        if offsets is not None:
            offsets.close()

    async def sample(self, owner: Hashable, watch: Watch) -> LagSample:
        """The owner's sample from the next round; raises `LagReadError` for what failed."""
        answer: asyncio.Future[LagSample] = asyncio.get_running_loop().create_future()
        previous = self.waiting.get(owner)
        if previous is not None and not previous.answer.done():
            previous.answer.cancel()
        self.waiting[owner] = _Request(watch, answer)
        if self.running is None or self.running.done():
            self.running = asyncio.create_task(self._rounds())
        return await answer

    async def _rounds(self) -> None:
        while self.waiting:
            await asyncio.sleep(GATHER_SECONDS)
            batch, self.waiting = self.waiting, {}
            live = {owner: r for owner, r in batch.items() if not r.answer.done()}
            if not live:
                continue
            self.rounds += 1
            watches = list({r.watch: None for r in live.values()})
            try:
                read_plan, reading = await asyncio.to_thread(self._read, watches)
            except kafka_lag.LagReadError as exc:
                if isinstance(exc, kafka_lag.KafkaUnreachable):
                    self.close()  # as the admin client (AdminClientPool.discard): a new one after an outage
                for request in live.values():
                    _answer(request, exc)
                continue
            except Exception as exc:  # a bug must fail this round's resources, never the observer
                for request in live.values():
                    _answer(request, kafka_lag.LagReadError(f"reading the cluster at {self.bootstrap}: {exc}"))
                continue
            for request in live.values():
                result = fleet_reads.sample_for(request.watch, reading, read_plan)
                if isinstance(result, TopicsMissing):
                    result = kafka_lag.TopicMissing(
                        f"topic {', '.join(result.topics)} does not exist in the cluster at {self.bootstrap}; "
                        "create it or fix spec.topics")
                _answer(request, result)


def _answer(request: _Request, result: LagSample | Exception) -> None:
    if request.answer.done():
        return
    if isinstance(result, Exception):
        request.answer.set_exception(result)
    else:
        request.answer.set_result(result)


@dataclass
class ClusterObservers:
    """One observer per distinct client settings (cluster and credentials)."""

    observers: dict[str, ClusterObserver] = field(default_factory=dict)

    def for_settings(self, settings: Mapping[str, str], admin: Callable[[], AdminClient],
                     in_use: Collection[str]) -> ClusterObserver:
        """The observer of `settings`; observers of settings no resource uses any more (`in_use`: the
        fingerprints with users, e.g. after a credential rotation) are closed."""
        key = kafka_lag.settings_fingerprint(settings)
        for stale in [k for k, o in self.observers.items()
                      if k not in in_use and k != key and not o.waiting and (o.running is None or o.running.done())]:
            self.observers.pop(stale).close()
        observer = self.observers.get(key)
        if observer is None:
            observer = self.observers[key] = ClusterObserver(admin=admin, settings=dict(settings))
        return observer

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
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from lagpilot_operator import fleet_reads, kafka_lag
from lagpilot_operator.fleet_reads import ClusterReading, ReadPlan, TopicsMissing, Watch
from lagpilot_operator.observations import LagSample

GATHER_SECONDS = 0.05
"""How long a round waits after the first request for the others of the same tick."""


def read_cluster(admin: AdminClient, bootstrap: str, watches: list[Watch],
                 timeout: float = 10.0) -> tuple[ReadPlan, ClusterReading]:
    """One round's reads (blocking). Raises `LagReadError` when the cluster cannot be read at all."""
    reading = ClusterReading(time=time.time())
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise kafka_lag.translate_error(exc, "reading cluster metadata", bootstrap, admin) from exc
    topic_partitions = {name: sorted(t.partitions) for name, t in metadata.topics.items() if t.error is None}
    read_plan = fleet_reads.plan(watches, topic_partitions)
    latest, earliest = OffsetSpec.latest(), OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    offset_futures = []
    for batch in fleet_reads.batches(read_plan.partitions):
        parts = [TopicPartition(t, p) for t, p in batch]
        offset_futures.append((reading.ends, admin.list_offsets({tp: latest for tp in parts}, request_timeout=timeout)))
        offset_futures.append((reading.starts,
                               admin.list_offsets({tp: earliest for tp in parts}, request_timeout=timeout)))
    committed_futures = {
        group: admin.list_consumer_group_offsets(  # librdkafka takes one group per call
            [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in keys])],
            request_timeout=timeout)[group]
        for group, keys in read_plan.group_partitions.items() if keys
    }
    groups = sorted(read_plan.group_partitions)
    described = admin.describe_consumer_groups(groups, request_timeout=timeout) if groups else {}
    for target, futures in offset_futures:
        for tp, future in futures.items():
            try:
                target[(tp.topic, tp.partition)] = future.result(timeout=timeout).offset
            except (KafkaException, TimeoutError) as exc:
                reading.partition_errors[(tp.topic, tp.partition)] = kafka_lag.translate_error(
                    exc, f"reading offsets of {tp.topic}[{tp.partition}]", bootstrap, admin)
    for group, committed_future in committed_futures.items():
        try:
            reading.committed[group] = {(tp.topic, tp.partition): tp.offset
                                        for tp in committed_future.result(timeout=timeout).topic_partitions}
            reading.members[group] = len(described[group].result(timeout=timeout).members)
        except (KafkaException, TimeoutError) as exc:
            reading.group_errors[group] = kafka_lag.translate_error(exc, f"reading offsets of group {group}",
                                                                    bootstrap, admin)
    admin.poll(0)  # serves the statistics callback (the request counter)
    return read_plan, reading


@dataclass
class _Request:
    watch: Watch
    answer: asyncio.Future[LagSample]


@dataclass
class ClusterObserver:
    """The rounds of one cluster (one set of client settings)."""

    admin: Callable[[], AdminClient]
    bootstrap: str
    waiting: dict[Hashable, _Request] = field(default_factory=dict)
    running: asyncio.Task[None] | None = None
    rounds: int = 0

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
                read_plan, reading = await asyncio.to_thread(read_cluster, self.admin(), self.bootstrap, watches)
            except kafka_lag.LagReadError as exc:
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

    def for_settings(self, settings: Mapping[str, str], admin: Callable[[], AdminClient]) -> ClusterObserver:
        key = kafka_lag.settings_fingerprint(settings)
        observer = self.observers.get(key)
        if observer is None:
            observer = self.observers[key] = ClusterObserver(admin=admin, bootstrap=settings["bootstrap.servers"])
        return observer

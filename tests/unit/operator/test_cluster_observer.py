"""The observer's rounds, without Kafka: the reads are replaced by a recorder (the asyncio coordination)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from lagpilot_operator import kafka_lag
from lagpilot_operator.cluster_observer import ClusterObserver, ClusterObservers
from lagpilot_operator.fleet_reads import ClusterReading, ReadPlan, Watch, plan
from lagpilot_operator.observations import LagSample

METADATA = {"orders": [0, 1], "payments": [0]}


class RecordingObserver(ClusterObserver):
    """Reads nothing: each round records its watches and answers offsets from `ends`."""

    def __init__(self, ends: int = 10, fail: Exception | None = None) -> None:
        super().__init__(admin=lambda: None, settings={"bootstrap.servers": "b:9092"})  # type: ignore[arg-type,return-value]
        self.ends, self.fail = ends, fail
        self.reads: list[list[Watch]] = []
        self.release, self.started = threading.Event(), threading.Event()
        self.release.set()

    def _read(self, watches: list[Watch]) -> tuple[ReadPlan, ClusterReading]:
        ends = self.ends  # what the cluster says when the round reads it
        self.started.set()
        self.release.wait(5)
        self.reads.append(watches)
        if self.fail is not None:
            raise self.fail
        keys = [("orders", 0), ("orders", 1), ("payments", 0)]
        reading = ClusterReading(time=1.0, ends=dict.fromkeys(keys, ends), starts=dict.fromkeys(keys, 0),
                                 committed={w.group_id: dict.fromkeys(keys, 4) for w in watches},
                                 members={w.group_id: 1 for w in watches})
        return plan(watches, METADATA), reading


def test_requests_of_the_same_tick_share_one_round() -> None:
    async def run() -> list[Any]:
        observer = RecordingObserver()
        results = await asyncio.gather(observer.sample("a", Watch("g1", ("orders",))),
                                       observer.sample("b", Watch("g2", ("orders", "payments"))),
                                       observer.sample("c", Watch("g1", ("orders",))))
        assert observer.rounds == 1 and len(observer.reads) == 1
        assert sorted(w.group_id for w in observer.reads[0]) == ["g1", "g2"], "one watch per distinct need"
        return results

    first, second, third = asyncio.run(run())
    assert isinstance(first, LagSample) and [p.key for p in first.partitions] == [("orders", 0), ("orders", 1)]
    assert isinstance(second, LagSample) and len(second.partitions) == 3
    assert third == first


def test_a_request_during_a_round_waits_for_the_next_one() -> None:
    async def run() -> None:
        observer = RecordingObserver(ends=10)
        observer.release.clear()
        early = asyncio.create_task(observer.sample("a", Watch("g1", ("orders",))))
        assert await asyncio.to_thread(observer.started.wait, 5), "the first round is reading"
        late = asyncio.create_task(observer.sample("b", Watch("g1", ("orders",))))
        await asyncio.sleep(0)  # the late request is queued
        observer.ends = 20  # the cluster moves after the late request arrived
        observer.release.set()
        assert (await early).partitions[0].end_offset == 10
        assert (await late).partitions[0].end_offset == 20, "a sample is never older than its request"
        assert observer.rounds == 2

    asyncio.run(run())


def test_a_failed_round_fails_its_requests_and_the_observer_keeps_serving() -> None:
    async def run() -> None:
        observer = RecordingObserver(fail=kafka_lag.KafkaUnreachable("Kafka at b:9092 did not answer"))
        with pytest.raises(kafka_lag.KafkaUnreachable):
            await observer.sample("a", Watch("g1", ("orders",)))
        observer.fail = None
        assert isinstance(await observer.sample("a", Watch("g1", ("orders",))), LagSample)

    asyncio.run(run())


def test_a_missing_topic_fails_only_its_resource() -> None:
    async def run() -> None:
        observer = RecordingObserver()
        ok, missing = await asyncio.gather(observer.sample("a", Watch("g1", ("orders",))),
                                           observer.sample("b", Watch("g2", ("gone",))), return_exceptions=True)
        assert isinstance(ok, LagSample)
        assert isinstance(missing, kafka_lag.TopicMissing) and "gone" in str(missing)

    asyncio.run(run())


def test_observers_of_settings_nobody_uses_are_closed_unless_a_round_runs() -> None:
    async def run() -> None:
        observers = ClusterObservers()
        old = observers.for_settings({"bootstrap.servers": "b:1", "sasl.password": "old"}, lambda: None,  # type: ignore[arg-type,return-value]
                                     in_use=set())
        blocker = asyncio.Event()
        old.running = asyncio.create_task(blocker.wait())
        new_settings = {"bootstrap.servers": "b:1", "sasl.password": "new"}
        in_use = {kafka_lag.settings_fingerprint(new_settings)}
        observers.for_settings(new_settings, lambda: None, in_use)  # type: ignore[arg-type,return-value]
        assert old in observers.observers.values(), "a round in flight keeps its observer"
        blocker.set()
        await old.running
        observers.for_settings(new_settings, lambda: None, in_use)  # type: ignore[arg-type,return-value]
        assert list(observers.observers.values()) != [old] and old not in observers.observers.values()

    asyncio.run(run())

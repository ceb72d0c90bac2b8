"""One read per Kafka cluster for all its resources: the split of the cluster-wide read into each resource's
sample and failure (pure), and the coalescing of the resources' reads (`ClusterObserver`, with a fake
blocking read instead of Kafka)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator.core.early_poll import EarlyPoll
from lagpilot_operator.core.observations import LagSample, PartitionOffsets, total_lag
from lagpilot_operator.kafka import cluster_observer, kafka_lag
from lagpilot_operator.kafka.cluster_reads import (
    ClusterRead,
    GroupDescription,
    Want,
    Wanted,
    covers,
    fresh_enough,
    merged_read,
    next_probe,
    next_tick,
    probed_read,
    sample_for,
    spread_phases,
    tick_phase,
    wanted_union,
)

# A cluster: partitions per topic with (log-start, log-end), committed offsets per group.
TOPICS = {"orders": {0: (0, 100), 1: (10, 50)}, "payments": {0: (0, 7)}, "audit": {0: (0, 3), 1: (0, 4)}}
COMMITTED = {"g1": {("orders", 0): 40, ("orders", 1): 5}, "g2": {("payments", 0): 7}, "g3": {}}
MEMBERS = {"g1": GroupDescription(2, "consumer"), "g2": GroupDescription(1, "classic"), "g3": GroupDescription(0, None)}


def fake_read(topics: Mapping[str, Mapping[int, tuple[int, int]]], committed: Mapping[str, Mapping[Any, int]],
              wanted: Wanted, at: float = 1000.0, **errors: Any) -> ClusterRead:
    """What `read_cluster` returns for `wanted` on a cluster holding `topics` and `committed` (Kafka's
    -1001 where a group never committed)."""
    present = {t: tuple(sorted(topics[t])) for t in set().union(*wanted.values()) if t in topics}
    missing = {t: kafka_lag.TopicMissing(f"topic {t} does not exist") for t in set().union(*wanted.values())
               if t not in topics}
    return ClusterRead(
        time=at, wanted=wanted, partitions=present,
        log_offsets={(t, p): topics[t][p] for t in present for p in present[t]},
        committed={g: {(t, p): committed.get(g, {}).get((t, p), -1001) for t in ts if t in present
                       for p in present[t]} for g, ts in wanted.items()},
        groups={g: MEMBERS.get(g, GroupDescription(0, None)) for g in wanted},
        topic_errors={**missing, **errors.get("topic_errors", {})},
        group_errors=errors.get("group_errors", {}), cluster_error=errors.get("cluster_error"))


def test_groups_are_asked_once_with_every_topic_their_resources_name() -> None:
    wants = [Want("g1", ("orders",)), Want("g2", ("payments",)), Want("g1", ("audit", "orders"))]
    assert wanted_union(wants) == {"g1": frozenset({"orders", "audit"}), "g2": frozenset({"payments"})}


def test_the_split_gives_each_resource_its_partitions_offsets_and_members() -> None:
    read = fake_read(TOPICS, COMMITTED, wanted_union([Want("g1", ("orders",)), Want("g2", ("payments", "orders"))]))
    assert sample_for(read, Want("g1", ("orders",))) == LagSample(
        time=1000.0, members=2, protocol="consumer", partitions=(
            PartitionOffsets("orders", 0, end_offset=100, committed=40, start_offset=0),
            PartitionOffsets("orders", 1, end_offset=50, committed=5, start_offset=10)))
    second = sample_for(read, Want("g2", ("payments", "orders")))
    assert [(p.topic, p.partition, p.committed) for p in second.partitions] == [
        ("payments", 0, 7), ("orders", 0, None), ("orders", 1, None)]  # its topics' order; never committed: None
    assert (second.members, second.protocol) == (1, "classic")


def test_a_missing_topic_fails_only_the_resources_that_name_it() -> None:
    read = fake_read(TOPICS, COMMITTED, wanted_union([Want("g1", ("orders",)), Want("g2", ("gone", "payments"))]))
    with pytest.raises(kafka_lag.TopicMissing, match="gone"):
        sample_for(read, Want("g2", ("gone", "payments")))
    assert len(sample_for(read, Want("g1", ("orders",))).partitions) == 2


def test_a_refused_group_fails_only_its_resources() -> None:
    refused = kafka_lag.KafkaAuthorizationFailed("reading offsets of group g2: not authorized")
    read = fake_read(TOPICS, COMMITTED, wanted_union([Want("g1", ("orders",)), Want("g2", ("orders",))]),
                     group_errors={"g2": refused})
    with pytest.raises(kafka_lag.KafkaAuthorizationFailed) as raised:
        sample_for(read, Want("g2", ("orders",)))
    assert raised.value is refused and raised.value.reason == "AuthorizationFailed"
    assert sample_for(read, Want("g1", ("orders",))).members == 2


def test_unreadable_topic_offsets_fail_only_the_resources_reading_that_topic() -> None:
    error = kafka_lag.LagReadError("reading the offsets of topic audit: Broker: Not leader or follower")
    read = fake_read(TOPICS, COMMITTED, wanted_union([Want("g1", ("orders",)), Want("g3", ("orders", "audit"))]),
                     topic_errors={"audit": error})
    with pytest.raises(kafka_lag.LagReadError, match="audit"):
        sample_for(read, Want("g3", ("orders", "audit")))
    sample_for(read, Want("g1", ("orders",)))


def test_a_cluster_failure_fails_every_resource_with_the_reason_of_today() -> None:
    down = kafka_lag.KafkaUnreachable("reading cluster metadata: Kafka at k:9092 did not answer")
    wanted = wanted_union([Want("g1", ("orders",)), Want("g2", ("payments",))])
    read = ClusterRead(time=1.0, wanted=wanted, cluster_error=down)
    for want in (Want("g1", ("orders",)), Want("g2", ("payments",))):
        with pytest.raises(kafka_lag.KafkaUnreachable) as raised:
            sample_for(read, want)
        assert raised.value.reason == "KafkaUnreachable"
    assert read.errors() == [down]


def test_a_read_that_did_not_ask_for_a_resource_cannot_answer_it() -> None:
    read = fake_read(TOPICS, COMMITTED, {"g1": frozenset({"orders"})})
    assert covers(read.wanted, Want("g1", ("orders",))) and not covers(read.wanted, Want("g1", ("orders", "audit")))
    assert not covers(read.wanted, Want("g2", ("orders",)))
    with pytest.raises(ValueError, match="did not ask"):
        sample_for(read, Want("g2", ("orders",)))


def test_a_read_serves_for_half_an_interval_and_never_twice_to_one_resource() -> None:
    want = Want("g1", ("orders",))
    read = fake_read(TOPICS, COMMITTED, wanted_union([want]), at=100.0)
    assert fresh_enough(read, want, 10, now=105.0)
    assert not fresh_enough(read, want, 10, now=105.1)      # older than half the interval
    assert not fresh_enough(read, want, 2, now=101.5)       # a shorter interval asks for a younger read
    assert not fresh_enough(read, want, 10, now=101.0, last_taken=100.0)  # the same read again
    assert fresh_enough(read, want, 10, now=101.0, last_taken=95.0)
    assert not fresh_enough(read, Want("g9", ("orders",)), 10, now=100.0)


def test_a_slow_read_is_as_young_as_its_last_answer() -> None:
    want = Want("g1", ("orders",))
    slow = dataclasses.replace(fake_read(TOPICS, COMMITTED, wanted_union([want]), at=100.0), answered=104.0)
    assert fresh_enough(slow, want, 10, now=109.0)           # sent 9 s ago, answered 5 s ago
    assert not fresh_enough(slow, want, 10, now=109.1)
    assert not fresh_enough(slow, want, 10, now=109.0, last_taken=100.0)


def test_paced_reads_fall_on_each_clusters_own_instants_of_the_interval() -> None:
    phase = tick_phase("cluster-a")
    assert 0 <= phase < 60.0 and phase == tick_phase("cluster-a")
    assert len({round(tick_phase(f"cluster-{i}") % 5.0, 1) for i in range(20)}) > 5  # spread over the interval
    ten = next_tick(1000.0, 10.0, phase)
    assert next_tick(ten, 5.0, phase) == ten  # one phase for every interval: each 10 s read is a 5 s read too
    assert next_tick(100.0, 5.0, 1.0) == 101.0
    assert next_tick(101.0, 5.0, 1.0) == 101.0        # a tick due now is this one
    assert next_tick(101.001, 5.0, 1.0) == 106.0
    assert next_tick(100.0, 10.0, 1.0) == 101.0       # 10 s ticks are every other 5 s tick: shared reads
    assert next_tick(102.0, 10.0, 1.0) == 111.0 and next_tick(107.0, 5.0, 1.0) == 111.0


offsets = st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda pair: (min(pair), max(pair)))
cluster = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                          st.dictionaries(st.integers(0, 3), offsets, min_size=1, max_size=4), max_size=4)
wants = st.lists(st.builds(Want, st.sampled_from(["g1", "g2", "g3"]),
                           st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1, max_size=3,
                                    unique=True).map(tuple)), min_size=1, max_size=6)


@given(cluster, st.dictionaries(st.sampled_from(["g1", "g2", "g3"]),
                                st.dictionaries(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)),
                                                st.integers(0, 50))), wants)
def test_reading_the_resources_together_gives_each_what_a_read_of_its_own_gives(
        topics: dict[str, dict[int, tuple[int, int]]], committed: dict[str, dict[Any, int]],
        resources: list[Want]) -> None:
    together = fake_read(topics, committed, wanted_union(resources))

    def outcome(read: ClusterRead, want: Want) -> LagSample | str:
        try:
            return sample_for(read, want)
        except kafka_lag.LagReadError as exc:
            return f"{exc.reason}: {exc}"

    for want in resources:
        assert outcome(together, want) == outcome(fake_read(topics, committed, wanted_union([want])), want)


class CountingRead:
    """A blocking read of a fake cluster that counts its calls and can be held back."""

    def __init__(self, delay: float = 0.0, **errors: Any) -> None:
        self.calls: list[Wanted] = []
        self.delay, self.errors = delay, errors
        self.lock = threading.Lock()
        self.running = self.most_at_once = 0

    def __call__(self, wanted: Wanted) -> ClusterRead:
        with self.lock:
            self.calls.append(wanted)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        started = time.time()
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return fake_read(TOPICS, COMMITTED, wanted, at=started, **self.errors)


RESOURCES = {("ns", "a"): Want("g1", ("orders",)), ("ns", "b"): Want("g2", ("payments",)),
             ("ns", "c"): Want("g3", ("orders", "audit")), ("ns", "d"): Want("g1", ("audit",)),
             ("ns", "e"): Want("g2", ("orders",))}


async def sample_all(observer: cluster_observer.ClusterObserver, interval: float = 10.0,
                     ) -> list[LagSample | BaseException]:
    return await asyncio.gather(*(observer.sample(owner, want, interval) for owner, want in RESOURCES.items()),
                                return_exceptions=True)


def test_resources_polling_together_share_one_read() -> None:
    read = CountingRead()
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.05)
    samples = asyncio.run(sample_all(observer))
    assert len(read.calls) == 1 and read.calls[0] == wanted_union(RESOURCES.values())
    for sample, want in zip(samples, RESOURCES.values(), strict=True):
        assert isinstance(sample, LagSample) and sample == sample_for(fake_read(TOPICS, COMMITTED,
                                                                                wanted_union([want]), at=sample.time),
                                                                      want)


def test_a_resource_polling_soon_after_takes_the_read_already_made_and_never_twice() -> None:
    read = CountingRead()
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.01)

    async def scenario() -> None:
        await observer.sample(("ns", "a"), RESOURCES[("ns", "a")], 10.0)
        # b is registered only now, so the first read did not ask for it: b needs a read of its own,
        # which (like every read) is for everybody registered.
        await observer.sample(("ns", "b"), RESOURCES[("ns", "b")], 10.0)
        assert len(read.calls) == 2
        await observer.sample(("ns", "b"), RESOURCES[("ns", "b")], 10.0)  # b again: a new read, not its last
        assert len(read.calls) == 3
        await observer.sample(("ns", "a"), RESOURCES[("ns", "a")], 10.0)  # a: the young read b just made
        assert len(read.calls) == 3
        await asyncio.sleep(0.05)
        await observer.sample(("ns", "x"), Want("g1", ("orders",)), 10.0)  # 50 ms old: young enough for 10 s
        assert len(read.calls) == 3
        await observer.sample(("ns", "y"), Want("g1", ("orders",)), 0.05)  # too old for a 50 ms interval
        assert len(read.calls) == 4

    asyncio.run(scenario())


def test_a_resource_joins_a_read_under_way_when_it_covers_it_and_starts_one_when_not() -> None:
    read = CountingRead(delay=0.3)
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.0)

    async def scenario() -> None:
        first = asyncio.create_task(observer.sample(("ns", "a"), RESOURCES[("ns", "a")], 10.0))
        await asyncio.sleep(0.1)  # the read for a is under way
        joined = asyncio.create_task(observer.sample(("ns", "x"), Want("g1", ("orders",)), 10.0))
        other = asyncio.create_task(observer.sample(("ns", "b"), RESOURCES[("ns", "b")], 10.0))
        await asyncio.gather(first, joined, other)

    asyncio.run(scenario())
    assert len(read.calls) == 2  # x rode along with a's read; b (another group) needed its own
    assert read.most_at_once == 1  # b's read waited for a's to end


def test_resources_new_on_the_cluster_while_a_read_is_under_way_share_the_next_read() -> None:
    read = CountingRead(delay=0.3)
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.01)

    async def scenario() -> None:
        first = asyncio.create_task(observer.sample(("ns", "a"), RESOURCES[("ns", "a")], 10.0))
        await asyncio.sleep(0.1)  # a's read is under way; four more resources arrive one after another
        later = []
        for owner in [("ns", "b"), ("ns", "c"), ("ns", "d"), ("ns", "e")]:
            later.append(asyncio.create_task(observer.sample(owner, RESOURCES[owner], 10.0)))
            await asyncio.sleep(0.02)
        await asyncio.gather(first, *later)

    asyncio.run(scenario())
    assert len(read.calls) == 2 and read.most_at_once == 1
    assert read.calls[1] == wanted_union(RESOURCES.values())


def test_only_a_resource_new_on_the_cluster_waits_for_others_to_join_its_read() -> None:
    read = CountingRead()
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.5)

    async def took(owner: tuple[str, str], want: Want) -> float:
        started = time.monotonic()
        await observer.sample(owner, want, 10.0)
        return time.monotonic() - started

    async def scenario() -> None:
        assert await took(("ns", "a"), RESOURCES[("ns", "a")]) >= 0.5       # new: gathers
        assert await took(("ns", "a"), RESOURCES[("ns", "a")]) < 0.4        # known: at once
        assert await took(("ns", "a"), Want("g1", ("orders", "audit"))) >= 0.5  # other topics: new again

    asyncio.run(scenario())
    assert len(read.calls) == 3


def test_failures_reach_only_the_resources_they_concern() -> None:
    read = CountingRead(group_errors={"g2": kafka_lag.KafkaAuthorizationFailed("not authorized")})
    samples = asyncio.run(sample_all(cluster_observer.ClusterObserver(read, gather_seconds=0.02)))
    failed = {owner for owner, sample in zip(RESOURCES, samples, strict=True) if isinstance(sample, BaseException)}
    assert failed == {("ns", "b"), ("ns", "e")}
    assert all(isinstance(samples[i], kafka_lag.KafkaAuthorizationFailed) for i in (1, 4))


def test_a_bug_in_the_read_reaches_every_waiter() -> None:
    def broken(_wanted: Wanted) -> ClusterRead:
        raise RuntimeError("bug")

    samples = asyncio.run(sample_all(cluster_observer.ClusterObserver(broken, gather_seconds=0.02)))
    assert all(isinstance(s, RuntimeError) for s in samples)


PACE = 1.0
"""The paced tests' interval: a resource takes a paced read within half of it (0.5 s) of its answer."""


async def poll_loop(observer: cluster_observer.ClusterObserver, owner: tuple[str, str], polls: int,
                    start_after: float = 0.0, interval: float = PACE) -> list[float]:
    """A resource's daemon: sample, then wait for the next poll; the times of the reads it took."""
    await asyncio.sleep(start_after)
    taken = []
    for _ in range(polls):
        started = time.monotonic()
        sample = await observer.sample(owner, RESOURCES[owner], interval)
        taken.append(sample.time)
        await observer.next_poll(owner, interval, started)
    return taken


def test_a_resource_polling_every_other_interval_shares_the_reads_where_they_coincide() -> None:
    read = CountingRead()
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.01, phase=0.3)

    async def scenario() -> tuple[list[float], list[float]]:
        every, other = await asyncio.gather(poll_loop(observer, ("ns", "a"), 6, interval=PACE),
                                            poll_loop(observer, ("ns", "b"), 3, interval=2 * PACE))
        observer.release(("ns", "a"))
        observer.release(("ns", "b"))
        return every, other

    every, other = asyncio.run(scenario())
    # b's paced reads (every 2 s) are a's reads of the same instants (every 1 s), not reads of their own.
    assert set(other[1:]) <= set(every) and len(set(other[1:])) == 2


def test_resources_polling_off_each_other_decide_together_after_each_paced_read() -> None:
    read = CountingRead()
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.01)

    async def scenario() -> list[list[float]]:
        owners = [("ns", "a"), ("ns", "b"), ("ns", "c")]
        taken = await asyncio.gather(*(poll_loop(observer, owner, 4, start_after=0.3 * i)
                                       for i, owner in enumerate(owners)))
        for owner in owners:
            observer.release(owner)
        return taken

    taken = asyncio.run(scenario())
    # The first polls are each resource's own (a new resource is in no read yet). Each first paced poll
    # comes at least half an interval after a resource's first poll, so one started later may join a
    # tick later; from then on they take the same reads: the cluster's paced read, one per interval.
    # Nine paced polls (three each, started within 0.6 s) on at most four reads, one interval apart.
    assert len({row[0] for row in taken}) == 3
    paced = sorted({read for row in taken for read in row[1:]})
    # Read times are when each read's thread ran: a busy machine delays them by a few tenths of a second.
    assert len(paced) <= 4 and all(later - earlier >= PACE / 2 for earlier, later in itertools.pairwise(paced))
    assert set(taken[0][2:]) & set(taken[2][2:])  # the first and the last started decide together
    assert observer._pacers == {}  # everyone left: the pacing stopped


def test_a_read_slower_than_half_the_interval_still_serves_every_interval() -> None:
    read = CountingRead(delay=0.7 * PACE)
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.01)

    async def scenario() -> list[float]:
        taken = await poll_loop(observer, ("ns", "a"), 4)
        observer.release(("ns", "a"))
        return taken

    taken = asyncio.run(scenario())
    # No tick skipped (two intervals apart): each paced read is the next one still to come, not the one
    # after it. (Read times are when each read's thread ran, a few tenths late on a busy machine.)
    assert all(PACE / 2 <= later - earlier < 1.5 * PACE for earlier, later in itertools.pairwise(taken[1:]))


def test_a_resource_does_not_poll_again_within_half_an_interval_of_its_first_poll() -> None:
    read = CountingRead()
    # The cluster's ticks fall 0.1 s after a whole second: whatever the moment, one is at most 1 s away.
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.0, phase=0.1)

    async def scenario() -> float:
        started = time.monotonic()
        await observer.sample(("ns", "a"), RESOURCES[("ns", "a")], PACE)
        await observer.next_poll(("ns", "a"), PACE, started)
        waited = time.monotonic() - started
        observer.release(("ns", "a"))
        return waited

    # At most the next tick after half an interval (1.5 intervals), plus a busy machine's scheduling delays.
    assert PACE / 2 <= asyncio.run(scenario()) <= 1.5 * PACE + 0.5


def test_leaving_the_cluster_lets_a_waiting_resource_go() -> None:
    read = CountingRead()
    observer = cluster_observer.ClusterObserver(read, gather_seconds=0.0, phase=0.0)

    async def scenario() -> None:
        await observer.sample(("ns", "a"), RESOURCES[("ns", "a")], 60.0)  # a tick up to a minute away
        waiting = asyncio.create_task(observer.next_poll(("ns", "a"), 60.0, time.monotonic()))
        await asyncio.sleep(0.05)
        observer.release(("ns", "a"))
        await asyncio.wait_for(waiting, 1.0)

    asyncio.run(scenario())


def patched_reads(monkeypatch: pytest.MonkeyPatch, delays: Mapping[str, float],
                  errors: Mapping[str, kafka_lag.LagReadError] | None = None) -> list[str]:
    """`read_cluster` replaced: per bootstrap a delay and maybe a cluster error; returns the calls made."""
    calls: list[str] = []

    def read(_admin: Any, bootstrap: str, wanted: Wanted, timeout: float = 10.0, requests: Any = None,
             starts: Any = None, layout: Any = None) -> ClusterRead:
        calls.append(bootstrap)
        started = time.time()
        time.sleep(delays.get(bootstrap, 0.0))
        error = (errors or {}).get(bootstrap)
        if error is not None:
            return ClusterRead(time=started, wanted=wanted, cluster_error=error)
        return fake_read(TOPICS, COMMITTED, wanted, at=started)

    monkeypatch.setattr(cluster_observer, "read_cluster", read)
    return calls


def test_a_slow_cluster_holds_only_its_own_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    patched_reads(monkeypatch, {"127.0.0.1:1": 2.0})
    observers = cluster_observer.ClusterObservers(kafka_lag.AdminClientPool(), gather_seconds=0.01)
    slow, healthy = {"bootstrap.servers": "127.0.0.1:1"}, {"bootstrap.servers": "127.0.0.1:2"}

    async def scenario() -> float:
        held = asyncio.create_task(observers.sample(slow, ("ns", "slow"), Want("g1", ("orders",)), 10.0))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await observers.sample(healthy, ("ns", "fine"), Want("g1", ("orders",)), 10.0)
        took = time.monotonic() - started
        await held
        return took

    assert asyncio.run(scenario()) < 1.0
    assert len(observers) == 2


def test_each_cluster_read_is_timed_per_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    patched_reads(monkeypatch, {"127.0.0.1:7": 0.2})
    observers = cluster_observer.ClusterObservers(kafka_lag.AdminClientPool(), gather_seconds=0.0)

    def timed() -> tuple[float, float]:
        samples = {s.name: s.value for family in metrics.KAFKA_CLUSTER_READ_SECONDS.collect()
                   for s in family.samples if s.labels.get("cluster") == "127.0.0.1:7"}
        return samples.get("lagpilot_kafka_cluster_read_duration_seconds_count", 0.0), \
            samples.get("lagpilot_kafka_cluster_read_duration_seconds_sum", 0.0)

    count, total = timed()
    asyncio.run(observers.sample({"bootstrap.servers": "127.0.0.1:7"}, ("ns", "a"), Want("g1", ("orders",)), 10.0))
    assert timed()[0] == count + 1 and timed()[1] - total >= 0.2


def test_moving_to_other_credentials_or_leaving_drops_an_unused_cluster_reader(
        monkeypatch: pytest.MonkeyPatch) -> None:
    patched_reads(monkeypatch, {})
    observers = cluster_observer.ClusterObservers(kafka_lag.AdminClientPool(), gather_seconds=0.0)
    old = {"bootstrap.servers": "127.0.0.1:1", "sasl.password": "old"}
    new = {"bootstrap.servers": "127.0.0.1:1", "sasl.password": "new"}
    want = Want("g1", ("orders",))

    async def scenario() -> None:
        await observers.sample(old, ("ns", "a"), want, 10.0)
        await observers.sample(old, ("ns", "b"), want, 10.0)
        await observers.sample(new, ("ns", "a"), want, 10.0)
        assert len(observers) == 2  # b still reads with the old credentials
        await observers.sample(new, ("ns", "b"), want, 10.0)
        assert len(observers) == 1
        observers.release(("ns", "a"))
        observers.release(("ns", "b"))
        observers.release(("ns", "b"))  # twice is harmless
        assert len(observers) == 0

    asyncio.run(scenario())


@pytest.mark.parametrize(("error", "retired"), [(kafka_lag.KafkaUnreachable("down"), True),
                                                (kafka_lag.KafkaAuthenticationFailed("refused"), False)])
def test_a_read_that_failed_in_a_way_the_cluster_recovers_from_retires_the_client(
        monkeypatch: pytest.MonkeyPatch, error: kafka_lag.LagReadError, retired: bool) -> None:
    patched_reads(monkeypatch, {}, {"127.0.0.1:1": error})
    pool = kafka_lag.AdminClientPool()
    settings = {"bootstrap.servers": "127.0.0.1:1"}
    observers = cluster_observer.ClusterObservers(pool, gather_seconds=0.0)
    client = pool.get(settings, owner=("ns", "a"))
    with pytest.raises(type(error)):
        asyncio.run(observers.sample(settings, ("ns", "a"), Want("g1", ("orders",)), 10.0))
    assert (pool.get(settings) is not client) == retired


def test_the_clusters_reads_spread_evenly_over_the_interval_the_first_keeping_its_phase() -> None:
    assert spread_phases(7.0, 1, 5.0) == [7.0]
    assert spread_phases(7.0, 2, 5.0) == [7.0, 9.5]
    assert spread_phases(1.0, 4, 10.0) == [1.0, 3.5, 6.0, 8.5]


def test_clusters_coming_and_going_are_spread_over_the_shortest_interval_polled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    patched_reads(monkeypatch, {})
    observers = cluster_observer.ClusterObservers(kafka_lag.AdminClientPool(), gather_seconds=0.0)
    clusters = [{"bootstrap.servers": f"127.0.0.1:{port}"} for port in (1, 2, 3)]
    want = Want("g1", ("orders",))

    def offsets() -> list[float]:  # each cluster's phase, as an offset from the first's within the period
        first, *others = observers.phases()
        return [round((phase - first) % 6.0, 6) for phase in others]

    async def scenario() -> None:
        await observers.sample(clusters[0], ("ns", "a"), want, 12.0)
        alone = observers.phases()
        assert alone == [tick_phase(kafka_lag.settings_fingerprint(clusters[0]))]  # one cluster: as drawn
        await observers.sample(clusters[1], ("ns", "b"), want, 6.0)
        assert observers.phases()[0] == alone[0] and offsets() == [3.0]  # the 6 s interval is the shortest
        await observers.sample(clusters[2], ("ns", "c"), want, 6.0)
        assert observers.phases()[0] == alone[0] and offsets() == [2.0, 4.0]
        observers.release(("ns", "b"))
        assert offsets() == [3.0]

    asyncio.run(scenario())


class ChangingCluster:
    """A blocking read and probe of a fake cluster whose log ends the test moves meanwhile (copies of TOPICS;
    COMMITTED as is): each read's time and the groups it asked for, and the probes made."""

    def __init__(self) -> None:
        self.topics = {topic: dict(partitions) for topic, partitions in TOPICS.items()}
        self.reads: list[tuple[float, Wanted]] = []
        self.probes = 0

    def __call__(self, wanted: Wanted) -> ClusterRead:
        started = time.time()
        self.reads.append((started, wanted))
        return fake_read(self.topics, COMMITTED, wanted, at=started)

    def probe(self, wanted: Wanted, _timeout: float) -> dict[tuple[str, int], int]:
        self.probes += 1
        return {(topic, partition): end for topic in set().union(*wanted.values())
                for partition, (_start, end) in self.topics[topic].items()}


def polls_around_a_burst(observer: cluster_observer.ClusterObserver,
                         cluster: ChangingCluster) -> dict[str, list[float]]:
    """Resources a (group g1 on orders) and b (g2 on payments) poll three times, each waiting for its next
    poll with its bar at the lag it just read; once both have polled twice, orders gets 100 records on a
    partition. The times of the reads each resource's samples came from."""
    owners = {"a": ("ns", "a"), "b": ("ns", "b")}
    taken: dict[str, list[float]] = {name: [] for name in owners}
    second_polls = asyncio.Barrier(3)

    async def resource(name: str) -> None:
        owner = owners[name]
        for poll in range(3):
            started = time.monotonic()
            sample = await observer.sample(owner, RESOURCES[owner], PACE)
            taken[name].append(sample.time)
            if poll == 1:
                await second_polls.wait()
            if poll < 2:
                await observer.next_poll(owner, PACE, started, EarlyPoll(above=total_lag(sample)))
        observer.release(owner)

    async def burst() -> None:
        await second_polls.wait()
        start, end = cluster.topics["orders"][0]
        cluster.topics["orders"][0] = (start, end + 100)

    async def scenario() -> None:
        await asyncio.gather(resource("a"), resource("b"), burst())

    asyncio.run(scenario())
    return taken


async def polls_with_bars(observer: cluster_observer.ClusterObserver, owner: tuple[str, str], interval: float,
                          polls: int, after_sample: Callable[[int], None] = lambda _poll: None) -> list[float]:
    """`owner` polls `polls` times, waiting for each next poll with its bar at the lag it just read, then
    leaves; `after_sample` is called with each poll's index once it sampled. The times of the reads its
    samples came from."""
    taken = []
    for poll in range(polls):
        started = time.monotonic()
        sample = await observer.sample(owner, RESOURCES[owner], interval)
        taken.append(sample.time)
        after_sample(poll)
        if poll < polls - 1:
            await observer.next_poll(owner, interval, started, EarlyPoll(above=total_lag(sample)))
    observer.release(owner)
    return taken


def first_tick_in(seconds: float, interval: float = PACE) -> float:
    """A phase whose next paced read (at `interval`) is `seconds` from now."""
    return (time.monotonic() + seconds) % interval


def early_polls_counted(cluster: str) -> float:
    return sum(s.value for family in metrics.EARLY_POLLS.collect() for s in family.samples
               if s.name == "lagpilot_early_polls_total" and s.labels.get("cluster") == cluster)


EVERYONE = {"g1": frozenset({"orders"}), "g2": frozenset({"payments"})}


def test_a_probe_between_two_paced_reads_brings_forward_only_the_polls_whose_lag_rose_on_a_read_of_their_group(
) -> None:
    cluster = ChangingCluster()
    counted = early_polls_counted("probe-test")
    # The first paced read 0.7 s away: both resources' first paced polls (at least half an interval after
    # their first) take it; probes every 0.2 s after it.
    observer = cluster_observer.ClusterObserver(cluster, cluster.probe, gather_seconds=0.0, phase=first_tick_in(0.7),
                                                early_polls=True, probe_seconds=0.2, cluster="probe-test")
    taken = polls_around_a_burst(observer, cluster)
    assert taken["a"][1] == taken["b"][1]  # the paced read, together
    # a's lag rose by 100: a probe woke it, and it polled on a read of its group alone; b's did not rise: it
    # waited for the next paced read of everyone left (a was done), the last read made.
    *earlier, targeted, paced = cluster.reads
    assert (taken["a"][2], taken["b"][2]) == (targeted[0], paced[0])
    assert targeted[1] == {"g1": frozenset({"orders"})} and paced[1] == {"g2": frozenset({"payments"})}
    assert [wanted for _, wanted in earlier] == [EVERYONE] * 2  # the first read and the paced one
    assert early_polls_counted("probe-test") == counted + 1
    assert cluster.probes >= 1 and probes_timed("probe-test", "answered") == cluster.probes


def probes_timed(cluster: str, outcome: str) -> float:
    return sum(s.value for family in metrics.KAFKA_LAG_PROBE_SECONDS.collect() for s in family.samples
               if s.name.endswith("_count") and s.labels == {"cluster": cluster, "outcome": outcome})


def test_a_group_whose_lag_keeps_rising_is_brought_forward_at_most_twice_between_two_paced_reads() -> None:
    """orders grows by 100 records before every probe once a has polled on the first paced read (its bar
    counts no arrivals: no produce rate): probes wake a twice, and the probes after that do not wake it
    again before the next paced read."""
    # A 3 s interval: twenty probes between two paced reads, so the two wakes fit in it on a loaded machine.
    interval = 3.0
    cluster = ChangingCluster()
    observer = cluster_observer.ClusterObserver(cluster, cluster.probe, gather_seconds=0.0,
                                                phase=first_tick_in(0.7, interval), early_polls=True,
                                                probe_seconds=0.15)
    growing = False

    def probe(wanted: Wanted, timeout: float) -> dict[tuple[str, int], int]:
        if growing:
            start, end = cluster.topics["orders"][0]
            cluster.topics["orders"][0] = (start, end + 100)
        return cluster.probe(wanted, timeout)

    observer.probe = probe

    def grow_after_the_paced_read(poll: int) -> None:
        nonlocal growing
        growing = poll >= 1

    async def scenario() -> list[float]:
        # b (g2) polls once and stays registered without a bar: the paced reads ask for g1 and g2.
        await observer.sample(("ns", "b"), RESOURCES[("ns", "b")], interval)
        return await polls_with_bars(observer, ("ns", "a"), interval, 5, grow_after_the_paced_read)

    taken = asyncio.run(scenario())
    reads = dict(cluster.reads)
    # a's first read, the paced one, two reads of g1 alone woken by probes, then the next paced read.
    woken = {"g1": frozenset({"orders"})}
    assert [reads[at] for at in taken] == [EVERYONE, EVERYONE, woken, woken, EVERYONE]
    assert cluster.probes >= 3  # probes went on after the second wake, waking nobody


class ProducedCluster(ChangingCluster):
    """orders-0's log end grows at `rate` records/s, as seen by each read and probe when it asks, plus
    `burst` records once `burst_at` probes were made."""

    def __init__(self, rate: float, burst: int, burst_at: int) -> None:
        super().__init__()
        self.rate, self.burst, self.burst_at = rate, burst, burst_at
        self.started = time.time()
        self.base = self.topics["orders"][0]

    def _produce(self) -> None:
        start, end = self.base
        burst = self.burst if self.probes >= self.burst_at else 0
        self.topics["orders"][0] = (start, end + int(self.rate * (time.time() - self.started)) + burst)

    def __call__(self, wanted: Wanted) -> ClusterRead:
        started = time.time()
        self._produce()
        self.reads.append((started, wanted))
        return fake_read(self.topics, COMMITTED, wanted, at=started)

    def probe(self, wanted: Wanted, timeout: float) -> dict[tuple[str, int], int]:
        self._produce()
        return super().probe(wanted, timeout)


@pytest.mark.parametrize("counted", [True, False])
def test_arrivals_at_the_groups_pace_wake_nobody_and_a_burst_beyond_it_does(counted: bool) -> None:
    """orders gets 2,000 records/s, and 1,000 more once four probes were made. a's bar is the lag it decided
    on plus 400 (0.2 s of arrivals: the threads' latency between asking and answering), and, `counted`, the
    arrivals at 2,000/s since that read (as `early_poll_after` makes it).
    Counted, only the burst brings a's poll forward; not counted, the pace alone does, at once."""
    cluster = ProducedCluster(rate=2_000.0, burst=1_000, burst_at=4)
    observer = cluster_observer.ClusterObserver(cluster, cluster.probe, gather_seconds=0.0, phase=first_tick_in(0.7),
                                                early_polls=True, probe_seconds=0.2)
    woken_by: list[int] = []

    async def scenario() -> None:
        # b (g2) polls once and stays registered without a bar: the paced reads ask for g1 and g2.
        await observer.sample(("ns", "b"), RESOURCES[("ns", "b")], PACE)
        owner = ("ns", "a")
        for _ in range(4):
            started = time.monotonic()
            sample = await observer.sample(owner, RESOURCES[owner], PACE)
            if dict(cluster.reads)[sample.time] != EVERYONE:
                woken_by.append(cluster.probes)
            await observer.next_poll(owner, PACE, started, EarlyPoll(
                above=total_lag(sample) + 400, arrivals_per_second=2_000.0 if counted else 0.0, since=sample.time))
        observer.release(owner)

    asyncio.run(scenario())
    if counted:
        assert woken_by == [5]  # the fifth probe, the first to see the burst, and no other
    else:
        assert woken_by and woken_by[0] < 5  # woken before the burst: the pace alone passed the bar


@pytest.mark.parametrize("settings", [{"early_polls": False, "probe_seconds": 0.2},  # off
                                      {"early_polls": True, "probe_seconds": 0.6}])  # 2 probes > the interval
def test_without_probes_a_burst_waits_for_the_paced_read(settings: dict[str, Any]) -> None:
    cluster = ChangingCluster()
    observer = cluster_observer.ClusterObserver(cluster, cluster.probe, gather_seconds=0.0,
                                                phase=first_tick_in(0.7), **settings)
    taken = polls_around_a_burst(observer, cluster)
    assert taken["a"] == taken["b"]  # every poll on the paced reads, together
    assert [wanted for _, wanted in cluster.reads] == [EVERYONE] * 3  # the first read and two paced ones
    assert cluster.probes == 0


def test_a_probe_measures_lags_from_the_newest_committed_offsets_and_log_ends_only_forward() -> None:
    wanted = wanted_union([Want("g1", ("orders",)), Want("g2", ("payments",))])
    whole = fake_read(TOPICS, COMMITTED, wanted, at=1000.0)
    # A read of g1 alone after it: g1 committed to 90 on orders-0, and orders-0's log grew to 120.
    part = fake_read({**TOPICS, "orders": {0: (0, 120), 1: (10, 50)}},
                     {"g1": {("orders", 0): 90, ("orders", 1): 5}}, {"g1": frozenset({"orders"})}, at=1003.0)
    basis = merged_read(whole, part)
    assert basis.committed["g1"][("orders", 0)] == 90 and basis.committed["g2"] == whole.committed["g2"]
    assert basis.log_offsets[("orders", 0)] == (0, 120) and basis.time == whole.time
    # A failed read, or one older than the whole read, changes nothing.
    assert merged_read(whole, dataclasses.replace(part, cluster_error=kafka_lag.KafkaUnreachable("x"))) is whole
    assert merged_read(whole, dataclasses.replace(part, time=999.0)) is whole

    # A probe: orders-0 at 150 (moved), orders-1 back at 40 (made again: left as known), payments as known,
    # and a partition the basis does not know.
    probed, moved = probed_read(basis, {("orders", 0): 150, ("orders", 1): 40, ("payments", 0): 7,
                                        ("audit", 0): 9}, at=1005.0)
    assert moved == {"orders"} and probed.time == 1005.0
    # orders-1: committed (5) below its log start (10), counted from the start as any sample counts it.
    assert total_lag(sample_for(probed, Want("g1", ("orders",)))) == (150 - 90) + (50 - 10)
    assert sample_for(probed, Want("g2", ("payments",))).partitions == \
        sample_for(basis, Want("g2", ("payments",))).partitions
    assert ("audit", 0) not in probed.log_offsets and basis.log_offsets[("orders", 0)] == (0, 120)  # a copy


@given(st.lists(st.tuples(st.integers(0, 1_000), st.integers(0, 1_000), st.integers(0, 1_000)), min_size=1,
                max_size=6))
def test_a_probes_lag_is_never_below_the_lag_at_its_instant(partitions: list[tuple[int, int, int]]) -> None:
    """Per partition: the committed offset the basis knows, the log end then, and what both moved by until
    the probe (the group consumed at most what was there). The probe's lag, log end now minus committed
    then, is at least the lag now."""
    topic_then, topic_now, committed_then, committed_now = {}, {}, {}, {}
    for index, (committed, grown, consumed) in enumerate(partitions):
        end_then = committed + grown
        end_now = end_then + consumed
        topic_then[index] = (0, end_then)
        topic_now[index] = (0, end_now)
        committed_then[("t", index)] = committed
        committed_now[("t", index)] = min(end_now, committed + consumed)
    wanted = {"g": frozenset({"t"})}
    basis = fake_read({"t": topic_then}, {"g": committed_then}, wanted)
    now = fake_read({"t": topic_now}, {"g": committed_now}, wanted)
    probed, _ = probed_read(basis, {("t", index): end for index, (_, end) in topic_now.items()}, at=1001.0)
    want = Want("g", ("t",))
    assert total_lag(sample_for(probed, want)) >= total_lag(sample_for(now, want))


class SlowCluster(ChangingCluster):
    """Each read takes `seconds` after it took the log ends; during the `burst_on`-th read, orders gets 100
    records on a partition (after that read took its log ends: it does not carry them)."""

    def __init__(self, seconds: float, burst_on: int) -> None:
        super().__init__()
        self.seconds, self.burst_on = seconds, burst_on

    def __call__(self, wanted: Wanted) -> ClusterRead:
        read = super().__call__(wanted)
        if len(self.reads) == self.burst_on:
            start, end = self.topics["orders"][0]
            self.topics["orders"][0] = (start, end + 100)
        time.sleep(self.seconds)
        return read


def test_probes_keep_to_the_paced_reads_instants_so_a_slow_read_does_not_push_them_past_the_next() -> None:
    """A 2 s interval, probes every 0.8 s, reads that take 0.9 s: the probes fall 0.8 and 1.6 s after each
    paced read's instant (the first at once on its answer). Counted from the answer, the first would fall
    at 1.7 s, past the last instant a probe may take (half a period before the next read, 1.6 s): none.
    A burst landing during the paced read reaches a's poll on a probe, not on the next paced read."""
    interval = 2.0
    cluster = SlowCluster(seconds=0.9, burst_on=3)  # b's first read, a's first read, the paced read
    observer = cluster_observer.ClusterObserver(cluster, cluster.probe, gather_seconds=0.0,
                                                phase=first_tick_in(0.7, interval), early_polls=True,
                                                probe_seconds=0.8)

    async def scenario() -> list[float]:
        await observer.sample(("ns", "b"), RESOURCES[("ns", "b")], interval)  # registered: reads ask for g2
        return await polls_with_bars(observer, ("ns", "a"), interval, 3)

    taken = asyncio.run(scenario())
    reads = dict(cluster.reads)
    # a's first read, the paced one the burst landed during, then a read of g1 alone that a probe woke.
    assert [reads[at] for at in taken] == [EVERYONE, EVERYONE, {"g1": frozenset({"orders"})}]
    assert len(cluster.reads) == 4


@pytest.mark.parametrize(("now", "expected"), [(10.1, 12.5), (12.4, 12.5), (12.5, 15.0), (13.0, 15.0), (17.6, 20.0)])
def test_the_next_probe_keeps_to_the_grid_of_the_paced_reads(now: float, expected: float) -> None:
    # Probes every 2.5 s from a probe due at 10.0, answered at `now`.
    assert next_probe(10.0, 2.5, now) == pytest.approx(expected)

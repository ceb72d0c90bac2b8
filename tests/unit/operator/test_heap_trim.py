"""The C heap is trimmed after cluster reads, at most once per interval (kafka/heap_trim.py)."""

from __future__ import annotations

import asyncio

import pytest

from lagpilot_operator.kafka import cluster_observer, kafka_lag
from lagpilot_operator.kafka.cluster_reads import ClusterRead, Want, Wanted
from lagpilot_operator.kafka.heap_trim import HeapTrimmer, libc_malloc_trim


class Trims(list[int]):
    """A fake malloc_trim that records the pad it was called with."""

    def __call__(self, pad: int) -> int:
        self.append(pad)
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trims_after_a_read_at_most_once_per_interval() -> None:
    calls = Trims()
    clock = Clock()
    trimmer = HeapTrimmer(calls, min_interval_seconds=5.0, clock=clock)
    assert trimmer.after_read()
    clock.now += 4.9
    assert not trimmer.after_read()  # several clusters' reads in a row: one trim
    clock.now += 0.1
    assert trimmer.after_read()
    assert calls == [0, 0]  # pad 0: keep nothing spare at the top of the heap


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_an_interval_of_zero_turns_trimming_off(interval: float) -> None:
    calls = Trims()
    trimmer = HeapTrimmer(calls, min_interval_seconds=interval)
    assert not trimmer.after_read()
    assert calls == []


def test_without_malloc_trim_in_the_c_library_nothing_happens() -> None:
    assert not HeapTrimmer(None).after_read()


def test_glibc_malloc_trim_is_found_and_callable() -> None:
    # The operator's images are Debian (glibc); so is the machine the tests run on.
    trim = libc_malloc_trim()
    assert trim is not None
    assert trim(0) in (0, 1)


def test_each_cluster_read_gives_the_trimmer_its_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = Trims()
    clock = Clock()

    def read(admin: object, bootstrap: str, wanted: Wanted, requests: object = None,
             starts: object = None, layout: object = None) -> ClusterRead:
        return ClusterRead(time=clock.now, wanted=wanted, partitions={"orders": (0,)},
                           log_offsets={("orders", 0): (0, 5)})

    monkeypatch.setattr(cluster_observer, "read_cluster", read)
    trimmer = HeapTrimmer(calls, min_interval_seconds=5.0, clock=clock)
    observers = cluster_observer.ClusterObservers(kafka_lag.AdminClientPool(), gather_seconds=0.0, trimmer=trimmer)
    want = Want("g1", ("orders",))

    async def scenario() -> None:
        await observers.sample({"bootstrap.servers": "127.0.0.1:1"}, ("ns", "a"), want, 10.0)
        await observers.sample({"bootstrap.servers": "127.0.0.1:2"}, ("ns", "b"), want, 10.0)
        clock.now += 5.0
        await observers.sample({"bootstrap.servers": "127.0.0.1:3"}, ("ns", "c"), want, 10.0)

    asyncio.run(scenario())
    assert calls == [0, 0]  # three reads: the second came within the interval of the first

"""`lagpilot peering-wait`'s decision: which peering entries are live, and when a fresh replica stops waiting."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from lagpilot_operator.kube.peering_wait import live_peers, wait_for_peers, wait_until_present
from support import FakeClock

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)


def entry(seconds_ago: float, lifetime: int = 60, priority: int = -5) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seconds_ago)).isoformat()}


def test_live_peers_are_those_whose_keep_alive_has_not_expired() -> None:
    status = {"a": entry(1), "b": entry(59), "c": entry(61), "d": entry(5, lifetime=3), "e": entry(0, lifetime=0)}
    assert live_peers(status, NOW) == {"a", "b"}


def test_entries_kopf_cannot_have_written_are_not_peers() -> None:
    status = {"a": entry(1), "no-time": {"priority": 1, "lifetime": 60}, "bad-time": {"lastseen": "yesterday"},
              "not-a-dict": "x", "naive": {"lastseen": (NOW - timedelta(seconds=2)).replace(tzinfo=None).isoformat()}}
    assert live_peers(status, NOW) == {"a", "naive"}
    assert live_peers(None, NOW) == set()


def wait(read: Callable[[], Sequence[Mapping[str, Any] | None]], clock: FakeClock, timeout: float) -> int:
    """`wait_for_peers` for two replicas, polling every 0.5 s on the fake clock, at NOW."""
    return wait_for_peers(read, 2, timeout, interval=0.5, clock=clock.monotonic, sleep=clock.sleep, now=lambda: NOW)


def test_waits_until_every_replica_announced_then_goes_at_once() -> None:
    clock = FakeClock()
    reads = iter([[{"me": entry(0)}], [{"me": entry(0)}], [{"me": entry(0), "peer": entry(0)}]])
    seen = wait(lambda: next(reads), clock, timeout=20)
    assert seen == 2
    assert clock.sleeps == [0.5, 0.5]


def test_a_peer_that_never_comes_delays_the_start_by_the_timeout_only() -> None:
    clock = FakeClock()
    reads: list[list[Mapping[str, Any] | None]] = []

    def read() -> list[Mapping[str, Any] | None]:
        reads.append([{"me": entry(0)}])
        return reads[-1]

    seen = wait(read, clock, timeout=2.2)
    assert seen == 1
    assert clock.now == 2.2  # the last sleep is cut to the deadline
    assert len(reads) == 6


def test_an_expired_entry_of_a_gone_pod_does_not_count_as_a_peer() -> None:
    clock = FakeClock()
    statuses = [{"me": entry(0), "old-pod": entry(300)}]
    assert wait(lambda: statuses, clock, timeout=1) == 1


def test_with_several_namespaces_every_peering_must_show_the_replicas() -> None:
    clock = FakeClock()
    reads = iter([
        [{"me": entry(0), "peer": entry(0)}, {"me": entry(0)}],    # one namespace's peering lags behind
        [{"me": entry(0), "peer": entry(0)}, {"me": entry(0), "peer": entry(0)}],
    ])
    assert wait(lambda: next(reads), clock, timeout=20) == 2
    assert clock.sleeps == [0.5]


def test_a_missing_peering_object_counts_as_nobody_announced() -> None:
    clock = FakeClock()
    assert wait(lambda: [None], clock, timeout=0) == 0


def test_the_wait_for_the_peering_objects_ends_once_all_exist() -> None:
    reads = iter([[None, {}], [{}, None], [{}, {"a": {}}], [{}, {}]])
    clock = iter(float(t) for t in range(100))
    assert wait_until_present(lambda: next(reads), 60, clock=lambda: next(clock), sleep=lambda _: None)


def test_the_wait_for_the_peering_objects_gives_up_at_its_timeout() -> None:
    now = [0.0]
    reads: list[float] = []

    def read() -> list[None]:
        reads.append(now[0])
        return [None]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert not wait_until_present(read, 10, interval=4, clock=lambda: now[0], sleep=sleep)
    assert reads == [0.0, 4.0, 8.0, 10.0]

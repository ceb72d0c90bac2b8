"""Shard Leases (pure): the hash, expiry by the observer's clock, the balance, the holder's window, fencing."""

from __future__ import annotations

from collections import Counter

import pytest

from lagpilot_operator.kube import shards
from lagpilot_operator.kube.shards import Holding, LeaseObserver, LeaseRecord, ShardSettings

BASE = "lp"


def lease(shard: int, holder: str, version: str, transitions: int = 0, duration: float = 6.0) -> LeaseRecord:
    return LeaseRecord(shards.shard_lease_name(BASE, shard), holder, version, transitions, duration)


def member(identity: str, version: str) -> LeaseRecord:
    return LeaseRecord(shards.member_lease_name(BASE, identity), identity, version, 0, 6.0)


def test_shard_of_is_stable_and_spreads() -> None:
    # Fixed values: a salted hash() would differ between processes, and replicas must agree.
    assert shards.shard_of("ns", "orders", 3) == shards.shard_of("ns", "orders", 3)
    assert [shards.shard_of("ns", f"g{i}", 7) for i in range(5)] == \
        [shards.shard_of("ns", f"g{i}", 7) for i in range(5)]
    counts = Counter(shards.shard_of("ns", f"group-{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3}
    assert min(counts.values()) > 850  # within ~15 % of an even 1,000 each
    assert shards.shard_of("ns", "x", 1) == 0


def test_shard_of_known_value() -> None:
    # Pinned: a change of the hash would move every resource at the next upgrade.
    import hashlib

    digest = int.from_bytes(hashlib.sha256(b"default/g0").digest()[:8], "big")
    assert shards.shard_of("default", "g0", 16) == digest % 16


def test_expiry_is_measured_from_the_observers_sighting() -> None:
    observer = LeaseObserver()
    observer.observe([lease(0, "a", "1")], now=100.0)
    assert observer.is_live(lease(0, "a", "1").name, 105.9)
    observer.observe([lease(0, "a", "1")], now=105.0)  # the same version again: not a renewal
    assert not observer.is_live(lease(0, "a", "1").name, 106.0)
    observer.observe([lease(0, "a", "2")], now=106.5)  # renewed: live for another duration from now
    assert observer.is_live(lease(0, "a", "2").name, 112.4)
    assert not observer.is_live(lease(0, "a", "2").name, 112.5)


def test_a_released_or_unknown_lease_is_not_live() -> None:
    observer = LeaseObserver()
    observer.observe([lease(0, "", "5")], now=0.0)
    assert not observer.is_live(lease(0, "", "5").name, 0.0)
    assert not observer.is_live("nope", 0.0)
    observer.observe([], now=1.0)
    assert observer.seen == {}


@pytest.mark.parametrize(("shard_count", "members", "expected"), [
    (3, ["a", "b", "c"], {"a": 1, "b": 1, "c": 1}),
    (3, ["a", "b"], {"a": 2, "b": 1}),
    (4, ["c", "a", "b"], {"a": 2, "b": 1, "c": 1}),
    (2, ["a", "b", "c"], {"a": 1, "b": 1, "c": 0}),
    (5, ["a"], {"a": 5}),
])
def test_targets_add_up_to_the_shards(shard_count: int, members: list[str], expected: dict[str, int]) -> None:
    assert {m: shards.target_count(m, members, shard_count) for m in members} == expected
    assert sum(shards.target_count(m, members, shard_count) for m in members) == shard_count


def test_a_lone_replica_takes_every_free_shard() -> None:
    observer = LeaseObserver()
    observer.observe([lease(0, "", "1"), lease(1, "", "2")], now=0.0)  # shard 2 has no Lease yet
    plan = shards.plan("a", 3, BASE, observer, {}, {"a"}, now=0.0)
    assert sorted(plan.acquire) == [0, 1, 2] and plan.renew == () and plan.release == ()


def test_a_live_lease_of_another_replica_is_left_alone_and_an_expired_one_taken() -> None:
    observer = LeaseObserver()
    observer.observe([lease(0, "b", "1"), lease(1, "c", "1"), lease(2, "", "1")], now=0.0)
    plan = shards.plan("a", 3, BASE, observer, {}, {"a", "b", "c"}, now=1.0)
    assert plan.acquire == (2,)
    # b dies: its Lease stops changing. c keeps renewing. a already holds 2 and b is no member any more.
    held = {2: Holding(2, 1, 1.0, 6.0)}
    observer.observe([lease(0, "b", "1"), lease(1, "c", "2"), lease(2, "a", "2", 1)], now=5.0)
    assert shards.plan("a", 3, BASE, observer, held, {"a", "c"}, now=5.9).acquire == ()  # b's still live
    observer.observe([lease(0, "b", "1"), lease(1, "c", "3"), lease(2, "a", "3", 1)], now=6.0)
    plan = shards.plan("a", 3, BASE, observer, held, {"a", "c"}, now=6.0)
    assert plan.acquire == (0,) and plan.renew == (2,)


def test_a_replica_above_its_share_releases_one_shard_per_round() -> None:
    observer = LeaseObserver()
    observer.observe([lease(s, "a", "1", 3) for s in range(3)], now=0.0)
    held = {s: Holding(s, 3, 0.0, 6.0) for s in range(3)}
    plan = shards.plan("a", 3, BASE, observer, held, {"a", "b", "c"}, now=1.0)
    assert len(plan.release) == 1 and len(plan.renew) == 2 and plan.acquire == ()
    # A newcomer waits for released shards; it does not take live ones.
    newcomer = shards.plan("b", 3, BASE, observer, {}, {"a", "b", "c"}, now=1.0)
    assert newcomer.acquire == ()


def test_a_shard_taken_over_while_we_were_paused_is_lost() -> None:
    observer = LeaseObserver()
    observer.observe([lease(0, "b", "9", 4)], now=50.0)
    plan = shards.plan("a", 2, BASE, observer, {0: Holding(0, 3, 0.0, 6.0)}, {"a", "b"}, now=50.0)
    assert plan.lost == (0,) and 0 not in plan.renew and 0 not in plan.acquire


def test_our_own_lease_from_before_a_restart_is_waited_out() -> None:
    # The record names us, but this process holds nothing: an earlier run may still be acting.
    observer = LeaseObserver()
    observer.observe([lease(0, "a", "3")], now=0.0)
    assert shards.plan("a", 1, BASE, observer, {}, {"a"}, now=1.0).acquire == ()
    assert shards.plan("a", 1, BASE, observer, {}, {"a"}, now=6.0).acquire == (0,)


def test_racing_replicas_prefer_different_free_shards() -> None:
    observer = LeaseObserver()
    observer.observe([lease(s, "", "1") for s in range(8)], now=0.0)
    members = {f"op-{i}" for i in range(4)}
    first = {m: shards.plan(m, 8, BASE, observer, {}, members, 0.0).acquire for m in members}
    assert all(len(wanted) == 2 for wanted in first.values())
    assert len({s for wanted in first.values() for s in wanted}) >= 5  # mostly distinct, not all the same two


def test_the_holder_stops_a_margin_before_anyone_may_take_over() -> None:
    holding = Holding(0, 2, renewed_at=10.0, duration_seconds=6.0)
    assert shards.may_act(holding, 13.9, margin_seconds=2.0)
    assert not shards.may_act(holding, 14.0, margin_seconds=2.0)
    assert not shards.may_act(None, 0.0, 0.0)
    # Observers saw the renewal no earlier than it was sent: they wait until at least 16.0.
    observer = LeaseObserver()
    observer.observe([lease(0, "a", "7", 2)], now=10.0)
    assert observer.is_live(lease(0, "a", "7").name, 15.9)


def test_fencing_refuses_only_a_later_term_of_the_same_shard() -> None:
    ours = shards.fencing_token(3, 1, 4)
    assert ours == "3/1:4"
    assert shards.token_is_stale(ours, "3/1:5")
    assert not shards.token_is_stale(ours, "3/1:4")
    assert not shards.token_is_stale(ours, "3/1:3")
    assert not shards.token_is_stale(ours, None)
    assert not shards.token_is_stale(ours, "garbage")
    assert not shards.token_is_stale(ours, "4/1:9")  # another layout (shards changed): the Lease fences


def test_member_lease_names_are_dns_names() -> None:
    assert shards.member_lease_name("lp", "lagpilot-7f9c-abcde") == "lp-member-lagpilot-7f9c-abcde"
    assert shards.member_lease_name("lp", "Host_1.local-42") == "lp-member-host-1-local-42"
    assert len(shards.member_lease_name("lp", "x" * 300)) < 63


def test_settings_from_env() -> None:
    assert ShardSettings.from_env({}, "me", "ns") is None
    assert ShardSettings.from_env({"LAGPILOT_SHARDS": "1"}, "me", "ns") is None
    found = ShardSettings.from_env({"LAGPILOT_SHARDS": "3", "POD_ID": "pod-a", "POD_NAMESPACE": "ops"}, "me", "ns")
    assert found == ShardSettings(shards=3, identity="pod-a", namespace="ops")
    fast = ShardSettings.from_env({"LAGPILOT_SHARDS": "3", "LAGPILOT_SHARD_LEASE_SECONDS": "2",
                                   "LAGPILOT_SHARD_RENEW_SECONDS": "0.5", "LAGPILOT_SHARD_IDENTITY": "x"}, "me", "ns")
    assert fast is not None and (fast.lease_seconds, fast.renew_seconds, fast.margin_seconds, fast.identity) == \
        (2, 0.5, 0.5, "x")
    with pytest.raises(ValueError, match="must exceed"):
        ShardSettings.from_env({"LAGPILOT_SHARDS": "3", "LAGPILOT_SHARD_LEASE_SECONDS": "2"}, "me", "ns")

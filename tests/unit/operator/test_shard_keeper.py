"""The shard keeper's rounds against an in-memory Lease API with the API server's resourceVersion rules."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from lagpilot_operator.kube import shards
from lagpilot_operator.kube.shard_keeper import ShardKeeper
from lagpilot_operator.kube.shards import ShardSettings

NAMESPACE = "ops"


class FakeLeases:
    """create / replace (409 on a stale resourceVersion) / list by label / delete, as the API server does."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.writes: list[tuple[str, str | None]] = []

    def _store(self, body: dict[str, Any]) -> Any:
        stored = {**body, "metadata": {**body["metadata"], "resourceVersion": str(next(self.versions))}}
        self.leases[body["metadata"]["name"]] = stored
        self.writes.append((body["metadata"]["name"], body["spec"]["holderIdentity"]))
        return _model(stored)

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any]) -> Any:
        if body["metadata"]["name"] in self.leases:
            raise ApiException(status=409)
        return self._store(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: dict[str, Any]) -> Any:
        current = self.leases.get(name)
        if current is None:
            raise ApiException(status=404)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409)
        return self._store(body)

    def list_namespaced_lease(self, namespace: str, label_selector: str) -> Any:
        return SimpleNamespace(items=[_model(lease) for lease in self.leases.values()])

    def delete_namespaced_lease(self, name: str, namespace: str, body: Any = None) -> None:
        self.leases.pop(name, None)


def _model(lease: dict[str, Any]) -> Any:
    spec = lease["spec"]
    return SimpleNamespace(
        metadata=SimpleNamespace(name=lease["metadata"]["name"], resource_version=lease["metadata"]["resourceVersion"]),
        spec=SimpleNamespace(holder_identity=spec["holderIdentity"], lease_transitions=spec["leaseTransitions"],
                             lease_duration_seconds=spec["leaseDurationSeconds"]))


def fake_api() -> Any:
    """A FakeLeases where the keeper wants a CoordinationV1Api."""
    return FakeLeases()


def keeper(identity: str, count: int = 2) -> ShardKeeper:
    return ShardKeeper(ShardSettings(shards=count, identity=identity, namespace=NAMESPACE, lease_prefix="lp"))


def resource_of(shard: int, count: int = 2) -> str:
    return next(f"g{i}" for i in range(1000) if shards.shard_of(NAMESPACE, f"g{i}", count) == shard)


def test_a_lone_replica_takes_every_shard_and_renews_without_listing() -> None:
    api, first = fake_api(), keeper("a")
    first.observe_round(api)
    assert sorted(first.held) == [0, 1]
    assert first.gate(NAMESPACE, resource_of(0)) == "2/0:0"
    before = dict(first.held)
    first.renew_round(api)
    assert all(first.held[s].renewed_at >= before[s].renewed_at for s in before)
    assert sorted(api.writes[-2:]) == [("lp-shard-0", "a"), ("lp-shard-1", "a")]


def test_a_shard_is_handed_over_only_after_its_running_reconcile_ends() -> None:
    api, first, second = fake_api(), keeper("a"), keeper("b")
    first.observe_round(api)
    name = resource_of(0)
    other = resource_of(1)
    assert first.enter(NAMESPACE, name) == "2/0:0" and first.enter(NAMESPACE, other) == "2/1:0"
    second.observe_round(api)  # b's member Lease appears; a's shards are live: b takes nothing
    assert second.held == {}
    first.observe_round(api)  # a now sees two members: one shard must go
    (giving,) = first.releasing
    busy = name if giving == 0 else other
    assert first.gate(NAMESPACE, busy) is None  # nothing new starts under it
    assert first.still_holds(f"2/{giving}:0")  # the running reconcile may still write: the term holds
    first.renew_round(api)  # and its Lease is still renewed
    second.observe_round(api)
    assert second.held == {}, "b must not take a shard whose reconcile still runs in a"
    first.leave(NAMESPACE, busy)
    first.observe_round(api)
    assert giving not in first.held and not first.still_holds(f"2/{giving}:0")
    second.observe_round(api)
    assert list(second.held) == [giving] and second.held[giving].transitions == 1  # a new term


def test_a_renewal_conflict_drops_the_shard() -> None:
    api, first = fake_api(), keeper("a", count=1)
    first.observe_round(api)
    lease = api.leases["lp-shard-0"]
    api._store({**lease, "spec": {**lease["spec"], "holderIdentity": "intruder"}})
    first.renew_round(api)
    assert first.held == {} and first.gate(NAMESPACE, "g0") is None


@pytest.mark.parametrize("busy", [True, False])
def test_release_all_hands_every_shard_over(busy: bool) -> None:
    api, first = fake_api(), keeper("a")
    first.observe_round(api)
    if busy:
        first.enter(NAMESPACE, resource_of(0))
    first.release_all(api)
    assert {name: lease["spec"]["holderIdentity"] for name, lease in api.leases.items()
            if "shard" in name} == {"lp-shard-0": None, "lp-shard-1": None}

"""The shard Leases' API calls (I/O): one asyncio task per operator renews, takes and gives up Leases.

Every round (`renew_seconds`): list this operator set's Leases (one call, by label), renew this
replica's member Lease, then do what `shards.plan` says. Every write is a replace carrying the
resourceVersion just read, so two replicas can never both take one Lease: the second gets 409 and
tries again next round. What the replica holds is in memory (`held`); `gate` answers the daemons.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator.kube import shards
from lagpilot_operator.kube.shards import Holding, LeaseObserver, LeaseRecord, ShardSettings

log = logging.getLogger(__name__)
SET_LABEL = "lagpilot.io/lease-set"
ROLE_LABEL = "lagpilot.io/lease-role"
STALE_MEMBER_DURATIONS = 10
"""A member Lease unchanged for this many durations is a replica long gone: it is deleted."""


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: Any) -> LeaseRecord:
    spec = lease.spec
    return LeaseRecord(name=lease.metadata.name, holder=(spec.holder_identity or "") if spec else "",
                       resource_version=lease.metadata.resource_version or "",
                       transitions=int((spec.lease_transitions if spec else 0) or 0),
                       duration_seconds=float((spec.lease_duration_seconds if spec else 0) or 0))


class ShardKeeper:
    """This replica's shard Leases: kept renewed, balanced with the other replicas, released on stop."""

    def __init__(self, settings: ShardSettings) -> None:
        self.settings = settings
        self.observer = LeaseObserver()
        self.held: dict[int, Holding] = {}
        self._changed = asyncio.Event()

    # --- what the daemons ask --------------------------------------------------------------------

    def gate(self, namespace: str, name: str) -> str | None:
        """The fencing token to act under on this resource now, or None when another replica serves it."""
        shard = shards.shard_of(namespace, name, self.settings.shards)
        holding = self.held.get(shard)
        if not shards.may_act(holding, time.monotonic(), self.settings.margin_seconds):
            return None
        assert holding is not None
        return shards.fencing_token(self.settings.shards, shard, holding.transitions)

    def still_holds(self, token: str) -> bool:
        """Whether `token`'s term is still held and within its safe window (checked before each write)."""
        for shard, holding in dict(self.held).items():  # the keeper's thread may change it meanwhile
            if shards.fencing_token(self.settings.shards, shard, holding.transitions) == token:
                return shards.may_act(holding, time.monotonic(), self.settings.margin_seconds)
        return False

    async def changed(self) -> None:
        """Returns when the set of held shards changes next."""
        await self._changed.wait()

    def _notify(self) -> None:
        metrics.SHARDS_HELD.set(len(self.held))
        self._changed.set()
        self._changed = asyncio.Event()

    # --- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        log.info("sharding: %s serves its share of %d shards (Leases %s-shard-* in %s)", s.identity, s.shards,
                 s.lease_prefix, s.namespace)
        while True:
            before = set(self.held)
            try:
                await asyncio.to_thread(self.round)
            except Exception:  # the API server unreachable: holdings lapse on their own (may_act)
                log.exception("shard Lease round failed; retrying")
            now = time.monotonic()
            expired = [shard for shard, h in self.held.items() if not shards.may_act(h, now, s.margin_seconds)]
            if expired:
                log.warning("shards %s not renewed in time: no longer acting on them", expired)
            if set(self.held) != before:
                self._notify()  # in the event loop: asyncio.Event is not thread-safe
            await asyncio.sleep(s.renew_seconds)

    def round(self) -> None:
        """One round (blocking API calls; run in a thread)."""
        s = self.settings
        api = client.CoordinationV1Api()
        leases = api.list_namespaced_lease(s.namespace, label_selector=f"{SET_LABEL}={s.lease_prefix}").items
        now = time.monotonic()
        self.observer.observe((_record(lease) for lease in leases), now)
        self._keep_member(api, now)
        members = {sighting.record.holder for name, sighting in self.observer.seen.items()
                   if name.startswith(f"{s.lease_prefix}-member-") and self.observer.is_live(name, now)}
        plan = shards.plan(s.identity, s.shards, s.lease_prefix, self.observer, self.held, members, now)
        for shard in plan.lost:
            log.warning("shard %d was taken over by another replica", shard)
            self.held.pop(shard, None)
        for shard in plan.release:
            self.held.pop(shard, None)  # stop acting first, then hand it over
            self._write_shard(api, shard, holder=None)
            log.info("shard %d released for a replica with fewer shards", shard)
        for shard in plan.renew:
            self._write_shard(api, shard, holder=s.identity)
        for shard in plan.acquire:
            if self._write_shard(api, shard, holder=s.identity, acquire=True):
                metrics.SHARD_TAKEOVERS.inc()
                log.info("shard %d acquired (term %d)", shard, self.held[shard].transitions)
        self._forget_stale_members(api, now)

    def _keep_member(self, api: client.CoordinationV1Api, now: float) -> None:
        s = self.settings
        name = shards.member_lease_name(s.lease_prefix, s.identity)
        sighting = self.observer.seen.get(name)
        body = self._body(name, "member", s.identity, sighting.record.transitions if sighting else 0,
                          sighting.record.resource_version if sighting else None, acquire=sighting is None)
        try:
            if sighting is None:
                api.create_namespaced_lease(s.namespace, body)
            else:
                api.replace_namespaced_lease(name, s.namespace, body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _write_shard(self, api: client.CoordinationV1Api, shard: int, holder: str | None,
                     acquire: bool = False) -> bool:
        """Renew, take or release one shard Lease; False when another replica got there first."""
        s = self.settings
        name = shards.shard_lease_name(s.lease_prefix, shard)
        sighting = self.observer.seen.get(name)
        transitions = (sighting.record.transitions if sighting else -1) + (1 if acquire else 0)
        body = self._body(name, "shard", holder, transitions, sighting.record.resource_version if sighting else None,
                          acquire=acquire)
        sent_at = time.monotonic()  # before the call: the window is measured from the earliest moment
        try:
            if sighting is None:
                api.create_namespaced_lease(s.namespace, body)
            else:
                api.replace_namespaced_lease(name, s.namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):  # someone else wrote it since our read: theirs
                if self.held.pop(shard, None) is not None:
                    log.warning("shard %d: renewal conflicted, another replica holds it now", shard)
                return False
            raise
        if holder is not None:
            self.held[shard] = Holding(shard, transitions, sent_at, float(s.lease_seconds))
        return True

    def _body(self, name: str, role: str, holder: str | None, transitions: int, resource_version: str | None,
              acquire: bool) -> Any:
        """A whole Lease (plain dicts serialize as the client's models do)."""
        s = self.settings
        now = _micro_time()
        spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": s.lease_seconds,
                                "leaseTransitions": max(0, transitions), "renewTime": now if holder else None}
        if acquire:
            spec["acquireTime"] = now
        metadata: dict[str, Any] = {"name": name, "labels": {SET_LABEL: s.lease_prefix, ROLE_LABEL: role}}
        if resource_version is not None:
            metadata["resourceVersion"] = resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _forget_stale_members(self, api: client.CoordinationV1Api, now: float) -> None:
        s = self.settings
        for name, sighting in list(self.observer.seen.items()):
            if not name.startswith(f"{s.lease_prefix}-member-") or sighting.record.holder == s.identity:
                continue
            if now - sighting.changed_at < STALE_MEMBER_DURATIONS * max(1.0, sighting.record.duration_seconds):
                continue
            try:  # only the version we saw: a replica that came back meanwhile keeps its Lease
                api.delete_namespaced_lease(name, s.namespace, body=client.V1DeleteOptions(
                    preconditions=client.V1Preconditions(resource_version=sighting.record.resource_version)))
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise

    def release_all(self) -> None:
        """On a clean stop: hand every shard over at once instead of letting the Leases expire."""
        api = client.CoordinationV1Api()
        held, self.held = sorted(self.held), {}
        for shard in held:
            try:
                self._write_shard(api, shard, holder=None)
            except Exception:  # the Lease expires anyway
                log.exception("could not release shard %d", shard)

"""The shard Leases' API calls (I/O): two loops per operator renew, take and give up Leases.

The renewal loop rewrites only the shards this replica holds, every `renew_seconds`, each with the
resourceVersion its own last write returned: no list first, so the gap between two renewals is the
period plus one API call, however slow the other calls are. The observation loop lists this operator
set's Leases (one call, by label), renews this replica's member Lease and does what `shards.plan`
says: give up lost shards, release one above the fair share, take free or expired ones. A shard is
released only once the reconciles running under it have ended (none starts meanwhile, and its Lease
is still renewed): the next holder never starts on a resource this replica is still reconciling. Each loop has
its own thread and API connection, so neither queues behind the other or behind the reconciles' I/O.
Every write is a replace carrying a resourceVersion, so two replicas can never both take one Lease:
the second gets 409. `gate` answers the daemons; `changed` wakes them when what they may act on changes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
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


def _version_of(lease: Any) -> str:
    return str(lease.metadata.resource_version or "") if lease.metadata else ""


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
        self._versions: dict[int, tuple[str, str]] = {}
        """shard -> (resourceVersion, acquireTime) of this replica's last write of its Lease."""
        self.releasing: set[int] = set()
        """Held shards being handed over: no reconcile starts under them; released once none runs."""
        self._in_flight: dict[int, int] = {}
        """shard -> reconciles running under it now (`enter` / `leave`)."""
        self._lock = threading.Lock()
        """Guards `held`, `releasing`, `_in_flight`, `_versions` and `observer` between the threads."""
        self._actable: frozenset[int] = frozenset()
        self._changed = asyncio.Event()

    # --- what the daemons ask --------------------------------------------------------------------

    def gate(self, namespace: str, name: str) -> str | None:
        """The fencing token to act under on this resource now, or None when it may not act on it now."""
        shard = shards.shard_of(namespace, name, self.settings.shards)
        holding = self.held.get(shard)
        if shard in self.releasing or not shards.may_act(holding, time.monotonic(), self.settings.margin_seconds):
            return None
        assert holding is not None
        return shards.fencing_token(self.settings.shards, shard, holding.transitions)

    def enter(self, namespace: str, name: str) -> str | None:
        """Start a reconcile of this resource: its token, counted as running under its shard until
        `leave`, or None (nothing counted) when this replica may not act on it now. One step under the
        lock, so a shard cannot be released between the check and the count."""
        with self._lock:
            token = self.gate(namespace, name)
            if token is not None:
                shard = shards.shard_of(namespace, name, self.settings.shards)
                self._in_flight[shard] = self._in_flight.get(shard, 0) + 1
            return token

    def leave(self, namespace: str, name: str) -> None:
        shard = shards.shard_of(namespace, name, self.settings.shards)
        with self._lock:
            self._in_flight[shard] = max(0, self._in_flight.get(shard, 0) - 1)

    def held_token(self, namespace: str, name: str) -> str | None:
        """The token of this resource's shard if this replica holds it, even when a late renewal has
        paused it for a moment (the term goes on: nobody else can have served the resource meanwhile)."""
        shard = shards.shard_of(namespace, name, self.settings.shards)
        holding = self.held.get(shard)
        return None if holding is None else shards.fencing_token(self.settings.shards, shard, holding.transitions)

    def still_holds(self, token: str) -> bool:
        """Whether `token`'s term is still held and within its safe window (checked before each write)."""
        for shard, holding in dict(self.held).items():  # the loops' threads may change it meanwhile
            if shards.fencing_token(self.settings.shards, shard, holding.transitions) == token:
                return shards.may_act(holding, time.monotonic(), self.settings.margin_seconds)
        return False

    async def changed(self) -> None:
        """Returns when the set of shards this replica may act on changes next."""
        await self._changed.wait()

    def _publish(self) -> None:
        """In the event loop (asyncio.Event is not thread-safe): wake the daemons when the shards they
        may act on changed: taken, lost, or paused by a late renewal and back again."""
        now = time.monotonic()
        margin = self.settings.margin_seconds
        actable = frozenset(s for s, h in dict(self.held).items()
                            if s not in self.releasing and shards.may_act(h, now, margin))
        metrics.SHARDS_HELD.set(len(self.held))
        if actable == self._actable:
            return
        paused = set(self.held) - actable - self.releasing
        if paused:
            log.warning("shards %s not renewed in time: not acting on them until a renewal succeeds", sorted(paused))
        self._actable = actable
        self._changed.set()
        self._changed = asyncio.Event()

    # --- the loops -------------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        log.info("sharding: %s serves its share of %d shards (Leases %s-shard-* in %s)", s.identity, s.shards,
                 s.lease_prefix, s.namespace)
        renewer = ThreadPoolExecutor(1, thread_name_prefix="lagpilot-shard-renew")
        watcher = ThreadPoolExecutor(1, thread_name_prefix="lagpilot-shard-observe")
        try:
            await asyncio.gather(self._loop(renewer, self.renew_round), self._loop(watcher, self.observe_round))
        finally:
            renewer.shutdown(wait=False)
            watcher.shutdown(wait=False)

    async def _loop(self, executor: ThreadPoolExecutor, step: Callable[[client.CoordinationV1Api], None]) -> None:
        api = client.CoordinationV1Api(client.ApiClient())  # one connection pool per loop, kept
        loop = asyncio.get_running_loop()
        while True:
            began = time.monotonic()
            try:
                await loop.run_in_executor(executor, step, api)
            except Exception:  # the API server unreachable: holdings lapse on their own (may_act)
                log.exception("shard Lease %s failed; retrying", step.__name__)
            self._publish()
            # A period from start to start: a slow call shortens the pause, it does not add to it.
            await asyncio.sleep(max(0.0, self.settings.renew_seconds - (time.monotonic() - began)))

    def renew_round(self, api: client.CoordinationV1Api) -> None:
        """Renew every held shard, with the version our last write of it returned (blocking; a thread)."""
        s = self.settings
        with self._lock:
            todo = [(shard, holding, self._versions.get(shard)) for shard, holding in self.held.items()]
        for shard, holding, version in todo:
            if version is None:
                continue
            name = shards.shard_lease_name(s.lease_prefix, shard)
            body = self._body(name, "shard", s.identity, holding.transitions, version[0], acquired_at=version[1])
            sent_at = time.monotonic()  # before the call: the window is measured from the earliest moment
            try:
                written = api.replace_namespaced_lease(name, s.namespace, body)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                with self._lock:
                    if self.held.get(shard) == holding:  # not released or retaken meanwhile
                        log.warning("shard %d: renewal conflicted, another replica holds it now", shard)
                        self.held.pop(shard)
                        self._versions.pop(shard, None)
                continue
            with self._lock:
                if self.held.get(shard) == holding:
                    self.held[shard] = replace(holding, renewed_at=sent_at)
                    self._versions[shard] = (_version_of(written), version[1])

    def observe_round(self, api: client.CoordinationV1Api) -> None:
        """Read every Lease of the set, keep the member Lease, then lose, release and take shards."""
        s = self.settings
        leases = api.list_namespaced_lease(s.namespace, label_selector=f"{SET_LABEL}={s.lease_prefix}").items
        now = time.monotonic()
        with self._lock:
            self.observer.observe((_record(lease) for lease in leases), now)
        self._keep_member(api)
        with self._lock:
            members = {sighting.record.holder for name, sighting in self.observer.seen.items()
                       if name.startswith(f"{s.lease_prefix}-member-") and self.observer.is_live(name, now)}
            self.releasing &= set(self.held)  # a renewal conflict may have dropped one meanwhile
            keeping = {shard: holding for shard, holding in self.held.items() if shard not in self.releasing}
            plan = shards.plan(s.identity, s.shards, s.lease_prefix, self.observer, keeping, members, now)
            for shard in plan.lost:
                log.warning("shard %d was taken over by another replica", shard)
                self.held.pop(shard, None)
                self._versions.pop(shard, None)
            for shard in plan.release:  # no reconcile starts under it from now on; its Lease is still renewed
                self.releasing.add(shard)
                log.info("shard %d: handing it over to a replica with fewer shards once its %d reconciles end",
                         shard, self._in_flight.get(shard, 0))
            drained = [shard for shard in self.releasing if not self._in_flight.get(shard)]
            released = {shard: self._versions.pop(shard, None) for shard in drained}
            for shard in drained:
                self.releasing.discard(shard)
                self.held.pop(shard, None)  # stop renewing first, then hand it over
        for shard, version in released.items():
            self._release(api, shard, version)
            log.info("shard %d released", shard)
        for shard in plan.acquire:
            if self._acquire(api, shard):
                metrics.SHARD_TAKEOVERS.inc()
                log.info("shard %d acquired (term %d)", shard, self.held[shard].transitions)
        self._forget_stale_members(api, now)

    def _keep_member(self, api: client.CoordinationV1Api) -> None:
        s = self.settings
        name = shards.member_lease_name(s.lease_prefix, s.identity)
        sighting = self.observer.seen.get(name)
        try:
            if sighting is None:
                api.create_namespaced_lease(s.namespace, self._body(name, "member", s.identity, 0, None, _micro_time()))
            else:
                api.replace_namespaced_lease(name, s.namespace, self._body(
                    name, "member", s.identity, 0, sighting.record.resource_version, None))
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _acquire(self, api: client.CoordinationV1Api, shard: int) -> bool:
        """Take a free or expired shard Lease as it was read; False when another replica got there first."""
        s = self.settings
        name = shards.shard_lease_name(s.lease_prefix, shard)
        sighting = self.observer.seen.get(name)
        transitions = sighting.record.transitions + 1 if sighting else 0
        acquired_at = _micro_time()
        body = self._body(name, "shard", s.identity, transitions,
                          sighting.record.resource_version if sighting else None, acquired_at)
        sent_at = time.monotonic()
        try:
            written = (api.create_namespaced_lease(s.namespace, body) if sighting is None
                       else api.replace_namespaced_lease(name, s.namespace, body))
        except ApiException as exc:
            if exc.status in (404, 409):  # someone else wrote it since our read: theirs
                return False
            raise
        with self._lock:
            self.held[shard] = Holding(shard, transitions, sent_at, float(s.lease_seconds))
            self._versions[shard] = (_version_of(written), acquired_at)
        return True

    def _release(self, api: client.CoordinationV1Api, shard: int, version: tuple[str, str] | None) -> None:
        """Hand a shard over (no holder) so a replica takes it at once; the term count stays."""
        s = self.settings
        name = shards.shard_lease_name(s.lease_prefix, shard)
        sighting = self.observer.seen.get(name)
        resource_version = version[0] if version else (sighting.record.resource_version if sighting else None)
        if resource_version is None:
            return
        transitions = sighting.record.transitions if sighting else 0
        try:
            api.replace_namespaced_lease(name, s.namespace, self._body(name, "shard", None, transitions,
                                                                       resource_version, None))
        except ApiException as exc:  # changed since: it expires on its own (we no longer renew it)
            if exc.status not in (404, 409):
                raise

    def _body(self, name: str, role: str, holder: str | None, transitions: int, resource_version: str | None,
              acquired_at: str | None) -> Any:
        """A whole Lease (plain dicts serialize as the client's models do)."""
        s = self.settings
        spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": s.lease_seconds,
                                "leaseTransitions": max(0, transitions), "renewTime": _micro_time() if holder else None,
                                "acquireTime": acquired_at}
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

    def release_all(self, api: client.CoordinationV1Api | None = None) -> None:
        """On a clean stop (the loops cancelled): hand every shard over instead of letting them expire."""
        api = api or client.CoordinationV1Api(client.ApiClient())
        with self._lock:
            released = {shard: self._versions.get(shard) for shard in self.held}
            self.held, self._versions, self.releasing = {}, {}, set()
        for shard, version in sorted(released.items()):
            try:
                self._release(api, shard, version)
            except Exception:  # the Lease expires anyway
                log.exception("could not release shard %d", shard)

"""Which operator replica serves which KafkaConsumerGroup (pure): shard Leases, their balance, fencing.

With `LAGPILOT_SHARDS` = S > 1, every resource belongs to one of S shards (a stable hash of
`namespace/name`), and each shard is a coordination.k8s.io/v1 Lease in the operator's namespace. A
replica acts on a resource only while it holds the resource's shard Lease; `shard_keeper` does the API
calls, this module decides.

Liveness without synchronized clocks (as client-go's leader election): a Lease is expired for an
observer when the observer has not seen its record change (resourceVersion) for leaseDurationSeconds
of the observer's own monotonic clock. The holder stops acting earlier: at the moment it *sent* its
last successful renewal plus the duration minus a safety margin. An observer first sees a renewal
after it was sent, so the holder has stopped before anyone may take the Lease over, as long as the
clocks run at about the same rate. The Lease alone does not fence a holder paused between its check
and its write (client-go says so too); the write itself carries the token (`fencing_token`,
`token_is_stale`), see reconcile's fenced scale.

Balance: every replica keeps a member Lease of its own; the live members, sorted, get S // N shards
each and the first S % N one more (`target_count`). A replica takes free or expired shards up to its
target and releases one above it per round, so shards spread evenly and a new replica gets its share
without any coordinator. Which free shard to take: highest rendezvous hash of (replica, shard) first,
so replicas racing for free shards mostly pick different ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

FENCING_ANNOTATION = "lagpilot.io/fencing-token"


def _digest(text: str) -> int:
    # Python's hash() is salted per process: replicas must agree, so a cryptographic digest it is.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The shard of a resource, in [0, shards): the same in every replica and across restarts."""
    return _digest(f"{namespace}/{name}") % max(1, shards)


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease as the API server shows it (the fields this module reads)."""

    name: str
    holder: str
    """spec.holderIdentity; "" when released or never held."""
    resource_version: str
    transitions: int
    duration_seconds: float


@dataclass
class Sighting:
    """A Lease record, and when (this replica's monotonic clock) its record last changed."""

    record: LeaseRecord
    changed_at: float


@dataclass
class LeaseObserver:
    """Keeps the local time each Lease last changed: what expiry is measured from."""

    seen: dict[str, Sighting] = field(default_factory=dict)

    def observe(self, records: Iterable[LeaseRecord], now: float) -> None:
        current = {r.name: r for r in records}
        for name in list(self.seen):
            if name not in current:
                del self.seen[name]
        for name, record in current.items():
            known = self.seen.get(name)
            if known is None or known.record.resource_version != record.resource_version:
                self.seen[name] = Sighting(record, now)
            else:
                known.record = record

    def is_live(self, name: str, now: float) -> bool:
        """Held by someone whose renewals this replica has seen within the Lease's duration."""
        sighting = self.seen.get(name)
        if sighting is None or not sighting.record.holder:
            return False
        return now < sighting.changed_at + sighting.record.duration_seconds


@dataclass(frozen=True)
class Holding:
    """A shard this replica holds: its term (leaseTransitions when taken) and last renewal sent."""

    shard: int
    transitions: int
    renewed_at: float
    """Monotonic time the last successful renewal (or the acquisition) was *sent*."""
    duration_seconds: float


def may_act(holding: Holding | None, now: float, margin_seconds: float) -> bool:
    """Whether this replica may still act on the shard: its own renewal, plus the duration, minus the
    margin, is in the future by its own clock (others wait the full duration from when they saw it)."""
    return holding is not None and now < holding.renewed_at + holding.duration_seconds - margin_seconds


def fencing_token(shards: int, shard: int, transitions: int) -> str:
    """`<shards>/<shard>:<term>`: written with every fenced write to the Deployment."""
    return f"{shards}/{shard}:{transitions}"


def _parse_token(token: str) -> tuple[str, int] | None:
    scope, _, term = token.rpartition(":")
    if not scope or not term.isdigit():
        return None
    return scope, int(term)


def token_is_stale(ours: str, found: str | None) -> bool:
    """Whether a write under `ours` must be refused because the object carries `found`, a later term of
    the same shard (its new holder wrote it). A token of another shard layout (S changed) or an absent
    or unreadable one does not refuse: the Lease is then the only fence."""
    mine, theirs = _parse_token(ours), _parse_token(found or "")
    if mine is None or theirs is None or mine[0] != theirs[0]:
        return False
    return theirs[1] > mine[1]


def target_count(me: str, live_members: Iterable[str], shards: int) -> int:
    """This replica's fair share: S // N each, one more for the first S % N members in sorted order."""
    members = sorted(set(live_members) | {me})
    base, extra = divmod(shards, len(members))
    return base + (1 if members.index(me) < extra else 0)


def shard_lease_name(base: str, shard: int) -> str:
    return f"{base}-shard-{shard}"


def member_lease_name(base: str, identity: str) -> str:
    """A DNS-1123 name for this replica's member Lease (a pod name usually is one already)."""
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in identity.lower()).strip("-")
    name = f"{base}-member-{cleaned}"
    if len(name) > 253:
        name = f"{base}-member-{_digest(identity):016x}"
    return name


@dataclass(frozen=True)
class Plan:
    """One round of the keeper: which shards to renew, take (with the record read), and give up."""

    renew: tuple[int, ...] = ()
    acquire: tuple[int, ...] = ()
    release: tuple[int, ...] = ()
    lost: tuple[int, ...] = ()
    """Shards this replica thought it held whose Lease now names another holder (or none)."""


def plan(me: str, shards: int, base: str, observer: LeaseObserver, held: Mapping[int, Holding],
         live_members: Iterable[str], now: float) -> Plan:
    """What to do this round, from the Leases seen (`observer`) and the shards held."""
    lost, kept = [], []
    for shard in sorted(held):
        sighting = observer.seen.get(shard_lease_name(base, shard))
        if sighting is None or sighting.record.holder != me or \
                sighting.record.transitions != held[shard].transitions:
            lost.append(shard)
        else:
            kept.append(shard)
    target = target_count(me, live_members, shards)
    if len(kept) > target:
        # One per round, the least-preferred first: a gradual hand-over, not a storm of takeovers.
        give_up = min(kept, key=lambda shard: _digest(f"{me}/{shard}"))
        return Plan(renew=tuple(s for s in kept if s != give_up), release=(give_up,), lost=tuple(lost))
    free = [shard for shard in range(shards) if shard not in kept
            and not observer.is_live(shard_lease_name(base, shard), now)]
    free.sort(key=lambda shard: _digest(f"{me}/{shard}"), reverse=True)
    return Plan(renew=tuple(kept), acquire=tuple(free[:max(0, target - len(kept))]), lost=tuple(lost))


@dataclass(frozen=True)
class ShardSettings:
    """The sharding configuration, from the operator's environment (the chart sets it)."""

    shards: int
    identity: str
    namespace: str
    lease_prefix: str = "lagpilot"
    lease_seconds: int = 5
    renew_seconds: float = 1.0
    margin_seconds: float = 1.0

    @staticmethod
    def from_env(env: Mapping[str, str], default_identity: str, default_namespace: str) -> ShardSettings | None:
        """None when sharding is off (LAGPILOT_SHARDS unset, 0 or 1): one replica serves everything.

        A dead replica's shards are taken over about LAGPILOT_SHARD_LEASE_SECONDS (default 5) plus one
        renew period (LAGPILOT_SHARD_RENEW_SECONDS, default 1) plus two API calls (a list and the
        takeover) after its last renewal: keep that under two polling intervals (10 s at the default
        5 s poll). A holder acts for the duration minus the margin (LAGPILOT_SHARD_MARGIN_SECONDS,
        default one renew period) after sending a renewal, so a renewal may take up to duration - margin
        - renew period (3 s by default) before the holder pauses, which it then does safely.
        """
        shards = int(env.get("LAGPILOT_SHARDS", "1") or "1")
        if shards <= 1:
            return None
        lease_seconds = int(env.get("LAGPILOT_SHARD_LEASE_SECONDS", "5"))
        renew = float(env.get("LAGPILOT_SHARD_RENEW_SECONDS", "1"))
        margin = float(env.get("LAGPILOT_SHARD_MARGIN_SECONDS", str(renew)))
        if lease_seconds <= renew + margin:
            raise ValueError(f"LAGPILOT_SHARD_LEASE_SECONDS={lease_seconds} must exceed the renew period ({renew}) "
                             f"plus the safety margin ({margin}), or a holder would stop acting between renewals")
        identity = env.get("LAGPILOT_SHARD_IDENTITY") or env.get("POD_ID") or default_identity
        namespace = env.get("LAGPILOT_SHARD_NAMESPACE") or env.get("POD_NAMESPACE") or default_namespace
        return ShardSettings(shards=shards, identity=identity, namespace=namespace,
                             lease_prefix=env.get("LAGPILOT_SHARD_LEASE_PREFIX", "lagpilot"),
                             lease_seconds=lease_seconds, renew_seconds=renew, margin_seconds=margin)

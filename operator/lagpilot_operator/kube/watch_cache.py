"""What the operator knows of Deployments and pool ConfigMaps from its watch, instead of a GET per poll (pure).

kopf indices (`handlers.py`) keep, per `(namespace, name)`, a small entry built here from each watch event:
a Deployment's replicas, ready replicas, resourceVersion, fencing token and the containers' group/topic
settings (`DeploymentEntry`; for a Deployment the operator manages in template mode, also the labels and
spec that `writes.deployment_patch` compares), and a pool ConfigMap's pool size (`PoolEntry`). A
reconcile reads them through a `View`, which puts this process's own writes over the watch until the
watch shows something after them, so the next poll never sees the state before its own write.

A `View` answers None — "ask the API server" (a GET, as before the cache) — when it cannot vouch for an
entry: before kopf attached an index, when the watch has no entry (not listed yet, just created, or
absent: a GET tells which), when the key has two objects (a delete and re-create in flight), and for an
entry a write found gone (a watch that relisted after a gap keeps what was deleted in it). A
resource also reads with a GET every `VERIFY_SECONDS`, which bounds any staleness of the watch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from lagpilot_contract import pool as pool_contract
from lagpilot_operator.kube import shards

Key = tuple[str, str]
"""(namespace, name)"""
VERIFY_SECONDS = 300.0
"""How long a resource goes on the watch alone before it reads its Deployment with a GET again."""
ENV_KEYS = ("name", "value", "valueFrom")
"""What `worker_config.declared_config` reads of an env item (valueFrom only by its presence)."""
CONTAINER_KEYS = ("name", "env", "command", "args")
"""What `worker_config` reads of a container: the rest (image, resources, probes...) is not kept."""


@dataclass(frozen=True)
class TargetScale:
    name: str
    spec_replicas: int
    ready_replicas: int
    containers: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    """The pod template's containers (camelCase dicts), for the WorkerConfigMismatch check."""
    fencing_token: str | None = field(default=None, compare=False)
    """The `lagpilot.io/fencing-token` annotation: the shard term of the last fenced write (sharding)."""
    resource_version: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True, eq=False)
class DeploymentEntry:
    """A Deployment as the operator reads it. Compared by identity: kopf replaces an index value only when it
    differs from the one stored, and `TargetScale` equality leaves out the version, token and containers."""

    target: TargetScale
    compared: dict[str, Any] | None = None
    """`{"metadata": {"labels"}, "spec"}` without replicas: what `writes.deployment_patch` compares a template
    with. Kept for the Deployments the operator manages (its managed-by label) and for a GET's answer."""


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """A pool ConfigMap as the operator reads it."""

    pool_size: int | None
    resource_version: str


def pool_published(known: PoolEntry | None, pool_size: int) -> bool:
    """Whether the ConfigMap as last seen already holds `pool_size`: the size is what workers act on, so
    then nothing is written (and their watches are left alone)."""
    return known is not None and known.pool_size == pool_size


def _container(container: Any) -> dict[str, Any]:
    if not isinstance(container, Mapping):
        return {}
    kept = {key: container[key] for key in CONTAINER_KEYS if key in container}
    if isinstance(kept.get("env"), list):
        kept["env"] = [{k: item[k] for k in ENV_KEYS if k in item} if isinstance(item, Mapping) else item
                       for item in kept["env"]]
    return kept


def _compared(metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": dict(metadata.get("labels") or {})},
            "spec": {key: value for key, value in spec.items() if key != "replicas"}}


def managed_by_operator(metadata: Mapping[str, Any]) -> bool:
    labels = metadata.get("labels") or {}
    return bool(labels.get(pool_contract.LABEL_MANAGED_BY) == pool_contract.MANAGED_BY_VALUE)


def deployment_entry(body: Mapping[str, Any], keep_template: bool | None = None) -> DeploymentEntry:
    """The entry for a Deployment (camelCase dict, as the API server sends it). `keep_template`: keep what a
    template is compared with (None: only for a Deployment the operator manages)."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    keep = managed_by_operator(metadata) if keep_template is None else keep_template
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    target = TargetScale(name=str(metadata.get("name") or ""), spec_replicas=int(spec.get("replicas") or 0),
                         ready_replicas=int((body.get("status") or {}).get("readyReplicas") or 0),
                         containers=tuple(containers if keep else map(_container, containers)),
                         fencing_token=(metadata.get("annotations") or {}).get(shards.FENCING_ANNOTATION),
                         resource_version=str(metadata.get("resourceVersion") or ""))
    return DeploymentEntry(target, _compared(metadata, spec) if keep else None)


def pool_entry(body: Mapping[str, Any]) -> PoolEntry:
    """The entry for a pool ConfigMap."""
    return PoolEntry(pool_contract.parse_pool_size(body.get("data")),
                     str((body.get("metadata") or {}).get("resourceVersion") or ""))


def scaled(entry: DeploymentEntry, replicas: int, resource_version: str) -> DeploymentEntry:
    """The entry after this process set its replicas (the scale subresource answers the new version)."""
    return replace(entry, target=replace(entry.target, spec_replicas=replicas, resource_version=resource_version))


def deployment_version(entry: DeploymentEntry) -> str:
    return entry.target.resource_version


def pool_version(entry: PoolEntry) -> str:
    return entry.resource_version


_V = TypeVar("_V")


class View(Generic[_V]):
    """One kind's watched entries (a kopf index: key -> the entries of the objects under it), with this
    process's own writes over them. Used from the event loop only (kopf updates its indices there)."""

    def __init__(self, version: Callable[[_V], str]) -> None:
        self._version = version
        self._index: Mapping[Key, Iterable[_V]] | None = None
        self._written: dict[Key, tuple[str, _V | None]] = {}
        """key -> (the watched entry's version when this process wrote, what it wrote; None: gone)."""

    def attach(self, index: Mapping[Key, Iterable[_V]]) -> None:
        self._index = index

    @property
    def attached(self) -> bool:
        return self._index is not None

    def _watched(self, key: Key) -> _V | None:
        if self._index is None:
            return None
        entries = list(self._index.get(key) or ())
        return entries[0] if len(entries) == 1 else None

    def get(self, key: Key) -> _V | None:
        """The entry to act on, or None: ask the API server."""
        watched = self._watched(key)
        if watched is None:
            return None
        written = self._written.get(key)
        if written is not None:
            if written[0] == self._version(watched):
                return written[1]  # the watch has not shown anything after this process's write yet
            del self._written[key]  # it has (that write, or a later change): the watch is as new
        return watched

    def wrote(self, key: Key, entry: _V | None) -> None:
        """This process wrote `key` and the API server answered `entry` (None: the object is gone). Kept over
        the watched entry until the watch moves past the version it shows now; nothing is kept when the
        watch has no entry (the next read asks the API server)."""
        watched = self._watched(key)
        if watched is None:
            self._written.pop(key, None)
        else:
            self._written[key] = (self._version(watched), entry)

    def forget(self, key: Key) -> None:
        self._written.pop(key, None)


@dataclass
class Views:
    """The process's views, attached to kopf's indices at start-up (unattached: every read is a GET)."""

    deployments: View[DeploymentEntry] = field(default_factory=lambda: View(deployment_version))
    pools: View[PoolEntry] = field(default_factory=lambda: View(pool_version))


def verify_due(verified_at: float | None, now: float, verify_seconds: float = VERIFY_SECONDS) -> bool:
    """Whether a resource reads its Deployment with a GET this poll (never did, or `verify_seconds` ago)."""
    return verified_at is None or now - verified_at >= verify_seconds or now < verified_at


def after_conflict(token: str, decided_replicas: int | None, fresh: TargetScale | None) -> str:
    """What a fenced write refused with 409 (the Deployment changed since the version read, often only its
    status, or the watch was behind) does after a GET of the Deployment: "fenced" when it now carries a
    newer term; "retry" (once, under the fresh version) when its replicas are still the ones the decision
    started from (`decided_replicas`; None: a stamp, which sets none); else "refuse" (the 409 stands, as a
    refused scale: the next poll decides again from the new state)."""
    if fresh is None:
        return "refuse"
    if shards.token_is_stale(token, fresh.fencing_token):
        return "fenced"
    if decided_replicas is not None and fresh.spec_replicas != decided_replicas:
        return "refuse"
    return "retry"

"""Every Kubernetes API call the operator makes (I/O), in one place so RBAC can be read off it.

Calls: Deployments list/watch (kopf's index, `handlers.py`), get (a resource's first poll, every
`watch_cache.VERIFY_SECONDS`, when the watch has no entry, and once after a 409 on a fenced write),
create/patch, and their scale subresource patch; the pool ConfigMaps list/watch (kopf's index) and
get (when the watch has no entry)/create/patch; the KafkaConsumerGroup status patch; Secrets get (by
name, for Kafka credentials). Events go through kopf. The functions are blocking (kubernetes
client); callers use asyncio.to_thread. Writes answer what the API server returned, for
`watch_cache.View.wrote`.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from lagpilot_contract import pool as pool_contract
from lagpilot_operator.kafka import kafka_lag
from lagpilot_operator.kube import models, shards, watch_cache, writes
from lagpilot_operator.kube.watch_cache import DeploymentEntry, PoolEntry
from lagpilot_operator.kube.worker_config import with_injected_env

DEFAULT_CONNECTIONS = 64
"""Kept connections to the API server: one per IO thread (handlers' LAGPILOT_IO_THREADS), so concurrent
calls never open a connection only to drop it (the client's default pool keeps 5 per core)."""


@dataclass
class _Client:
    """The process's API client (see `api_client`), built on first use."""

    connections: int = DEFAULT_CONNECTIONS
    api: client.ApiClient | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


_CLIENT = _Client()


def load_configuration(connections: int = DEFAULT_CONNECTIONS) -> None:
    """In-cluster service account when running in a pod, else the current kubeconfig context; the next
    call gets a client built from it, keeping up to `connections` connections."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    with _CLIENT.lock:
        _CLIENT.connections, _CLIENT.api = connections, None


def api_client() -> client.ApiClient:
    """The process's API client, built on first use from the default configuration.

    One for every call: each `ApiClient()` has its own connection pool, so a client per call paid a TCP
    connect, a TLS handshake and a copy of the configuration on every API call (most of the operator's
    CPU per poll). The pool is thread-safe; the calls run in the IO threads.
    """
    with _CLIENT.lock:
        if _CLIENT.api is None:
            configuration = client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0,
                                                        _CLIENT.connections)
            _CLIENT.api = client.ApiClient(configuration)
        return _CLIENT.api


def _apps() -> client.AppsV1Api:
    return client.AppsV1Api(api_client())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


TargetScale = watch_cache.TargetScale


def owner_reference(kcg: dict[str, Any]) -> dict[str, Any]:
    meta = kcg["metadata"]
    return {"apiVersion": models.API_VERSION, "kind": models.KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _read_json(read: Callable[..., Any], name: str, namespace: str) -> dict[str, Any] | None:
    """The object as the API server sent it (camelCase JSON, every field it has), or None when it does not
    exist. Read raw: building the client's model objects (and, for a Deployment, serializing them back to
    a dict) cost about as much CPU as the call itself."""
    try:
        response = read(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    found: dict[str, Any] = json.loads(response.data)
    return found


def read_target(namespace: str, name: str) -> TargetScale | None:
    """The Deployment's replicas, or None when it does not exist (a GET)."""
    found = read_deployment(namespace, name)
    return None if found is None else found.target


def read_deployment(namespace: str, name: str) -> DeploymentEntry | None:
    """The Deployment as read now (a GET), with what a template is compared with; None when it does not exist."""
    live = _read_json(_apps().read_namespaced_deployment, name, namespace)
    return None if live is None else watch_cache.deployment_entry(live, keep_template=True)


def _discard(response: Any) -> None:
    """Read a raw answer's body without parsing it: the kept connection goes back to the pool."""
    response.data  # noqa: B018


def _answer(response: Any) -> dict[str, Any]:
    """A write's answer, read raw (see `_read_json`)."""
    found: dict[str, Any] = json.loads(response.data)
    return found


def scale_target(namespace: str, name: str, replicas: int) -> str:
    """Set replicas through the scale subresource (what HPA and `kubectl scale` use); returns the
    Deployment's new resourceVersion (the Scale carries its parent's)."""
    scale = _answer(_apps().patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}},
                                                              _preload_content=False))
    return str((scale.get("metadata") or {}).get("resourceVersion") or "")


def fenced_write(namespace: str, name: str, token: str, resource_version: str,
                 replicas: int | None) -> DeploymentEntry:
    """Stamp the shard term on the Deployment, and set replicas when given, only if the Deployment is still
    the version read (resourceVersion precondition: 409 otherwise). Reading the token and writing under
    the same version makes "refuse a write older than the token found" atomic (sharding on). Returns the
    Deployment as written."""
    patch: dict[str, Any] = {"metadata": {"resourceVersion": resource_version,
                                          "annotations": {shards.FENCING_ANNOTATION: token}}}
    if replicas is not None:
        patch["spec"] = {"replicas": replicas}
    return watch_cache.deployment_entry(
        _answer(_apps().patch_namespaced_deployment(name, namespace, patch, _preload_content=False)))


def templated_deployment(kcg: dict[str, Any], template: models.DeploymentTemplate, replicas: int,
                         injected_env: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment a `template` describes, owned by the KafkaConsumerGroup, with the operator's env
    (`worker_config.injected_env`) in every container."""
    name = kcg["metadata"]["name"]
    spec = copy.deepcopy(template.spec)
    spec["replicas"] = replicas
    pod_spec = spec.setdefault("template", {}).setdefault("spec", {})
    for container in pod_spec.get("containers", []):
        container["env"] = with_injected_env(container.get("env", []), copy.deepcopy(injected_env))
    metadata = copy.deepcopy(template.metadata)
    labels = {**metadata.get("labels", {}), pool_contract.LABEL_MANAGED_BY: pool_contract.MANAGED_BY_VALUE,
              pool_contract.LABEL_CONSUMER_GROUP: name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {**metadata, "name": name, "namespace": kcg["metadata"]["namespace"], "labels": labels,
                     "ownerReferences": [owner_reference(kcg)]},
        "spec": spec,
    }


def ensure_templated_deployment(kcg: dict[str, Any], template: models.DeploymentTemplate, initial_replicas: int,
                                injected_env: list[dict[str, Any]], known: DeploymentEntry | None = None
                                ) -> tuple[TargetScale, DeploymentEntry | None]:
    """Create the owned Deployment, or bring its template back to the spec (replicas stay ours); no
    write when the live object already matches (`writes.deployment_patch`). `known`: the Deployment as
    the watch shows it (None, or one without what a template is compared with: a GET). Returns the
    target and, after a patch, the Deployment as written."""
    namespace, name = kcg["metadata"]["namespace"], kcg["metadata"]["name"]
    apps = _apps()
    found = known if known is not None and known.compared is not None else read_deployment(namespace, name)
    if found is None:
        manifest: Any = templated_deployment(kcg, template, initial_replicas, injected_env)  # plain dicts work
        created = _answer(apps.create_namespaced_deployment(namespace, manifest, _preload_content=False))
        return TargetScale(name=name, spec_replicas=initial_replicas, ready_replicas=0,
                           containers=tuple(manifest["spec"]["template"]["spec"].get("containers", [])),
                           resource_version=str((created.get("metadata") or {}).get("resourceVersion") or "")), None
    current, written = found.target, None
    assert found.compared is not None  # read_deployment keeps it
    desired = templated_deployment(kcg, template, current.spec_replicas, injected_env)
    patch = writes.deployment_patch(desired, found.compared)
    if patch is not None:
        written = watch_cache.deployment_entry(
            _answer(apps.patch_namespaced_deployment(name, namespace, patch, _preload_content=False)),
            keep_template=True)
        # The version moved on; a fenced write preconditions on the new one (the token is unchanged).
        current = replace(current, resource_version=written.target.resource_version)
    # What the workers are told from now on: a strategic merge replaces env items by name, so every
    # name the operator sets holds the operator's value.
    return replace(current, containers=tuple(desired["spec"]["template"]["spec"].get("containers", []))), written


def publish_pool_size(kcg: dict[str, Any], pool_size: int, reason: str, updated_at: str,
                      known: PoolEntry | None = None) -> PoolEntry | None:
    """Create or update the pool ConfigMap the workers watch (the pool-size contract). `known`: the
    ConfigMap as the watch shows it (None: a GET). Returns the ConfigMap as written (None: no write)."""
    namespace, kcg_name = kcg["metadata"]["namespace"], kcg["metadata"]["name"]
    name = pool_contract.pool_configmap_name(kcg_name)
    data = {pool_contract.POOL_SIZE_KEY: str(pool_size), pool_contract.REASON_KEY: reason[:1000],
            pool_contract.UPDATED_AT_KEY: updated_at}
    core = _core()
    if known is None:
        existing = _read_json(core.read_namespaced_config_map, name, namespace)
        known = None if existing is None else watch_cache.pool_entry(existing)
    if watch_cache.pool_published(known, pool_size):
        return None
    if known is not None:
        try:
            return watch_cache.pool_entry(_answer(core.patch_namespaced_config_map(name, namespace, {"data": data},
                                                                                   _preload_content=False)))
        except ApiException as exc:
            if exc.status != 404:  # 404: deleted since the watch showed it; create it again
                raise
    body: Any = {"metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner_reference(kcg)],
                              "labels": {pool_contract.LABEL_MANAGED_BY: pool_contract.MANAGED_BY_VALUE,
                                         pool_contract.LABEL_CONSUMER_GROUP: kcg_name}},
                 "data": data}
    return watch_cache.pool_entry(_answer(core.create_namespaced_config_map(namespace, body, _preload_content=False)))


def read_pool_size(namespace: str, kcg_name: str) -> int | None:
    found = _read_json(_core().read_namespaced_config_map, pool_contract.pool_configmap_name(kcg_name), namespace)
    return None if found is None else pool_contract.parse_pool_size(found.get("data"))


def read_secret_data(namespace: str, name: str) -> dict[str, str] | None:
    """A Secret's data as the API server sends it (base64 values), or None when it does not exist."""
    secret = _read_json(_core().read_namespaced_secret, name, namespace)
    return None if secret is None else dict(secret.get("data") or {})


def secret_values(found: Mapping[str, Mapping[str, str]], refs: list[tuple[str, str]],
                  pem_refs: Collection[tuple[str, str]] = ()) -> dict[str, str]:
    """{'name/key': value} for the referenced keys of the Secrets `found` (name -> data); values never leave
    this process.

    Only the referenced keys are decoded (a Strimzi CA Secret also holds a binary `ca.p12`); a
    referenced key that is not UTF-8 (or, in `pem_refs`, not PEM) raises `kafka_lag.SecretKeyUnreadable`.
    """
    values: dict[str, str] = {}
    for name in (name for name in kafka_lag.secret_names(refs) if name in found):
        keys = {key for secret_name, key in refs if secret_name == name}
        pem_keys = {key for secret_name, key in pem_refs if secret_name == name}
        values.update(kafka_lag.decode_secret_keys(name, found[name], keys, pem_keys))
    return values


def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    # The answer (the whole object) is read off the connection and not parsed: nothing here uses it, and
    # parsing it into the client's dict was a quarter of the call's CPU.
    _discard(client.CustomObjectsApi(api_client()).patch_namespaced_custom_object_status(
        models.GROUP, models.VERSION, namespace, models.PLURAL, name, {"status": status}, _preload_content=False))

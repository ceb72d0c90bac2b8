"""Where the pool size comes from: fixed (standalone), set by code, or the operator's ConfigMap.

The operator writes `poolSize` into the ConfigMap named by LAGPILOT_POOL_CONFIGMAP in
LAGPILOT_NAMESPACE (see lagpilot_contract.pool). The worker watches that one object (field
selector on its name), applies every change live, and re-lists after errors or when the watch
expires. A deleted ConfigMap or an invalid value leaves the current size as it is.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from lagpilot_contract import pool as contract

log = logging.getLogger(__name__)

OnPoolSize = Callable[[int], None]


class PoolSizeSource(Protocol):
    def start(self, on_change: OnPoolSize) -> None: ...
    def stop(self) -> None: ...


class FixedPoolSize:
    """Standalone use: --pool-size / LAGPILOT_POOL_SIZE, never changes."""

    def __init__(self, size: int) -> None:
        self.size = size

    def start(self, on_change: OnPoolSize) -> None:
        on_change(self.size)

    def stop(self) -> None:
        pass


class ManualPoolSize:
    """Set by code (library use, tests): `source.set(16)` resizes the running pool."""

    def __init__(self, size: int | None = None) -> None:
        self._size = size
        self._on_change: OnPoolSize | None = None
        self._lock = threading.Lock()

    def start(self, on_change: OnPoolSize) -> None:
        with self._lock:
            self._on_change = on_change
            size = self._size
        if size is not None:
            on_change(size)

    def set(self, size: int) -> None:
        with self._lock:
            self._size = size
            callback = self._on_change
        if callback is not None:
            callback(size)

    def stop(self) -> None:
        with self._lock:
            self._on_change = None


def load_kube_api_client() -> Any:
    """A kubernetes ApiClient: in-cluster config in a pod, else KUBECONFIG / ~/.kube/config."""
    import kubernetes

    # The kubernetes package is untyped; treat it as such in one place.
    kube: Any = kubernetes
    try:
        kube.config.load_incluster_config()
    except kube.config.ConfigException:
        # Read KUBECONFIG now: the client library reads it once, when it is imported.
        kube.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return kube.client.ApiClient()


class ConfigMapPoolSize:
    """Watches the operator's pool-size ConfigMap and reports every valid `poolSize`."""

    def __init__(self, name: str, namespace: str, api_client: Any | None = None,
                 watch_timeout_seconds: int = 240, retry_seconds: float = 2.0) -> None:
        self.name = name
        self.namespace = namespace
        self._api_client = api_client
        self._watch_timeout = watch_timeout_seconds
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.last_size: int | None = None

    def start(self, on_change: OnPoolSize) -> None:
        from kubernetes import client

        api_client = self._api_client if self._api_client is not None else load_kube_api_client()
        core = client.CoreV1Api(api_client)
        # Read once synchronously so the worker starts with the operator's size, not the default.
        try:
            self._apply(core.list_namespaced_config_map(
                self.namespace, field_selector=f"metadata.name={self.name}").items, on_change)
        except Exception as exc:
            log.warning("could not read pool-size ConfigMap %s/%s yet: %s", self.namespace, self.name, exc)
        self._thread = threading.Thread(target=self._run, args=(core, on_change), name="lagpilot-poolsize",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.stop()

    def _apply(self, items: list[Any], on_change: OnPoolSize) -> None:
        for item in items:
            if item.metadata.name != self.name:
                continue
            size = contract.parse_pool_size(item.data)
            if size is None:
                log.warning("ConfigMap %s/%s has no valid %s: %r", self.namespace, self.name,
                            contract.POOL_SIZE_KEY, (item.data or {}).get(contract.POOL_SIZE_KEY))
                continue
            if size != self.last_size:
                log.info("pool size %s from ConfigMap %s/%s (%s)", size, self.namespace, self.name,
                         (item.data or {}).get(contract.REASON_KEY, ""))
                self.last_size = size
                on_change(size)

    def _run(self, core: Any, on_change: OnPoolSize) -> None:
        import kubernetes.watch
        from kubernetes.client.exceptions import ApiException

        watch: Any = kubernetes.watch

        selector = f"metadata.name={self.name}"
        while not self._stop.is_set():
            try:
                listing = core.list_namespaced_config_map(self.namespace, field_selector=selector)
                self._apply(listing.items, on_change)
                self._watch = watch.Watch()
                for event in self._watch.stream(
                    core.list_namespaced_config_map, self.namespace, field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=self._watch_timeout, _request_timeout=self._watch_timeout + 30,
                ):
                    if self._stop.is_set():
                        break
                    kind = event.get("type")
                    if kind in ("ADDED", "MODIFIED"):
                        self._apply([event["object"]], on_change)
                    elif kind == "DELETED":
                        log.warning("pool-size ConfigMap %s/%s deleted; keeping size %s", self.namespace,
                                    self.name, self.last_size)
                    elif kind == "ERROR":
                        break   # typically 410 Gone: re-list
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("watching ConfigMap %s/%s failed: %s", self.namespace, self.name, exc.reason)
                    self._stop.wait(self._retry_seconds)
            except Exception as exc:
                log.warning("watching ConfigMap %s/%s failed: %s", self.namespace, self.name, exc)
                self._stop.wait(self._retry_seconds)

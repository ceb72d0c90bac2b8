"""Live resize: the pool follows its size source (code, or the operator's ConfigMap) within seconds,
up and down, with no rebalance; concurrency and /metrics both show it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from worker_testkit import http_get, metric, produce, running_worker

from lagpilot_contract import pool as pool_contract
from lagpilot_worker.config import GroupProtocol, WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.poolsize import ConfigMapPoolSize, ManualPoolSize, load_kube_api_client
from lagpilot_worker.record import Record
from support import wait_for

pytestmark = pytest.mark.integration


class ConcurrencyProbe:
    """A 20 ms handler that tracks how many calls run at once, peak per observation window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.handled = 0

    def __call__(self, record: Record) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.02)
        with self._lock:
            self.running -= 1
            self.handled += 1

    def peak_over(self, seconds: float) -> int:
        with self._lock:
            self.peak = self.running
        time.sleep(seconds)
        with self._lock:
            return self.peak


def test_live_resize_2_16_4_without_rebalance(kafka_bootstrap: str, create_topic: Callable[..., str],
                                              unique_name: Callable[[str], str], group_protocol: str) -> None:
    topic = create_topic("resize", partitions=4)
    produce(kafka_bootstrap, topic, [(f"k{i % 500}".encode(), b"x") for i in range(20_000)])
    probe = ConcurrencyProbe()
    source = ManualPoolSize(2)
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=unique_name("g"), topics=[topic],
                          ordering=OrderingMode.KEY, pool_size=8, http_port=0, http_host="127.0.0.1",
                          dead_letter_enabled=False, group_protocol=GroupProtocol(group_protocol))
    with running_worker(config, probe, pool_size_source=source) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 30, "ready")
        assert http_get(port, "/healthz")[0] == 200
        wait_for(lambda: probe.handled > 50, 30, "records flowing")
        rebalances = metric(port, "lagpilot_worker_rebalances_total")
        assert rebalances is not None and rebalances >= 1
        assert metric(port, "lagpilot_worker_pool_size") == 2
        assert probe.peak_over(1.0) == 2

        source.set(16)
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 16, 5, "pool size 16 in /metrics")
        wait_for(lambda: probe.peak_over(0.5) == 16, 10, "16 handlers running at once")
        assert worker.pool_size == 16

        source.set(4)
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 4, 5, "pool size 4 in /metrics")
        # Shrinking lets running work finish: after that, never more than 4 at once, and 4 are used.
        wait_for(lambda: probe.peak_over(0.5) == 4, 10, "at most (and at least) 4 running at once")
        assert probe.peak_over(1.0) == 4
        assert metric(port, "lagpilot_worker_rebalances_total") == rebalances, "resizing caused a rebalance"
        assert metric(port, "lagpilot_worker_assigned_partitions") == 4


def test_pool_size_follows_the_operator_configmap(kafka_bootstrap: str, kubeconfig: str, namespace: str,
                                                  create_topic: Callable[..., str],
                                                  unique_name: Callable[[str], str]) -> None:
    from kubernetes import client
    from kubernetes import config as kube_config

    kube_config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    name = pool_contract.pool_configmap_name(unique_name("kcg"))
    labels = {pool_contract.LABEL_MANAGED_BY: pool_contract.MANAGED_BY_VALUE}
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data={pool_contract.POOL_SIZE_KEY: "3", pool_contract.REASON_KEY: "initial"}))
    # A neighbour that the field selector must ignore.
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"{name}-other"), data={pool_contract.POOL_SIZE_KEY: "99"}))
    topic = create_topic("cm", partitions=2)
    produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"x") for i in range(3000)])
    probe = ConcurrencyProbe()
    source = ConfigMapPoolSize(name, namespace, api_client=load_kube_api_client_for(kubeconfig))
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=unique_name("g"), topics=[topic],
                          pool_size=1, http_port=0, http_host="127.0.0.1", dead_letter_enabled=False)
    with running_worker(config, probe, pool_size_source=source) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 3, 10, "the ConfigMap's initial size")
        started = time.monotonic()
        core.patch_namespaced_config_map(name, namespace, {"data": {pool_contract.POOL_SIZE_KEY: "7"}})
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 7, 10, "the patched size")
        assert time.monotonic() - started < 5, "a ConfigMap change must apply within seconds"
        wait_for(lambda: probe.peak_over(0.5) == 7, 10, "7 handlers running at once")
        core.patch_namespaced_config_map(name, namespace, {"data": {pool_contract.POOL_SIZE_KEY: "zero"}})
        time.sleep(1)
        assert worker.pool_size == 7          # an invalid value leaves the size as it is
        core.patch_namespaced_config_map(name, namespace, {"data": {pool_contract.POOL_SIZE_KEY: "2"}})
        wait_for(lambda: worker.pool_size == 2, 10, "size 2")


def load_kube_api_client_for(kubeconfig: str) -> object:
    from kubernetes import config as kube_config

    return kube_config.new_client_from_config(config_file=kubeconfig)


def test_load_kube_api_client_uses_kubeconfig(kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import client

    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    api = client.VersionApi(load_kube_api_client())
    assert api.get_code().major == "1"


def test_async_handler_runs_as_tasks_and_resizes(kafka_bootstrap: str, create_topic: Callable[..., str],
                                                 unique_name: Callable[[str], str]) -> None:
    import asyncio

    topic = create_topic("async", partitions=2)
    produce(kafka_bootstrap, topic, [(f"k{i % 200}".encode(), b"x") for i in range(6000)])
    state = {"running": 0, "peak": 0, "handled": 0, "attempts": 0}
    threads: set[str] = set()

    async def handler(record: Record) -> None:
        threads.add(threading.current_thread().name)
        if record.partition == 0 and record.offset == 3 and record.attempt == 1:
            state["attempts"] += 1
            raise TimeoutError("transient: retried in place, asynchronously")
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.sleep(0.02)
        state["running"] -= 1
        state["handled"] += 1

    def peak_over(seconds: float) -> int:
        state["peak"] = state["running"]
        time.sleep(seconds)
        return state["peak"]

    source = ManualPoolSize(8)
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, group_id=unique_name("g"), topics=[topic],
                          pool_size=8, http_port=0, http_host="127.0.0.1", dead_letter_enabled=False)
    with running_worker(config, handler, pool_size_source=source) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: state["handled"] > 50, 30, "records flowing")
        wait_for(lambda: peak_over(0.5) == 8, 10, "8 tasks at once")
        source.set(3)
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 3, 5, "size 3")
        wait_for(lambda: peak_over(0.5) == 3, 10, "3 tasks at once")
        wait_for(lambda: metric(port, "lagpilot_worker_messages_retried_total", {"kind": "in-place"}) == 1, 10,
                 "the failed first attempt retried in place")
    assert state["attempts"] == 1
    assert len(threads) == 1, "async handlers run on one event loop thread"

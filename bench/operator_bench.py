"""Cost of one reconcile, and how many resources one operator process sustains per core.

Runs the real reconcile (`lagpilot_operator.reconcile.reconcile`: lag read from the local Kafka
broker, history, time lag, verdicts, policy, scale/pool/status writes to the local kube-apiserver)
for groups over 1, 100 and 1000 partitions, and reports wall and CPU time per reconcile.
`resources_per_core_at_5s` = 5 s / CPU seconds per reconcile of a 100-partition group: the number of
such resources one core keeps at a 5 s polling interval (CPU of every thread of the process,
librdkafka's included).

    eval "$(make -s stack-up)"; .venv/bin/python bench/operator_bench.py [--iterations 30]

Prints one JSON line per size and, last, one JSON object with `reconcile_ms` and
`resources_per_core_at_5s`. Each size's line also has `api_requests_per_reconcile`: the API calls per
reconcile by method (GET, PATCH, POST). The reconcile reads Deployments and pool ConfigMaps from a watch
of the bench's namespace, as the operator reads them from kopf's indices (`watch_cache`); the watch
threads run in the measured process, so their CPU is counted. `--no-watch`: a GET per read instead (as
an operator without the watch). An operator without `watch_cache` is measured as it is.

`--writes N` measures API writes instead: N polls (5 s apart on the reconcile's clock) of two
unchanging groups (no lag, no traffic), one with `scaleTargetRef` and one in template mode, counting
the operator's write calls (status patches, Deployment create/patch/scale, pool ConfigMap
create/patch, Events) after `--warmup` polls (creation, first decision, the scale-down to the
minimum); it prints one JSON object with the counts and `writes_per_second`.

`--kafka-requests N` measures the Kafka admin calls of the lag reads instead: N groups (one 4-partition
topic each) on the local broker, each reconciled in its own loop every `--interval` seconds (real
time, the loops' starts spread over one interval, as the operator's daemons drift) for `--polls`
polls, all sharing one process's clients and per-cluster reads. It prints one JSON object with the
admin calls per kind (`lagpilot_kafka_admin_requests_total`), `requests_per_second`, and what a read per
resource would have made (5 calls per reconcile: metadata, two ListOffsets, OffsetFetch, DescribeGroups).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kubernetes import client, config, watch
from prometheus_client import REGISTRY

from lagpilot_operator import reconcile
from lagpilot_operator.collector import tune_collector

REPO = Path(__file__).resolve().parent.parent


def kubectl(*args: str, input_text: str | None = None) -> str:
    result = subprocess.run([str(Path(os.environ["LAGPILOT_BIN_DIR"]) / "kubectl"), *args], input=input_text, text=True,
                            capture_output=True, check=True)
    return result.stdout


def prepare(bootstrap: str, namespace: str, partitions: int, template: bool = False,
            name: str | None = None) -> dict[str, Any]:
    """A topic, a group that committed every partition, a Deployment and a KafkaConsumerGroup (in
    template mode, the KafkaConsumerGroup creates its own Deployment)."""
    suffix = uuid.uuid4().hex[:6]
    topic, group = f"bench-{partitions}-{suffix}", f"bench-group-{suffix}"
    name = name or f"bench-{partitions}" + ("-template" if template else "")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=120)
    CREATED_TOPICS.append(topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + 60
    while True:  # the new topic's partitions need leaders before a commit succeeds
        try:
            consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(partitions)], asynchronous=False)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    consumer.close()
    # Its Pods select no node (the stack's node runs only local images): Pending, only counted.
    labels = {"app": name}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"nodeSelector": {"lagpilot.io/no-node": "true"},
                                                 "containers": [{"name": "worker", "image": "registry.invalid/w:1"}]}}}}
    target: dict[str, Any] = {"scaleTargetRef": {"name": name}}
    if template:
        target = {"template": {"metadata": {"labels": labels}, "spec": {k: v for k, v in deployment["spec"].items()
                                                                        if k != "replicas"}}}
    else:
        kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(deployment))
    manifest = {"apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"kafka": {"bootstrapServers": bootstrap}, "groupId": group, "topics": [topic], **target,
                         "replicas": {"min": 1, "max": 10}}}
    kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    body: dict[str, Any] = client.CustomObjectsApi().get_namespaced_custom_object(
        "lagpilot.io", "v1alpha1", namespace, "kafkaconsumergroups", name)
    return body


CREATED_TOPICS: list[str] = []
"""The bench's topics, deleted at its end: left behind, every later run's (and the operator's) whole-cluster
metadata read grows by them (a run makes 1,101 partitions at the default sizes)."""


def delete_created_topics(bootstrap: str) -> None:
    if CREATED_TOPICS:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for future in admin.delete_topics(list(CREATED_TOPICS), operation_timeout=60).values():
            future.result(timeout=120)
        CREATED_TOPICS.clear()


REQUESTS: dict[str, int] = {}
"""API calls by method, counted by `count_requests`."""
WATCHED: dict[str, tuple[dict[tuple[str, str], list[Any]], dict[tuple[str, str], list[Any]]]] = {}
"""namespace -> the (deployments, pool ConfigMaps) indices its watch threads fill."""
USE_WATCH = True


def count_requests() -> None:
    """Count every API call the kubernetes client makes, by HTTP method."""
    original = client.ApiClient.call_api

    def counted(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        REQUESTS[method] = REQUESTS.get(method, 0) + 1
        return original(self, method, *args, **kwargs)

    client.ApiClient.call_api = counted  # type: ignore[method-assign]


def _watch_into(index: dict[tuple[str, str], list[Any]], entry: Any, list_call: Any, namespace: str,
                **kwargs: Any) -> None:
    """Keep `index` as the operator's kopf index is kept: one entry per object, dropped on deletion."""
    while True:
        try:
            for event in watch.Watch().stream(list_call, namespace, deserialize=False, **kwargs):
                raw = event["object"]
                if event["type"] == "DELETED":
                    index.pop((namespace, raw["metadata"]["name"]), None)
                elif event["type"] in ("ADDED", "MODIFIED"):
                    index[(namespace, raw["metadata"]["name"])] = [entry(raw)]
        except client.ApiException:  # 410: the version is gone; watch (and list) again
            continue


def shared_for(namespace: str) -> Any:
    """A `reconcile.Shared` whose views read the namespace's watch (when the operator has them)."""
    shared = reconcile.Shared()
    views = getattr(shared, "views", None)
    if views is None or not USE_WATCH:
        return shared
    from lagpilot_contract import pool as pool_contract
    from lagpilot_operator.kube import watch_cache

    if namespace not in WATCHED:
        deployments: dict[tuple[str, str], list[Any]] = {}
        pools: dict[tuple[str, str], list[Any]] = {}
        WATCHED[namespace] = deployments, pools
        apps, core = client.AppsV1Api(), client.CoreV1Api()
        selector = f"{pool_contract.LABEL_MANAGED_BY}={pool_contract.MANAGED_BY_VALUE}"
        for target in (
                lambda: _watch_into(deployments, watch_cache.deployment_entry, apps.list_namespaced_deployment,
                                    namespace),
                lambda: _watch_into(pools, watch_cache.pool_entry, core.list_namespaced_config_map, namespace,
                                    label_selector=selector)):
            threading.Thread(target=target, daemon=True).start()
    views.deployments.attach(WATCHED[namespace][0])
    views.pools.attach(WATCHED[namespace][1])
    return shared


async def measure(body: dict[str, Any], iterations: int) -> dict[str, Any]:
    state, shared = reconcile.ResourceState(), shared_for(body["metadata"]["namespace"])

    def ignore(kind: str, reason: str, message: str) -> None:
        return None

    await reconcile.reconcile(body, state, shared, ignore)  # warm-up: client connections, first decision
    await state.status.settle(30)
    walls, cpus = [], []
    before = dict(REQUESTS)
    for _ in range(iterations):
        wall, cpu = time.perf_counter(), time.process_time()
        await reconcile.reconcile(body, state, shared, ignore)
        await state.status.settle(30)  # its status write (in the background since 2026-12-07) counted with it
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    requests = {method: round((count - before.get(method, 0)) / iterations, 2) for method, count in REQUESTS.items()
                if count > before.get(method, 0)}
    return {"wall_ms_median": statistics.median(walls) * 1000, "cpu_ms_median": statistics.median(cpus) * 1000,
            "api_requests_per_reconcile": requests}


WRITE_CALLS = {
    "status": [(client.CustomObjectsApi, "patch_namespaced_custom_object_status")],
    "deployment": [(client.AppsV1Api, "patch_namespaced_deployment"),
                   (client.AppsV1Api, "create_namespaced_deployment"),
                   (client.AppsV1Api, "patch_namespaced_deployment_scale")],
    "configmap": [(client.CoreV1Api, "patch_namespaced_config_map"),
                  (client.CoreV1Api, "create_namespaced_config_map")],
}


def count_writes(counts: dict[str, int]) -> None:
    """Wrap the kubernetes client's write methods the operator uses so each call adds to `counts`."""
    for kind, methods in WRITE_CALLS.items():
        counts.setdefault(kind, 0)
        for cls, method in methods:
            original = getattr(cls, method)

            def counted(self: Any, *args: Any, _original: Any = original, _kind: str = kind, **kwargs: Any) -> Any:
                counts[_kind] += 1
                return _original(self, *args, **kwargs)

            setattr(cls, method, counted)


async def measure_writes(bodies: list[dict[str, Any]], polls: int, interval: float, warmup: int,
                         counts: dict[str, int]) -> dict[str, Any]:
    """`polls` reconciles of each (unchanging) group after `warmup` ones, `interval` s apart on the
    reconcile's clock; the body is read again before each poll, as kopf's daemon sees the live object."""
    api = client.CustomObjectsApi()
    results: dict[str, Any] = {}
    start = time.time()
    for body in bodies:
        meta = body["metadata"]
        state, shared = reconcile.ResourceState(), shared_for(meta["namespace"])
        events: list[tuple[str, str]] = []

        def emit(kind: str, reason: str, message: str, _events: list[tuple[str, str]] = events) -> None:
            _events.append((kind, reason))

        def live(_meta: dict[str, Any] = meta) -> dict[str, Any]:
            found: dict[str, Any] = api.get_namespaced_custom_object(
                "lagpilot.io", "v1alpha1", _meta["namespace"], "kafkaconsumergroups", _meta["name"])
            return found

        # Warm-up: creation, the first decision, and the scale-down to the minimum once its window passed.
        # Each poll's status write (in the background) lands before the next poll reads the object.
        for i in range(warmup):
            await reconcile.reconcile(live(), state, shared, emit, now=start + i * interval)
            await state.status.settle(30)
        before, events_before = dict(counts), len(events)
        for i in range(warmup, warmup + polls):
            await reconcile.reconcile(live(), state, shared, emit, now=start + i * interval)
            await state.status.settle(30)
        writes = {kind: counts[kind] - before[kind] for kind in counts}
        writes["events"] = len(events) - events_before
        await reconcile.forget(state, shared, meta["namespace"], meta["name"])
        total = sum(writes.values())
        results["template" if "template" in (body.get("spec") or {}) else "scaleTargetRef"] = {
            **writes, "total": total, "writes_per_second": round(total / (polls * interval), 4)}
    return results


ADMIN_REQUESTS = ("metadata", "list_offsets", "offset_fetch", "describe_groups")


def admin_calls(bootstrap: str) -> dict[str, float]:
    """This process's lag-read admin calls to the cluster so far, per kind."""
    return {request: REGISTRY.get_sample_value("lagpilot_kafka_admin_requests_total",
                                               {"cluster": bootstrap, "request": request}) or 0.0
            for request in ADMIN_REQUESTS}


async def measure_kafka_requests(bootstrap: str, bodies: list[dict[str, Any]], polls: int,
                                 interval: float) -> dict[str, Any]:
    """Every body reconciled in its own loop, `polls` times, `interval` s apart; the admin calls counted."""
    shared = reconcile.Shared()
    states = [reconcile.ResourceState() for _ in bodies]

    def ignore(kind: str, reason: str, message: str) -> None:
        return None

    # Warm-up: every resource registered on the cluster, connections and coordinators found.
    await asyncio.gather(*(reconcile.reconcile(b, st, shared, ignore) for b, st in zip(bodies, states, strict=True)))
    await asyncio.sleep(interval)
    before, started = admin_calls(bootstrap), time.monotonic()
    reconciles = 0

    async def loop(body: dict[str, Any], state: reconcile.ResourceState, offset: float) -> None:
        nonlocal reconciles
        await asyncio.sleep(offset)
        for _ in range(polls):
            await reconcile.reconcile(body, state, shared, ignore)
            reconciles += 1
            await asyncio.sleep(interval)

    await asyncio.gather(*(loop(b, st, i * interval / len(bodies))
                           for i, (b, st) in enumerate(zip(bodies, states, strict=True))))
    elapsed = time.monotonic() - started
    after = admin_calls(bootstrap)
    for body, state in zip(bodies, states, strict=True):
        await reconcile.forget(state, shared, body["metadata"]["namespace"], body["metadata"]["name"])
    calls = {request: int(after[request] - before[request]) for request in ADMIN_REQUESTS}
    return {"groups": len(bodies), "polls": polls, "poll_interval_seconds": interval, "reconciles": reconciles,
            "seconds": round(elapsed, 1), "admin_calls": calls,
            "requests_per_second": round(sum(calls.values()) / elapsed, 2),
            "per_resource_reads_would_make": {"admin_calls": 5 * reconciles,
                                              "requests_per_second": round(5 * reconciles / elapsed, 2)},
            "basis": "admin API calls of the lag reads (librdkafka may send one per partition leader or "
                     "group coordinator on the wire)"}


def main_kafka_requests(bootstrap: str, namespace: str, groups: int, polls: int, interval: float) -> int:
    bodies = [prepare(bootstrap, namespace, 4, name=f"bench-fleet-{i}") for i in range(groups)]
    print(json.dumps(asyncio.run(measure_kafka_requests(bootstrap, bodies, polls, interval))))
    return 0


def main_writes(bootstrap: str, namespace: str, polls: int, interval: float, warmup: int) -> int:
    counts: dict[str, int] = {}
    bodies = [prepare(bootstrap, namespace, 4), prepare(bootstrap, namespace, 4, template=True)]
    count_writes(counts)
    results = asyncio.run(measure_writes(bodies, polls, interval, warmup, counts))
    print(json.dumps({"polls": polls, "warmup_polls": warmup, "poll_interval_seconds": interval, "writes": results,
                      "basis": "write calls to the API server over the polls after the warm-up, per group"}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--writes", type=int, default=0, metavar="POLLS",
                        help="count API writes over POLLS polls of unchanging groups instead")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between polls (--writes, --kafka-requests)")
    parser.add_argument("--kafka-requests", type=int, default=0, metavar="GROUPS",
                        help="count the lag reads' Kafka admin calls of GROUPS resources on one cluster instead")
    parser.add_argument("--polls", type=int, default=10, help="polls per resource (--kafka-requests)")
    parser.add_argument("--warmup", type=int, default=80,
                        help="polls before counting (--writes; 80 x 5 s passes the 300 s scale-down window)")
    parser.add_argument("--default-gc", action="store_true",
                        help="CPython's collector as it comes, not as the operator runs it (collector.tune_collector)")
    parser.add_argument("--no-watch", action="store_true",
                        help="read Deployments and pool ConfigMaps with a GET each time, not from a watch")
    args = parser.parse_args()
    global USE_WATCH
    USE_WATCH = not args.no_watch
    if not args.default_gc:
        tune_collector()  # what the operator's start-up does
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    config.load_kube_config()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    try:
        return run(args, bootstrap, namespace)
    finally:
        delete_created_topics(bootstrap)


def run(args: argparse.Namespace, bootstrap: str, namespace: str) -> int:
    if args.kafka_requests:
        try:
            return main_kafka_requests(bootstrap, namespace, args.kafka_requests, args.polls, args.interval)
        finally:
            kubectl("delete", "namespace", namespace, "--wait=false")
    if args.writes:
        try:
            return main_writes(bootstrap, namespace, args.writes, args.interval, args.warmup)
        finally:
            kubectl("delete", "namespace", namespace, "--wait=false")
    count_requests()
    results: dict[int, dict[str, Any]] = {}
    try:
        for partitions in (int(s) for s in args.sizes.split(",")):
            body = prepare(bootstrap, namespace, partitions)
            results[partitions] = asyncio.run(measure(body, args.iterations))
            print(json.dumps({"partitions": partitions, **results[partitions]}), flush=True)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
    typical = results.get(100) or next(iter(results.values()))
    summary = {
        "reconcile_ms": {str(p): round(r["wall_ms_median"], 1) for p, r in results.items()},
        "reconcile_cpu_ms": {str(p): round(r["cpu_ms_median"], 1) for p, r in results.items()},
        "resources_per_core_at_5s": int(5.0 / max(typical["cpu_ms_median"] / 1000, 1e-6)),
        "basis": "CPU time of the whole process per reconcile of a 100-partition group",
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

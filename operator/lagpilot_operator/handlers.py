"""The kopf module (`kopf run -m lagpilot_operator.handlers`): thin handlers around `reconcile`.

One daemon per KafkaConsumerGroup reconciles every `spec.lag.pollIntervalSeconds` (read anew each round,
so a spec edit applies without a restart): right after its Kafka cluster's paced read when it reads a
consumer group's lag there, else start to start. kopf keeps a finalizer on every resource so
the loop is stopped before the object goes; the dead-letter topics are deleted then only for
resources whose `deadLetter.deletionPolicy` is `Delete`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kopf

from lagpilot_contract import pool as pool_contract
from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator import reconcile
from lagpilot_operator.collector import tune_collector
from lagpilot_operator.core.early_poll import EarlyPoll
from lagpilot_operator.kafka.dead_letter import delete_dead_letter_topics
from lagpilot_operator.kafka.kafka_lag import LagReadError
from lagpilot_operator.kube import api_session, kube_io, models, watch_cache
from lagpilot_operator.kube.diffbase import SpecDiffBaseStorage
from lagpilot_operator.kube.shard_keeper import ShardKeeper
from lagpilot_operator.kube.shards import ShardSettings

SHARED = reconcile.Shared()
KEEPER: ShardKeeper | None = None
"""Sharding on (LAGPILOT_SHARDS > 1): this replica's shard Leases. None: this replica serves everything."""
_KEEPER_TASK: asyncio.Task[None] | None = None
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# asyncio's default pool has cpu+4 threads (6 on 2 cores). A read from a dead cluster holds its thread for
# the whole Kafka timeout, so a few such resources would queue every healthy one.
IO_THREADS = int(os.environ.get("LAGPILOT_IO_THREADS", "64"))


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Progress in annotations: our status schema has no `kopf` field, and the API server would prune it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lagpilot.io")
    settings.persistence.diffbase_storage = SpecDiffBaseStorage(prefix="lagpilot.io")
    # kopf puts this finalizer on every resource (its daemons need one); deletion then waits for the
    # operator to stop the loop and, with deletionPolicy=Delete, to delete the dead-letter topics.
    settings.persistence.finalizer = "lagpilot.io/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    kube_io.load_configuration(connections=IO_THREADS)  # a kept API connection per IO thread
    port = int(os.environ.get("LAGPILOT_METRICS_PORT", "8080"))
    if port:
        # In a pod, every interface (the Service scrapes the pod IP); on a laptop, loopback only.
        in_pod = "KUBERNETES_SERVICE_HOST" in os.environ
        address = os.environ.get("LAGPILOT_METRICS_ADDRESS", "0.0.0.0" if in_pod else "127.0.0.1")
        try:
            metrics.serve(port, address)
        except OSError as exc:
            # Permanent: kopf stops the operator (exit 1) with this message. A startup handler that raised
            # anything else would be retried 60 s later, with nothing reconciled meanwhile and no sign why.
            raise kopf.PermanentError(
                f"cannot serve /metrics on {address}:{port}: {exc.strerror or exc}; free the port or set "
                "LAGPILOT_METRICS_PORT (0 turns the endpoint off)") from exc
        logger.info("metrics on %s:%d/metrics", address, port)


@kopf.on.startup()
async def io_threads(**_: Any) -> None:
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="lagpilot-io"))


@kopf.index("apps", "v1", "deployments", id="lagpilot_deployments")
def index_deployment(*, body: kopf.Body, namespace: str | None, name: str | None,
                     **_: Any) -> dict[watch_cache.Key, watch_cache.DeploymentEntry]:
    """Every Deployment in the served namespaces, as the reconcile reads it (`watch_cache`): no GET per poll."""
    return {(namespace or "", name or ""): watch_cache.deployment_entry(body)}


@kopf.index("v1", "configmaps", id="lagpilot_pools",
            labels={pool_contract.LABEL_MANAGED_BY: pool_contract.MANAGED_BY_VALUE})
def index_pool(*, body: kopf.Body, namespace: str | None, name: str | None,
               **_: Any) -> dict[watch_cache.Key, watch_cache.PoolEntry]:
    """The pool ConfigMaps the operator wrote (its managed-by label), by name."""
    return {(namespace or "", name or ""): watch_cache.pool_entry(body)}


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (the kubernetes client's config: in-cluster or kubeconfig), in a session that bounds
    kopf's requests in flight (`api_session`). Async: the session belongs to the operator's event loop."""
    info = kopf.login_via_client(**kwargs)
    return api_session.bounded_session(info) if info is not None else None


@kopf.on.startup()
def attach_views(**kwargs: Any) -> None:
    # kopf passes its indices by id and fills them from its watches (daemons start once they are listed);
    # an entry they lack is read with a GET.
    SHARED.views.deployments.attach(kwargs["lagpilot_deployments"])
    SHARED.views.pools.attach(kwargs["lagpilot_pools"])


@kopf.on.startup()
def garbage_collector(**_: Any) -> None:
    tune_collector()  # after the imports and the configuration above: they live as long as the process


def _own_namespace() -> str:
    """The pod's namespace (where the shard Leases live), or `default` outside a cluster."""
    found = _SERVICE_ACCOUNT_NAMESPACE
    return found.read_text().strip() if found.exists() else "default"


@kopf.on.startup()
async def start_sharding(*, logger: kopf.Logger, **_: Any) -> None:
    global KEEPER, _KEEPER_TASK
    settings = ShardSettings.from_env(os.environ, f"{socket.gethostname()}-{os.getpid()}", _own_namespace())
    if settings is None:
        return
    KEEPER = ShardKeeper(settings)
    _KEEPER_TASK = asyncio.create_task(KEEPER.run(), name="lagpilot-shard-leases")
    logger.info("sharding on: %d shards, identity %s", settings.shards, settings.identity)


@kopf.on.cleanup()
async def stop_sharding(**_: Any) -> None:
    # The daemons have stopped by now: hand the shards over instead of letting them expire.
    if _KEEPER_TASK is not None and KEEPER is not None:
        _KEEPER_TASK.cancel()
        await asyncio.gather(_KEEPER_TASK, return_exceptions=True)
        await asyncio.to_thread(KEEPER.release_all)


@kopf.on.cleanup()
async def close_connections(**_: Any) -> None:
    # Every daemon releases its share-group connections as it stops; this closes whatever is left.
    await SHARED.share_clients.close()


def _emitter(body: kopf.Body) -> reconcile.EventSink:
    def emit(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message)

    return emit


def _trace(record: dict[str, Any]) -> None:
    """LAGPILOT_RECONCILE_TRACE=<file>: one JSON line per reconcile start and end (which replica, which
    shard term), to check after the fact that no two replicas served a resource at once."""
    path = os.environ.get("LAGPILOT_RECONCILE_TRACE")
    if path:
        with open(path, "a", encoding="utf-8") as trace:
            trace.write(json.dumps(record) + "\n")


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Until the first of `waits` is done; the others are cancelled (also when the caller is)."""
    pending = {asyncio.ensure_future(wait) for wait in waits}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in pending:
            waiting.cancel()


async def _wait_for_shards(stopped: kopf.DaemonStopped, interval: float) -> None:
    """Until the interval passes, the daemon is stopped, or this replica's shards change."""
    assert KEEPER is not None
    await _first_of(stopped.wait(interval), KEEPER.changed())


def pause_before_next_poll(interval: float, reconcile_seconds: float) -> float:
    """The wait after a reconcile that took `reconcile_seconds`: the rest of the interval, so a resource
    is polled every `interval` seconds start to start, however long a reconcile takes on a busy host (a
    replica taking a dead one's shard over is then within two intervals of every poll). A reconcile
    longer than the interval is followed by a tenth of the interval, not by another at once: an
    overloaded operator slows its polls instead of piling them up."""
    return max(interval - reconcile_seconds, interval / 10)


async def _wait_for_next_poll(stopped: kopf.DaemonStopped, owner: tuple[str, str], interval: float,
                              started: float, early: EarlyPoll | None) -> None:
    """Until the resource polls again: right after its Kafka cluster's next paced read when it reads a
    consumer group's lag there, or after a probe of the log ends that shows its lag above `early`
    (`ClusterObservers.next_poll`), else the rest of its interval. The stop ends the wait; so do three
    intervals without a paced read (a read that never ends, a bug): it polls then."""
    paced = SHARED.cluster_reads.next_poll(owner, interval, started, early)
    if paced is None:
        await stopped.wait(pause_before_next_poll(interval, time.monotonic() - started))
        return
    await _first_of(paced, stopped.wait(3 * interval))


@kopf.daemon(models.GROUP, models.VERSION, models.PLURAL, cancellation_timeout=10)
async def run_group(*, body: kopf.Body, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
    state = reconcile.ResourceState()
    meta = body.get("metadata") or {}
    namespace, name = meta.get("namespace") or "", meta.get("name") or ""
    term: str | None = None
    """The shard term `state` was built under (sharding on): another term starts from the status again."""
    try:
        while not stopped:
            interval = int(((body.get("spec") or {}).get("lag") or {}).get("pollIntervalSeconds") or 5)
            held = "" if KEEPER is None else KEEPER.held_token(namespace, name)
            if held != term and term is not None:
                # Another replica may have served it meanwhile: resume from its status, not our memory.
                # (The same term paused by a late renewal keeps its memory: nobody else held the shard.)
                await reconcile.forget(state, SHARED, namespace, name)
                state, term = reconcile.ResourceState(), None
            # Counted as running under its shard until it ends: the shard is not handed over meanwhile.
            token = "" if KEEPER is None else KEEPER.enter(namespace, name)
            if token is None:  # another replica's shard, ours being handed over, or paused until a renewal
                await _wait_for_shards(stopped, interval)
                continue
            started = time.monotonic()
            try:
                term = token
                fence = None if KEEPER is None else reconcile.Fence(token, functools.partial(KEEPER.still_holds, token))
                identity = KEEPER.settings.identity if KEEPER else ""
                _trace({"event": "start", "resource": f"{namespace}/{name}", "term": token, "time": time.time(),
                        "identity": identity})
                status = await reconcile.reconcile(dict(body), state, SHARED, _emitter(body), fence=fence)
                _trace({"event": "end", "resource": f"{namespace}/{name}", "term": token, "time": time.time(),
                        "identity": identity, "written": bool(status)})
            finally:
                if KEEPER is not None:
                    # Its status write, in the background, counts as running under the shard until it is done.
                    writing = state.status.busy()
                    if writing is None:
                        KEEPER.leave(namespace, name)
                    else:
                        writing.add_done_callback(functools.partial(_leave_shard, KEEPER, namespace, name))
            logger.debug("reconciled: %s", status.get("lastDecision"))
            await _wait_for_next_poll(stopped, (namespace, name), interval, started, state.early_poll)
    finally:
        # Deleted or operator stopping: its Kafka clients go too (unless another resource shares them).
        await reconcile.forget(state, SHARED, namespace, name)


def _leave_shard(keeper: ShardKeeper, namespace: str, name: str, _done: object) -> None:
    keeper.leave(namespace, name)


def _deletes_topics(spec: kopf.Spec, **_: Any) -> bool:
    return bool(((spec.get("deadLetter") or {}).get("deletionPolicy")) == "Delete")


@kopf.on.delete(models.GROUP, models.VERSION, models.PLURAL, when=_deletes_topics)
async def delete_topics(*, spec: kopf.Spec, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    try:
        parsed = models.KafkaConsumerGroupSpec.from_k8s(spec)
        settings = await reconcile.kafka_settings(parsed, namespace or "")
        outcome = await asyncio.to_thread(delete_dead_letter_topics, settings, parsed.group_id, parsed.dead_letter)
    except LagReadError as exc:
        raise kopf.TemporaryError(f"cannot delete the dead-letter topics yet: {exc}", delay=30) from exc
    except Exception as exc:  # Kafka errors from the topic calls: retry, the finalizer keeps the resource
        raise kopf.TemporaryError(f"cannot delete the dead-letter topics yet: {exc}", delay=30) from exc
    logger.info("dead-letter topics deleted: %s", ", ".join(outcome.deleted) or "none")


@kopf.on.delete(models.GROUP, models.VERSION, models.PLURAL, optional=True)
def forget_metrics(*, namespace: str | None, name: str, **_: Any) -> None:
    metrics.forget_resource(namespace or "", name)

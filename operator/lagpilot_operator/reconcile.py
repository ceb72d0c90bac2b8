"""One reconcile of one KafkaConsumerGroup: read lag, decide, apply, report.

The decision itself is pure (`policy.decide`); this module does the I/O around it in a fixed order
and turns every outcome into status, conditions, events and metrics. Blocking client calls run in
threads so one slow cluster never stalls the other resources' loops. Nothing here raises for an
expected fault (Kafka down, target missing, bad credentials): faults become conditions, and the
replicas are held (or go to the fallback) — never to zero while blind.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from lagpilot_contract.pool import pool_configmap_name
from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator.core.early_poll import EarlyPoll, early_poll_after
from lagpilot_operator.core.observations import (
    DEFAULT_CONSUME_RATE_WINDOW_SECONDS,
    DEFAULT_PRODUCE_RATE_WINDOW_SECONDS,
    LagHistory,
    LagSample,
    PartitionKey,
    lags_by_partition,
    partition_name,
)
from lagpilot_operator.core.pause import pause_from
from lagpilot_operator.core.policy import Decision, Observation, PolicyConfig, PolicyMemory, decide
from lagpilot_operator.core.timelag import TimeLagTracker, summarize
from lagpilot_operator.core.verdicts import DEFAULT_WINDOW_SECONDS, Verdict, evaluate, stuck_partitions
from lagpilot_operator.kafka import cluster_observer, kafka_lag, prom_lag, share_lag
from lagpilot_operator.kafka.cluster_reads import Want
from lagpilot_operator.kafka.dead_letter import (
    DeadLetterMemory,
    dead_letter_settings,
    next_dead_letter_check,
    reconcile_dead_letter,
)
from lagpilot_operator.kafka.redrive import RedriveSessions, run_redrive_step
from lagpilot_operator.kube import kube_io, models, scale_apply, shards, watch_cache, worker_config, writes
from lagpilot_operator.kube.conditions import conditions_to_k8s, set_condition
from lagpilot_operator.kube.models import Condition, ConditionStatus
from lagpilot_operator.kube.secret_cache import SecretCache
from lagpilot_operator.kube.status_writer import StatusWriter

log = logging.getLogger(__name__)

TOP_PARTITIONS = 10
DEAD_LETTER_INTERVAL_SECONDS = 30.0
# The stuck-partition window (verdicts.py). An operator setting rather than a spec field: it is about
# how patient the operator is with commit gaps, the same for every group it serves.
VERDICT_WINDOW_SECONDS = float(os.environ.get("LAGPILOT_VERDICT_WINDOW_SECONDS", DEFAULT_WINDOW_SECONDS))
# The longest window the reconcile reads from a resource's history (verdicts, rates): older samples are
# dropped (`LagHistory.needed_seconds`), which changes no result.
HISTORY_NEEDED_SECONDS = max(VERDICT_WINDOW_SECONDS, DEFAULT_PRODUCE_RATE_WINDOW_SECONDS,
                             DEFAULT_CONSUME_RATE_WINDOW_SECONDS)
STATUS_SETTLE_SECONDS = 5.0
"""How long a loop that ends waits for its last status write (`StatusWriter.settle`)."""
EventSink = Callable[[str, str, str], None]  # (type Normal|Warning, reason, message)


@dataclass(frozen=True)
class Fence:
    """Sharding on: the shard term this reconcile acts under, and whether it still holds (checked right
    before each write, since the term can end while a reconcile waits on Kafka)."""

    token: str
    holds: Callable[[], bool]


class Fenced(Exception):
    """The term ended, or the Deployment carries a newer term: another replica serves the resource now."""


def _check(fence: Fence | None) -> None:
    if fence is not None and not fence.holds():
        raise Fenced(f"shard term {fence.token} ended before the write")


@dataclass(frozen=True)
class ParsedSpec:
    """A spec as last parsed: its plain copy (what the next poll's spec is compared with), the model and
    the policy configuration read from it (before the pause annotation, which is read every poll)."""

    raw: dict[str, Any]
    spec: models.KafkaConsumerGroupSpec
    config: PolicyConfig


@dataclass
class ResourceState:
    """What the operator keeps in memory per resource between reconciles (rebuilt after a restart)."""

    history: LagHistory = field(default_factory=lambda: LagHistory(needed_seconds=HISTORY_NEEDED_SECONDS))
    time_lags: TimeLagTracker = field(default_factory=TimeLagTracker)
    memory: PolicyMemory | None = None
    failures: int = 0
    stuck: frozenset[tuple[str, int]] = frozenset()
    dead_letter_memory: DeadLetterMemory = field(default_factory=DeadLetterMemory)
    dead_letter_due_at: float = 0.0
    """When the next reconcile looks at the DLQ and retry topics (0: on the next poll)."""
    dead_letter_status: dict[str, Any] | None = None
    dead_letter_condition: tuple[str, str, str] | None = None
    redrive_sessions: RedriveSessions = field(default_factory=RedriveSessions)
    """The running redrive's transactional producer and consumer, reused across polls."""
    status: StatusWriter = field(default_factory=StatusWriter)
    """Its status writes, in the background; the status last handed over, and when
    (`writes.status_write_reason` compares to it)."""
    events: writes.EventMemory = field(default_factory=writes.EventMemory)
    """The last Event per subject, so the same news is not posted twice."""
    parsed_spec: ParsedSpec | None = None
    parsed_conditions: tuple[list[Any], list[Condition]] | None = None
    """The status's conditions as last parsed: their plain copy and the models."""
    published_pool: int | None = None
    """The pool this process last published to the workers' ConfigMap (`scale_apply.current_pool`)."""
    target_read_at: float | None = None
    """When the target Deployment was last read with a GET (`watch_cache.verify_due`)."""
    target_key: watch_cache.Key | None = None
    secret_names: tuple[str, ...] = ()
    """The Secrets its credentials came from on its last poll (forgotten with it)."""
    early_poll: EarlyPoll | None = None
    """The lag above which a read between polls brings its next poll forward (None: no Kafka lag read)."""


@dataclass(frozen=True)
class Shared:
    """Process-wide clients."""

    admin_clients: kafka_lag.AdminClientPool = field(default_factory=kafka_lag.AdminClientPool)
    share_clients: share_lag.ShareLagClients = field(default_factory=share_lag.ShareLagClients)
    """The share-group lag reader's kept broker connections, per cluster and credentials."""
    cluster_reads: cluster_observer.ClusterObservers = field(init=False)
    """Consumer-group lag: one coalesced read per cluster for every resource on it."""
    views: watch_cache.Views = field(default_factory=watch_cache.Views)
    """Deployments and pool ConfigMaps as the watch shows them (`handlers` attaches kopf's indices)."""
    secrets: SecretCache = field(default_factory=lambda: SecretCache(kube_io.read_secret_data))
    """The Secrets credentials come from, kept for a minute (see `secret_cache`)."""

    def __post_init__(self) -> None:
        # Built here because it reads through this instance's client pool.
        object.__setattr__(self, "cluster_reads", cluster_observer.ClusterObservers(self.admin_clients))


async def forget(state: ResourceState, shared: Shared, namespace: str, name: str) -> None:
    """The resource's loop ends (deleted, or the operator stops): close what it held open."""
    await state.status.settle(STATUS_SETTLE_SECONDS)
    shared.admin_clients.release((namespace, name))
    shared.cluster_reads.release((namespace, name))
    shared.secrets.forget(namespace, state.secret_names)  # kept only while a resource uses them
    shared.views.pools.forget((namespace, pool_configmap_name(name)))
    if state.target_key is not None:
        shared.views.deployments.forget(state.target_key)
    await shared.share_clients.release((namespace, name))
    await asyncio.to_thread(state.redrive_sessions.close)


def _utc(now: float) -> str:
    return models.rfc3339(now)


async def reconcile(body: dict[str, Any], state: ResourceState, shared: Shared, emit: EventSink,
                    now: float | None = None, fence: Fence | None = None) -> dict[str, Any]:
    """Run one reconcile and hand the status to its writer (`state.status`, in the background) when something
    worth writing changed (`writes`); returns the status computed (for tests and logs). With a `fence`
    (sharding), nothing is written once the term has ended or the Deployment shows a newer one: the status is
    then the new holder's to write."""
    started = time.perf_counter()
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    now = time.time() if now is None else now
    try:
        status = await _reconcile(body, state, shared, _deduplicated(state.events, emit), now, fence)
        _check(fence)
    except Fenced as exc:
        log.info("%s/%s: not written: %s", namespace, name, exc)
        metrics.FENCED_RECONCILES.inc()
        return {}
    except Exception as exc:  # one resource's bug must never stop the others: report it, keep looping
        log.exception("reconcile of %s/%s failed", namespace, name)
        metrics.RECONCILE_ERRORS.labels(namespace, name, "unexpected").inc()
        conditions = set_condition(_conditions(body), models.READY, "False", "ReconcileError",
                                   f"unexpected error: {type(exc).__name__}: {exc}", meta.get("generation"),
                                   time.time())
        status = {"conditions": conditions_to_k8s(conditions)}
    parsed = state.parsed_spec
    why = writes.status_write_reason(
        state.status.written, state.status.written_at, status, now,
        poll_interval=parsed.spec.lag.poll_interval_seconds if parsed else 0.0,
        floor_slots=parsed.spec.replicas.min * parsed.spec.pool.min if parsed else 0)
    if why is not None:
        log.debug("writing the status of %s/%s (%s)", namespace, name, why)
        # In the background (`status_writer`): the loop goes back to wait for its next read meanwhile.
        state.status.submit(namespace, name, status, why, now, None if fence is None else fence.holds)
    metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    return status


def _deduplicated(events: writes.EventMemory, emit: EventSink) -> EventSink:
    """`emit`, minus an Event whose subject last said exactly the same (`writes.EventMemory`)."""
    def send(kind: str, reason: str, message: str) -> None:
        if events.admit(kind, reason, message):
            emit(kind, reason, message)

    return send


def _conditions(body: dict[str, Any]) -> list[Any]:
    return list((body.get("status") or {}).get("conditions") or [])


async def _reconcile(body: dict[str, Any], state: ResourceState, shared: Shared, emit: EventSink,
                     now: float, fence: Fence | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    previous = writes.stored_status(body.get("status") or {}, state.status.written)
    conditions = _parse_conditions(state, list(previous.get("conditions") or []))

    def condition(kind: str, ok: bool | None, reason: str, message: str) -> None:
        nonlocal conditions
        value: ConditionStatus = "Unknown" if ok is None else "True" if ok else "False"
        conditions = set_condition(conditions, kind, value, reason, message, generation, now)

    try:
        spec, spec_config = _parse_spec(state, body.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        condition(models.READY, False, "InvalidSpec", f"spec.{where}: {first['msg']}; fix the resource")
        return {"observedGeneration": generation, "conditions": conditions_to_k8s(conditions)}
    pause = pause_from(meta.get("annotations"), spec.paused)
    config = replace(spec_config, paused=pause.paused, paused_replicas=pause.replicas)
    condition(models.PAUSED, pause.paused, pause.reason, pause.message)
    metrics.MAX_REPLICAS.labels(namespace, name).set(spec.replicas.max)

    # 1. The target Deployment (created first in template mode, so the group has somewhere to run).
    _check(fence)
    target = await _target(body, spec, config, shared.views, state, now)
    if target is None:
        wanted = spec.scale_target_ref.name if spec.scale_target_ref else name
        condition(models.TARGET_FOUND, False, "DeploymentNotFound",
                  f"Deployment {namespace}/{wanted} does not exist; create it or fix spec.scaleTargetRef.name")
    else:
        if fence is not None and shards.token_is_stale(fence.token, target.fencing_token):
            raise Fenced(f"Deployment {namespace}/{target.name} carries the newer term {target.fencing_token} "
                         f"(ours: {fence.token})")
        condition(models.TARGET_FOUND, True, "DeploymentFound", f"scaling Deployment {namespace}/{target.name}")
        found = worker_config.mismatch_condition(spec, f"{namespace}/{target.name}", target.containers)
        condition(models.WORKER_CONFIG_MISMATCH, {"True": True, "False": False}.get(found.status), found.reason,
                  found.message)
    current_replicas = target.spec_replicas if target else int(previous.get("currentReplicas") or 0)
    current_pool = scale_apply.current_pool(previous, state.published_pool, spec.pool.initial)

    # 2. Lag.
    settings: dict[str, str] | None = None
    try:
        state.secret_names = kafka_lag.secret_names(kafka_lag.secret_refs(spec.kafka))
        settings = await kafka_settings(spec, namespace, shared.secrets)
    except kafka_lag.LagReadError as exc:
        settings_error: kafka_lag.LagReadError | None = exc
    else:
        settings_error = None
    if spec.lag.source == "kafka" and settings is None:
        sample, lag_error = None, settings_error
    else:
        sample, lag_error = await _read_lag(spec, settings, shared, namespace, name)
    # After a restart: the memory as last written, its skipped timestamp refreshes restored (`writes`).
    memory = state.memory or writes.resume_memory(PolicyMemory.from_dict(previous.get("policyMemory")), now)
    verdicts: dict[tuple[str, int], Verdict] = {}
    time_lags: dict[tuple[str, int], float] = {}
    lags: dict[PartitionKey, int] = {}
    state.early_poll = None
    if sample is None:
        state.failures += 1
        shared.secrets.forget(namespace, state.secret_names)  # a rotated Secret may be why: read it again
        metrics.RECONCILE_ERRORS.labels(namespace, name, lag_error.reason if lag_error else "lag").inc()
        message = str(lag_error) if lag_error else "lag could not be read"
        if state.failures == 1:  # the first of a run: the condition and Events carry the rest
            log.warning("%s/%s: lag not read: %s", namespace, name, message)
        if spec.lag.source == "kafka":
            condition(models.KAFKA_REACHABLE, False, lag_error.reason if lag_error else "KafkaError", message)
        condition(models.LAG_METRIC_AVAILABLE, False, lag_error.reason if lag_error else "LagUnavailable", message)
        observation = Observation(sample=None, current_replicas=current_replicas, current_pool=current_pool,
                                  consecutive_failures=state.failures)
    else:
        if state.failures:
            log.info("%s/%s: lag read again after %d failed reads", namespace, name, state.failures)
        state.failures = 0
        if spec.lag.source == "kafka":
            condition(models.KAFKA_REACHABLE, True, "Connected", f"read offsets of {len(sample.partitions)} "
                      f"partitions from {spec.kafka.bootstrap_servers}")
        condition(models.LAG_METRIC_AVAILABLE, True, "LagRead", f"lag read from {spec.lag.source}")
        state.history.add(sample)
        reset = config.lag_threshold.offset_reset_policy
        # Each partition's lag, once for the decision, the status and the metrics (from the history's
        # columns, unless this read was not newer than the last: then the history's newest is another).
        current = state.history.latest is sample
        lags = state.history.latest_lags(reset) if current else lags_by_partition(sample.partitions, reset)
        if spec.lag.source == "kafka":
            # Rates, time lag and verdicts need offsets; Prometheus gives lag only (see prom_lag).
            state.time_lags.add(sample)
            time_lags = state.time_lags.time_lags(sample, now, reset)
            verdicts = evaluate(state.history, window_seconds=VERDICT_WINDOW_SECONDS, offset_reset_policy=reset,
                                now=sample.time)
            observation = Observation.from_history(state.history, current_replicas=current_replicas,
                                                   current_pool=current_pool, verdicts=verdicts,
                                                   time_lags=time_lags,
                                                   ready_replicas=target.ready_replicas if target else None,
                                                   commit_interval_seconds=worker_config.declared_commit_interval(
                                                       target.containers) if target else None,
                                                   lags=lags if current else None)
            state.early_poll = early_poll_after(sum(lags.values()), len(lags), observation.produce_rate,
                                                observation.commit_interval_seconds, reset, decided_at=sample.time)
        else:
            observation = Observation(sample=sample, current_replicas=current_replicas, current_pool=current_pool,
                                      partitions=len(sample.partitions), lag_only=True, lags=lags)

    # 3. Decide, and apply (a missing target is reported, never scaled).
    decision = decide(config, observation, memory, now)
    applied_replicas, refusal = current_replicas, None
    if target is not None and decision.replicas != current_replicas:
        try:
            await _scale(namespace, target, decision.replicas, fence, shared.views)
            applied_replicas = decision.replicas
        except ApiException as exc:  # RBAC, an admission webhook or policy, a conflict: report and hold
            refusal = scale_apply.refusal(
                f"scaling Deployment {namespace}/{target.name} from {current_replicas} to {decision.replicas} "
                "replicas", exc.status, exc.body, f"replicas stay at {current_replicas}")
    elif target is not None and fence is not None and target.fencing_token != fence.token:
        await _stamp(namespace, target, fence, shared.views)
    if target is not None:
        # A refused scale holds the pool too: the decision is one shape (replicas x pool).
        pool = decision.pool if refusal is None else current_pool
        _check(fence)
        try:
            pool_key = (namespace, pool_configmap_name(name))
            known_pool = shared.views.pools.get(pool_key)
            metrics.KUBE_READS.labels("configmap", "api" if known_pool is None else "watch").inc()
            # The watch shows the size the workers have (the usual poll): nothing to write, no thread to wait for.
            published = None if watch_cache.pool_published(known_pool, pool) else await asyncio.to_thread(
                kube_io.publish_pool_size, body, pool, decision.reason, _utc(now), known_pool)
            if published is not None:
                shared.views.pools.wrote(pool_key, published)
            state.published_pool = pool
        except ApiException as exc:
            refusal = refusal or scale_apply.refusal(
                f"publishing pool size {pool} in ConfigMap {namespace}/{pool_configmap_name(name)}", exc.status,
                exc.body, f"the pool stays at {current_pool}")
            pool = current_pool
        if refusal is not None:
            nothing_applied = applied_replicas == current_replicas
            state.memory = scale_apply.memory_after_apply(memory, decision, refused=nothing_applied)
            decision = replace(decision, pool=pool, memory=state.memory)
    if refusal is None:
        state.memory = decision.memory
    changed = applied_replicas != current_replicas or decision.pool != current_pool
    if changed:
        direction = "up" if applied_replicas * decision.pool > current_replicas * current_pool else "down"
        metrics.DECISIONS.labels(namespace, name, direction).inc()
        emit("Normal", "ScaledUp" if direction == "up" else "ScaledDown", decision.reason)
    if pause.paused:
        condition(models.SCALING, False, "Paused", f"{decision.reason} (see the Paused condition)")
    elif refusal is not None:
        condition(models.SCALING, False, refusal.reason, refusal.message)
    elif sample is None:
        condition(models.SCALING, False, "LagUnavailable", f"holding at {applied_replicas} replicas: {decision.reason}")
    else:
        condition(models.SCALING, True, "Active", decision.reason)

    # 4. Stuck partitions: a condition, and an Event when the set changes.
    stuck = stuck_partitions(verdicts)
    if stuck:
        names = ", ".join(f"{partition_name(k)} ({v.value})" for k, v in sorted(stuck.items()))
        condition(models.PARTITIONS_STUCK, True, "PartitionsStuck",
                  f"{names}: committed offsets are not moving while lag remains; more consumers cannot help — "
                  "check the handler for a poison message or a blocked call")
        if frozenset(stuck) != state.stuck:
            emit("Warning", "PartitionsStuck", f"stuck partitions (excluded from scaling): {names}")
    elif sample is not None and spec.lag.source == "kafka":
        condition(models.PARTITIONS_STUCK, False, "NoneStuck", "every partition is moving or caught up")
    state.stuck = frozenset(stuck)

    status = _status(spec, sample, decision, observation, lags, verdicts, time_lags, state, generation,
                     applied_replicas, now, previous, changed)

    # 5. Dead-letter topics (every ~30 s: several round trips) and a redrive in progress.
    if settings is not None:
        await _dead_letter(spec, settings, state, shared, emit, namespace, name, now, previous, status)
    if state.dead_letter_condition is not None:
        ok, reason, message = state.dead_letter_condition
        condition(models.DEAD_LETTER_READY, {"True": True, "False": False}.get(ok), reason, message)

    ready = target is not None and sample is not None
    condition(models.READY, ready, "Reconciled" if ready else "NotReady",
              decision.reason if ready else "see the KafkaReachable, TargetFound and LagMetricAvailable conditions")
    status["conditions"] = conditions_to_k8s(conditions)
    _export(namespace, name, sample, decision, lags, verdicts, time_lags, applied_replicas)
    metrics.export_rates(namespace, name, status.get("produceRatePerSecond"), status.get("consumeRatePerSecond"))
    return status


def _parse_conditions(state: ResourceState, raw: list[Any]) -> list[Condition]:
    """The status's conditions as models, parsed again only when they differ from the ones parsed last
    (mostly the ones this process wrote): validating each on every poll was a tenth of a poll's CPU."""
    parsed = state.parsed_conditions
    if parsed is None or parsed[0] != raw:
        parsed = state.parsed_conditions = (models.plain(raw), [Condition.from_k8s(item) for item in raw])
    return list(parsed[1])


def _parse_spec(state: ResourceState, raw: Any) -> tuple[models.KafkaConsumerGroupSpec, PolicyConfig]:
    """The spec and the policy it configures (raises `ValidationError`); parsed again only when the spec
    differs from the one parsed last (a dict comparison, against a model validation, a dump and a
    policy read on every poll)."""
    parsed = state.parsed_spec
    if parsed is not None and parsed.raw == raw:
        return parsed.spec, parsed.config
    plain = models.plain(raw)
    spec = models.KafkaConsumerGroupSpec.from_k8s(plain)
    config = PolicyConfig.from_spec(spec.to_k8s())
    state.parsed_spec = ParsedSpec(plain, spec, config)
    return spec, config


async def _scale(namespace: str, target: kube_io.TargetScale, replicas: int, fence: Fence | None,
                 views: watch_cache.Views) -> None:
    """Sharding off: the scale subresource, as HPA does. On: a patch carrying the shard term and the
    resourceVersion read, so a replica whose term ended cannot overwrite the new holder's decision."""
    key = (namespace, target.name)
    if fence is None:
        try:
            version = await asyncio.to_thread(kube_io.scale_target, namespace, target.name, replicas)
        except ApiException as exc:
            _gone(views, key, exc)
            raise
        known = views.deployments.get(key)
        if version and known is not None:  # the next poll sees this write, whatever the watch shows by then
            views.deployments.wrote(key, watch_cache.scaled(known, replicas, version))
        return
    await _fenced_write(namespace, target, fence, replicas, views)


async def _fenced_write(namespace: str, target: kube_io.TargetScale, fence: Fence, replicas: int | None,
                        views: watch_cache.Views) -> None:
    """`kube_io.fenced_write` under the version read; after a 409, once more under the version a GET finds
    when that still allows it (`watch_cache.after_conflict`: the watch can be a status update behind)."""
    key = (namespace, target.name)

    async def write(resource_version: str) -> watch_cache.DeploymentEntry:
        _check(fence)
        try:
            return await asyncio.to_thread(kube_io.fenced_write, namespace, target.name, fence.token,
                                           resource_version, replicas)
        except ApiException as exc:
            _gone(views, key, exc)
            raise

    try:
        written = await write(target.resource_version)
    except ApiException as exc:
        if exc.status != 409:
            raise
        metrics.KUBE_READS.labels("deployment", "api").inc()
        fresh = await asyncio.to_thread(kube_io.read_target, namespace, target.name)
        after = watch_cache.after_conflict(fence.token, None if replicas is None else target.spec_replicas, fresh)
        if after == "fenced":
            assert fresh is not None
            raise Fenced(f"Deployment {namespace}/{target.name} carries the newer term {fresh.fencing_token} "
                         f"(ours: {fence.token})") from exc
        if after != "retry" or fresh is None:
            raise
        written = await write(fresh.resource_version)
    views.deployments.wrote(key, written)


def _gone(views: watch_cache.Views, key: watch_cache.Key, exc: ApiException) -> None:
    """A write found the Deployment gone: the next poll asks the API server, whatever the watch still shows."""
    if exc.status == 404:
        views.deployments.wrote(key, None)


async def _stamp(namespace: str, target: kube_io.TargetScale, fence: Fence, views: watch_cache.Views) -> None:
    """A new term's first reconcile of a resource marks its Deployment, so a replica whose term ended
    (paused past its Lease) has its next write refused even when this one had nothing to scale."""
    try:
        await _fenced_write(namespace, target, fence, None, views)
    except ApiException as exc:  # 409 twice: the Deployment changed since the read; the next poll stamps it
        log.debug("%s/%s: fencing token not written (HTTP %s); next poll", namespace, target.name, exc.status)


async def _target(body: dict[str, Any], spec: models.KafkaConsumerGroupSpec, config: PolicyConfig,
                  views: watch_cache.Views, state: ResourceState, now: float) -> kube_io.TargetScale | None:
    """The target Deployment as the watch shows it, or as a GET reads it (no watched entry, or
    `watch_cache.VERIFY_SECONDS` since the last GET)."""
    namespace = body["metadata"]["namespace"]
    name = spec.scale_target_ref.name if spec.scale_target_ref is not None else body["metadata"]["name"]
    key = state.target_key = (namespace, name)
    known = None if watch_cache.verify_due(state.target_read_at, now) else views.deployments.get(key)
    if spec.template is not None:
        if known is None or known.compared is None:
            state.target_read_at = now  # ensure_templated_deployment reads it
            metrics.KUBE_READS.labels("deployment", "api").inc()
        else:
            metrics.KUBE_READS.labels("deployment", "watch").inc()
        # Workers learn group, topics, connection and DLQ from the CR: one source of truth.
        env = worker_config.injected_env(spec, body["metadata"]["name"])
        target, written = await asyncio.to_thread(kube_io.ensure_templated_deployment, body, spec.template,
                                                  max(config.replicas.min, 1), env, known)
        if written is not None:
            views.deployments.wrote(key, written)
        return target
    assert spec.scale_target_ref is not None  # the CRD's CEL rule: exactly one of the two
    if known is not None:
        metrics.KUBE_READS.labels("deployment", "watch").inc()
        return known.target
    metrics.KUBE_READS.labels("deployment", "api").inc()
    state.target_read_at = now
    return await asyncio.to_thread(kube_io.read_target, namespace, name)


async def kafka_settings(spec: models.KafkaConsumerGroupSpec, namespace: str,
                         secrets: SecretCache | None = None) -> dict[str, str]:
    """librdkafka settings with the credentials from the referenced Secrets: kept ones from `secrets`,
    the others read now (None: all read now)."""
    refs = kafka_lag.secret_refs(spec.kafka)
    if not refs:
        return kafka_lag.client_settings(spec.kafka, {})
    names = kafka_lag.secret_names(refs)
    cache = secrets if secrets is not None else SecretCache(kube_io.read_secret_data)
    due = cache.to_fetch(namespace, names)
    if due:  # else no thread hop: the usual poll
        await asyncio.to_thread(cache.fetch, namespace, due)
    values = kube_io.secret_values(cache.data(namespace, names), refs, kafka_lag.pem_secret_refs(spec.kafka))
    return kafka_lag.client_settings(spec.kafka, values)


async def _read_lag(spec: models.KafkaConsumerGroupSpec, settings: dict[str, str] | None, shared: Shared,
                    namespace: str, name: str) -> tuple[LagSample | None, kafka_lag.LagReadError | None]:
    owner = (namespace, name)
    if spec.lag.source != "kafka" or spec.group_type != "share":
        await shared.share_clients.release(owner)  # no share-group read (any more): its connections can go
    if spec.lag.source != "kafka" or spec.group_type == "share":
        shared.cluster_reads.release(owner)  # not in its cluster's consumer-group reads (any more)
    try:
        if spec.lag.source == "prometheus":
            assert spec.lag.prometheus is not None  # the CRD's CEL rule
            query = prom_lag.render_query(spec.lag.prometheus.query, group=spec.group_id, topics=spec.topics,
                                          namespace=namespace)
            return await asyncio.to_thread(prom_lag.read_lag, spec.lag.prometheus.url, query), None
        assert settings is not None
        admin = shared.admin_clients.get(settings, owner=owner)  # leased: kept while this resource uses it
        if spec.group_type != "share":
            # The cluster's coalesced read (cluster_observer), which retires a failing client itself.
            sample = await shared.cluster_reads.sample(settings, owner, Want(spec.group_id, tuple(spec.topics)),
                                                       spec.lag.poll_interval_seconds)
            return sample, None
        try:
            cluster = await shared.share_clients.get(settings, owner, spec.group_id)
            sample = await share_lag.read_share_lag(admin, settings, spec.group_id, list(spec.topics),
                                                    cluster=cluster)
        except kafka_lag.LagReadError as exc:
            if kafka_lag.retire_client_after(exc):
                shared.admin_clients.discard(settings)
            raise
        return sample, None
    except kafka_lag.LagReadError as exc:
        return None, exc


def _status(spec: models.KafkaConsumerGroupSpec, sample: LagSample | None, decision: Decision,
            observation: Observation, lags: dict[PartitionKey, int], verdicts: dict[PartitionKey, Verdict],
            time_lags: dict[PartitionKey, float], state: ResourceState, generation: int | None,
            applied_replicas: int, now: float, previous: dict[str, Any], changed: bool) -> dict[str, Any]:
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "desiredReplicas": decision.replicas,
        "currentReplicas": applied_replicas,
        "poolSize": decision.pool,
        "lastDecision": decision.reason,
        "consecutiveLagFailures": state.failures,
        "policyMemory": decision.memory.to_dict(),
        "lastScaleTime": _utc(now) if changed else previous.get("lastScaleTime"),
    }
    if sample is not None:
        top = _top_partitions(lags)
        status["totalLag"] = decision.total_lag
        status["partitions"] = len(sample.partitions)
        status["topPartitions"] = [
            {"topic": key[0], "partition": key[1], "lag": lag,
             **({"timeLagSeconds": round(time_lags[key], 1)} if key in time_lags else {}),
             **({"verdict": verdicts[key].value} if key in verdicts else {})}
            for key, lag in top
        ]
        if time_lags:
            summary = summarize(time_lags)
            status["maxTimeLagSeconds"] = round(summary.max_seconds, 1)
            status["meanTimeLagSeconds"] = round(summary.mean_seconds, 1)
        # The rates the decision saw (None for a lag-only source).
        produce, consume = observation.produce_rate, observation.consume_rate
        if produce is not None and spec.lag.source == "kafka":
            status["produceRatePerSecond"] = round(produce, 2)
        if consume is not None and spec.lag.source == "kafka":
            status["consumeRatePerSecond"] = round(consume, 2)
    return {k: v for k, v in status.items() if v is not None}


def _top_partitions(lags: dict[PartitionKey, int]) -> list[tuple[PartitionKey, int]]:
    """The TOP_PARTITIONS largest lags, ties in partition order: `heapq.nsmallest` by (-lag, partition), which
    is the sorted list's head. Sorted from the lags at least the TOP_PARTITIONS-th largest, found first without
    a key per partition."""
    def order(item: tuple[PartitionKey, int]) -> tuple[int, PartitionKey]:
        return -item[1], item[0]

    if len(lags) <= TOP_PARTITIONS:
        return sorted(lags.items(), key=order)
    floor = heapq.nlargest(TOP_PARTITIONS, lags.values())[-1]
    return sorted([item for item in lags.items() if item[1] >= floor], key=order)[:TOP_PARTITIONS]


async def _dead_letter(spec: models.KafkaConsumerGroupSpec, settings: dict[str, str], state: ResourceState,
                       shared: Shared, emit: EventSink, namespace: str, name: str, now: float,
                       previous: dict[str, Any], status: dict[str, Any]) -> None:
    dl = dead_letter_settings(spec.dead_letter)
    if not dl.enabled:
        state.dead_letter_condition = None
        return
    admin = shared.admin_clients.get(settings, owner=(namespace, name))
    if now >= state.dead_letter_due_at:  # 0.0 at start: the first poll always looks
        outcome = await asyncio.to_thread(reconcile_dead_letter, settings, spec.group_id, list(spec.topics),
                                          spec.dead_letter, now, previous_status=previous.get("deadLetter"),
                                          memory=state.dead_letter_memory, admin=admin)
        state.dead_letter_due_at = next_dead_letter_check(now, DEAD_LETTER_INTERVAL_SECONDS,
                                                          kafka_failed=outcome.kafka_failed)
        state.dead_letter_status = outcome.status
        state.dead_letter_condition = (outcome.condition.status, outcome.condition.reason, outcome.condition.message)
        for event in outcome.events:
            emit(event.type, event.reason, event.message)
        for topic, messages in outcome.messages_by_topic.items():
            metrics.DLQ_MESSAGES.labels(namespace, name, topic).set(messages)
    if state.dead_letter_status is not None:
        status["deadLetter"] = state.dead_letter_status
    if spec.redrive is not None:
        from lagpilot_contract.naming import dead_letter_topic

        progress = await asyncio.to_thread(run_redrive_step, settings, spec.group_id,
                                           dead_letter_topic(spec.group_id, dl.topic), spec.redrive,
                                           previous.get("redrive"), sessions=state.redrive_sessions,
                                           admin=admin)
        if progress is not None:
            status["redrive"] = progress.to_status()
            if progress.state.value in ("Pending", "Running"):
                state.dead_letter_due_at = 0.0  # keep the redrive moving on the next poll


def _export(namespace: str, name: str, sample: LagSample | None, decision: Decision, lags: dict[PartitionKey, int],
            verdicts: dict[PartitionKey, Verdict], time_lags: dict[PartitionKey, float], replicas: int) -> None:
    metrics.DESIRED_REPLICAS.labels(namespace, name).set(decision.replicas)
    metrics.CURRENT_REPLICAS.labels(namespace, name).set(replicas)
    metrics.POOL_SIZE.labels(namespace, name).set(decision.pool)
    if sample is None:
        return
    metrics.TOTAL_LAG.labels(namespace, name).set(decision.total_lag)
    metrics.partition_series(namespace, name).export(lags.items(), time_lags, verdicts)
    if time_lags:
        metrics.MAX_TIME_LAG.labels(namespace, name).set(max(time_lags.values()))

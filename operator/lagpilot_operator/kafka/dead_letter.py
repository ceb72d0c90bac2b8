"""Lifecycle of a consumer group's dead-letter and retry topics, and what status says about them.

`reconcile_dead_letter` makes Kafka match `spec.deadLetter` (create missing topics, put drifted
configs back, grow partitions, refuse what Kafka cannot do) and measures each topic's depth;
`delete_dead_letter_topics` is the finalizer's half, honouring `deletionPolicy`. Both block (Kafka
admin calls): the operator loop runs them with asyncio.to_thread. Names come from
`lagpilot_contract.naming`, the rule the worker uses to produce to the same topics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from confluent_kafka.admin import AdminClient

from lagpilot_contract.naming import dead_letter_topic, retry_topics
from lagpilot_operator.kafka.topics import (
    DEFAULT_TIMEOUT_SECONDS,
    RecordTimeCache,
    TopicAccessError,
    TopicDepth,
    admin_client,
    apply_action,
    delete_topics,
    describe_partitions,
    measure_topics,
    observe_topics,
)
from lagpilot_operator.kafka.topics_plan import (
    AlterTopicConfigs,
    CreateTopic,
    DesiredTopic,
    IncreasePartitions,
    Refusal,
    plan_topics,
)

log = logging.getLogger(__name__)

CONDITION_TYPE = "DeadLetterReady"
REASON_READY = "Ready"
REASON_DISABLED = "Disabled"
REDRIVE_GROUP_SUFFIX = ".redrive"

Role = Literal["dlq", "retry"]


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


@dataclass(frozen=True)
class DeadLetterSettings:
    """`spec.deadLetter`, independent of how the CRD model spells it (see `dead_letter_settings`)."""

    enabled: bool = False
    topic: str | None = None
    partitions: int | None = None
    replication_factor: int | None = None
    config: Mapping[str, str] = field(default_factory=dict)
    retry_delays_seconds: tuple[int, ...] = ()
    deletion_policy: DeletionPolicy = DeletionPolicy.RETAIN


def _field(spec: object, camel: str, snake: str, default: Any = None) -> Any:
    if isinstance(spec, Mapping):
        return spec.get(camel, spec.get(snake, default))
    return getattr(spec, snake, default)


def dead_letter_settings(spec: object | None) -> DeadLetterSettings:
    """Adapt `spec.deadLetter` — the pydantic model, a camelCase dict from the body, or None."""
    if spec is None:
        return DeadLetterSettings()
    if isinstance(spec, DeadLetterSettings):
        return spec
    tiers = _field(spec, "retryTiers", "retry_tiers") or []
    delays = tuple(int(_field(tier, "delaySeconds", "delay_seconds")) for tier in tiers)
    policy = _field(spec, "deletionPolicy", "deletion_policy") or DeletionPolicy.RETAIN
    partitions = _field(spec, "partitions", "partitions")
    replication_factor = _field(spec, "replicationFactor", "replication_factor")
    return DeadLetterSettings(
        enabled=bool(_field(spec, "enabled", "enabled", False)),
        topic=_field(spec, "topic", "topic") or None,
        partitions=None if partitions is None else int(partitions),
        replication_factor=None if replication_factor is None else int(replication_factor),
        config={str(k): str(v) for k, v in (_field(spec, "config", "config") or {}).items()},
        retry_delays_seconds=delays,
        deletion_policy=DeletionPolicy(getattr(policy, "value", policy)),
    )


@dataclass(frozen=True)
class ManagedTopic:
    name: str
    role: Role
    tier: int | None = None  # retry tier, 1-based


def managed_topics(group_id: str, settings: DeadLetterSettings) -> list[ManagedTopic]:
    """The DLQ then the retry tiers, named by the shared contract (worker and operator agree)."""
    dlq = ManagedTopic(dead_letter_topic(group_id, settings.topic), "dlq")
    retries = retry_topics(group_id, len(settings.retry_delays_seconds), settings.topic)
    return [dlq, *(ManagedTopic(name, "retry", n) for n, name in enumerate(retries, start=1))]


def redrive_group_id(group_id: str) -> str:
    """The consumer group whose committed offsets on the DLQ record what was redriven."""
    return f"{group_id}{REDRIVE_GROUP_SUFFIX}"


@dataclass(frozen=True)
class ConditionMaterial:
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    type: str = CONDITION_TYPE


@dataclass(frozen=True)
class EventMaterial:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class DeadLetterMemory:
    """Per-resource memory the loop may keep between calls: spares re-reading record timestamps
    and spaces out DeadLetterGrew events (a steadily failing handler would otherwise post one per
    reconcile)."""

    record_times: dict[tuple[str, int, int], int | None] = field(default_factory=dict)
    max_entries: int = 4096
    announced_messages: dict[str, int] = field(default_factory=dict)
    """DLQ depth the last DeadLetterGrew event (or the first look) reported, per topic."""
    announced_at: dict[str, float] = field(default_factory=dict)
    event_interval_seconds: float = 60.0

    def cache(self) -> RecordTimeCache:
        if len(self.record_times) > self.max_entries:
            self.record_times.clear()  # crude bound; a miss only costs one read per partition
        return self.record_times


@dataclass(frozen=True)
class DeadLetterOutcome:
    status: dict[str, Any] | None
    """For `status.deadLetter`; None when dead-lettering is disabled (write null to clear it)."""
    condition: ConditionMaterial
    events: tuple[EventMaterial, ...] = ()
    messages_by_topic: Mapping[str, int] = field(default_factory=dict)
    """Depth per managed topic (for the `lagpilot_dlq_messages{topic}` gauge)."""
    kafka_failed: bool = False
    """A Kafka call failed, so the status may be stale: look again on the next poll."""


def next_dead_letter_check(now: float, interval: float, *, kafka_failed: bool) -> float:
    """When the reconcile loop looks at the DLQ and retry topics again, after a look at `now` (pure).

    After `interval` seconds (topic metadata is slow to change and each look costs admin calls), but
    on the next poll when the look failed: a timeout on a busy or just restarted broker would
    otherwise leave stale topics in the status for a whole interval.
    """
    return now if kafka_failed else now + interval


def _rfc3339(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def topic_status(topic: ManagedTopic, depth: TopicDepth | None) -> dict[str, Any]:
    if depth is None or not depth.exists:
        return {"name": topic.name, "role": topic.role, "exists": False, "partitions": 0, "messages": 0,
                "oldestTime": None, "newestTime": None}
    return {
        "name": topic.name,
        "role": topic.role,
        "exists": True,
        "partitions": depth.partitions,
        "messages": depth.messages,
        "oldestTime": _rfc3339(depth.oldest_ms),
        "newestTime": _rfc3339(depth.newest_ms),
    }


def _previous_messages(previous_status: Mapping[str, Any] | None, name: str) -> int | None:
    for entry in (previous_status or {}).get("topics") or []:
        if entry.get("name") == name and entry.get("exists"):
            value = entry.get("messages")
            return int(value) if value is not None else None
    return None


def growth_events(topics: Sequence[ManagedTopic], depths: Mapping[str, TopicDepth],
                  previous_status: Mapping[str, Any] | None, memory: DeadLetterMemory | None = None,
                  now: float = 0.0) -> list[EventMaterial]:
    """A Warning when the DLQ holds more records than before (no I/O).

    Without memory "before" is the previous status. With memory it is the depth last announced,
    and events come at most every `event_interval_seconds`, each counting all growth since the
    last one.
    """
    events = []
    for topic in topics:
        depth = depths.get(topic.name)
        if topic.role != "dlq" or depth is None or not depth.exists:
            continue
        name, now_messages = topic.name, depth.messages
        before = (memory.announced_messages.get(name) if memory and name in memory.announced_messages
                  else _previous_messages(previous_status, name))
        if before is None or now_messages < before:  # first look, or retention removed records
            if memory is not None:
                memory.announced_messages[name] = now_messages
            continue
        if now_messages == before:
            continue
        if memory is not None:
            if now - memory.announced_at.get(name, float("-inf")) < memory.event_interval_seconds:
                continue  # keep the baseline: the next event reports the whole growth
            memory.announced_messages[name], memory.announced_at[name] = now_messages, now
        events.append(EventMaterial(
            "Warning", "DeadLetterGrew",
            f"DLQ {name} grew by {now_messages - before} messages (now {now_messages})",
        ))
    return events


def _age(now: float, epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "unknown age"
    seconds = max(0, int(now - epoch_ms / 1000))
    if seconds < 120:
        return f"{seconds}s old"
    if seconds < 7200:
        return f"{seconds // 60}m old"
    return f"{seconds // 3600}h old"


def ready_condition(topics: Sequence[ManagedTopic], depths: Mapping[str, TopicDepth],
                    refusals: Sequence[Refusal], errors: Sequence[TopicAccessError],
                    now: float) -> ConditionMaterial:
    """Errors first (authorization before the rest), then refusals, else Ready (pure)."""
    if errors:
        worst = next((e for e in errors if e.reason != "KafkaError"), errors[0])
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        return ConditionMaterial("False", worst.reason, f"{worst}{more}")
    if refusals:
        return ConditionMaterial("False", refusals[0].reason, "; ".join(r.message for r in refusals))
    dlq = topics[0]
    depth = depths.get(dlq.name)
    held = (f"holds {depth.messages} messages, oldest {_age(now, depth.oldest_ms)}"
            if depth is not None and depth.messages else "is empty")
    retries = f" and {len(topics) - 1} retry topics" if len(topics) > 1 else ""
    return ConditionMaterial("True", REASON_READY, f"DLQ {dlq.name}{retries} in sync; the DLQ {held}")


def reconcile_dead_letter(
    admin_config: Mapping[str, str],
    group_id: str,
    source_topics: Sequence[str],
    spec: object | None,
    now: float,
    *,
    previous_status: Mapping[str, Any] | None = None,
    memory: DeadLetterMemory | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    admin: AdminClient | None = None,
) -> DeadLetterOutcome:
    """Bring the DLQ and retry topics in line with the spec and report on them (blocking).

    `admin_config` is librdkafka config (bootstrap.servers plus security). `previous_status` is
    the current `status.deadLetter`, used to notice DLQ growth. Never raises for Kafka errors:
    they come back as the condition (AuthorizationFailed, AuthenticationFailed, KafkaError).
    """
    settings = dead_letter_settings(spec)
    if not settings.enabled:
        return DeadLetterOutcome(None, ConditionMaterial(
            "True", REASON_DISABLED, "dead-letter topics are not managed (deadLetter.enabled is false)"))

    topics = managed_topics(group_id, settings)
    names = [t.name for t in topics]
    # The operator passes its shared client for this cluster and credentials (one per cluster, not
    # a new one with its own threads and connections every 30 s); a caller without one gets its own.
    admin = admin if admin is not None else admin_client(admin_config)
    errors: list[TopicAccessError] = []
    refusals: list[Refusal] = []
    events: list[EventMaterial] = []

    try:
        partitions, exact = settings.partitions, True
        if partitions is None and source_topics:
            shape = describe_partitions(admin, [source_topics[0]], timeout).get(source_topics[0])
            partitions, exact = (shape[0] if shape else None), False
        desired = [DesiredTopic(name, partitions, settings.replication_factor, dict(settings.config),
                                partitions_exact=exact) for name in names]
        observed = observe_topics(admin, names, timeout)
    except TopicAccessError as exc:
        log.warning("dead-letter topics of group %s: %s", group_id, exc)
        status = dict(previous_status) if previous_status is not None else {"topics": []}
        return DeadLetterOutcome(status, ready_condition(topics, {}, [], [exc], now), kafka_failed=True)

    for plan in plan_topics(desired, observed):
        refusals.extend(plan.refusals)  # reported by the condition, not by an event per reconcile
        for action in plan.actions:
            try:
                if apply_action(admin, action, timeout):
                    reason = {CreateTopic: "TopicCreated", AlterTopicConfigs: "TopicConfigSynced",
                              IncreasePartitions: "PartitionsIncreased"}[type(action)]
                    events.append(EventMaterial("Normal", reason, action.describe()))
            except TopicAccessError as exc:
                log.warning("dead-letter topic %s: %s", plan.topic, exc)
                errors.append(exc)
                break  # the next actions of this topic build on this one

    try:
        depths = measure_topics(admin, admin_config, names, memory.cache() if memory else None, timeout)
    except TopicAccessError as exc:
        errors.append(exc)
        if previous_status is not None:  # keep the last good depths rather than report zeros
            return DeadLetterOutcome(dict(previous_status), ready_condition(topics, {}, refusals, errors, now),
                                     tuple(events), kafka_failed=True)
        depths = {name: TopicDepth(name, o.exists, o.partitions) for name, o in observed.items()}

    events.extend(growth_events(topics, depths, previous_status, memory, now))
    status = {"topics": [topic_status(t, depths.get(t.name)) for t in topics]}
    return DeadLetterOutcome(
        status,
        ready_condition(topics, depths, refusals, errors, now),
        tuple(events),
        {name: depth.messages for name, depth in depths.items() if depth.exists},
        kafka_failed=bool(errors),
    )


@dataclass(frozen=True)
class DeletionOutcome:
    deleted: tuple[str, ...]
    retained: tuple[str, ...]
    events: tuple[EventMaterial, ...] = ()


def delete_dead_letter_topics(
    admin_config: Mapping[str, str],
    group_id: str,
    spec: object | None,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> DeletionOutcome:
    """The finalizer's work: Retain keeps every topic; Delete removes the DLQ, the retry topics and
    the redrive group's offsets. Disabled dead-lettering manages nothing, so deletes nothing.

    Raises TopicAccessError (or its authorization subclass) so the finalizer retries later.
    """
    settings = dead_letter_settings(spec)
    if not settings.enabled:
        return DeletionOutcome((), ())
    names = tuple(t.name for t in managed_topics(group_id, settings))
    if settings.deletion_policy is DeletionPolicy.RETAIN:
        return DeletionOutcome((), names, (EventMaterial(
            "Normal", "TopicsRetained", f"deletionPolicy Retain: kept topics {', '.join(names)}"),))
    admin = admin_client(admin_config)
    deleted = tuple(delete_topics(admin, names, timeout))
    _delete_group_quietly(admin, redrive_group_id(group_id), timeout)
    events = (EventMaterial("Normal", "TopicsDeleted", f"deletionPolicy Delete: deleted topics "
                            f"{', '.join(deleted) or '(none existed)'}"),)
    return DeletionOutcome(deleted, (), events)


def _delete_group_quietly(admin: Any, group: str, timeout: float) -> None:
    """The redrive group's offsets mean nothing once its DLQ is gone; absence is fine."""
    try:
        for future in admin.delete_consumer_groups([group], request_timeout=timeout).values():
            future.result(timeout=timeout)
    except Exception as exc:  # GROUP_ID_NOT_FOUND is the common, harmless case
        log.info("redrive group %s not deleted: %s", group, exc)

"""Kafka I/O for managed topics: observe, apply a plan, measure depth, delete (blocking calls).

Every function here blocks; the operator loop runs them in a thread (asyncio.to_thread). Errors
from Kafka become `TopicAccessError` (or `TopicAuthorizationError` for ACL denials) carrying the
operation, the resource and Kafka's own error name, so a condition can say exactly what failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicCollection,
    TopicPartition,
)

# confluent_kafka.admin re-exports these without __all__; mypy strict calls that implicit.
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)
from confluent_kafka.admin import ConfigSource as KafkaConfigSource  # type: ignore[attr-defined]

from lagpilot_operator.kafka.topics_plan import (
    AlterTopicConfigs,
    ConfigSource,
    CreateTopic,
    IncreasePartitions,
    ObservedConfig,
    ObservedTopic,
    TopicAction,
    configs_applied,
)

DEFAULT_TIMEOUT_SECONDS = 15.0

REASON_KAFKA_ERROR = "KafkaError"
REASON_AUTHORIZATION_FAILED = "AuthorizationFailed"
REASON_AUTHENTICATION_FAILED = "AuthenticationFailed"

_AUTHORIZATION_CODES = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
})
# What a partition answers while its leadership settles (new topic, added partitions, failover).
# librdkafka does not mark all of them retriable: UNKNOWN_LEADER_EPOCH comes when the client's
# metadata already names a leader epoch the partition leader has not applied yet.
_SETTLING_CODES = frozenset({
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.OFFSET_NOT_AVAILABLE,
})
_AUTHENTICATION_CODES = frozenset({KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION})


class TopicAccessError(Exception):
    """A Kafka call for `resource` failed; `reason` is a condition reason, `code` Kafka's error name."""

    reason = REASON_KAFKA_ERROR

    def __init__(self, operation: str, resource: str, code: str, detail: str) -> None:
        self.operation = operation
        self.resource = resource
        self.code = code
        self.detail = detail
        super().__init__(f"{operation} {resource}: {code}: {detail}")


class TopicAuthorizationError(TopicAccessError):
    """Kafka refused by ACL (TOPIC_/CLUSTER_/GROUP_/TRANSACTIONAL_ID_AUTHORIZATION_FAILED)."""

    reason = REASON_AUTHORIZATION_FAILED


class TopicAuthenticationError(TopicAccessError):
    """The client could not log in (SASL credentials, TLS): no call will work until it is fixed."""

    reason = REASON_AUTHENTICATION_FAILED


def kafka_error_of(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def access_error(operation: str, resource: str, exc: BaseException) -> TopicAccessError:
    """Map a confluent-kafka failure to the typed error (keeps Kafka's error name as the cause)."""
    error = kafka_error_of(exc)
    if error is None:
        return TopicAccessError(operation, resource, type(exc).__name__, str(exc))
    code = error.code()
    cls: type[TopicAccessError] = TopicAccessError
    if code in _AUTHORIZATION_CODES:
        cls = TopicAuthorizationError
    elif code in _AUTHENTICATION_CODES:
        cls = TopicAuthenticationError
    return cls(operation, resource, error.name(), error.str())


def error_code(exc: BaseException) -> int | None:
    error = kafka_error_of(exc)
    return None if error is None else int(error.code())


def admin_client(admin_config: Mapping[str, str]) -> AdminClient:
    return AdminClient(dict(admin_config))


def _result(future: Future[Any], operation: str, resource: str, timeout: float) -> Any:
    try:
        return future.result(timeout=timeout)
    except KafkaException as exc:
        raise access_error(operation, resource, exc) from exc
    except TimeoutError as exc:
        raise TopicAccessError(operation, resource, "_TIMED_OUT", f"no answer within {timeout:.0f}s") from exc


# --- observe --------------------------------------------------------------------------------


def describe_partitions(admin: AdminClient, names: Iterable[str],
                        timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, tuple[int, int] | None]:
    """topic → (partition count, replication factor), or None when the topic does not exist."""
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    futures = admin.describe_topics(TopicCollection(names), request_timeout=timeout)
    found: dict[str, tuple[int, int] | None] = {}
    for name in names:
        try:
            description = futures[name].result(timeout=timeout)
        except KafkaException as exc:
            if error_code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                found[name] = None
                continue
            raise access_error("describe topic", name, exc) from exc
        partitions = description.partitions
        replicas = len(partitions[0].replicas) if partitions else 0
        found[name] = (len(partitions), replicas)
    return found


def describe_topic_configs(admin: AdminClient, names: Iterable[str],
                           timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, dict[str, ObservedConfig]]:
    names = list(names)
    if not names:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    futures = admin.describe_configs(resources, request_timeout=timeout)
    configs: dict[str, dict[str, ObservedConfig]] = {}
    for resource, future in futures.items():
        entries = _result(future, "describe configs of topic", resource.name, timeout)
        configs[resource.name] = {
            key: ObservedConfig(
                entry.value,
                ConfigSource.TOPIC
                if int(entry.source) == KafkaConfigSource.DYNAMIC_TOPIC_CONFIG.value
                else ConfigSource.INHERITED,
            )
            for key, entry in entries.items()
        }
    return configs


def observe_topics(admin: AdminClient, names: Iterable[str],
                   timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, ObservedTopic]:
    """Existence, partitions, replication factor and configs (with their source) of each topic."""
    layout = describe_partitions(admin, names, timeout)
    existing = [name for name, shape in layout.items() if shape is not None]
    configs = describe_topic_configs(admin, existing, timeout)
    observed: dict[str, ObservedTopic] = {}
    for name, shape in layout.items():
        if shape is None:
            observed[name] = ObservedTopic(name, exists=False)
        else:
            observed[name] = ObservedTopic(name, True, shape[0], shape[1], configs.get(name, {}))
    return observed


# --- change ---------------------------------------------------------------------------------


def apply_action(admin: AdminClient, action: TopicAction, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """Apply one planned action; False when Kafka says it was already done (a race with someone else)."""
    if isinstance(action, CreateTopic):
        new_topic = NewTopic(action.topic, action.partitions, action.replication_factor,
                             config=dict(action.configs))
        futures = admin.create_topics([new_topic], operation_timeout=timeout, request_timeout=timeout)
        try:
            futures[action.topic].result(timeout=timeout)
        except KafkaException as exc:
            if error_code(exc) == KafkaError.TOPIC_ALREADY_EXISTS:
                return False
            raise access_error("create topic", action.topic, exc) from exc
        _wait_in_metadata(admin, action.topic, action.partitions, timeout)
        return True
    if isinstance(action, AlterTopicConfigs):
        entries = [ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
                   for key, value in action.set_configs.items()]
        entries += [ConfigEntry(key, None, incremental_operation=AlterConfigOpType.DELETE)
                    for key in action.delete_configs]
        resource = ConfigResource(ResourceType.TOPIC, action.topic, incremental_configs=entries)
        for future in admin.incremental_alter_configs([resource], request_timeout=timeout).values():
            _result(future, "alter configs of topic", action.topic, timeout)
        _wait_configs_applied(admin, action, timeout)
        return True
    if isinstance(action, IncreasePartitions):
        futures = admin.create_partitions([NewPartitions(action.topic, action.to_count)],
                                          operation_timeout=timeout, request_timeout=timeout)
        try:
            futures[action.topic].result(timeout=timeout)
        except KafkaException as exc:
            # INVALID_PARTITIONS: someone else already grew it to (at least) this count.
            if error_code(exc) == KafkaError.INVALID_PARTITIONS:
                return False
            raise access_error("increase partitions of topic", action.topic, exc) from exc
        _wait_in_metadata(admin, action.topic, action.to_count, timeout)
        return True
    raise TypeError(f"unknown topic action {action!r}")


def _wait_until(shown: Callable[[], bool], timeout: float) -> None:
    """Topic changes reach what brokers describe asynchronously (KRaft: after they replay the metadata log,
    while the controller answered once it committed the change). Poll, bounded, so the status and the next
    look read the change, not the state before it (which would plan the same change again)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if shown():
            return
        time.sleep(0.1)


def _wait_in_metadata(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    def shown() -> bool:
        metadata = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        return (metadata is not None and metadata.error is None
                and len(metadata.partitions) >= max(partitions, 1)
                and all(p.leader >= 0 for p in metadata.partitions.values()))
    _wait_until(shown, timeout)


def _wait_configs_applied(admin: AdminClient, action: AlterTopicConfigs, timeout: float) -> None:
    _wait_until(lambda: configs_applied(
        action, describe_topic_configs(admin, [action.topic], timeout).get(action.topic, {})), timeout)


def delete_topics(admin: AdminClient, names: Iterable[str],
                  timeout: float = DEFAULT_TIMEOUT_SECONDS) -> list[str]:
    """Delete the topics; returns the ones that existed (a missing topic is already deleted)."""
    names = list(dict.fromkeys(names))
    if not names:
        return []
    futures = admin.delete_topics(names, operation_timeout=timeout, request_timeout=timeout)
    deleted: list[str] = []
    for name in names:
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as exc:
            if error_code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
                continue
            raise access_error("delete topic", name, exc) from exc
        deleted.append(name)
    return deleted


# --- measure --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionRange:
    topic: str
    partition: int
    start: int  # log-start offset
    end: int  # log-end offset (high watermark)

    @property
    def messages(self) -> int:
        return max(0, self.end - self.start)


def is_settling(error: KafkaError | None) -> bool:
    """True for an error that goes away by itself once partition leadership settles."""
    return error is not None and (error.retriable() or error.code() in _SETTLING_CODES)


def list_partition_ranges(admin: AdminClient, partitions: Mapping[str, int],
                          timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, list[PartitionRange]]:
    """Start and end offsets of every partition of each topic (topic → partition count given).

    Right after a topic is created or grown its new partitions answer NOT_LEADER_FOR_PARTITION,
    UNKNOWN_LEADER_EPOCH and the like for a moment; those (`is_settling`) are retried until `timeout`.
    """
    tps = [TopicPartition(topic, p) for topic, count in partitions.items() for p in range(count)]
    ranges: dict[str, list[PartitionRange]] = {topic: [] for topic in partitions}
    if not tps:
        return ranges
    deadline = time.monotonic() + timeout
    while True:
        try:
            starts = _list_offsets(admin, tps, OffsetSpec.earliest(), timeout)  # type: ignore[no-untyped-call]
            ends = _list_offsets(admin, tps, OffsetSpec.latest(), timeout)  # type: ignore[no-untyped-call]
            break
        except KafkaException as exc:
            if not is_settling(kafka_error_of(exc)) or time.monotonic() >= deadline:
                topic = next(iter(partitions))
                raise access_error("list offsets of topic", topic, exc) from exc
            time.sleep(0.2)
        except TimeoutError as exc:
            raise TopicAccessError("list offsets of topic", next(iter(partitions)), "_TIMED_OUT",
                                   f"no answer within {timeout:.0f}s") from exc
    for tp in tps:
        ranges[tp.topic].append(PartitionRange(tp.topic, tp.partition, starts[tp], ends[tp]))
    return ranges


def _list_offsets(admin: AdminClient, tps: list[TopicPartition], spec: OffsetSpec,
                  timeout: float) -> dict[TopicPartition, int]:
    futures = admin.list_offsets(dict.fromkeys(tps, spec), request_timeout=timeout)
    return {tp: future.result(timeout=timeout).offset for tp, future in futures.items()}


INSPECT_GROUP_ID = "lagpilot-operator-inspect"

RecordTimeCache = MutableMapping[tuple[str, int, int], int | None]
"""(topic, partition, offset asked for) → timestamp ms of the first record at or after it (None: none).

A record's timestamp never changes, so the answer for an offset can be reused forever; this spares
reading records again when a topic has not moved since the last reconcile."""


def read_record_times(consumer_config: Mapping[str, str], wanted: Iterable[tuple[str, int, int, int]],
                      cache: RecordTimeCache | None = None,
                      timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[tuple[str, int, int], int | None]:
    """Timestamp (epoch ms) of the first record at or after each (topic, partition, offset, end).

    Records are read with a short-lived consumer outside any group (assign + seek, nothing
    committed). `end` bounds the read: a partition that reaches its end without a record (the
    offset held a transaction marker or was compacted away) answers None.
    """
    results: dict[tuple[str, int, int], int | None] = {}
    # One assignment can hold one offset per partition, so asks for the same partition (its first
    # and its last record) go in successive rounds.
    rounds: list[dict[tuple[str, int], tuple[int, int]]] = []
    for topic, partition, offset, end in wanted:
        key = (topic, partition, offset)
        if offset >= end:
            results[key] = None
        elif cache is not None and key in cache:
            results[key] = cache[key]
        else:
            free = next((r for r in rounds if (topic, partition) not in r), None)
            if free is None:
                free = {}
                rounds.append(free)
            free[(topic, partition)] = (offset, end)
    if not rounds:
        return results
    consumer = Consumer({
        # librdkafka insists on a group id; nothing is joined or committed with assign().
        "group.id": INSPECT_GROUP_ID,
        **consumer_config,
        "enable.auto.commit": "false",
        "enable.partition.eof": "true",
        "auto.offset.reset": "earliest",
        # One record per partition is all we need: keep prefetching small.
        "fetch.max.bytes": "1048576",
        "max.partition.fetch.bytes": "65536",
        "queued.max.messages.kbytes": "1024",
    })
    deadline = time.monotonic() + timeout
    try:
        for pending in rounds:
            results.update(_read_round(consumer, pending, cache, deadline))
    finally:
        consumer.close()
    return results


def _read_round(consumer: Consumer, pending: dict[tuple[str, int], tuple[int, int]],
                cache: RecordTimeCache | None, deadline: float) -> dict[tuple[str, int, int], int | None]:
    results: dict[tuple[str, int, int], int | None] = {}
    consumer.assign([TopicPartition(t, p, offset) for (t, p), (offset, _end) in pending.items()])
    while pending and time.monotonic() < deadline:
        message = consumer.poll(min(1.0, max(0.0, deadline - time.monotonic())))
        if message is None:
            continue
        tp_key = (message.topic(), message.partition())
        if tp_key not in pending:
            continue
        offset, end = pending[tp_key]
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                results[(*tp_key, offset)] = None  # not cached: a record may still arrive there
                pending.pop(tp_key)
                continue
            raise access_error("read records of topic", tp_key[0], KafkaException(error))
        kind, stamp = message.timestamp()
        off = message.offset()
        found = None if kind == TIMESTAMP_NOT_AVAILABLE or off is None or off >= end else stamp
        results[(*tp_key, offset)] = found
        if cache is not None:
            cache[(*tp_key, offset)] = found
        pending.pop(tp_key)
    for (topic, partition), (offset, _end) in pending.items():
        results[(topic, partition, offset)] = None  # timed out: unknown this time, not cached
    consumer.unassign()
    return results


@dataclass(frozen=True)
class TopicDepth:
    name: str
    exists: bool
    partitions: int = 0
    messages: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None


def measure_topics(admin: AdminClient, consumer_config: Mapping[str, str], names: Iterable[str],
                   cache: RecordTimeCache | None = None,
                   timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, TopicDepth]:
    """Per topic: exists, partitions, messages (sum of end - start), oldest and newest record time.

    Oldest = earliest timestamp among the first records of the partitions; newest = latest among
    their last records (offset end - 1). Both are the DLQ record's own timestamp: when it was
    dead-lettered, not when the original was produced.
    """
    layout = describe_partitions(admin, names, timeout)
    counts = {name: shape[0] for name, shape in layout.items() if shape is not None}
    ranges = list_partition_ranges(admin, counts, timeout)
    wanted: list[tuple[str, int, int, int]] = []
    for topic_ranges in ranges.values():
        for r in topic_ranges:
            if r.messages:
                wanted.append((r.topic, r.partition, r.start, r.end))
                wanted.append((r.topic, r.partition, r.end - 1, r.end))
    times = read_record_times(consumer_config, wanted, cache, timeout)
    depths: dict[str, TopicDepth] = {}
    for name, shape in layout.items():
        if shape is None:
            depths[name] = TopicDepth(name, exists=False)
            continue
        topic_ranges = ranges.get(name, [])
        firsts = [times.get((r.topic, r.partition, r.start)) for r in topic_ranges if r.messages]
        lasts = [times.get((r.topic, r.partition, r.end - 1)) for r in topic_ranges if r.messages]
        oldest = min((t for t in firsts if t is not None), default=None)
        newest = max((t for t in lasts if t is not None), default=None)
        depths[name] = TopicDepth(name, True, shape[0], sum(r.messages for r in topic_ranges), oldest, newest)
    return depths

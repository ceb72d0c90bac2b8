"""Redrive: put dead-lettered records back on their original topics, exactly once, resumably.

What a redrive moves is fixed when it is asked for: per DLQ partition, from the redrive group's
committed offset (or the log start) up to the log-end offset at that moment, trimmed to
`maxMessages`. Those bounds go to `status.redrive.snapshot`, so a resumed redrive works on the
same records even when the DLQ has grown since.

Each step reads a batch from the DLQ and, in one Kafka transaction, produces the records to their
original topics and commits the DLQ offsets of the consumer group `<groupId>.redrive`
(`send_offsets_to_transaction`). Either both happen or neither: a process killed mid-batch leaves
an open transaction that the next process's `init_transactions` aborts (same transactional.id),
and the next step starts from the committed offsets. So read_committed consumers of the source
topic see every record of the snapshot exactly once, in DLQ order per partition. Kafka's
committed offsets, not `status.redrive.done`, are the truth: a status write lost in a crash
costs nothing. Nothing is ever deleted from the DLQ.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from lagpilot_contract.headers import (
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    header_text,
    strip_lagpilot_headers,
)
from lagpilot_contract.naming import sanitize_topic_name
from lagpilot_operator.kafka.dead_letter import redrive_group_id
from lagpilot_operator.kafka.topics import (
    DEFAULT_TIMEOUT_SECONDS,
    TopicAccessError,
    access_error,
    admin_client,
    describe_partitions,
    list_partition_ranges,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 500
DEFAULT_STEP_SECONDS = 5.0
# An open transaction holds back read_committed consumers of the target partitions (the last
# stable offset stops) until it ends; if a redrive dies and is not resumed, the coordinator aborts
# it after this long. Far above one step (~DEFAULT_STEP_SECONDS plus a flush).
TRANSACTION_TIMEOUT_MS = 30_000


class RedriveState(StrEnum):
    PENDING = "Pending"  # snapshot taken and recorded, nothing moved yet
    RUNNING = "Running"
    DONE = "Done"
    FAILED = "Failed"


@dataclass(frozen=True)
class RedriveRequest:
    """`spec.redrive`: a new `request_id` asks for a new redrive; None max = everything."""

    request_id: str
    max_messages: int | None = None


def redrive_request(spec: object | None) -> RedriveRequest | None:
    """Adapt `spec.redrive` — the pydantic model, a camelCase dict, or None."""
    if spec is None:
        return None
    if isinstance(spec, RedriveRequest):
        return spec
    if isinstance(spec, Mapping):
        request_id, max_messages = spec.get("requestId", spec.get("request_id")), spec.get(
            "maxMessages", spec.get("max_messages"))
    else:
        request_id, max_messages = getattr(spec, "request_id", None), getattr(spec, "max_messages", None)
    if not request_id:
        return None
    return RedriveRequest(str(request_id), None if max_messages is None else int(max_messages))


@dataclass(frozen=True)
class PartitionBound:
    """DLQ offsets [start, end) of one partition that this redrive moves."""

    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True)
class RedriveProgress:
    request_id: str
    state: RedriveState
    total: int
    done: int
    snapshot: tuple[PartitionBound, ...] = ()
    message: str = ""
    skipped: int = 0
    """Records without a `lagpilot.original.topic` header: passed over (they stay in the DLQ)."""
    error: str | None = None
    """Set (not stored in status) when this call hit a Kafka error: call again after a pause."""

    def to_status(self) -> dict[str, Any]:
        """The `status.redrive` object."""
        return {
            "requestId": self.request_id,
            "state": self.state.value,
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "message": self.message,
            "snapshot": [{"partition": b.partition, "startOffset": b.start, "endOffset": b.end}
                         for b in self.snapshot],
        }

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | RedriveProgress | None) -> RedriveProgress | None:
        if status is None or isinstance(status, RedriveProgress):
            return status
        if not status.get("requestId") or not status.get("state"):
            return None
        return cls(
            request_id=str(status["requestId"]),
            state=RedriveState(status["state"]),
            total=int(status.get("total") or 0),
            done=int(status.get("done") or 0),
            snapshot=tuple(
                PartitionBound(int(b["partition"]), int(b["startOffset"]), int(b["endOffset"]))
                for b in status.get("snapshot") or []
            ),
            message=str(status.get("message") or ""),
            skipped=int(status.get("skipped") or 0),
        )

    @property
    def finished(self) -> bool:
        return self.state in (RedriveState.DONE, RedriveState.FAILED)

    @property
    def has_snapshot(self) -> bool:
        return bool(self.snapshot) or self.finished


# --- pure decisions -------------------------------------------------------------------------


def plan_bounds(starts: Mapping[int, int], ends: Mapping[int, int],
                max_messages: int | None) -> tuple[PartitionBound, ...]:
    """Per-partition bounds for a redrive of at most `max_messages` records.

    Under a cap, partitions share it evenly (water-filling: each gets the same number of records
    unless it has fewer, lower partition numbers get the remainder), so one hot partition cannot
    starve the others; within a partition the oldest records go first.
    """
    available = {p: max(0, ends[p] - min(starts[p], ends[p])) for p in sorted(ends)}
    if max_messages is None or max_messages >= sum(available.values()):
        take = available
    else:
        take = dict.fromkeys(available, 0)
        left = max(0, max_messages)
        open_partitions = [p for p in available if available[p] > 0]
        while left > 0 and open_partitions:
            share = max(1, left // len(open_partitions))
            for p in list(open_partitions):
                grant = min(share, available[p] - take[p], left)
                take[p] += grant
                left -= grant
                if take[p] == available[p]:
                    open_partitions.remove(p)
                if left == 0:
                    break
    return tuple(PartitionBound(p, min(starts[p], ends[p]), min(starts[p], ends[p]) + take[p])
                 for p in sorted(ends))


def redriven_count(snapshot: Sequence[PartitionBound], positions: Mapping[int, int]) -> int:
    """Offsets of the snapshot already behind the redrive group's committed positions."""
    return sum(min(b.size, max(0, positions.get(b.partition, b.start) - b.start)) for b in snapshot)


def choose_partition(original_partition: str | None, target_partitions: int) -> int | None:
    """The record's original partition when the topic still has it (keeps per-key order with
    whatever partitioner the original producer used), else None: the producer's partitioner."""
    if original_partition is None:
        return None
    try:
        partition = int(original_partition)
    except ValueError:
        return None
    return partition if 0 <= partition < target_partitions else None


def transactional_id(group_id: str, dlq_topic: str) -> str:
    """One transactional.id per (redrive group, DLQ): any two processes redriving the same DLQ
    for the same group fence each other, whichever request or resource started them."""
    return sanitize_topic_name(f"lagpilot-redrive.{redrive_group_id(group_id)}.{dlq_topic}")


def progress_message(progress: RedriveProgress, dlq_topic: str) -> str:
    skipped = (f"; passed over {progress.skipped} without a lagpilot.original.topic header"
               if progress.skipped else "")
    if progress.state is RedriveState.DONE:
        return f"redrove {progress.done} of {progress.total} records from {dlq_topic}{skipped}"
    return f"{progress.done} of {progress.total} records from {dlq_topic} redriven{skipped}"


def advance(progress: RedriveProgress, positions: Mapping[int, int], skipped: int,
            dlq_topic: str) -> RedriveProgress:
    """Progress after a committed step, recomputed from the committed positions."""
    done = redriven_count(progress.snapshot, positions)
    state = RedriveState.DONE if done >= progress.total else RedriveState.RUNNING
    updated = replace(progress, state=state, done=done, skipped=progress.skipped + skipped, error=None)
    return replace(updated, message=progress_message(updated, dlq_topic))


def fail(progress: RedriveProgress, message: str) -> RedriveProgress:
    return replace(progress, state=RedriveState.FAILED, message=message)


# --- Kafka I/O ------------------------------------------------------------------------------


def begin_redrive(admin_config: Mapping[str, str], group_id: str, dlq_topic: str, request: RedriveRequest,
                  timeout: float = DEFAULT_TIMEOUT_SECONDS, admin: Any | None = None) -> RedriveProgress:
    """Take the snapshot (state Pending); record it in status before the first step moves anything.

    Raises TopicAccessError when Kafka cannot be asked (retry later); a missing DLQ is Failed.
    """
    pending = RedriveProgress(request.request_id, RedriveState.PENDING, 0, 0)
    admin = admin if admin is not None else admin_client(admin_config)
    shape = describe_partitions(admin, [dlq_topic], timeout).get(dlq_topic)
    if shape is None:
        return fail(pending, f"DLQ topic {dlq_topic} does not exist")
    ranges = list_partition_ranges(admin, {dlq_topic: shape[0]}, timeout)[dlq_topic]
    committed = committed_positions(admin, group_id, dlq_topic, shape[0], timeout)
    # A committed offset below the log start points at records retention already removed.
    starts = {r.partition: max(r.start, committed.get(r.partition, r.start)) for r in ranges}
    ends = {r.partition: r.end for r in ranges}
    snapshot = plan_bounds(starts, ends, request.max_messages)
    total = sum(b.size for b in snapshot)
    progress = replace(pending, total=total, snapshot=snapshot)
    if total == 0:
        return replace(progress, state=RedriveState.DONE,
                       message=f"nothing to redrive: {dlq_topic} has no records past the redrive group's offsets")
    return replace(progress, message=f"snapshot of {total} records of {dlq_topic} taken; redrive pending")


def committed_positions(admin: Any, group_id: str, dlq_topic: str, partitions: int,
                        timeout: float = DEFAULT_TIMEOUT_SECONDS) -> dict[int, int]:
    """The redrive group's committed offsets on the DLQ (stable ones only: pending transactional
    commits are waited for, never read half-done)."""
    request = ConsumerGroupTopicPartitions(
        redrive_group_id(group_id), [TopicPartition(dlq_topic, p) for p in range(partitions)])
    futures = admin.list_consumer_group_offsets([request], require_stable=True, request_timeout=timeout)
    try:
        result = futures[redrive_group_id(group_id)].result(timeout=timeout)
    except KafkaException as exc:
        raise access_error("read committed offsets of group", redrive_group_id(group_id), exc) from exc
    return {tp.partition: tp.offset for tp in result.topic_partitions if tp.offset >= 0}


class RedriveSession:
    """A transactional producer and a DLQ consumer for one (group, DLQ); reusable across steps.

    Opening it calls `init_transactions`, which fences any older process with the same
    transactional.id and aborts the transaction it left open.
    """

    def __init__(self, admin_config: Mapping[str, str], group_id: str, dlq_topic: str,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.group_id = group_id
        self.dlq_topic = dlq_topic
        self.timeout = timeout
        self._target_partitions: dict[str, int | None] = {}
        self.producer = Producer({
            **admin_config,
            "transactional.id": transactional_id(group_id, dlq_topic),
            "transaction.timeout.ms": str(TRANSACTION_TIMEOUT_MS),
            "linger.ms": "5",
        })
        try:
            self.producer.init_transactions(timeout)
        except KafkaException as exc:
            raise access_error("init transactions for", transactional_id(group_id, dlq_topic), exc) from exc
        self.consumer = Consumer({
            **admin_config,
            "group.id": redrive_group_id(group_id),
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "isolation.level": "read_committed",
            "enable.partition.eof": "true",
            "auto.offset.reset": "earliest",
        })

    def __enter__(self) -> RedriveSession:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.consumer.close()
        self.producer.flush(self.timeout)

    def positions(self, snapshot: Sequence[PartitionBound]) -> dict[int, int]:
        """Where the next step starts per partition: the committed offset, never below the snapshot."""
        tps = [TopicPartition(self.dlq_topic, b.partition) for b in snapshot]
        try:
            committed = self.consumer.committed(tps, timeout=self.timeout)
        except KafkaException as exc:
            raise access_error("read committed offsets of group", redrive_group_id(self.group_id), exc) from exc
        found = {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
        return {b.partition: max(b.start, found.get(b.partition, b.start)) for b in snapshot}

    def _partitions_of(self, topic: str) -> int | None:
        if topic not in self._target_partitions:
            metadata = self.producer.list_topics(topic, timeout=self.timeout).topics.get(topic)
            ok = metadata is not None and metadata.error is None and metadata.partitions
            self._target_partitions[topic] = len(metadata.partitions) if ok and metadata else None
        return self._target_partitions[topic]

    def step(self, progress: RedriveProgress, max_batch: int = DEFAULT_MAX_BATCH,
             max_seconds: float = DEFAULT_STEP_SECONDS,
             before_commit: Callable[[RedriveProgress], None] | None = None) -> RedriveProgress:
        """Move up to `max_batch` records in one transaction and return the committed progress.

        `before_commit` runs after the batch is produced (and flushed) and before the commit;
        tests use it to kill the process inside a transaction.
        """
        if progress.finished:
            return progress
        positions = self.positions(progress.snapshot)
        ends = {b.partition: b.end for b in progress.snapshot}
        open_partitions = {p for p, end in ends.items() if positions[p] < end}
        if not open_partitions:
            return advance(progress, positions, 0, self.dlq_topic)

        self.consumer.assign([TopicPartition(self.dlq_topic, p, positions[p]) for p in sorted(open_partitions)])
        moved: dict[int, int] = {}
        sent = skipped = 0
        blocked: dict[int, str] = {}  # partition → why its next record cannot be redriven
        self.producer.begin_transaction()
        try:
            deadline = time.monotonic() + max_seconds
            while open_partitions and sent + skipped < max_batch and time.monotonic() < deadline:
                message = self.consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
                if message is None:
                    continue
                partition = message.partition()
                if message.topic() != self.dlq_topic or partition not in open_partitions:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        # Reached the readable end: done if it is the snapshot end (a trailing gap,
                        # e.g. a transaction marker, has no record to wait for); else retry later.
                        if (message.offset() or 0) >= ends[partition]:
                            moved[partition] = ends[partition]
                        open_partitions.discard(partition)
                        continue
                    raise access_error("read DLQ", self.dlq_topic, KafkaException(error))
                offset = message.offset()
                assert offset is not None  # a record without error always has an offset
                if offset >= ends[partition]:  # past the snapshot (the DLQ grew since)
                    moved[partition] = ends[partition]
                    open_partitions.discard(partition)
                    continue
                outcome = self._produce(message)
                if outcome == "skipped":
                    skipped += 1
                elif outcome != "sent":
                    # Stop this partition before the record (order!); the others go on.
                    blocked[partition] = outcome
                    open_partitions.discard(partition)
                    continue
                else:
                    sent += 1
                moved[partition] = offset + 1
                if offset + 1 >= ends[partition]:
                    open_partitions.discard(partition)
            self.consumer.unassign()
            if moved:
                self._flush()
                offsets = [TopicPartition(self.dlq_topic, p, o) for p, o in sorted(moved.items())]
                self.producer.send_offsets_to_transaction(
                    offsets, self.consumer.consumer_group_metadata(), self.timeout)
                candidate = advance(progress, {**positions, **moved}, skipped, self.dlq_topic)
                if before_commit is not None:
                    before_commit(candidate)
                self.producer.commit_transaction(self.timeout)
            else:
                self.producer.abort_transaction(self.timeout)
        except KafkaException as exc:
            self._abort_quietly()
            raise access_error("redrive transaction on", self.dlq_topic, exc) from exc
        except BaseException:
            self._abort_quietly()
            raise
        after = {**positions, **moved}
        result = advance(progress, after, skipped, self.dlq_topic)
        if not blocked:
            return result
        why = "; ".join(blocked[p] for p in sorted(blocked))
        others_left = any(after[p] < ends[p] for p in ends if p not in blocked)
        if others_left:  # keep moving the other partitions; this one is retried each step
            return replace(result, message=f"{result.message}; blocked: {why}")
        return fail(result, f"{result.message}; stopped: {why}")

    def _produce(self, message: Message) -> str:
        """'sent', 'skipped' (no original topic header), or a failure message (unknown topic)."""
        headers = _record_headers(message)
        target = header_text(headers, ORIGINAL_TOPIC)
        if not target:
            log.warning("DLQ %s partition %s offset %s has no %s header; passed over",
                        self.dlq_topic, message.partition(), message.offset(), ORIGINAL_TOPIC)
            return "skipped"
        target_partitions = self._partitions_of(target)
        if target_partitions is None:
            return (f"original topic {target} of DLQ record {self.dlq_topic}/{message.partition()}"
                    f"@{message.offset()} does not exist")
        partition = choose_partition(header_text(headers, ORIGINAL_PARTITION), target_partitions)
        kwargs: dict[str, Any] = {"key": message.key(), "value": message.value(),
                                  "headers": strip_lagpilot_headers(headers)}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self.producer.produce(target, **kwargs)
                return "sent"
            except BufferError:
                self.producer.poll(0.1)  # local queue full: let deliveries drain

    def _flush(self) -> None:
        remaining = self.producer.flush(self.timeout)
        if remaining:
            raise TopicAccessError("produce to", "original topics", "_TIMED_OUT",
                                   f"{remaining} records not delivered within {self.timeout:.0f}s")

    def _abort_quietly(self) -> None:
        try:
            self.producer.abort_transaction(self.timeout)
        except KafkaException as exc:  # fenced or broken: the next init_transactions cleans up
            log.warning("abort of redrive transaction on %s failed: %s", self.dlq_topic, exc)


class RedriveSessions:
    """The open RedriveSession of one resource, kept across polls while its redrive runs.

    Opening a session costs a transactional producer, `init_transactions` (a coordinator round trip
    that also fences and aborts) and a consumer; a redrive that moves a batch per poll reuses one.
    A session is reopened when the cluster, credentials, group or DLQ change, and closed when the
    redrive ends, fails to reach Kafka (its producer may be fenced), or the resource goes.
    """

    def __init__(self) -> None:
        self._key: tuple[str, str, str] | None = None
        self._session: RedriveSession | None = None
        self.opened = 0  # sessions opened so far (init_transactions calls), for tests and metrics

    def get(self, admin_config: Mapping[str, str], group_id: str, dlq_topic: str,
            timeout: float = DEFAULT_TIMEOUT_SECONDS) -> RedriveSession:
        key = (settings_key(admin_config), group_id, dlq_topic)
        if self._session is None or self._key != key:
            self.close()
            self._session, self._key = RedriveSession(admin_config, group_id, dlq_topic, timeout), key
            self.opened += 1
        return self._session

    def close(self) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            try:
                session.close()
            except KafkaException as exc:
                log.warning("closing the redrive session of %s failed: %s", session.dlq_topic, exc)

    @property
    def is_open(self) -> bool:
        return self._session is not None


def settings_key(admin_config: Mapping[str, str]) -> str:
    """A key for a client config that does not keep credentials in plain text."""
    digest = hashlib.sha256()
    for name in sorted(admin_config):
        digest.update(f"{name}\0{admin_config[name]}\0".encode())
    return digest.hexdigest()


def _record_headers(message: Message) -> list[tuple[str, bytes | None]]:
    """A consumed record's headers as (name, bytes) pairs, in order, duplicates kept."""
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


def run_redrive_step(
    admin_config: Mapping[str, str],
    group_id: str,
    dlq_topic: str,
    request: RedriveRequest | object | None,
    progress: RedriveProgress | Mapping[str, Any] | None,
    max_batch: int = DEFAULT_MAX_BATCH,
    *,
    max_seconds: float = DEFAULT_STEP_SECONDS,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    sessions: RedriveSessions | None = None,
    admin: Any | None = None,
) -> RedriveProgress | None:
    """One bounded piece of work towards `request`; write the result to `status.redrive`.

    * no request → `progress` unchanged (None stays None);
    * a new `requestId` (or one whose snapshot was never taken) → take the snapshot (Pending),
      move nothing;
    * Pending/Running → one transaction of up to `max_batch` records (at most ~`max_seconds`);
    * Done/Failed → unchanged.
    Never raises for Kafka errors (broker down, ACLs): the result keeps its state, says the cause
    in `message` and has `error` set, so the caller pauses and calls again; what was committed in
    Kafka is intact. While the state is Pending/Running and `error` is None, call again soon.
    """
    wanted = redrive_request(request)
    current = RedriveProgress.from_status(progress)
    if wanted is None:
        if sessions is not None:
            sessions.close()
        return current
    try:
        if current is None or current.request_id != wanted.request_id or not current.has_snapshot:
            return begin_redrive(admin_config, group_id, dlq_topic, wanted, timeout, admin)
        if current.finished:
            if sessions is not None:
                sessions.close()
            return current
        if sessions is None:
            with RedriveSession(admin_config, group_id, dlq_topic, timeout) as session:
                return session.step(current, max_batch, max_seconds)
        result = sessions.get(admin_config, group_id, dlq_topic, timeout).step(current, max_batch, max_seconds)
        if result.finished:
            sessions.close()
        return result
    except TopicAccessError as exc:
        log.warning("redrive %s of %s: %s", wanted.request_id, dlq_topic, exc)
        if sessions is not None:
            sessions.close()  # a fenced or broken producer: the next step opens a new one
        return redrive_error(wanted, current, exc)


def redrive_error(request: RedriveRequest, progress: RedriveProgress | None,
                  exc: TopicAccessError) -> RedriveProgress:
    """What status says when a step could not talk to Kafka: same state, the cause in message.
    Before the snapshot exists that is Pending without a snapshot (the next call takes it)."""
    if progress is None or progress.request_id != request.request_id:
        progress = RedriveProgress(request.request_id, RedriveState.PENDING, 0, 0)
    return replace(progress, message=f"waiting for Kafka ({exc.reason}): {exc}", error=str(exc))


def run_redrive_to_completion(
    admin_config: Mapping[str, str],
    group_id: str,
    dlq_topic: str,
    request: RedriveRequest | object,
    progress: RedriveProgress | Mapping[str, Any] | None = None,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    on_progress: Callable[[RedriveProgress], None] | None = None,
    before_commit: Callable[[RedriveProgress], None] | None = None,
    deadline_seconds: float | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> RedriveProgress:
    """Run steps until Done or Failed (CLI and tests); one session for all steps.

    `on_progress` sees every committed progress (the snapshot first), as the status would.
    """
    wanted = redrive_request(request)
    if wanted is None:
        raise ValueError("a redrive needs a requestId")
    current = RedriveProgress.from_status(progress)
    if current is None or current.request_id != wanted.request_id or not current.has_snapshot:
        current = begin_redrive(admin_config, group_id, dlq_topic, wanted, timeout)
        if on_progress is not None:
            on_progress(current)
    if current.finished:
        return current
    stop_at = None if deadline_seconds is None else time.monotonic() + deadline_seconds
    with RedriveSession(admin_config, group_id, dlq_topic, timeout) as session:
        while not current.finished:
            if stop_at is not None and time.monotonic() > stop_at:
                raise TimeoutError(f"redrive {wanted.request_id} not finished: {current.message}")
            current = session.step(current, max_batch, before_commit=before_commit)
            if on_progress is not None:
                on_progress(current)
    return current


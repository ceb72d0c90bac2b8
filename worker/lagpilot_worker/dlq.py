"""Writing failed records to the dead-letter topic and to retry tier topics.

The producer is idempotent with acks=all: a write is acknowledged only once every in-sync
replica has it, and a retried send never duplicates it in the log. The runtime marks the
source offset finished only in the acknowledgement callback, so a crash before the ack re-reads
the source record instead of losing it. Headers follow `lagpilot_contract.headers` exactly.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from lagpilot_contract import headers as h

from .record import TIMESTAMP_TYPE_NAMES, Headers, KafkaMessage, message_headers

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None], None]


@dataclass(frozen=True)
class FailureInfo:
    """What went wrong, captured in the slot where the exception was raised."""

    exception_class: str
    message: str
    stacktrace: str

    @classmethod
    def from_exception(cls, exc: BaseException) -> FailureInfo:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        return cls(
            exception_class=name,
            message=h.truncate_utf8(str(exc), h.MESSAGE_LIMIT_BYTES),
            stacktrace=h.truncate_utf8("".join(traceback.format_exception(exc)), h.STACKTRACE_LIMIT_BYTES),
        )


def failure_headers(
    message: KafkaMessage,
    *,
    group_id: str,
    worker_id: str,
    failure: FailureInfo,
    attempts: int,
    kind: str | None = None,
    retry_due_ms: int | None = None,
    retry_tier: int | None = None,
) -> Headers:
    """Headers of a dead-letter (kind set) or retry (due and tier set) record.

    The record's own headers come first, untouched; Lagpilot's previous bookkeeping headers (of
    a record read from a retry tier) are replaced, except the lagpilot.original.* ones, which keep
    pointing at the first source record.
    """
    own = message_headers(message) or []
    previous_original = [(k, v) for k, v in own if k.startswith("lagpilot.original.")]
    headers: Headers = list(h.strip_lagpilot_headers(own))
    if previous_original:
        headers.extend(previous_original)
    else:
        ts_type, ts = message.timestamp()
        headers.extend([
            (h.ORIGINAL_TOPIC, (message.topic() or "").encode()),
            (h.ORIGINAL_PARTITION, str(message.partition()).encode()),
            (h.ORIGINAL_OFFSET, str(message.offset()).encode()),
            (h.ORIGINAL_TIMESTAMP, str(ts).encode()),
            (h.ORIGINAL_TIMESTAMP_TYPE, TIMESTAMP_TYPE_NAMES.get(ts_type, "NotAvailable").encode()),
        ])
    headers.extend([
        (h.CONSUMER_GROUP, group_id.encode()),
        (h.EXCEPTION_CLASS, failure.exception_class.encode()),
        (h.EXCEPTION_MESSAGE, h.truncate_utf8(failure.message, h.MESSAGE_LIMIT_BYTES).encode()),
        (h.EXCEPTION_STACKTRACE, h.truncate_utf8(failure.stacktrace, h.STACKTRACE_LIMIT_BYTES).encode()),
        (h.ATTEMPTS, str(attempts).encode()),
        (h.WORKER_ID, worker_id.encode()),
    ])
    if kind is not None:
        headers.append((h.FAILURE_KIND, kind.encode()))
    if retry_due_ms is not None:
        headers.append((h.RETRY_DUE, str(retry_due_ms).encode()))
    if retry_tier is not None:
        headers.append((h.RETRY_TIER, str(retry_tier).encode()))
    return headers


def original_partition(message: KafkaMessage) -> int:
    text = h.header_text(message_headers(message), h.ORIGINAL_PARTITION)
    if text is not None:
        try:
            return int(text)
        except ValueError:
            pass
    return message.partition() or 0


class FailurePublisher:
    """Produces dead-letter and retry records; callbacks run in the thread that calls poll()."""

    def __init__(self, producer_config: dict[str, Any], *, group_id: str, worker_id: str,
                 dead_letter_topic: str | None, retry_topics: list[str]) -> None:
        config = dict(producer_config)
        # Idempotence implies acks=all and bounded in-flight requests; stated for the reader.
        config.update({"enable.idempotence": True, "acks": "all"})
        config.setdefault("linger.ms", 5)
        self._producer = Producer(config)
        self.group_id = group_id
        self.worker_id = worker_id
        self.dead_letter_topic = dead_letter_topic
        self.retry_topics = retry_topics
        self._partitions: dict[str, int | None] = {}
        self.pending = 0

    def load_partition_counts(self, timeout: float = 10.0) -> None:
        """Learn how many partitions the DLQ and retry topics have (to keep the original partition)."""
        topics = [t for t in [self.dead_letter_topic, *self.retry_topics] if t]
        for topic in topics:
            self._partitions[topic] = self._partition_count(topic, timeout)

    def _partition_count(self, topic: str, timeout: float) -> int | None:
        try:
            metadata = self._producer.list_topics(topic, timeout=timeout)
        except KafkaException as exc:
            log.warning("could not read metadata of %s: %s", topic, exc, extra={"topic": topic})
            return None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            log.warning("topic %s is not available: %s", topic, found.error if found else "missing",
                        extra={"topic": topic})
            return None
        return len(found.partitions)

    def _target_partition(self, topic: str, message: KafkaMessage) -> int | None:
        count = self._partitions.get(topic)
        wanted = original_partition(message)
        # Same partition as the original when the topic has it, else the key decides.
        return wanted if count is not None and wanted < count else None

    def send_dead_letter(self, message: KafkaMessage, failure: FailureInfo, *, kind: str, attempts: int,
                         on_done: DeliveryCallback) -> bool:
        if self.dead_letter_topic is None:
            raise RuntimeError("no dead-letter topic configured")
        headers = failure_headers(message, group_id=self.group_id, worker_id=self.worker_id, failure=failure,
                                  attempts=attempts, kind=kind)
        return self._send(self.dead_letter_topic, message, headers, on_done)

    def send_retry(self, message: KafkaMessage, failure: FailureInfo, *, tier: int, due_ms: int, attempts: int,
                   on_done: DeliveryCallback) -> bool:
        topic = self.retry_topics[tier - 1]
        headers = failure_headers(message, group_id=self.group_id, worker_id=self.worker_id, failure=failure,
                                  attempts=attempts, retry_due_ms=due_ms, retry_tier=tier)
        return self._send(topic, message, headers, on_done)

    def _send(self, topic: str, message: KafkaMessage, headers: Headers, on_done: DeliveryCallback) -> bool:
        """Queue a write. False when the local queue is full (call again after poll())."""
        def delivered(err: KafkaError | None, _msg: object) -> None:
            self.pending -= 1
            on_done(err)

        kwargs: dict[str, Any] = {"key": message.key(), "value": message.value(), "headers": headers,
                                  "on_delivery": delivered}
        partition = self._target_partition(topic, message)
        if partition is not None:
            kwargs["partition"] = partition
        try:
            self._producer.produce(topic, **kwargs)
        except BufferError:
            return False
        self.pending += 1
        return True

    def poll(self) -> None:
        self._producer.poll(0)

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` for outstanding writes; returns how many are still outstanding."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self._producer.poll(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.pending

    def close(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)

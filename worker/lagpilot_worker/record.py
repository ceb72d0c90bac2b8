"""The record a handler receives, and the handler types."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from lagpilot_contract import headers as h

Headers = list[tuple[str, bytes | None]]


class KafkaMessage(Protocol):
    """The part of confluent_kafka.Message the runtime uses (also lets tests build records)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> Any: ...        # list[tuple[str, bytes | None]] | None for consumed records
    def timestamp(self) -> tuple[int, int]: ...


def message_headers(message: KafkaMessage) -> Headers | None:
    """A consumed record's headers (librdkafka gives a list of (name, bytes | None) or None)."""
    headers: Headers | None = message.headers()
    return headers


TIMESTAMP_TYPE_NAMES = {0: "NotAvailable", 1: "CreateTime", 2: "LogAppendTime"}


class Origin(NamedTuple):
    """Where a retried record first came from (read from its lagpilot.original.* headers)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: str
    attempts: int


def origin_of(message: KafkaMessage) -> Origin:
    """The origin of a record read from a retry topic; the record itself when headers are missing."""
    headers = message_headers(message)

    def text(name: str, default: str) -> str:
        value = h.header_text(headers, name)
        return default if value is None else value

    def number(name: str, default: int) -> int:
        try:
            return int(text(name, str(default)))
        except ValueError:
            return default

    ts_type, ts = message.timestamp()
    return Origin(
        topic=text(h.ORIGINAL_TOPIC, message.topic() or ""),
        partition=number(h.ORIGINAL_PARTITION, message.partition() or 0),
        offset=number(h.ORIGINAL_OFFSET, message.offset() or 0),
        timestamp_ms=number(h.ORIGINAL_TIMESTAMP, ts),
        timestamp_type=text(h.ORIGINAL_TIMESTAMP_TYPE, TIMESTAMP_TYPE_NAMES.get(ts_type, "NotAvailable")),
        attempts=number(h.ATTEMPTS, 0),
    )


class Record:
    """One Kafka record as the handler sees it.

    `topic`, `partition`, `offset` and `timestamp_ms` are those of the original record, also
    when it comes back from a retry tier (then `retry_tier` > 0 and `source_*` say where it was
    read from). `value` is the deserialized value, `raw_value` the bytes. `attempt` is 1 on the
    first handler call for this record and counts every call across retry tiers.
    """

    __slots__ = ("_message", "_origin", "attempt", "retry_tier", "value")

    def __init__(self, message: KafkaMessage, value: Any, attempt: int = 1, retry_tier: int = 0,
                 origin: Origin | None = None) -> None:
        self._message = message
        self._origin = origin
        self.value = value
        self.attempt = attempt
        self.retry_tier = retry_tier

    @property
    def topic(self) -> str:
        return self._origin.topic if self._origin else self._message.topic() or ""

    @property
    def partition(self) -> int:
        return self._origin.partition if self._origin else self._message.partition() or 0

    @property
    def offset(self) -> int:
        return self._origin.offset if self._origin else self._message.offset() or 0

    @property
    def timestamp_ms(self) -> int:
        return self._origin.timestamp_ms if self._origin else self._message.timestamp()[1]

    @property
    def key(self) -> bytes | None:
        return self._message.key()

    @property
    def raw_value(self) -> bytes | None:
        return self._message.value()

    @property
    def headers(self) -> Headers:
        """The record's own headers (Lagpilot's bookkeeping headers of retried records removed)."""
        own = message_headers(self._message) or []
        return h.strip_lagpilot_headers(own) if self._origin else list(own)

    @property
    def source_topic(self) -> str:
        return self._message.topic() or ""

    @property
    def source_partition(self) -> int:
        return self._message.partition() or 0

    @property
    def source_offset(self) -> int:
        return self._message.offset() or 0

    @property
    def message(self) -> KafkaMessage:
        """The underlying confluent_kafka.Message."""
        return self._message

    def __repr__(self) -> str:
        return (f"Record(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
                f"attempt={self.attempt}, retry_tier={self.retry_tier})")


SyncHandler = Callable[[Record], object]
AsyncHandler = Callable[[Record], Awaitable[object]]
Handler = SyncHandler | AsyncHandler
Deserializer = Callable[[bytes | None], Any]

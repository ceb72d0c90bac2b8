"""Header names and encodings of dead-letter and retry records (all values are UTF-8 text)."""

from __future__ import annotations

ORIGINAL_TOPIC = "lagpilot.original.topic"
ORIGINAL_PARTITION = "lagpilot.original.partition"
ORIGINAL_OFFSET = "lagpilot.original.offset"
ORIGINAL_TIMESTAMP = "lagpilot.original.timestamp"
ORIGINAL_TIMESTAMP_TYPE = "lagpilot.original.timestamp.type"
CONSUMER_GROUP = "lagpilot.consumer.group"
EXCEPTION_CLASS = "lagpilot.exception.class"
EXCEPTION_MESSAGE = "lagpilot.exception.message"
EXCEPTION_STACKTRACE = "lagpilot.exception.stacktrace"
ATTEMPTS = "lagpilot.attempts"
WORKER_ID = "lagpilot.worker.id"
FAILURE_KIND = "lagpilot.failure.kind"
RETRY_DUE = "lagpilot.retry.due"
RETRY_TIER = "lagpilot.retry.tier"

MESSAGE_LIMIT_BYTES = 1024
STACKTRACE_LIMIT_BYTES = 8 * 1024

FAILURE_PERMANENT = "permanent"
FAILURE_RETRIES_EXHAUSTED = "retries-exhausted"
FAILURE_POISON_PILL = "poison-pill"

LAGPILOT_HEADER_PREFIX = "lagpilot."


def truncate_utf8(text: str, limit_bytes: int) -> str:
    """Cut text to at most limit_bytes of UTF-8 without splitting a character."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit_bytes:
        return text
    return encoded[:limit_bytes].decode("utf-8", errors="ignore")


def header_text(headers: list[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The last value of header `name` as text, or None."""
    found: str | None = None
    for key, value in headers or []:
        if key == name and value is not None:
            found = value.decode("utf-8", errors="replace")
    return found


def strip_lagpilot_headers(headers: list[tuple[str, bytes | None]] | None) -> list[tuple[str, bytes | None]]:
    """The record's own headers, without the ones Lagpilot added (used by redrive and retries)."""
    return [(k, v) for k, v in headers or [] if not k.startswith(LAGPILOT_HEADER_PREFIX)]

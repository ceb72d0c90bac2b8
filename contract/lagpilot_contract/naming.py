"""The one naming rule for a consumer group's dead-letter and retry topics."""

from __future__ import annotations

import hashlib
import re

MAX_TOPIC_NAME_LENGTH = 249
_ILLEGAL_TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")
DLQ_SUFFIX = ".dlq"


def sanitize_topic_name(name: str) -> str:
    """Make a legal Kafka topic name: illegal characters become '_', long names get a hash suffix."""
    cleaned = _ILLEGAL_TOPIC_CHARS.sub("_", name)
    if cleaned in {"", ".", ".."}:
        cleaned = f"_{cleaned}"
    if len(cleaned) > MAX_TOPIC_NAME_LENGTH:
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        cleaned = f"{cleaned[: MAX_TOPIC_NAME_LENGTH - 13]}-{digest}"
    return cleaned


def dead_letter_topic(group_id: str, override: str | None = None) -> str:
    """The DLQ topic of a consumer group: `<groupId>.dlq` unless the spec names one."""
    if override:
        return override
    return sanitize_topic_name(f"{group_id}{DLQ_SUFFIX}")


def retry_topic(group_id: str, tier: int, dlq_override: str | None = None) -> str:
    """Retry tier `tier` (1-based): `<groupId>.retry.<n>`, or `<dlq-base>.retry.<n>` with an override."""
    if tier < 1:
        raise ValueError(f"retry tiers are 1-based, got {tier}")
    if dlq_override:
        base = dlq_override.removesuffix(DLQ_SUFFIX)
        return sanitize_topic_name(f"{base}.retry.{tier}")
    return sanitize_topic_name(f"{group_id}.retry.{tier}")


def retry_topics(group_id: str, tier_count: int, dlq_override: str | None = None) -> list[str]:
    return [retry_topic(group_id, n, dlq_override) for n in range(1, tier_count + 1)]

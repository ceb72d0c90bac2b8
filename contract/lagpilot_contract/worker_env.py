"""The worker's environment variables that the operator writes (template mode) and reads (mismatch check).

The worker's CLI reads these names (`lagpilot_worker.cli`); the operator injects the values a
KafkaConsumerGroup already holds, so a user writes the group id, topics and connection once.
librdkafka settings travel as `LAGPILOT_KAFKA_<NAME>`: the setting name upper-cased with `.` as `_`.
"""

from __future__ import annotations

ENV_BOOTSTRAP_SERVERS = "LAGPILOT_BOOTSTRAP_SERVERS"
ENV_BOOTSTRAP_SERVERS_FALLBACK = "KAFKA_BOOTSTRAP_SERVERS"  # read when the LAGPILOT_ name is absent
ENV_GROUP_ID = "LAGPILOT_GROUP_ID"
ENV_TOPICS = "LAGPILOT_TOPICS"
ENV_DEAD_LETTER = "LAGPILOT_DEAD_LETTER"
ENV_DLQ_TOPIC = "LAGPILOT_DLQ_TOPIC"
ENV_RETRY_DELAYS = "LAGPILOT_RETRY_DELAYS"
ENV_SHARE_GROUP = "LAGPILOT_SHARE_GROUP"  # "true": consume as a member of a share group (KIP-932)
# Seconds between the worker's commits (default 1): the operator reads it to know how far behind committed
# offsets show a group that keeps up (the policy's committed-offset floor for a time-lag target).
ENV_COMMIT_INTERVAL = "LAGPILOT_COMMIT_INTERVAL_SECONDS"
KAFKA_ENV_PREFIX = "LAGPILOT_KAFKA_"

# The worker's command-line flags for the same three values (flags win over env).
FLAG_BOOTSTRAP_SERVERS = "--bootstrap-servers"
FLAG_GROUP_ID = "--group"
FLAG_TOPIC = "--topic"
FLAG_SHARE_GROUP = "--share-group"  # a switch: present means a share group
FLAG_COMMIT_INTERVAL = "--commit-interval"


def kafka_setting_env(setting: str) -> str:
    """`security.protocol` -> `LAGPILOT_KAFKA_SECURITY_PROTOCOL` (the worker reads it back as the setting)."""
    return KAFKA_ENV_PREFIX + setting.upper().replace(".", "_")


def kafka_setting_from_env(name: str) -> str | None:
    """The librdkafka setting an env var carries, or None when it is not a `LAGPILOT_KAFKA_` variable."""
    if not name.startswith(KAFKA_ENV_PREFIX) or len(name) == len(KAFKA_ENV_PREFIX):
        return None
    return name[len(KAFKA_ENV_PREFIX):].lower().replace("_", ".")


def split_topics(values: list[str] | str) -> list[str]:
    """Topics from comma-separated values (one string, or repeated `--topic` flags), blanks dropped."""
    items = [values] if isinstance(values, str) else values
    return [topic.strip() for item in items for topic in item.split(",") if topic.strip()]

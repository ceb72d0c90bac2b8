"""The pool-size contract: the operator writes one ConfigMap per KafkaConsumerGroup, workers watch it."""

from __future__ import annotations

POOL_SIZE_KEY = "poolSize"
REASON_KEY = "reason"
UPDATED_AT_KEY = "updatedAt"

ENV_POOL_CONFIGMAP = "LAGPILOT_POOL_CONFIGMAP"
ENV_NAMESPACE = "LAGPILOT_NAMESPACE"
ENV_POOL_SIZE = "LAGPILOT_POOL_SIZE"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CONSUMER_GROUP = "lagpilot.io/consumer-group"
MANAGED_BY_VALUE = "lagpilot"


def pool_configmap_name(kcg_name: str) -> str:
    return f"{kcg_name}-lagpilot-pool"


def parse_pool_size(data: dict[str, str] | None) -> int | None:
    """The pool size in a ConfigMap's data, or None when absent or not a positive integer."""
    raw = (data or {}).get(POOL_SIZE_KEY)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 1 else None

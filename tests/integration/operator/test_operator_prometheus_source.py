"""`lag.source: prometheus` when Prometheus answers but has no series for the group (a typo in the
query, the exporter not scraped yet): an actionable condition, and replicas held.

Scaling from Prometheus lag and an unreachable Prometheus are covered in
tests/integration/test_prometheus_source.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from operator_testkit import FAST, OperatorProcess, apply_kcg, condition, create_deployment, replicas_of, status_of

from support import wait_for

pytestmark = pytest.mark.integration

QUERY = 'sum by (topic, partition) (kafka_consumergroup_lag{consumergroup="{group}"})'


def test_a_query_without_series_holds_replicas_and_shows_the_query(
        stack: Any, namespace: str, operator: OperatorProcess, unique_name: Any) -> None:
    group = unique_name("never-exported")
    create_deployment(stack, namespace, "empty-worker", 2)
    apply_kcg(stack, namespace, "empty", {
        "kafka": {"bootstrapServers": "127.0.0.1:9"},  # required by the schema, never dialled with this source
        "groupId": group, "topics": ["t"], "scaleTargetRef": {"name": "empty-worker"},
        "replicas": {"min": 0, "max": 10}, **FAST,
        "lag": {**FAST["lag"], "source": "prometheus",
                "prometheus": {"url": stack.prometheus_url, "query": QUERY}}})
    status = wait_for(lambda: (s := status_of(stack, namespace, "empty")).get("consecutiveLagFailures", 0) >= 3
                      and s, 60, "three reads of a query that has no series")
    available = condition(status, "LagMetricAvailable")
    assert available["status"] == "False" and available["reason"] == "MetricMissing"
    assert f'consumergroup="{group}"' in available["message"]  # the rendered query, placeholders filled in
    assert condition(status, "Ready")["status"] == "False"
    assert "KafkaReachable" not in {c["type"] for c in status["conditions"]}  # Kafka is not this source
    assert replicas_of(stack, namespace, "empty-worker") == 2  # held (default fallback), never to min 0

"""Writes only when something changed, on the real stack: the operator's API requests go through
`kubectl proxy -v=6`, whose log is the count."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_testkit import (
    FAST,
    ApiRequestLog,
    OperatorProcess,
    apply_kcg,
    backlog,
    create_deployment,
    produce,
    replicas_of,
    status_of,
)

from support import metric_value, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def api_log(stack: Any, tmp_path: Path) -> Iterator[ApiRequestLog]:
    proxy = ApiRequestLog(stack, tmp_path)
    yield proxy
    proxy.stop()


def reconciles(operator: OperatorProcess) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), "lagpilot_reconcile_duration_seconds_count") or 0.0


def test_steady_polls_write_nothing_and_a_decision_is_written_at_once(
        stack: Any, namespace: str, crd_applied: None, tmp_path: Path, api_log: ApiRequestLog, create_topic: Any,
        unique_name: Any) -> None:
    # The operator's defaults (no LAGPILOT_STATUS_REFRESH_SECONDS), through the counting proxy.
    operator = OperatorProcess({**stack.env(), "KUBECONFIG": str(api_log.kubeconfig),
                                "LAGPILOT_STATUS_REFRESH_SECONDS": "60"}, namespace, tmp_path)
    topic = create_topic("op-writes", partitions=4)
    groups = unique_name("ref"), unique_name("owned")
    for group in groups:
        backlog(stack.kafka_bootstrap, topic, group, 4, 0)
    produce(stack.kafka_bootstrap, topic, 4, 5)  # lag 20 for both groups: 2 replicas at 10 per consumer
    common = {"kafka": {"bootstrapServers": stack.kafka_bootstrap}, "topics": [topic],
              "replicas": {"min": 1, "max": 4}, "pool": {"min": 1, "max": 1, "initial": 1}, **FAST}
    create_deployment(stack, namespace, "target", 1)
    apply_kcg(stack, namespace, "ref", {**common, "groupId": groups[0], "scaleTargetRef": {"name": "target"}})
    pod = {"metadata": {"labels": {"app": "ow"}},
           "spec": {"nodeSelector": {"lagpilot.io/test": "no-such-node"},
                    "containers": [{"name": "worker", "image": "registry.invalid/w:1"}]}}
    apply_kcg(stack, namespace, "owned", {**common, "groupId": groups[1], "template": {
        "spec": {"selector": {"matchLabels": {"app": "ow"}}, "template": pod}}})
    operator.start()
    try:
        for name, deployment in (("ref", "target"), ("owned", "owned")):
            wait_for(lambda n=name, d=deployment: status_of(stack, namespace, n).get("currentReplicas") == 2  # type: ignore[misc]
                     and replicas_of(stack, namespace, d) == 2, 60, f"{name} at 2 replicas")
        polled = reconciles(operator)
        wait_for(lambda: reconciles(operator) >= polled + 2, 30, "a poll of each after the scale")
        before, polled = api_log.writes(), reconciles(operator)
        wait_for(lambda: reconciles(operator) >= polled + 8, 60, "four more polls of each")
        assert api_log.writes()[len(before):] == [], "steady polls must not write (status, Deployment, ConfigMap)"
        assert any("/kafkaconsumergroups/ref/status" in w for w in before), "the proxy log does see the writes"
        assert any(w.startswith("PATCH") and w.endswith("/deployments/target/scale") for w in before)

        produce(stack.kafka_bootstrap, topic, 4, 10)  # lag 60: 4 replicas (the maximum)
        polled = reconciles(operator)
        wait_for(lambda: status_of(stack, namespace, "ref").get("desiredReplicas") == 4
                 and status_of(stack, namespace, "owned").get("desiredReplicas") == 4, 30, "the new decisions")
        assert reconciles(operator) <= polled + 2 * 3, "written by the first polls that saw the lag"
        status = status_of(stack, namespace, "ref")
        assert status["totalLag"] == 60 and replicas_of(stack, namespace, "target") == 4
        assert json.loads(stack.kubectl("get", "deployment", "owned", "-n", namespace, "-o", "json").stdout)[
            "spec"]["replicas"] == 4
    finally:
        operator.stop()

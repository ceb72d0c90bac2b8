"""The diff base kopf compares spec changes with is the stock one, built without copying the status."""

from __future__ import annotations

import copy
from typing import Any

import kopf
from kopf._cogs.structs import bodies

from lagpilot_operator.kube.diffbase import SpecDiffBaseStorage

BODY: dict[str, Any] = {
    "apiVersion": "lagpilot.io/v1alpha1",
    "kind": "KafkaConsumerGroup",
    "metadata": {
        "name": "orders", "namespace": "shop", "uid": "u-1", "resourceVersion": "42", "generation": 3,
        "labels": {"team": "payments"},
        "annotations": {"lagpilot.io/paused": "false",
                        "lagpilot.io/last-handled-configuration": '{"spec":{"groupId":"old"}}\n',
                        "kubectl.kubernetes.io/last-applied-configuration": "{}"},
        "finalizers": ["lagpilot.io/finalizer"],
        "managedFields": [{"manager": "kopf", "operation": "Update", "subresource": "status",
                           "fieldsV1": {"f:status": {"f:totalLag": {}}}}],
    },
    "spec": {"groupId": "orders", "topics": ["orders"], "replicas": {"min": 1, "max": 8}},
    "status": {"totalLag": 1234, "policyMemory": {"lastTime": 1.0, "busy": [[1.0, 4]]},
               "conditions": [{"type": "Ready", "status": "True"}]},
}


def test_the_essence_is_the_stock_one_and_the_body_is_untouched() -> None:
    stock = kopf.AnnotationsDiffBaseStorage(prefix="lagpilot.io")
    ours = SpecDiffBaseStorage(prefix="lagpilot.io")
    raw = copy.deepcopy(BODY)
    essence = ours.build(body=bodies.Body(raw))
    assert essence == stock.build(body=bodies.Body(copy.deepcopy(BODY)))
    assert "status" not in essence and essence["spec"]["groupId"] == "orders"
    assert essence["metadata"] == {"labels": {"team": "payments"}, "annotations": {"lagpilot.io/paused": "false"}}
    essence["spec"]["topics"].append("changed")  # a copy, not the body's own lists
    assert raw == BODY


def test_a_handler_that_reads_status_fields_gets_them() -> None:
    stock = kopf.AnnotationsDiffBaseStorage(prefix="lagpilot.io")
    ours = SpecDiffBaseStorage(prefix="lagpilot.io")
    essence = ours.build(body=bodies.Body(copy.deepcopy(BODY)), extra_fields=["status.totalLag"])
    assert essence == stock.build(body=bodies.Body(copy.deepcopy(BODY)), extra_fields=["status.totalLag"])
    assert essence["status"] == {"totalLag": 1234}

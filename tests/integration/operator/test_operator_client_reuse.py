"""The reconcile loop, in process against the real API server and broker: the lag read and the DLQ look
share one admin client per cluster and credentials (never a fresh one every 30 s), and the client goes
when the resource's loop ends."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from operator_testkit import FAST, apply_kcg, create_deployment

from lagpilot_operator import reconcile
from lagpilot_operator.kafka import dead_letter
from lagpilot_operator.kube import kube_io

pytestmark = pytest.mark.integration


def test_lag_and_dead_letter_looks_share_the_resources_admin_client(
        stack: Any, namespace: str, crd_applied: None, create_topic: Any, unique_name: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    topic, group = create_topic("op-reuse", partitions=1), unique_name("g")
    create_deployment(stack, namespace, "reuse-worker", 1)
    apply_kcg(stack, namespace, "reuse", {"kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group,
                                          "topics": [topic], "scaleTargetRef": {"name": "reuse-worker"},
                                          **FAST, "deadLetter": {"deletionPolicy": "Delete"}})
    body = json.loads(stack.kubectl("get", "kcg", "reuse", "-n", namespace, "-o", "json").stdout)
    monkeypatch.setenv("KUBECONFIG", stack.env()["KUBECONFIG"])
    kube_io.load_configuration()

    def no_fresh_client(_config: Any) -> Any:
        raise AssertionError("the DLQ look built its own AdminClient")

    monkeypatch.setattr(dead_letter, "admin_client", no_fresh_client)
    state, shared = reconcile.ResourceState(), reconcile.Shared()
    events: list[tuple[str, str, str]] = []
    try:
        now = time.time()
        for poll in range(3):  # the DLQ is looked at on the first poll and again 30 s later
            status = asyncio.run(reconcile.reconcile(body, state, shared, lambda *e: events.append(e),
                                                     now=now + poll * (reconcile.DEAD_LETTER_INTERVAL_SECONDS + 1)))
            dlq = status["deadLetter"]["topics"][0]
            assert dlq["name"] == f"{group}.dlq" and dlq["exists"], status
            assert len(shared.admin_clients) == 1
    finally:
        asyncio.run(reconcile.forget(state, shared, namespace, "reuse"))
        monkeypatch.undo()
        dead_letter.delete_dead_letter_topics({"bootstrap.servers": stack.kafka_bootstrap}, group,
                                              {"enabled": True, "deletionPolicy": "Delete"})
    assert len(shared.admin_clients) == 0  # the loop ended: its client is gone

"""A share group's lag read by the reconcile loop through the stack's SASL_SSL (SCRAM-SHA-512) listener, in
process against the real API server and broker: the credentials come from Secrets (read once, for the
AdminClient and the share-group reader alike), the reader keeps one connection across polls, and it goes
when the resource's loop ends. No credential is in the status, the Events or the log."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from operator_testkit import FAST, apply_kcg, apply_secret, create_deployment, produce

from lagpilot_operator import reconcile
from lagpilot_operator.kube import kube_io

pytestmark = pytest.mark.integration


def test_share_group_lag_over_scram_and_tls_keeps_one_connection(
        stack: Any, namespace: str, crd_applied: None, create_topic: Any, unique_name: Any,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    topic, group = create_topic("op-share-tls", partitions=2), unique_name("sg")
    produce(stack.kafka_bootstrap, topic, partitions=2, per_partition=15)
    apply_secret(stack, namespace, "scram-login",
                 {"username": stack.kafka_scram_username, "password": stack.kafka_scram_password})
    apply_secret(stack, namespace, "kafka-ca", {"ca.crt": stack.kafka_tls_ca_file.read_text()})
    create_deployment(stack, namespace, "share-worker", 1)
    security = {"protocol": "SASL_SSL",
                "sasl": {"mechanism": "SCRAM-SHA-512", "usernameSecretRef": {"name": "scram-login", "key": "username"},
                         "passwordSecretRef": {"name": "scram-login", "key": "password"}},
                "tls": {"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}}}
    # No member has joined: no share state, so `earliest` counts every retained record (30) as lag.
    policy = {**FAST["policy"], "lagThreshold": {"lagPerConsumer": 10, "offsetResetPolicy": "earliest"}}
    apply_kcg(stack, namespace, "share", {
        **FAST, "policy": policy, "kafka": {"bootstrapServers": stack.kafka_scram_bootstrap, "security": security},
        "groupId": group, "groupType": "share", "topics": [topic], "scaleTargetRef": {"name": "share-worker"},
        "replicas": {"min": 1, "max": 10}})
    body = json.loads(stack.kubectl("get", "kcg", "share", "-n", namespace, "-o", "json").stdout)
    monkeypatch.setenv("KUBECONFIG", stack.env()["KUBECONFIG"])
    kube_io.load_configuration()
    caplog.set_level(logging.DEBUG)
    state, shared = reconcile.ResourceState(), reconcile.Shared()
    events: list[tuple[str, str, str]] = []

    async def polls() -> list[dict[str, Any]]:
        # One event loop, as in the operator: the kept connections belong to it.
        statuses = []
        try:
            for poll in range(3):
                statuses.append(await reconcile.reconcile(body, state, shared, lambda *e: events.append(e),
                                                          now=time.time() + poll))
                assert len(shared.share_clients) == 1 and shared.share_clients.open_connections() == 1
        finally:
            await reconcile.forget(state, shared, namespace, "share")
        return statuses

    statuses = asyncio.run(polls())
    for status in statuses:
        reachable = next(c for c in status["conditions"] if c["type"] == "KafkaReachable")
        assert reachable["status"] == "True", reachable
        assert status["totalLag"] == 30, status
    assert len(shared.share_clients) == 0 and shared.share_clients.open_connections() == 0  # the loop ended
    everything = f"{statuses} {events} {caplog.text}"
    assert stack.kafka_scram_password not in everything

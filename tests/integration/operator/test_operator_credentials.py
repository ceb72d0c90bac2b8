"""Kafka credentials from Secrets, on the stack's SASL listener: read per reconcile, never shown anywhere.

The stack's broker has a SASL_PLAINTEXT listener (mechanism PLAIN) next to the plaintext one; the
backlog is written through the plaintext listener, the operator reads it through the SASL one.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from operator_testkit import (
    FAST,
    OperatorProcess,
    apply_kcg,
    apply_secret,
    backlog,
    condition,
    create_deployment,
    events_text,
    replicas_of,
    status_of,
)

from support import wait_for

pytestmark = pytest.mark.integration


def sasl_spec(stack: Any, group: str, topic: str, secret: str, target: str) -> dict[str, Any]:
    return {
        "kafka": {"bootstrapServers": stack.kafka_sasl_bootstrap,
                  "security": {"protocol": "SASL_PLAINTEXT",
                               "sasl": {"mechanism": "PLAIN",
                                        "usernameSecretRef": {"name": secret, "key": "username"},
                                        "passwordSecretRef": {"name": secret, "key": "password"}}}},
        "groupId": group, "topics": [topic], "scaleTargetRef": {"name": target},
        "replicas": {"min": 1, "max": 10}, "pool": {"min": 1, "max": 1, "initial": 1}, **FAST,
    }


def test_sasl_credentials_come_from_a_secret_that_may_appear_later(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-sasl", partitions=3), unique_name("g")
    backlog(stack.kafka_bootstrap, topic, group, partitions=3, per_partition=30)
    create_deployment(stack, namespace, "sasl-worker", 1)
    apply_kcg(stack, namespace, "sasl", sasl_spec(stack, group, topic, "kafka-login", "sasl-worker"))

    # The Secret does not exist yet: the condition names it, and nothing is scaled.
    missing = wait_for(lambda: condition(status_of(stack, namespace, "sasl"), "KafkaReachable").get("status")
                       == "False" and condition(status_of(stack, namespace, "sasl"), "KafkaReachable"), 30,
                       "KafkaReachable=False while the Secret is missing")
    assert missing["reason"] == "SecretNotFound" and "kafka-login/" in missing["message"]
    assert replicas_of(stack, namespace, "sasl-worker") == 1

    # Once it exists the next reconcile uses it: no restart, no edit of the resource.
    apply_secret(stack, namespace, "kafka-login",
                 {"username": stack.kafka_sasl_username, "password": stack.kafka_sasl_password})
    wait_for(lambda: replicas_of(stack, namespace, "sasl-worker") == 3, 30,
             "replicas up to the 3 partitions, lag read through SASL")
    # The status is written after the scale, in the same reconcile.
    status = wait_for(lambda: (s := status_of(stack, namespace, "sasl")).get("desiredReplicas") == 3 and s, 10,
                      "the status of the reconcile that scaled")
    assert status["totalLag"] == 90
    assert condition(status, "KafkaReachable")["status"] == "True"
    assert stack.kafka_sasl_password not in operator.log_text()


@pytest.mark.slow
def test_wrong_credentials_hold_replicas_and_leak_nowhere(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-badpw", partitions=2), unique_name("g")
    backlog(stack.kafka_bootstrap, topic, group, partitions=2, per_partition=30)
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    apply_secret(stack, namespace, "bad-login", {"username": stack.kafka_sasl_username, "password": wrong_password})
    create_deployment(stack, namespace, "locked-out", 2)
    apply_kcg(stack, namespace, "locked", {**sasl_spec(stack, group, topic, "bad-login", "locked-out"),
                                           "replicas": {"min": 0, "max": 10}})

    status = wait_for(lambda: (s := status_of(stack, namespace, "locked")).get("consecutiveLagFailures", 0) >= 2
                      and s, 90, "two failed lag reads")
    assert condition(status, "KafkaReachable")["status"] == "False"
    assert condition(status, "Ready")["status"] == "False"
    assert replicas_of(stack, namespace, "locked-out") == 2  # held, not scaled to min 0 while blind
    for where, text in (("status", str(status)), ("events", events_text(stack, namespace)),
                        ("operator log", operator.log_text())):
        assert wrong_password not in text, f"the password leaked into the {where}"


@pytest.mark.slow
def test_a_refused_login_is_reported_as_such_not_as_a_network_fault(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    # librdkafka reports a refused SASL login only through the client's error callback; the request
    # itself then fails like a dead cluster. The condition must point at the credentials, not the network.
    topic = create_topic("op-login", partitions=1)
    apply_secret(stack, namespace, "stale-login", {"username": stack.kafka_sasl_username, "password": "stale"})
    create_deployment(stack, namespace, "stale-worker", 1)
    apply_kcg(stack, namespace, "stale", sasl_spec(stack, unique_name("g"), topic, "stale-login", "stale-worker"))
    reachable = wait_for(lambda: (c := condition(status_of(stack, namespace, "stale"), "KafkaReachable"))
                         .get("status") == "False" and c, 60, "KafkaReachable=False")
    assert reachable["reason"] == "AuthenticationFailed", reachable
    assert "spec.kafka.security" in reachable["message"]

"""SCRAM-SHA-512 over TLS and mutual TLS on the stack's real broker, with every credential from a Secret.

The stack's broker has a SASL_SSL listener (SCRAM-SHA-512) and an SSL listener that requires a client
certificate, both with a certificate from a CA minted at broker start. The backlog is written through
the plaintext listener; the operator reads lag through the TLS ones. The operator runs with kopf's
--verbose, so whatever it logs at debug level is searched for credentials too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_testkit import (
    FAST,
    OperatorProcess,
    apply_kcg,
    apply_secret,
    backlog,
    commit,
    condition,
    create_deployment,
    events_text,
    replicas_of,
    status_of,
)

from support import wait_for
from tls_testkit import key_material, mint_foreign_pki

pytestmark = pytest.mark.integration


@pytest.fixture
def verbose_operator(stack: Any, namespace: str, crd_applied: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(stack.env(), namespace, tmp_path, extra_args=("--verbose",))
    process.start()
    yield process
    process.stop()


def scram_security(secret: str, ca_secret: str) -> dict[str, Any]:
    return {"protocol": "SASL_SSL",
            "sasl": {"mechanism": "SCRAM-SHA-512",
                     "usernameSecretRef": {"name": secret, "key": "username"},
                     "passwordSecretRef": {"name": secret, "key": "password"}},
            "tls": {"caSecretRef": {"name": ca_secret, "key": "ca.crt"}}}


def mtls_security(secret: str) -> dict[str, Any]:
    # The keys a cert-manager or Strimzi TLS Secret has.
    return {"protocol": "SSL", "tls": {"caSecretRef": {"name": secret, "key": "ca.crt"},
                                       "certSecretRef": {"name": secret, "key": "tls.crt"},
                                       "keySecretRef": {"name": secret, "key": "tls.key"}}}


def spec(bootstrap: str, security: dict[str, Any], group: str, topic: str, target: str) -> dict[str, Any]:
    return {"kafka": {"bootstrapServers": bootstrap, "security": security}, "groupId": group, "topics": [topic],
            "scaleTargetRef": {"name": target}, "replicas": {"min": 1, "max": 10},
            "pool": {"min": 1, "max": 1, "initial": 1}, **FAST}


def assert_nowhere(stack: Any, namespace: str, operator: OperatorProcess, names: list[str],
                   credentials: dict[str, list[str]]) -> None:
    """No credential text in the statuses, the namespace's Events or the operator's log."""
    places = {"operator log": operator.log_text(), "events": events_text(stack, namespace),
              **{f"status of {name}": str(status_of(stack, namespace, name)) for name in names}}
    assert places["operator log"].strip(), "the operator log is empty: the check below would prove nothing"
    for what, texts in credentials.items():
        for text in texts:
            for where, found in places.items():
                assert text not in found, f"the {what} leaked into the {where}"


def test_scram_over_tls_and_mutual_tls_read_lag_with_credentials_from_secrets(
        stack: Any, namespace: str, verbose_operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic = create_topic("op-tls", partitions=3)
    scram_group, mtls_group = unique_name("g-scram"), unique_name("g-mtls")
    backlog(stack.kafka_bootstrap, topic, scram_group, partitions=3, per_partition=20)
    commit(stack.kafka_bootstrap, mtls_group, topic, dict.fromkeys(range(3), 0))  # the same 60 records of lag
    ca = stack.kafka_tls_ca_file.read_text()
    client_key = stack.kafka_tls_client_key_file.read_text()
    apply_secret(stack, namespace, "scram-login",
                 {"username": stack.kafka_scram_username, "password": stack.kafka_scram_password})
    apply_secret(stack, namespace, "kafka-ca", {"ca.crt": ca})
    apply_secret(stack, namespace, "client-tls", {"ca.crt": ca, "tls.crt": stack.kafka_tls_client_cert_file.read_text(),
                                                  "tls.key": client_key})
    create_deployment(stack, namespace, "scram-worker", 1)
    create_deployment(stack, namespace, "mtls-worker", 1)
    apply_kcg(stack, namespace, "scram", spec(stack.kafka_scram_bootstrap, scram_security("scram-login", "kafka-ca"),
                                              scram_group, topic, "scram-worker"))
    apply_kcg(stack, namespace, "mtls", spec(stack.kafka_mtls_bootstrap, mtls_security("client-tls"),
                                             mtls_group, topic, "mtls-worker"))

    for name in ("scram", "mtls"):
        # 60 records of lag at 10 per consumer, capped by the 3 partitions: the lag was read.
        wait_for(lambda name=name: replicas_of(stack, namespace, f"{name}-worker") == 3, 60,
                 f"replicas up to the 3 partitions, lag read through the {name} listener")
        status = wait_for(lambda name=name: (s := status_of(stack, namespace, name)).get("totalLag") == 60 and s,
                          30, f"the status of {name} with the lag read")
        reachable = condition(status, "KafkaReachable")
        assert reachable["status"] == "True", reachable
        assert (stack.kafka_scram_bootstrap if name == "scram" else stack.kafka_mtls_bootstrap) in reachable["message"]
    assert_nowhere(stack, namespace, verbose_operator, ["scram", "mtls"],
                   {"SCRAM password": [stack.kafka_scram_password], "private key": key_material(client_key)})


@pytest.mark.slow
def test_wrong_password_untrusted_ca_and_refused_client_certificate_are_named(
        stack: Any, namespace: str, verbose_operator: OperatorProcess, create_topic: Any, unique_name: Any,
        tmp_path: Path) -> None:
    topic = create_topic("op-tls-bad", partitions=2)
    foreign = mint_foreign_pki(tmp_path / "foreign")
    ca = stack.kafka_tls_ca_file.read_text()
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    foreign_key = foreign.client_key.read_text()
    apply_secret(stack, namespace, "bad-login", {"username": stack.kafka_scram_username, "password": wrong_password})
    apply_secret(stack, namespace, "good-login",
                 {"username": stack.kafka_scram_username, "password": stack.kafka_scram_password})
    apply_secret(stack, namespace, "kafka-ca", {"ca.crt": ca})
    apply_secret(stack, namespace, "foreign-ca", {"ca.crt": foreign.ca.read_text()})
    # The broker's CA is trusted, but the client certificate was signed by a CA the broker does not know.
    apply_secret(stack, namespace, "foreign-client", {"ca.crt": ca, "tls.crt": foreign.client_cert.read_text(),
                                                      "tls.key": foreign_key})
    cases = {
        "badpw": (stack.kafka_scram_bootstrap, scram_security("bad-login", "kafka-ca"), "AuthenticationFailed"),
        "badca": (stack.kafka_scram_bootstrap, scram_security("good-login", "foreign-ca"), "TLSVerificationFailed"),
        "badcert": (stack.kafka_mtls_bootstrap, mtls_security("foreign-client"), "TLSHandshakeFailed"),
    }
    for name, (bootstrap, security, _) in cases.items():
        create_deployment(stack, namespace, f"{name}-worker", 2)
        apply_kcg(stack, namespace, name, spec(bootstrap, security, unique_name("g"), topic, f"{name}-worker"))

    for name, (_, _, reason) in cases.items():
        reachable = wait_for(lambda name=name: (c := condition(status_of(stack, namespace, name), "KafkaReachable"))
                             .get("status") == "False" and c, 60, f"KafkaReachable=False for {name}")
        assert reachable["reason"] == reason, (name, reachable)
        assert replicas_of(stack, namespace, f"{name}-worker") == 2, "scaled while blind"
    assert "spec.kafka.security" in condition(status_of(stack, namespace, "badpw"), "KafkaReachable")["message"]
    badca = condition(status_of(stack, namespace, "badca"), "KafkaReachable")["message"]
    assert "TLS verification" in badca and "caSecretRef" in badca
    assert "certSecretRef" in condition(status_of(stack, namespace, "badcert"), "KafkaReachable")["message"]
    assert_nowhere(stack, namespace, verbose_operator, list(cases),
                   {"wrong password": [wrong_password], "right password": [stack.kafka_scram_password],
                    "private key": key_material(foreign_key)})

"""Which client error names the cause of a connection that never works: a refused login, a broker
certificate the configured CA cannot verify, a TLS handshake the broker refuses (pure classification).

The texts are librdkafka's, as its error callback delivered them from the stack's SASL_SSL and mTLS
listeners (tests/integration/operator/test_operator_tls.py runs the same cases against the real broker).
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from lagpilot_operator.kafka import kafka_lag

UNTRUSTED_CA = ("sasl_ssl://127.0.0.1:20095/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
                "certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location "
                "is correctly configured or root CA certificates are installed (install ca-certificates package) "
                "(after 21ms in state SSL_HANDSHAKE)")
# TLS 1.3: the broker's alert arrives after the client's half of the handshake, as a receive failure.
CLIENT_CERT_REFUSED = ("ssl://127.0.0.1:20096/bootstrap: Receive failed: error:0A000412:SSL routines::ssl/tls alert "
                       "bad certificate: SSL alert number 42 (after 1ms in state APIVERSION_QUERY)")
WRONG_PASSWORD = ("sasl_ssl://127.0.0.1:20095/bootstrap: SASL authentication error: Authentication failed during "
                  "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 326ms in "
                  "state AUTH_REQ)")
TLS_TO_PLAINTEXT = ("ssl://127.0.0.1:20092/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by "
                    "peer: connecting to a PLAINTEXT broker listener? (after 8ms in state SSL_HANDSHAKE)")
PLAINTEXT_TO_TLS = ("127.0.0.1:20096/bootstrap: Disconnected: connection closed by peer: receive 0 after POLLIN "
                    "(after 0ms in state APIVERSION_QUERY)")


@pytest.mark.parametrize(("code", "text", "reason"), [
    (KafkaError._SSL, UNTRUSTED_CA, "TLSVerificationFailed"),
    (KafkaError._TRANSPORT, CLIENT_CERT_REFUSED, "TLSHandshakeFailed"),
    (KafkaError._TRANSPORT, TLS_TO_PLAINTEXT, "TLSHandshakeFailed"),
    (KafkaError._SSL, "SSL handshake failed: error:0A00010B:SSL routines::wrong version number", "TLSHandshakeFailed"),
    (KafkaError._AUTHENTICATION, WRONG_PASSWORD, "AuthenticationFailed"),
    (KafkaError.SASL_AUTHENTICATION_FAILED, "Authentication failed", "AuthenticationFailed"),
])
def test_the_cause_of_a_connection_that_cannot_work_is_named(code: int, text: str, reason: str) -> None:
    assert kafka_lag.connection_failure_reason(code, text) == reason


@pytest.mark.parametrize(("code", "text"), [
    (KafkaError._TRANSPORT, PLAINTEXT_TO_TLS), (KafkaError._TRANSPORT, "Connection refused"),
    (KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"), (KafkaError._TIMED_OUT, "certificate verify failed"),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, "certificate verify failed"), (None, "SSL alert number 42")])
def test_network_faults_and_refusals_by_acl_are_not_connection_causes(code: int | None, text: str) -> None:
    # A network fault may heal by itself and an ACL denial has its own reason: neither is a login or TLS fault.
    assert kafka_lag.connection_failure_reason(code, text) is None


@pytest.mark.parametrize(("reason", "error_type", "points_at"), [
    ("TLSVerificationFailed", kafka_lag.KafkaTlsVerificationFailed, "spec.kafka.security.tls.caSecretRef"),
    ("TLSHandshakeFailed", kafka_lag.KafkaTlsHandshakeFailed, "spec.kafka.security.tls.certSecretRef"),
    ("AuthenticationFailed", kafka_lag.KafkaAuthenticationFailed, "spec.kafka.security"),
])
def test_each_cause_becomes_an_error_with_that_reason_and_the_field_to_fix(
        reason: str, error_type: type[kafka_lag.LagReadError], points_at: str) -> None:
    error = kafka_lag.connection_failure(reason, "detail from librdkafka", "reading cluster metadata", "k1:9093")
    assert type(error) is error_type and error.reason == reason
    message = str(error)
    assert points_at in message and "k1:9093" in message and "detail from librdkafka" in message

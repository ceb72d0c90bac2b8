"""The operator's share-group lag read (share_lag, KIP-932) against a real Kafka 4.4 broker: after a share
consumer accepted some records of a 2-partition topic and released the rest, the lag read per partition is
exactly what is left, through the PLAINTEXT listener and through each secured one (SASL_PLAINTEXT with PLAIN,
SASL_SSL with SCRAM-SHA-512, mutual TLS); a wrong password, an untrusted CA and a refused client certificate
are named."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import AcknowledgeType, Producer, ShareConsumer
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from lagpilot_operator.core.observations import LagSample, partition_lag
from lagpilot_operator.kafka import kafka_lag, share_lag
from support import WaitTimeout, configure_share_group, wait_for
from tls_testkit import key_material, mint_foreign_pki

PER_PARTITION = 50
ACCEPT = {0: 15, 1: 25}  # records accepted per partition; every other delivery is released


def lags(sample: LagSample) -> dict[int, int]:
    # "earliest" is the group's share.auto.offset.reset below: a partition without share state is all lag.
    return {p.partition: partition_lag(p, "earliest") for p in sample.partitions}


def secured_listeners(stack: Any) -> dict[str, dict[str, str]]:
    """The librdkafka settings of the stack's secured listeners, as `kafka_lag.client_settings` resolves them
    from a resource's Secrets."""
    ca = stack.kafka_tls_ca_file.read_text()
    return {
        "SASL_PLAINTEXT/PLAIN": {"bootstrap.servers": stack.kafka_sasl_bootstrap, "security.protocol": "SASL_PLAINTEXT",
                                 "sasl.mechanism": "PLAIN", "sasl.username": stack.kafka_sasl_username,
                                 "sasl.password": stack.kafka_sasl_password},
        "SASL_SSL/SCRAM-SHA-512": {"bootstrap.servers": stack.kafka_scram_bootstrap, "security.protocol": "SASL_SSL",
                                   "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": stack.kafka_scram_username,
                                   "sasl.password": stack.kafka_scram_password, "ssl.ca.pem": ca},
        "SSL/mutual TLS": {"bootstrap.servers": stack.kafka_mtls_bootstrap, "security.protocol": "SSL",
                           "ssl.ca.pem": ca, "ssl.certificate.pem": stack.kafka_tls_client_cert_file.read_text(),
                           "ssl.key.pem": stack.kafka_tls_client_key_file.read_text()},
    }


def test_share_lag_is_the_count_of_records_not_yet_acknowledged(
        stack: Any, kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str]) -> None:
    topic = create_topic("share-lag", partitions=2)
    group = configure_share_group(kafka_bootstrap, unique_name("sg"))
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    settings = {"bootstrap.servers": kafka_bootstrap}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in (0, 1):
        for i in range(PER_PARTITION):
            producer.produce(topic, value=str(i).encode(), partition=partition)
    assert producer.flush(30) == 0

    # No member yet: no share state, the whole partition is lag (committed None, like a new consumer group).
    before = asyncio.run(share_lag.read_share_lag(admin, settings, group, [topic]))
    assert before.protocol == "share"
    assert [(p.partition, p.end_offset, p.committed) for p in before.partitions] == [
        (0, PER_PARTITION, None), (1, PER_PARTITION, None)]

    accepted: Counter[int] = Counter()
    consumer = ShareConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": group,
                              "share.acknowledgement.mode": "explicit"})
    consumer.subscribe([topic])

    def consume_some() -> bool:
        for message in consumer.poll(0.5):
            assert message.error() is None, message.error()
            if accepted[message.partition()] < ACCEPT[message.partition()]:
                accepted[message.partition()] += 1
                consumer.acknowledge(message, AcknowledgeType.ACCEPT)
            else:
                consumer.acknowledge(message, AcknowledgeType.RELEASE)
        consumer.commit_sync()  # the acknowledgements reach the broker before the next poll
        return accepted == Counter(ACCEPT)

    try:
        wait_for(consume_some, 60, f"{ACCEPT} records accepted per partition")
    finally:
        consumer.close()

    expected = {partition: PER_PARTITION - count for partition, count in ACCEPT.items()}
    # The share coordinator persists acknowledged state asynchronously: read until it reports what was
    # acknowledged (a wrong count would still fail here, with the last reading).
    readings: list[dict[int, int]] = []

    def settled() -> LagSample | None:
        sample = asyncio.run(share_lag.read_share_lag(admin, settings, group, [topic]))
        readings.append(lags(sample))
        return sample if readings[-1] == expected else None

    try:
        sample = wait_for(settled, 30, f"share lag {expected}")
    except WaitTimeout:
        assert readings[-1] == expected, f"share lag per partition, every reading: {readings}"
        raise
    # The broker's own per-partition lag (v1), not the overcounting SPSO fallback: both partitions have
    # share state, so neither is counted from the offsetResetPolicy.
    assert all(p.committed is not None for p in sample.partitions), sample
    assert [p.end_offset for p in sample.partitions] == [PER_PARTITION, PER_PARTITION]

    # The same lag through every secured listener: the AdminClient and a kept ShareCluster built from the same
    # settings, as the operator does; two polls, one connection (the single broker is its own coordinator).
    async def two_polls(settings: dict[str, str]) -> tuple[LagSample, LagSample, int]:
        admin = AdminClient(settings)
        async with share_lag.ShareCluster(settings) as cluster:
            first = await share_lag.read_share_lag(admin, settings, group, [topic], cluster=cluster)
            second = await share_lag.read_share_lag(admin, settings, group, [topic], cluster=cluster)
            return first, second, cluster.open_connections

    for listener, settings in secured_listeners(stack).items():
        first, second, connections = asyncio.run(two_polls(settings))
        assert lags(first) == lags(second) == expected, listener
        assert all(p.committed is not None for p in first.partitions), (listener, first)
        assert connections == 1, listener


def refusal(settings: dict[str, str]) -> kafka_lag.LagReadError:
    """What the share-group reader raises for `settings` (the AdminClient is not asked: it would name the
    failure itself, before the reader ever connects)."""
    async def ask() -> None:
        async with share_lag.ShareCluster(settings) as cluster:
            await cluster.describe("no-such-share-group", {"no-such-topic": [0]})

    with pytest.raises(kafka_lag.LagReadError) as caught:
        asyncio.run(asyncio.wait_for(ask(), 30))
    return caught.value


def test_a_wrong_password_an_untrusted_ca_and_a_refused_client_certificate_are_named(
        stack: Any, tmp_path: Path) -> None:
    listeners = secured_listeners(stack)
    foreign = mint_foreign_pki(tmp_path / "foreign")
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    cases = {
        "PLAIN, wrong password": ({**listeners["SASL_PLAINTEXT/PLAIN"], "sasl.password": wrong_password},
                                  "AuthenticationFailed", "spec.kafka.security"),
        "SCRAM, wrong password": ({**listeners["SASL_SSL/SCRAM-SHA-512"], "sasl.password": wrong_password},
                                  "AuthenticationFailed", "spec.kafka.security"),
        "SCRAM, untrusted CA": ({**listeners["SASL_SSL/SCRAM-SHA-512"], "ssl.ca.pem": foreign.ca.read_text()},
                                "TLSVerificationFailed", "caSecretRef"),
        "mTLS, client certificate of a foreign CA": (
            {**listeners["SSL/mutual TLS"], "ssl.certificate.pem": foreign.client_cert.read_text(),
             "ssl.key.pem": foreign.client_key.read_text()}, "TLSHandshakeFailed", "certSecretRef"),
        "TLS client at the PLAINTEXT listener": (
            {"bootstrap.servers": stack.kafka_bootstrap, "security.protocol": "SSL",
             "ssl.ca.pem": stack.kafka_tls_ca_file.read_text()}, "TLSHandshakeFailed", "protocol"),
        "PLAINTEXT client at a TLS listener": ({"bootstrap.servers": stack.kafka_mtls_bootstrap}, "KafkaUnreachable",
                                               "speaks TLS"),
    }
    secrets = [wrong_password, stack.kafka_sasl_password, stack.kafka_scram_password,
               *key_material(foreign.client_key.read_text()),
               *key_material(stack.kafka_tls_client_key_file.read_text())]
    for case, (settings, reason, hint) in cases.items():
        error = refusal(settings)
        assert (error.reason, hint in str(error)) == (reason, True), (case, str(error))
        chain = f"{error!s} {error.__cause__!s} {error.__context__!s}"
        assert not [secret for secret in secrets if secret in chain], f"{case}: a credential in the error"

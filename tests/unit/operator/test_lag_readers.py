"""The pure parts of the operator's I/O modules: librdkafka settings from Secrets, the client cache key,
the Prometheus query template, and the Deployment a `template` turns into.

No Kafka, no API server: these functions only shape data (the I/O around them is covered by
tests/integration/operator and tests/integration/test_operator_loop.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import ConsumerGroupType
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_contract import pool as pool_contract
from lagpilot_operator.kafka import kafka_lag, prom_lag
from lagpilot_operator.kube import kube_io, models, worker_config

PASSWORD = "s3cr3t-Pa55"
SASL_SPEC = {
    "bootstrapServers": "k1:9092,k2:9092",
    "security": {
        "protocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "usernameSecretRef": {"name": "kafka-user", "key": "username"},
                 "passwordSecretRef": {"name": "kafka-user", "key": "password"}},
        "tls": {"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"},
                "certSecretRef": {"name": "client-tls", "key": "tls.crt"},
                "keySecretRef": {"name": "client-tls", "key": "tls.key"}},
    },
}
SECRETS = {"kafka-user/username": "orders", "kafka-user/password": PASSWORD, "kafka-ca/ca.crt": "CA-PEM",
           "client-tls/tls.crt": "CERT-PEM", "client-tls/tls.key": "KEY-PEM"}


def connection(data: dict[str, Any]) -> models.KafkaConnection:
    return models.KafkaConnection.model_validate(data)


def test_plaintext_needs_no_secret_and_sets_only_bootstrap() -> None:
    plain = connection({"bootstrapServers": "k1:9092"})
    assert kafka_lag.secret_refs(plain) == []
    assert kafka_lag.client_settings(plain, {}) == {"bootstrap.servers": "k1:9092"}


def test_every_secret_value_lands_in_the_librdkafka_setting_of_that_name() -> None:
    secure = connection(SASL_SPEC)
    assert sorted(kafka_lag.secret_refs(secure)) == sorted(tuple(k.split("/")) for k in SECRETS)
    assert kafka_lag.client_settings(secure, SECRETS) == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "orders",
        "sasl.password": PASSWORD,
        "ssl.ca.pem": "CA-PEM",
        "ssl.certificate.pem": "CERT-PEM",
        "ssl.key.pem": "KEY-PEM",
    }


def test_a_missing_secret_key_names_the_key_and_never_a_value() -> None:
    without_password = {k: v for k, v in SECRETS.items() if k != "kafka-user/password"}
    with pytest.raises(kafka_lag.CredentialsUnavailable) as raised:
        kafka_lag.client_settings(connection(SASL_SPEC), without_password)
    assert "kafka-user/password" in str(raised.value)
    assert all(value not in str(raised.value) for value in SECRETS.values())
    assert raised.value.reason == "SecretNotFound"


def test_redacted_settings_hide_credentials_and_keep_the_rest() -> None:
    settings = kafka_lag.client_settings(connection(SASL_SPEC), SECRETS)
    shown = kafka_lag.redacted(settings)
    assert PASSWORD not in repr(shown) and "KEY-PEM" not in repr(shown) and "orders" not in repr(shown)
    assert shown["bootstrap.servers"] == "k1:9092,k2:9092" and shown["sasl.mechanism"] == "SCRAM-SHA-512"


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_the_client_cache_key_separates_credentials_without_containing_them(first: str, second: str) -> None:
    base = {"bootstrap.servers": "k1:9092", "sasl.username": "u"}
    key_a = kafka_lag.settings_fingerprint({**base, "sasl.password": first})
    key_b = kafka_lag.settings_fingerprint({**base, "sasl.password": second})
    assert (key_a == key_b) == (first == second)
    assert len(key_a) == 64 and all(c in "0123456789abcdef" for c in key_a)  # a digest, not the settings


def test_the_client_cache_key_ignores_the_order_settings_were_given_in() -> None:
    forward = {"bootstrap.servers": "k1:9092", "security.protocol": "SASL_PLAINTEXT", "sasl.password": "p"}
    backward = dict(reversed(list(forward.items())))
    assert kafka_lag.settings_fingerprint(forward) == kafka_lag.settings_fingerprint(backward)


def test_one_admin_client_per_cluster_and_credentials() -> None:
    # 127.0.0.1:9 (discard) is never dialled for real: a client connects lazily, on its first request.
    pool = kafka_lag.AdminClientPool()
    first = pool.get({"bootstrap.servers": "127.0.0.1:9", "sasl.password": "a"})
    assert pool.get({"bootstrap.servers": "127.0.0.1:9", "sasl.password": "a"}) is first
    assert pool.get({"bootstrap.servers": "127.0.0.1:9", "sasl.password": "b"}) is not first
    assert len(pool) == 2


def test_query_template_placeholders() -> None:
    template = 'sum by (topic, partition) (kafka_consumergroup_lag{consumergroup="{group}", topic=~"{topic}", ' \
               'namespace="{namespace}"})'
    assert prom_lag.render_query(template, group="orders", topics=["a", "b"], namespace="shop") == (
        'sum by (topic, partition) (kafka_consumergroup_lag{consumergroup="orders", topic=~"a|b", '
        'namespace="shop"})')


def test_a_template_without_placeholders_is_used_as_written() -> None:
    query = "sum by (topic, partition) (my_lag)"
    assert prom_lag.render_query(query, group="g", topics=["t"], namespace="n") == query


KCG = {"apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup",
       "metadata": {"name": "orders", "namespace": "shop", "uid": "1234-abcd"}}


ENV = worker_config.injected_env(models.KafkaConsumerGroupSpec.from_k8s({
    "kafka": {"bootstrapServers": "k:9092"}, "groupId": "orders-workers", "topics": ["orders"],
    "template": {"spec": {}}}), "orders")


def template(containers: list[dict[str, Any]]) -> models.DeploymentTemplate:
    return models.DeploymentTemplate.model_validate({
        "metadata": {"labels": {"app": "orders"}, "annotations": {"team": "payments"}},
        "spec": {"replicas": 99, "selector": {"matchLabels": {"app": "orders"}},
                 "template": {"metadata": {"labels": {"app": "orders"}}, "spec": {"containers": containers}}},
    })


def test_the_templated_deployment_is_owned_named_after_the_group_and_sized_by_the_operator() -> None:
    manifest = kube_io.templated_deployment(KCG, template([{"name": "w", "image": "w:1"}]), 3, ENV)
    meta = manifest["metadata"]
    assert (meta["name"], meta["namespace"]) == ("orders", "shop")
    assert meta["ownerReferences"] == [{"apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup",
                                        "name": "orders", "uid": "1234-abcd", "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"] == {"app": "orders", pool_contract.LABEL_MANAGED_BY: "lagpilot",
                              pool_contract.LABEL_CONSUMER_GROUP: "orders"}
    assert meta["annotations"] == {"team": "payments"}
    assert manifest["spec"]["replicas"] == 3  # the template's 99 is not the operator's business


def test_every_container_gets_the_pool_contract_env_once_and_keeps_its_own() -> None:
    containers = [
        {"name": "w", "image": "w:1", "env": [{"name": "LOG_LEVEL", "value": "debug"},
                                               {"name": pool_contract.ENV_POOL_CONFIGMAP, "value": "stale"}]},
        {"name": "sidecar", "image": "s:1"},
    ]
    manifest = kube_io.templated_deployment(KCG, template(containers), 1, ENV)
    for container in manifest["spec"]["template"]["spec"]["containers"]:
        names = [e["name"] for e in container["env"]]
        assert names.count(pool_contract.ENV_POOL_CONFIGMAP) == 1 and names.count(pool_contract.ENV_NAMESPACE) == 1
        env = {e["name"]: e for e in container["env"]}
        assert env[pool_contract.ENV_POOL_CONFIGMAP]["value"] == "orders-lagpilot-pool"
        assert env[pool_contract.ENV_NAMESPACE]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    first = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert first["LOG_LEVEL"]["value"] == "debug"


def test_building_the_manifest_leaves_the_spec_model_untouched() -> None:
    source = template([{"name": "w", "image": "w:1"}])
    kube_io.templated_deployment(KCG, source, 5, ENV)
    assert source.spec["replicas"] == 99
    assert "env" not in source.spec["template"]["spec"]["containers"][0]


def test_a_discarded_client_is_replaced_by_a_new_one() -> None:
    pool = kafka_lag.AdminClientPool()
    settings = {"bootstrap.servers": "127.0.0.1:1"}
    first = pool.get(settings)
    assert pool.get(settings) is first
    pool.discard(settings)
    assert len(pool) == 0
    assert pool.get(settings) is not first




@pytest.mark.parametrize(("error", "retire"), [
    (kafka_lag.KafkaUnreachable("timed out"), True),
    # After an outage the old client's cached leaders and coordinators fail the offset calls with
    # errors like these while a new client succeeds at once: the client is retired for them too.
    (kafka_lag.LagReadError("reading offsets of group g: Broker: Not leader or follower"), True),
    (kafka_lag.LagReadError("reading offsets of group g: Broker: Coordinator not available"), True),
    # A new client would fail the same way: keep the connection.
    (kafka_lag.TopicMissing("topic t does not exist"), False),
    (kafka_lag.KafkaAuthenticationFailed("refused the login"), False),
    (kafka_lag.KafkaAuthorizationFailed("not authorized"), False),
    (kafka_lag.KafkaTlsVerificationFailed("verify failed"), False),
    (kafka_lag.SecretKeyUnreadable("Secret s key k is not PEM"), False),
])
def test_only_failures_the_cluster_recovers_from_retire_the_client(error: kafka_lag.LagReadError,
                                                                  retire: bool) -> None:
    assert kafka_lag.retire_client_after(error) is retire


def test_the_group_type_the_broker_reports_names_the_protocol() -> None:
    assert kafka_lag.group_protocol(ConsumerGroupType.CONSUMER) == "consumer"
    assert kafka_lag.group_protocol(ConsumerGroupType.CLASSIC) == "classic"
    assert kafka_lag.group_protocol(ConsumerGroupType.UNKNOWN) is None  # e.g. a group with no members yet

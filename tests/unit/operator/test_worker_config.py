"""The CR as the workers' one source of truth: what template mode injects (read back by the real worker
CLI), the WorkerConfigMismatch comparison, and the decoding of only the Secret keys the CR references."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_contract import naming
from lagpilot_operator.kafka import kafka_lag
from lagpilot_operator.kube import kube_io, models, worker_config
from lagpilot_worker.cli import build

SECRETS = {("kafka-user", "username"): "svc-orders", ("kafka-user", "password"): "pa55word",
           ("cluster-ca", "ca.crt"): "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
           ("client", "tls.crt"): "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
           ("client", "tls.key"): "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"}


def spec(**changes: Any) -> models.KafkaConsumerGroupSpec:
    data: dict[str, Any] = {"kafka": {"bootstrapServers": "k-0:9093,k-1:9093"}, "groupId": "orders-workers",
                            "topics": ["orders", "refunds"], "template": {"spec": {}}}
    data.update(changes)
    return models.KafkaConsumerGroupSpec.from_k8s(data)


SECURE = {"bootstrapServers": "k-0:9093,k-1:9093", "security": {
    "protocol": "SASL_SSL",
    "sasl": {"mechanism": "SCRAM-SHA-512", "usernameSecretRef": {"name": "kafka-user", "key": "username"},
             "passwordSecretRef": {"name": "kafka-user", "key": "password"}},
    "tls": {"caSecretRef": {"name": "cluster-ca", "key": "ca.crt"},
            "certSecretRef": {"name": "client", "key": "tls.crt"},
            "keySecretRef": {"name": "client", "key": "tls.key"}}}}


def kubelet_env(env: list[dict[str, Any]]) -> dict[str, str]:
    """A container's env as the kubelet fills it in: literal values, Secret keys, the namespace field."""
    resolved = {}
    for item in env:
        assert ("value" in item) != ("valueFrom" in item), item  # the API server refuses both or neither
        if "value" in item:
            resolved[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            resolved[item["name"]] = SECRETS[(ref["name"], ref["key"])]
        else:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
            resolved[item["name"]] = "shop"
    return resolved


@pytest.fixture
def handler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "wc_handlers.py").write_text("def handle(record):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "wc_handlers:handle"


# --- injection -----------------------------------------------------------------------------------------------


def test_secret_settings_reach_the_worker_only_as_secret_key_refs() -> None:
    env = worker_config.injected_env(spec(kafka=SECURE), "orders")
    by_name = {e["name"]: e for e in env}
    assert by_name["LAGPILOT_KAFKA_SASL_PASSWORD"] == {
        "name": "LAGPILOT_KAFKA_SASL_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "kafka-user", "key": "password"}}}
    for setting in ("SASL_USERNAME", "SASL_PASSWORD", "SSL_CA_PEM", "SSL_CERTIFICATE_PEM", "SSL_KEY_PEM"):
        assert "value" not in by_name[f"LAGPILOT_KAFKA_{setting}"]
    literal_values = " ".join(str(e.get("value")) for e in env)
    assert not any(secret in literal_values for secret in SECRETS.values())
    assert by_name["LAGPILOT_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert by_name["LAGPILOT_KAFKA_SASL_MECHANISM"]["value"] == "SCRAM-SHA-512"
    assert len(by_name) == len(env)  # every name once


def test_the_worker_cli_reads_back_exactly_what_the_cr_says(handler_module: str) -> None:
    cr = spec(kafka=SECURE, policy={"lagThreshold": {"offsetResetPolicy": "latest"}},
              deadLetter={"topic": "orders-failed.dlq", "retryTiers": [{"delaySeconds": 10}, {"delaySeconds": 60}]})
    env = kubelet_env(worker_config.injected_env(cr, "orders"))
    config, _, source, _ = build([], {**env, "LAGPILOT_HANDLER": handler_module})
    assert config.bootstrap_servers == cr.kafka.bootstrap_servers
    assert (config.group_id, config.topics) == ("orders-workers", ["orders", "refunds"])
    settings = config.consumer_settings()
    assert settings["auto.offset.reset"] == "latest"
    assert settings["security.protocol"] == "SASL_SSL" and settings["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (settings["sasl.username"], settings["sasl.password"]) == ("svc-orders", "pa55word")
    assert settings["ssl.ca.pem"] == SECRETS[("cluster-ca", "ca.crt")]
    assert settings["ssl.certificate.pem"] == SECRETS[("client", "tls.crt")]
    assert settings["ssl.key.pem"] == SECRETS[("client", "tls.key")]
    # The operator reads lag with the same settings the workers consume with.
    operator_settings = kafka_lag.client_settings(cr.kafka, {f"{n}/{k}": v for (n, k), v in SECRETS.items()})
    assert {k: settings[k] for k in operator_settings} == operator_settings
    assert config.dead_letter_enabled and config.dlq_topic == "orders-failed.dlq"
    assert config.retry.tier_delays_seconds == (10.0, 60.0)
    assert config.retry_topics == naming.retry_topics("orders-workers", 2, "orders-failed.dlq")
    assert getattr(source, "name", None) == "orders-lagpilot-pool"


@pytest.mark.parametrize("dead_letter", [None, {"enabled": False}])
def test_without_an_enabled_dead_letter_the_worker_does_not_dead_letter(handler_module: str,
                                                                        dead_letter: dict[str, Any] | None) -> None:
    cr = spec(**({} if dead_letter is None else {"deadLetter": dead_letter}))
    env = kubelet_env(worker_config.injected_env(cr, "orders"))
    assert env["LAGPILOT_DEAD_LETTER"] == "false"
    config, _, _, _ = build([], {**env, "LAGPILOT_HANDLER": handler_module, "LAGPILOT_DLQ_TOPIC": "stale.dlq"})
    assert not config.dead_letter_enabled and config.dlq_topic is None


def test_the_default_offset_reset_policy_is_injected_as_the_workers_own_default(handler_module: str) -> None:
    env = kubelet_env(worker_config.injected_env(spec(), "orders"))
    assert env["LAGPILOT_KAFKA_AUTO_OFFSET_RESET"] == "earliest"
    without = {k: v for k, v in env.items() if k != "LAGPILOT_KAFKA_AUTO_OFFSET_RESET"}
    config, _, _, _ = build([], {**without, "LAGPILOT_HANDLER": handler_module})
    assert config.consumer_settings()["auto.offset.reset"] == "earliest"


@pytest.mark.parametrize("group_type, share", [("share", True), ("consumer", False), (None, False)])
def test_the_worker_is_a_share_group_member_exactly_for_a_share_group(handler_module: str, group_type: str | None,
                                                                       share: bool) -> None:
    cr = spec(**({} if group_type is None else {"groupType": group_type}))
    env = kubelet_env(worker_config.injected_env(cr, "orders"))
    # Always written, "false" too: a strategic merge would keep a "true" left from a share group.
    assert env["LAGPILOT_SHARE_GROUP"] == ("true" if share else "false")
    config, _, _, _ = build([], {**env, "LAGPILOT_HANDLER": handler_module})
    assert config.share_group is share and config.group_id == "orders-workers"


def test_a_worker_of_the_other_group_type_is_a_mismatch() -> None:
    share = spec(groupType="share")
    consumer_worker = container({**MATCHING, "LAGPILOT_SHARE_GROUP": "false"})
    found = worker_config.mismatch_condition(share, "shop/w", [consumer_worker])
    assert found.status == "True" and "groupType (container worker runs as a consumer-group member" in found.message
    found = worker_config.mismatch_condition(spec(), "shop/w", [container(MATCHING, args=["--share-group"])])
    assert found.status == "True" and "runs as a share-group member, spec.groupType is 'consumer'" in found.message
    agreeing = container({**MATCHING, "LAGPILOT_SHARE_GROUP": "true"})
    assert worker_config.mismatch_condition(share, "shop/w", [agreeing]).status == "False"
    # Not said at all: not compared (it may come from envFrom or the image).
    assert worker_config.mismatch_condition(share, "shop/w", [container(MATCHING)]).status == "False"


def test_the_cr_wins_over_a_containers_own_values_and_other_env_stays() -> None:
    kcg = {"metadata": {"name": "orders", "namespace": "shop", "uid": "u-1"}}
    template = models.DeploymentTemplate.from_k8s({"spec": {"template": {"spec": {"containers": [
        {"name": "w", "image": "w:1", "env": [{"name": "LAGPILOT_GROUP_ID", "value": "someone-else"},
                                               {"name": "LOG_LEVEL", "value": "debug"}]},
        {"name": "sidecar", "image": "s:1"}]}}}})
    cr = spec()
    manifest = kube_io.templated_deployment(kcg, template, 2, worker_config.injected_env(cr, "orders"))
    containers = manifest["spec"]["template"]["spec"]["containers"]
    for container in containers:
        names = [e["name"] for e in container["env"]]
        assert len(names) == len(set(names))
        assert {e["name"]: e.get("value") for e in container["env"]}["LAGPILOT_GROUP_ID"] == "orders-workers"
    assert {"name": "LOG_LEVEL", "value": "debug"} in containers[0]["env"]
    # What template mode wrote is what the mismatch check then reads.
    assert worker_config.mismatch_condition(cr, "shop/orders", containers).status == "False"


# --- mismatch ------------------------------------------------------------------------------------------------


def container(env: dict[str, str] | None = None, args: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"name": "worker", "image": "w:1", **extra}
    if env is not None:
        found["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if args is not None:
        found["args"] = args
    return found


MATCHING = {"LAGPILOT_BOOTSTRAP_SERVERS": "k-1:9093,k-0:9093", "LAGPILOT_GROUP_ID": "orders-workers",
            "LAGPILOT_TOPICS": "refunds, orders"}


def test_a_worker_that_says_what_the_cr_says_matches_whatever_the_order() -> None:
    found = worker_config.mismatch_condition(spec(), "shop/w", [container(MATCHING)])
    assert (found.status, found.reason) == ("False", "WorkerConfigMatches")


@pytest.mark.parametrize(("changes", "fields"), [
    ({"LAGPILOT_GROUP_ID": "orders"}, ["groupId"]),
    ({"LAGPILOT_TOPICS": "orders"}, ["topics"]),
    ({"LAGPILOT_BOOTSTRAP_SERVERS": "other:9092"}, ["bootstrapServers"]),
    ({"LAGPILOT_GROUP_ID": "x", "LAGPILOT_TOPICS": "y", "LAGPILOT_BOOTSTRAP_SERVERS": "z:1"},
     ["groupId", "topics", "bootstrapServers"]),
])
def test_each_disagreeing_field_is_named(changes: dict[str, str], fields: list[str]) -> None:
    found = worker_config.mismatch_condition(spec(), "shop/w", [container({**MATCHING, **changes})])
    assert (found.status, found.reason) == ("True", "WorkerConfigMismatch")
    named = [f for f in ("groupId", "topics", "bootstrapServers") if f"{f} (container worker" in found.message]
    assert named == fields


def test_flags_win_over_env_as_in_the_worker_cli() -> None:
    args = ["--handler", "m:h", "--group", "orders-workers", "--topic=orders", "--topic", "refunds",
            "--bootstrap-servers=k-0:9093,k-1:9093"]
    env = {"LAGPILOT_GROUP_ID": "stale", "LAGPILOT_TOPICS": "stale", "KAFKA_BOOTSTRAP_SERVERS": "stale:1"}
    assert worker_config.mismatch_condition(spec(), "shop/w", [container(env, args)]).status == "False"
    wrong = worker_config.mismatch_condition(spec(), "shop/w", [container(MATCHING, ["--group", "other"])])
    assert wrong.status == "True" and "'other'" in wrong.message


def test_kafka_bootstrap_servers_is_read_when_the_lagpilot_name_is_absent() -> None:
    found = worker_config.declared_config(container({"KAFKA_BOOTSTRAP_SERVERS": "a:1"}))
    assert found.bootstrap_servers == "a:1"


def test_values_the_operator_cannot_read_are_not_compared() -> None:
    unreadable = {"name": "worker", "env": [
        {"name": "LAGPILOT_GROUP_ID", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "group"}}},
        {"name": "LAGPILOT_TOPICS", "value": "$(TOPICS)"}]}
    declared = worker_config.declared_config(unreadable)
    assert (declared.group_id, declared.topics, declared.bootstrap_servers) == (None, None, None)
    found = worker_config.mismatch_condition(spec(), "shop/w", [unreadable, container()])
    assert (found.status, found.reason) == ("Unknown", "WorkerConfigNotDeclared")


def test_a_sidecar_that_declares_nothing_is_ignored() -> None:
    found = worker_config.mismatch_condition(spec(), "shop/w", [container(MATCHING), container(name="proxy")])
    assert found.status == "False" and "worker" in found.message


@given(st.lists(st.sampled_from(["orders", "refunds", "audit"]), min_size=1, max_size=3, unique=True),
       st.sampled_from(["orders-workers", "other"]))
def test_mismatch_exactly_when_the_sets_or_group_differ(topics: list[str], group: str) -> None:
    declared = container({**MATCHING, "LAGPILOT_TOPICS": ",".join(topics), "LAGPILOT_GROUP_ID": group})
    found = worker_config.mismatch_condition(spec(), "shop/w", [declared])
    differs = set(topics) != {"orders", "refunds"} or group != "orders-workers"
    assert (found.status == "True") == differs


# --- Secret decoding -----------------------------------------------------------------------------------------


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


P12 = bytes(range(256))  # not UTF-8, like a PKCS#12 keystore
STRIMZI_CA = {"ca.crt": b64(SECRETS[("cluster-ca", "ca.crt")].encode()), "ca.p12": b64(P12),
              "ca.password": b64(b"changeit")}


def test_only_the_referenced_keys_are_decoded() -> None:
    values = kafka_lag.decode_secret_keys("cluster-ca", STRIMZI_CA, {"ca.crt"}, {"ca.crt"})
    assert values == {"cluster-ca/ca.crt": SECRETS[("cluster-ca", "ca.crt")]}


def test_a_referenced_binary_key_names_the_secret_and_key_but_not_the_value() -> None:
    with pytest.raises(kafka_lag.SecretKeyUnreadable) as caught:
        kafka_lag.decode_secret_keys("cluster-ca", STRIMZI_CA, {"ca.p12"}, {"ca.p12"})
    message = str(caught.value)
    assert "Secret cluster-ca key ca.p12" in message and "UTF-8" in message
    assert caught.value.reason == "SecretKeyUnreadable"


def test_a_pem_setting_needs_pem_text_and_a_password_does_not() -> None:
    with pytest.raises(kafka_lag.SecretKeyUnreadable, match=r"Secret cluster-ca key ca\.password is not PEM"):
        kafka_lag.decode_secret_keys("cluster-ca", STRIMZI_CA, {"ca.password"}, {"ca.password"})
    assert kafka_lag.decode_secret_keys("cluster-ca", STRIMZI_CA, {"ca.password"}) == {
        "cluster-ca/ca.password": "changeit"}
    assert "changeit" not in repr(kafka_lag.SecretKeyUnreadable("Secret cluster-ca key ca.password is not PEM"))


def test_the_tls_references_are_the_pem_ones() -> None:
    connection = models.KafkaConnection.from_k8s(SECURE)
    assert sorted(kafka_lag.pem_secret_refs(connection)) == [("client", "tls.crt"), ("client", "tls.key"),
                                                            ("cluster-ca", "ca.crt")]
    assert set(kafka_lag.pem_secret_refs(connection)) < set(kafka_lag.secret_refs(connection))


def test_the_declared_commit_interval_is_read_as_the_worker_cli_reads_it(handler_module: str) -> None:
    # The policy's committed-offset floor for a time-lag target follows the longest interval a container
    # declares; the worker's own CLI reads the same flag and env (flags win), so the two cannot disagree.
    by_env = container({**MATCHING, "LAGPILOT_COMMIT_INTERVAL_SECONDS": "5"})
    by_flag = container(MATCHING, ["--commit-interval", "2.5"])
    both = container({**MATCHING, "LAGPILOT_COMMIT_INTERVAL_SECONDS": "5"}, ["--commit-interval=0.1"])
    declared = [worker_config.declared_config(c).commit_interval_seconds for c in (by_env, by_flag, both)]
    assert declared == [5.0, 2.5, 0.1]
    for worker in (by_env, by_flag, both):
        env = {item["name"]: item["value"] for item in worker["env"]}
        config, *_ = build(worker.get("args", []), {**env, "LAGPILOT_HANDLER": handler_module})
        assert config.commit_interval_seconds == worker_config.declared_config(worker).commit_interval_seconds
    assert worker_config.declared_commit_interval([by_env, by_flag]) == 5.0
    assert worker_config.declared_commit_interval([container(MATCHING)]) is None  # the worker's default
    unreadable = container({**MATCHING, "LAGPILOT_COMMIT_INTERVAL_SECONDS": "$(OTHER)"})
    assert worker_config.declared_commit_interval([unreadable, container(MATCHING, ["--commit-interval", "-1"])]) \
        is None

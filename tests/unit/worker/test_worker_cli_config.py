"""The CLI turns flags and env into a WorkerConfig; Kafka settings keep librdkafka's names."""

from __future__ import annotations

from pathlib import Path

import pytest

from lagpilot_worker.cli import build, kafka_settings, value_deserializer
from lagpilot_worker.config import GroupProtocol, WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.poolsize import ConfigMapPoolSize, FixedPoolSize


@pytest.fixture
def handler_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "clitest_handlers.py").write_text(
        "def handle(record):\n    pass\n\n"
        "def classify(exc):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "clitest_handlers"


def test_flags(handler_module: str, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config, handler, source, level = build(
        ["--handler", f"{handler_module}:handle", "--bootstrap-servers", "b:9092", "--group", "orders",
         "--topic", "a,b", "--topic", "c", "--ordering", "partition", "--pool-size", "12",
         "--retry-delays", "10, 60", "--retry-attempts", "5", "--dlq-topic", "custom.dlq",
         "--breaker-max-consecutive", "7", "--breaker-cooldown", "0", "--value-deserializer", "json",
         "--dead-letter-write-attempts", "2",
         "--classifier", f"{handler_module}:classify",
         "--kafka-config", "security.protocol=SASL_SSL", "--kafka-config-file", f"sasl.password={secret}",
         "--http-port", "-1", "--log-level", "debug", "--offset-metadata-max-bytes", "1024"], env={})
    assert isinstance(config, WorkerConfig)
    assert config.topics == ["a", "b", "c"] and config.group_id == "orders"
    assert config.ordering is OrderingMode.PARTITION and config.pool_size == 12
    assert config.retry.tier_delays_seconds == (10.0, 60.0) and config.retry.attempts_in_place == 5
    assert config.dlq_topic == "custom.dlq"
    assert config.retry_topics == ["custom.retry.1", "custom.retry.2"]     # same rule as the operator
    assert config.breaker.max_consecutive == 7 and config.breaker.cooldown_seconds == 0
    assert config.write_retry.attempts_before_pause == 2
    assert config.http_port is None and level == "debug"
    assert config.offset_metadata_max_bytes == 1024
    assert config.value_deserializer is not None and config.value_deserializer(b'{"a": 1}') == {"a": 1}
    assert config.classifier is not None and handler.__name__ == "handle"
    assert isinstance(source, FixedPoolSize) and source.size == 12
    settings = config.consumer_settings()
    assert settings["security.protocol"] == "SASL_SSL" and settings["sasl.password"] == "s3cret"
    # Guarantees the user cannot switch off by accident:
    assert settings["enable.auto.commit"] is False and settings["enable.auto.offset.store"] is False
    assert settings["partition.assignment.strategy"] == "cooperative-sticky"
    producer = config.producer_settings()
    assert producer["sasl.password"] == "s3cret" and "group.id" not in producer


def test_env_only(handler_module: str) -> None:
    env = {"LAGPILOT_HANDLER": f"{handler_module}:handle", "KAFKA_BOOTSTRAP_SERVERS": "k:1",
           "LAGPILOT_GROUP_ID": "g", "LAGPILOT_TOPICS": "t1, t2", "LAGPILOT_POOL_SIZE": "3",
           "LAGPILOT_POOL_CONFIGMAP": "orders-lagpilot-pool", "LAGPILOT_NAMESPACE": "shop",
           "LAGPILOT_RETRY_DELAYS": "10,60", "LAGPILOT_DEAD_LETTER": "true", "LAGPILOT_BREAKER": "false",
           "LAGPILOT_DEAD_LETTER_WRITE_ATTEMPTS": "9",
           "LAGPILOT_KAFKA_SASL_USERNAME": "svc", "LAGPILOT_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
    config, _, source, _ = build([], env=env)
    assert config.topics == ["t1", "t2"] and config.pool_size == 3 and config.group_id == "g"
    assert config.dlq_topic == "g.dlq" and config.retry_topics == ["g.retry.1", "g.retry.2"]
    assert not config.breaker.enabled and config.write_retry.attempts_before_pause == 9
    assert config.offset_metadata_max_bytes == 4096       # the broker's default offset.metadata.max.bytes
    assert build([], env={**env, "LAGPILOT_OFFSET_METADATA_MAX_BYTES": "0"})[0].offset_metadata_max_bytes == 0
    assert isinstance(source, ConfigMapPoolSize)
    assert (source.name, source.namespace) == ("orders-lagpilot-pool", "shop")
    assert config.kafka_config == {"sasl.username": "svc", "security.protocol": "SASL_PLAINTEXT"}


def test_missing_required_settings_fail_clearly(handler_module: str) -> None:
    with pytest.raises(SystemExit):
        build(["--handler", f"{handler_module}:handle", "--group", "g", "--topic", "t"], env={})
    with pytest.raises(SystemExit):
        build(["--handler", f"{handler_module}:handle", "--bootstrap-servers", "b", "--group", "g", "--topic", "t",
               "--pool-configmap", "x"], env={})


def test_kafka_settings_precedence(tmp_path: Path) -> None:
    file = tmp_path / "ca"
    file.write_text("from-file")
    settings = kafka_settings(["ssl.ca.location=/flag"], [f"sasl.password={file}"],
                              {"LAGPILOT_KAFKA_SSL_CA_LOCATION": "/env", "LAGPILOT_KAFKA_SASL_PASSWORD": "env",
                               "OTHER": "x"})
    assert settings == {"ssl.ca.location": "/flag", "sasl.password": "from-file"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        kafka_settings(["no-equals"], [], {})


def test_value_deserializers() -> None:
    assert value_deserializer("bytes") is None
    text = value_deserializer("text")
    assert text is not None and text(b"h\xc3\xa9") == "hé" and text(None) is None
    custom = value_deserializer("json:loads")
    assert custom is not None and custom(b"[1]") == [1]


@pytest.mark.parametrize(("argv", "env", "enabled"), [
    ([], {}, False),                                                   # like a KafkaConsumerGroup without deadLetter
    (["--dlq-topic", "x.dlq"], {}, True),                              # naming a DLQ asks for one
    ([], {"LAGPILOT_DLQ_TOPIC": "x.dlq"}, True),
    ([], {"LAGPILOT_DEAD_LETTER": "true"}, True),
    ([], {"LAGPILOT_DEAD_LETTER": "false", "LAGPILOT_DLQ_TOPIC": "x.dlq"}, False),
    (["--dead-letter"], {"LAGPILOT_DEAD_LETTER": "false"}, True),      # a flag wins over env
    (["--no-dead-letter", "--dlq-topic", "x.dlq"], {}, False),
])
def test_dead_lettering_is_off_unless_asked_for(handler_module: str, argv: list[str], env: dict[str, str],
                                                enabled: bool) -> None:
    base = ["--handler", f"{handler_module}:handle", "--bootstrap-servers", "b:1", "--group", "g", "--topic", "t"]
    config, _, _, _ = build(base + argv, env=env)
    assert config.dead_letter_enabled is enabled
    assert (config.dlq_topic is not None) is enabled
    assert WorkerConfig(bootstrap_servers="b:1", group_id="g", topics=["t"]).dlq_topic is None  # library default


def test_the_worker_default_offset_reset_is_the_crds_offset_reset_policy_default() -> None:
    from lagpilot_operator.kube import models

    default = models.LagThresholdPolicy().offset_reset_policy
    assert WorkerConfig(bootstrap_servers="b:1", group_id="g", topics=["t"]).consumer_settings()[
        "auto.offset.reset"] == default == "earliest"


def test_group_protocol_consumer_sends_no_client_side_assignor(handler_module: str) -> None:
    base = ["--handler", f"{handler_module}:handle", "--bootstrap-servers", "b:1", "--group", "g", "--topic", "t"]
    classic = build(base, env={})[0]
    assert classic.group_protocol is GroupProtocol.CLASSIC
    assert classic.consumer_settings()["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.protocol" not in classic.consumer_settings()
    for config in (build([*base, "--group-protocol", "consumer"], env={})[0],
                   build(base, env={"LAGPILOT_GROUP_PROTOCOL": "consumer"})[0]):
        settings = config.consumer_settings()
        # librdkafka refuses partition.assignment.strategy together with group.protocol=consumer.
        assert settings["group.protocol"] == "consumer" and "partition.assignment.strategy" not in settings
        assert settings["enable.auto.commit"] is False and settings["enable.auto.offset.store"] is False
        assert "group.protocol" not in config.producer_settings()


@pytest.mark.parametrize("setting", ["session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"])
def test_classic_only_settings_with_the_consumer_protocol_are_refused_by_name(
        handler_module: str, setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build(["--handler", f"{handler_module}:handle", "--bootstrap-servers", "b:1", "--group", "g", "--topic", "t",
               "--group-protocol", "consumer", "--kafka-config", f"{setting}=10000"], env={})
    error = capsys.readouterr().err
    assert setting in error and "group.consumer." in error     # what to set on the broker instead
    with pytest.raises(ValueError, match="disagrees"):
        WorkerConfig(bootstrap_servers="b:1", group_id="g", topics=["t"], kafka_config={"group.protocol": "consumer"})


def test_share_group_mode_from_flags_or_env(handler_module: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--handler", f"{handler_module}:handle", "--bootstrap-servers", "b:1", "--group", "g", "--topic", "t",
            "--kafka-config", "security.protocol=SSL"]
    assert build(base, env={})[0].share_group is False
    for config in (build([*base, "--share-group", "--share-max-deliveries", "3", "--share-batch-seconds", "9"],
                         env={})[0],
                   build(base, env={"LAGPILOT_SHARE_GROUP": "true", "LAGPILOT_SHARE_MAX_DELIVERIES": "3",
                                    "LAGPILOT_SHARE_BATCH_SECONDS": "9"})[0]):
        assert config.share_group is True and config.share_max_deliveries == 3 and config.share_batch_seconds == 9
        settings = config.share_consumer_settings()
        # Only what a ShareConsumer takes: the cluster's and security settings, explicit acknowledgement.
        assert settings == {"bootstrap.servers": "b:1", "group.id": "g", "security.protocol": "SSL",
                            "share.acknowledgement.mode": "explicit"}
    with pytest.raises(SystemExit):
        build([*base, "--share-group", "--retry-delays", "5,30"], env={})
    assert "redelivery" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build([*base, "--share-group", "--share-max-deliveries", "11"], env={})
    assert "share_max_deliveries" in capsys.readouterr().err

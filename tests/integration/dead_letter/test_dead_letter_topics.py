"""Topic lifecycle on the real broker: create, restore drifted configs, grow partitions, refuse
what Kafka cannot do, deletion policy, authorization errors as a condition."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourcePatternType,
    ResourceType,
)
from dead_letter_support import partition_count, topic_level_configs

from lagpilot_contract.naming import dead_letter_topic, retry_topic
from lagpilot_operator.kafka.dead_letter import (
    DeadLetterOutcome,
    delete_dead_letter_topics,
    reconcile_dead_letter,
)
from support import wait_for

pytestmark = pytest.mark.integration


def spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "enabled": True,
        "partitions": 3,
        "config": {"retention.ms": "3600000", "cleanup.policy": "delete"},
        "retryTiers": [{"delaySeconds": 10}, {"delaySeconds": 60}],
        "deletionPolicy": "Retain",
    }
    base.update(overrides)
    return base


def reconcile(admin_config: dict[str, str], group: str, dl_spec: dict[str, Any],
              sources: list[str] | None = None, previous: dict[str, Any] | None = None) -> DeadLetterOutcome:
    return reconcile_dead_letter(admin_config, group, sources or [], dl_spec, time.time(),
                                 previous_status=previous)


def topics_of(outcome: DeadLetterOutcome) -> list[dict[str, Any]]:
    assert outcome.status is not None
    topics: list[dict[str, Any]] = outcome.status["topics"]
    return topics


def test_topics_created_with_requested_partitions_and_configs(admin_config: dict[str, str],
                                                              kafka_admin: AdminClient, group_id: str) -> None:
    outcome = reconcile(admin_config, group_id, spec())

    names = [dead_letter_topic(group_id), retry_topic(group_id, 1), retry_topic(group_id, 2)]
    assert [t["name"] for t in topics_of(outcome)] == names
    assert [t["role"] for t in topics_of(outcome)] == ["dlq", "retry", "retry"]
    for name in names:
        assert partition_count(kafka_admin, name) == 3
        assert topic_level_configs(kafka_admin, name) == {"retention.ms": "3600000", "cleanup.policy": "delete"}
    assert all(t["exists"] and t["partitions"] == 3 and t["messages"] == 0
               for t in topics_of(outcome)), outcome
    assert (outcome.condition.type, outcome.condition.status, outcome.condition.reason) == (
        "DeadLetterReady", "True", "Ready")
    assert sorted(e.reason for e in outcome.events) == ["TopicCreated"] * 3

    again = reconcile(admin_config, group_id, spec())
    assert again.events == ()  # converged: nothing to do, nothing to announce


def test_partitions_default_to_the_first_source_topic(admin_config: dict[str, str], kafka_admin: AdminClient,
                                                      group_id: str, create_topic: Callable[..., str]) -> None:
    source = create_topic("src", partitions=4)
    reconcile(admin_config, group_id, spec(partitions=None, retryTiers=[]), sources=[source])
    assert partition_count(kafka_admin, dead_letter_topic(group_id)) == 4


def test_config_changed_by_hand_is_restored(admin_config: dict[str, str], kafka_admin: AdminClient,
                                            group_id: str) -> None:
    reconcile(admin_config, group_id, spec(retryTiers=[]))
    dlq = dead_letter_topic(group_id)
    by_hand = ConfigResource(ResourceType.TOPIC, dlq, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET),
    ])
    for future in kafka_admin.incremental_alter_configs([by_hand]).values():
        future.result(timeout=30)
    assert topic_level_configs(kafka_admin, dlq) == {
        "retention.ms": "1000", "cleanup.policy": "delete", "segment.bytes": "1048576"}

    outcome = reconcile(admin_config, group_id, spec(retryTiers=[]))

    assert topic_level_configs(kafka_admin, dlq) == {"retention.ms": "3600000", "cleanup.policy": "delete"}
    (event,) = outcome.events
    assert event.reason == "TopicConfigSynced"
    assert "retention.ms=3600000" in event.message and "removed segment.bytes" in event.message
    assert outcome.condition.status == "True"


def test_partition_decrease_is_refused_and_increase_applied(admin_config: dict[str, str],
                                                            kafka_admin: AdminClient, group_id: str) -> None:
    reconcile(admin_config, group_id, spec(retryTiers=[]))
    dlq = dead_letter_topic(group_id)

    refused = reconcile(admin_config, group_id, spec(retryTiers=[], partitions=2))
    assert (refused.condition.status, refused.condition.reason) == ("False", "NotSupported")
    assert dlq in refused.condition.message and "decrease" in refused.condition.message
    assert partition_count(kafka_admin, dlq) == 3
    assert topics_of(refused)[0]["partitions"] == 3

    grown = reconcile(admin_config, group_id, spec(retryTiers=[], partitions=5))
    assert (grown.condition.status, grown.condition.reason) == ("True", "Ready")
    assert partition_count(kafka_admin, dlq) == 5
    assert [e.reason for e in grown.events] == ["PartitionsIncreased"]


def test_replication_factor_change_is_refused(admin_config: dict[str, str], group_id: str) -> None:
    reconcile(admin_config, group_id, spec(retryTiers=[]))
    outcome = reconcile(admin_config, group_id, spec(retryTiers=[], replicationFactor=2))
    assert (outcome.condition.status, outcome.condition.reason) == ("False", "NotSupported")
    assert not outcome.kafka_failed  # a refusal is not retried before the interval: asking again changes nothing
    assert "replication factor" in outcome.condition.message


def test_kafka_rejection_surfaces_as_kafka_error(admin_config: dict[str, str], group_id: str) -> None:
    # One broker cannot hold 3 replicas: the create fails and the condition says why.
    outcome = reconcile(admin_config, group_id, spec(retryTiers=[], replicationFactor=3))
    assert (outcome.condition.status, outcome.condition.reason) == ("False", "KafkaError")
    assert "INVALID_REPLICATION_FACTOR" in outcome.condition.message
    assert topics_of(outcome)[0]["exists"] is False


def test_deletion_policy_retain_keeps_topics(admin_config: dict[str, str], kafka_admin: AdminClient,
                                             group_id: str) -> None:
    reconcile(admin_config, group_id, spec())
    result = delete_dead_letter_topics(admin_config, group_id, spec(deletionPolicy="Retain"))
    assert result.deleted == ()
    assert len(result.retained) == 3
    for name in result.retained:
        assert partition_count(kafka_admin, name) == 3


def test_deletion_policy_delete_removes_topics(admin_config: dict[str, str], kafka_admin: AdminClient,
                                               group_id: str) -> None:
    reconcile(admin_config, group_id, spec())
    result = delete_dead_letter_topics(admin_config, group_id, spec(deletionPolicy="Delete"))
    assert set(result.deleted) == {dead_letter_topic(group_id), retry_topic(group_id, 1), retry_topic(group_id, 2)}
    wait_for(lambda: all(partition_count(kafka_admin, n) is None for n in result.deleted), 30,
             "deleted topics gone from metadata")
    # Deleting again is fine (the finalizer may run twice).
    assert delete_dead_letter_topics(admin_config, group_id, spec(deletionPolicy="Delete")).deleted == ()


def test_disabled_dead_letter_is_a_no_op(admin_config: dict[str, str], kafka_admin: AdminClient,
                                         group_id: str) -> None:
    outcome = reconcile(admin_config, group_id, spec(enabled=False))
    assert outcome.status is None
    assert (outcome.condition.status, outcome.condition.reason) == ("True", "Disabled")
    assert partition_count(kafka_admin, dead_letter_topic(group_id)) is None
    assert delete_dead_letter_topics(admin_config, group_id, spec(enabled=False, deletionPolicy="Delete")).deleted == ()


@pytest.fixture
def denied_prefix(kafka_admin: AdminClient, group_id: str, stack: Any) -> Iterator[str]:
    """Deny the SASL user every operation on topics named after the group (ACL set as super user)."""
    principal = f"User:{stack.kafka_sasl_username}"
    binding = AclBinding(ResourceType.TOPIC, group_id, ResourcePatternType.PREFIXED, principal, "*",
                         AclOperation.ALL, AclPermissionType.DENY)
    for future in kafka_admin.create_acls([binding]).values():
        future.result(timeout=30)
    yield group_id
    acl_filter = AclBindingFilter(ResourceType.TOPIC, group_id, ResourcePatternType.PREFIXED, principal, "*",
                                  AclOperation.ALL, AclPermissionType.DENY)
    for future in kafka_admin.delete_acls([acl_filter]).values():
        future.result(timeout=30)


def test_authorization_failure_is_a_condition_with_the_cause(stack: Any, denied_prefix: str) -> None:
    sasl_config = {
        "bootstrap.servers": stack.kafka_sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": stack.kafka_sasl_username,
        "sasl.password": stack.kafka_sasl_password,
    }
    outcome = reconcile(sasl_config, denied_prefix, spec(retryTiers=[]))
    assert (outcome.condition.status, outcome.condition.reason) == ("False", "AuthorizationFailed")
    assert outcome.kafka_failed  # the operator looks again on the next poll
    assert "TOPIC_AUTHORIZATION_FAILED" in outcome.condition.message
    assert dead_letter_topic(denied_prefix) in outcome.condition.message

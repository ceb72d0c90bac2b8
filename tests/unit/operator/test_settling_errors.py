"""Which Kafka errors the offsets read waits out: the ones a fresh or moving partition leader answers."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from lagpilot_operator.kafka.topics import is_settling


@pytest.mark.parametrize("code", [
    KafkaError.UNKNOWN_LEADER_EPOCH,  # seen in CI on a DLQ listed right after its creation
    KafkaError.FENCED_LEADER_EPOCH,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.OFFSET_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
])
def test_leadership_errors_are_waited_out(code: int) -> None:
    assert is_settling(KafkaError(code))


def test_errors_librdkafka_marks_retriable_are_waited_out() -> None:
    assert is_settling(KafkaError(KafkaError.REQUEST_TIMED_OUT, retriable=True))


@pytest.mark.parametrize("code", [
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError.INVALID_REQUEST,
])
def test_errors_that_waiting_does_not_mend_fail_at_once(code: int) -> None:
    assert not is_settling(KafkaError(code))


def test_no_kafka_error_is_not_settling() -> None:
    assert not is_settling(None)

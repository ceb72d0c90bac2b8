"""Scenario 4, bad input: failing handlers, malformed records and invalid edits of the resource.

* A share of the ids fail on every attempt: retried in place, then through the retry tier, then
  dead-lettered (`retries-exhausted`); another share fails once and succeeds on the in-place retry.
* Records that are not JSON cannot be decoded: dead-lettered at once as poison pills.
* status.deadLetter shows the DLQ's true depth.
* Edits that break the schema's rules are rejected by the API server with the rule's message, and the
  running group does not notice (same generation, same Deployment, processing goes on).
"""

from __future__ import annotations

import json
import time
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from e2e.handlers import fails_always, fails_once
from e2e.harness import Group, Scenario, finish_load
from e2e.loadgen import constant
from lagpilot_contract import headers as h
from lagpilot_contract.naming import dead_letter_topic, retry_topic
from support import wait_for

PARTITIONS = 2
ALWAYS_PERCENT = 4
ONCE_PERCENT = 6
MALFORMED = 25
RATE = 80
RETRY_DELAY_SECONDS = 2
SECONDS = 30

INVALID_EDITS: list[tuple[str, dict[str, Any], str]] = [
    ("replicas.min > max", {"spec": {"replicas": {"min": 5, "max": 2}}},
     "replicas.min must be less than or equal to replicas.max"),
    ("pool.initial > pool.max", {"spec": {"pool": {"initial": 9}}},
     "pool sizes must satisfy pool.min <= pool.initial <= pool.max"),
    ("template and scaleTargetRef", {"spec": {"scaleTargetRef": {"name": "other"}}},
     "set exactly one of spec.scaleTargetRef"),
    ("unknown policy mode", {"spec": {"policy": {"mode": "fastest"}}}, "Unsupported value"),
    ("poll interval 0", {"spec": {"lag": {"pollIntervalSeconds": 0}}}, "should be greater than or equal to 1"),
]


def test_failures_go_through_retries_to_the_dlq_and_invalid_edits_are_rejected(scenario: Scenario) -> None:
    topic = scenario.make_topic("bad", PARTITIONS)
    group = scenario.create_group(
        topic=topic, cost_ms=10, replicas_min=1, replicas_max=2, pool_min=1, pool_initial=2, pool_max=4,
        poll_seconds=2,
        dead_letter={"enabled": True, "retryTiers": [{"delaySeconds": RETRY_DELAY_SECONDS}],
                     "deletionPolicy": "Delete"},
        worker_extra_env={"E2E_FAIL_ALWAYS_PERCENT": str(ALWAYS_PERCENT), "E2E_FAIL_ONCE_PERCENT": str(ONCE_PERCENT),
                          "LAGPILOT_RETRY_ATTEMPTS": "2", "LAGPILOT_RETRY_BACKOFF_SECONDS": "0.05",
                          # The tiers' delays, as the worker must be told them (the DLQ name it derives itself).
                          "LAGPILOT_RETRY_DELAYS": str(RETRY_DELAY_SECONDS)})
    dlq, retry = dead_letter_topic(group.name), retry_topic(group.name, 1)
    wait_for(lambda: bool((_dlq_status(group, dlq) or {}).get("exists")), 60,
             f"the operator to create {dlq} and report it")
    scenario.wait_ready(group)
    processed_ledger = scenario.ledger(group.processed_topic)
    dlq_ledger = scenario.ledger(dlq)
    load = scenario.load(topic, constant(RATE, SECONDS))
    malformed_keys = _produce_malformed(scenario.bootstrap, topic)

    generation_before = _generation(scenario, group)
    deployment_before = group.watch.deployment_name
    for what, patch, message in INVALID_EDITS:
        result = scenario.kubectl("patch", "kcg", group.name, "-n", scenario.namespace, "--type=merge",
                                  "-p", json.dumps(patch), check=False)
        assert result.returncode != 0, f"{what}: the API server accepted an invalid edit"
        assert message in result.stderr, f"{what}: expected {message!r} in {result.stderr!r}"
    assert _generation(scenario, group) == generation_before, "a rejected edit changed the spec"

    produced = finish_load(load)
    failing = {i for i in produced.ids if fails_always(i, ALWAYS_PERCENT)}
    recovering = {i for i in produced.ids if fails_once(i, ALWAYS_PERCENT, ONCE_PERCENT)}
    good = [i for i in produced.ids if i not in failing]
    assert failing and recovering, "the id sample should contain both kinds of failures"

    processed = processed_ledger.wait_for(good, 120)
    assert processed.complete, f"successful ids missing: {processed.summary()}"
    dead = dlq_ledger.wait_for([*failing, *malformed_keys], 120)
    assert dead.complete, f"dead letters missing: {dead.summary()}"
    assert not failing & set(processed_ledger.counts), "an id that always fails was reported processed"
    assert not set(dlq_ledger.counts) - failing - set(malformed_keys), "an id that should succeed was dead-lettered"

    kinds = _dlq_failure_kinds(scenario.bootstrap, dlq, dlq_ledger.records)
    assert {kinds[k] for k in malformed_keys} == {h.FAILURE_POISON_PILL}, kinds
    assert {kinds[i] for i in failing} == {h.FAILURE_RETRIES_EXHAUSTED}, kinds

    # The depth in status is the DLQ's real depth (its records, duplicates included).
    depth = dlq_ledger.records
    wait_for(lambda: (_dlq_status(group, dlq) or {}).get("messages") == depth, 60,
             f"status.deadLetter to show {depth} records in {dlq} (last: {_dlq_status(group, dlq)})")
    retry_status = _dlq_status(group, retry)
    assert retry_status is not None and int(retry_status.get("messages") or 0) >= len(failing), retry_status

    assert group.watch.deployment_name == deployment_before
    assert _generation(scenario, group) == generation_before
    print(f"bad input: produced {produced.produced}, failing {len(failing)}, recovering {len(recovering)}, "
          f"malformed {len(malformed_keys)}, DLQ depth {depth}, retry tier depth {retry_status.get('messages')}, "
          f"processed duplicates {processed.duplicates}")


def _produce_malformed(bootstrap: str, topic: str) -> list[str]:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    keys = [f"malformed-{time.time_ns()}-{n}" for n in range(MALFORMED)]
    for key in keys:
        producer.produce(topic, key=key.encode(), value=b"{not json")
    assert producer.flush(30) == 0, "malformed records not acknowledged"
    return keys


def _generation(scenario: Scenario, group: Group) -> int:
    out = scenario.kubectl("get", "kcg", group.name, "-n", scenario.namespace, "-o", "jsonpath={.metadata.generation}")
    return int(out.stdout)


def _dlq_status(group: Group, topic: str) -> dict[str, Any] | None:
    for item in (group.watch.status.get("deadLetter") or {}).get("topics") or []:
        if item.get("name") == topic:
            return dict(item)
    return None


def _dlq_failure_kinds(bootstrap: str, topic: str, expected_records: int) -> dict[str, str]:
    """id (JSON value id, else key) → lagpilot.failure.kind header, for every record in the DLQ."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-dlq-reader-{time.time_ns()}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        kinds: dict[str, str] = {}
        seen = 0
        deadline = time.monotonic() + 60
        while seen < expected_records and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() is not None:
                    continue
                seen += 1
                ident = _record_id(message.key(), message.value())
                headers: Any = message.headers()  # a list of (name, bytes) for consumed records
                kinds[ident] = h.header_text(headers, h.FAILURE_KIND) or ""
        return kinds
    finally:
        consumer.close()


def _record_id(key: bytes | None, value: bytes | None) -> str:
    try:
        body = json.loads(value or b"")
        if isinstance(body, dict) and "id" in body:
            return str(body["id"])
    except ValueError:
        pass
    return (key or b"").decode()

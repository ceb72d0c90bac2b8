"""The KafkaConsumerGroup models: examples, cross-field rules, strictness, defaults, conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from lagpilot_operator.core.policy import PolicyConfig
from lagpilot_operator.kube import models
from lagpilot_operator.kube.conditions import (
    conditions_to_k8s,
    get_condition,
    is_true,
    remove_condition,
    set_condition,
)
from lagpilot_operator.kube.models import (
    Condition,
    KafkaConsumerGroup,
    KafkaConsumerGroupSpec,
    KafkaConsumerGroupStatus,
)

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def kcg_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == models.KIND]


def expectations(path: Path) -> dict[str, str]:
    """`# expect: ...` (API server and pydantic) and optional `# expect-pydantic: ...` header lines."""
    found = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# expect"):
            break
        key, _, value = line.removeprefix("# ").partition(":")
        found[key] = value.strip()
    return found


def base_spec(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"kafka": {"bootstrapServers": "kafka:9092"}, "groupId": "g", "topics": ["t"],
                            "scaleTargetRef": {"name": "w"}}
    spec.update(changes)
    return spec


def rejection(spec: dict[str, Any]) -> str | None:
    try:
        KafkaConsumerGroupSpec.from_k8s(spec)
    except ValidationError as error:
        return str(error)
    return None


# --- examples ------------------------------------------------------------------------------------------------


def test_the_example_sets_are_complete() -> None:
    names = {path.name for path in VALID}
    assert {"minimal.yaml", "existing-deployment.yaml", "template-deployment.yaml", "prometheus-source.yaml",
            "sasl-tls.yaml", "dead-letter.yaml"} <= names
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_parses_and_round_trips(path: Path) -> None:
    documents = kcg_documents(path)
    assert documents, f"{path.name} holds no KafkaConsumerGroup"
    for document in documents:
        parsed = KafkaConsumerGroup.model_validate(document)
        # What we would send back to the API server parses to the same object.
        assert KafkaConsumerGroupSpec.from_k8s(parsed.spec.to_k8s()) == parsed.spec


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_with_its_message(path: Path) -> None:
    expected = expectations(path)
    assert "expect" in expected, f"{path.name}: first line must be `# expect: <message substring>`"
    (document,) = kcg_documents(path)
    with pytest.raises(ValidationError) as caught:
        KafkaConsumerGroup.model_validate(document)
    assert expected.get("expect-pydantic", expected["expect"]) in str(caught.value)


def test_every_cross_field_rule_has_an_invalid_example() -> None:
    expected_messages = [expectations(path)["expect"] for path in INVALID]
    for rule in models.all_cel_rules():
        assert any(message in rule.message for message in expected_messages), (
            f"no examples/invalid/*.yaml shows the rule {rule.message!r}")


def test_the_secret_example_holds_no_inline_secret_field() -> None:
    (document,) = kcg_documents(EXAMPLES / "sasl-tls.yaml")
    security = KafkaConsumerGroup.model_validate(document).spec.kafka.security
    assert security is not None and security.sasl is not None and security.tls is not None
    assert security.sasl.password_secret_ref == models.SecretKeyRef(name="kafka-credentials", key="password")
    assert security.tls.ca_secret_ref is not None and security.tls.ca_secret_ref.key == "ca.crt"


# --- cross-field rules at their boundaries -------------------------------------------------------------------

RULE_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("replicas equal", {"replicas": {"min": 3, "max": 3}}, None),
    ("scale to zero allowed", {"replicas": {"min": 0, "max": 3}}, None),
    ("replicas inverted", {"replicas": {"min": 4, "max": 3}}, models.REPLICAS_ORDER.message),
    ("replicas max 0", {"replicas": {"min": 0, "max": 0}}, "greater than or equal to 1"),
    ("replicas over 1000", {"replicas": {"max": 1001}}, "less than or equal to 1000"),
    ("pool all equal", {"pool": {"min": 5, "initial": 5, "max": 5}}, None),
    ("pool initial below min", {"pool": {"min": 5, "initial": 4, "max": 8}}, models.POOL_ORDER.message),
    ("pool initial above max", {"pool": {"min": 1, "initial": 9, "max": 8}}, models.POOL_ORDER.message),
    ("pool only max below default initial", {"pool": {"max": 4}}, models.POOL_ORDER.message),
    ("pool over 1024", {"pool": {"max": 1025}}, "less than or equal to 1024"),
    ("template instead of target", {"scaleTargetRef": None, "template": {"spec": {}}}, None),
    ("no target", {"scaleTargetRef": None}, models.EXACTLY_ONE_TARGET.message),
    ("template without spec", {"scaleTargetRef": None, "template": {}}, "Field required"),
    ("prometheus complete", {"lag": {"source": "prometheus", "prometheus": {"url": "http://p:9090", "query": "q"}}},
     None),
    ("prometheus missing", {"lag": {"source": "prometheus"}}, models.PROMETHEUS_NEEDS_QUERY.message),
    ("prometheus without query", {"lag": {"source": "prometheus", "prometheus": {"url": "http://p:9090"}}},
     "Field required"),
    ("prometheus block with kafka source", {"lag": {"prometheus": {"url": "http://p", "query": "q"}}}, None),
    ("fallback at max", {"fallback": {"mode": "replicas", "replicas": 10}}, None),
    ("fallback above max", {"fallback": {"mode": "replicas", "replicas": 11}}, models.FALLBACK_WITHIN_BOUNDS.message),
    ("fallback below min", {"replicas": {"min": 3, "max": 5}, "fallback": {"mode": "replicas", "replicas": 2}},
     models.FALLBACK_WITHIN_BOUNDS.message),
    ("fallback hold ignores replicas", {"replicas": {"min": 3, "max": 5}, "fallback": {"mode": "hold"}}, None),
    ("fallback never zero", {"replicas": {"min": 0, "max": 5}, "fallback": {"mode": "replicas", "replicas": 0}},
     "greater than or equal to 1"),
    ("tiers ascending", {"deadLetter": {"retryTiers": [{"delaySeconds": 1}, {"delaySeconds": 2}]}}, None),
    ("tiers equal", {"deadLetter": {"retryTiers": [{"delaySeconds": 5}, {"delaySeconds": 5}]}},
     models.RETRY_TIERS_ASCENDING.message),
    ("one tier", {"deadLetter": {"retryTiers": [{"delaySeconds": 5}]}}, None),
    ("dlq elsewhere", {"deadLetter": {"topic": "t.dlq"}}, None),
    ("dlq is a source", {"topics": ["t", "u"], "deadLetter": {"topic": "u"}}, models.DEAD_LETTER_NOT_A_SOURCE.message),
    ("scale up by percent only", {"policy": {"scaleUp": {"minStep": 0, "maxStepPercent": 50}}}, None),
    ("scale down frozen", {"policy": {"scaleDown": {"minStep": 0, "maxStepPercent": 0}}},
     models.SCALE_DOWN_MOVES.message),
    ("sasl ssl", {"kafka": {"bootstrapServers": "k:9093", "security": {
        "protocol": "SASL_SSL", "sasl": {"mechanism": "SCRAM-SHA-256", "usernameSecretRef": {"name": "s", "key": "u"},
                                         "passwordSecretRef": {"name": "s", "key": "p"}}}}}, None),
    ("sasl protocol without sasl", {"kafka": {"bootstrapServers": "k:9093", "security": {"protocol": "SASL_SSL"}}},
     models.SASL_MATCHES_PROTOCOL.message),
    ("tls with ssl", {"kafka": {"bootstrapServers": "k:9093", "security": {
        "protocol": "SSL", "tls": {"certSecretRef": {"name": "c", "key": "tls.crt"},
                                   "keySecretRef": {"name": "c", "key": "tls.key"}}}}}, None),
    ("tls with plaintext", {"kafka": {"bootstrapServers": "k:9093", "security": {"protocol": "PLAINTEXT",
                                                                              "tls": {}}}},
     models.TLS_NEEDS_SSL.message),
    ("key without cert", {"kafka": {"bootstrapServers": "k:9093", "security": {
        "protocol": "SSL", "tls": {"keySecretRef": {"name": "c", "key": "tls.key"}}}}}, models.TLS_CLIENT_PAIR.message),
    ("bootstrap with a space", {"kafka": {"bootstrapServers": "a:1, b:2"}}, "String should match pattern"),
    ("illegal topic name", {"topics": ["or/ders"]}, "String should match pattern"),
    ("topic named .", {"topics": ["."]}, models.TOPIC_NOT_DOTS.message),
    ("topic named ..", {"topics": ["t", ".."]}, models.TOPIC_NOT_DOTS.message),
    ("topic named ... is legal", {"topics": ["..."]}, None),
    ("topic starting with dots is legal", {"topics": ["..t", ".t"]}, None),
    ("dlq topic named ..", {"deadLetter": {"topic": ".."}}, models.TOPIC_NOT_DOTS.message),
    ("redrive with a dead letter", {"deadLetter": {}, "redrive": {"requestId": "r-1"}}, None),
    ("redrive without a dead letter", {"redrive": {"requestId": "r-1"}}, models.REDRIVE_NEEDS_DEAD_LETTER.message),
    ("share group", {"groupType": "share", "deadLetter": {}}, None),
    ("share group with retry tiers", {"groupType": "share", "deadLetter": {"retryTiers": [{"delaySeconds": 5}]}},
     models.SHARE_GROUP_NO_RETRY_TIERS.message),
    ("consumer group with retry tiers", {"groupType": "consumer", "deadLetter": {"retryTiers": [{"delaySeconds": 5}]}},
     None),
    ("unknown group type", {"groupType": "streams"}, "Input should be 'consumer' or 'share'"),
    ("101 topics", {"topics": [f"t{i}" for i in range(101)]}, "at most 100 items"),
    ("secret name not DNS", {"kafka": {"bootstrapServers": "k:9093", "security": {
        "protocol": "SASL_PLAINTEXT", "sasl": {"mechanism": "PLAIN", "usernameSecretRef": {"name": "S_", "key": "u"},
                                               "passwordSecretRef": {"name": "s", "key": "p"}}}}},
     "String should match pattern"),
    ("unknown sasl mechanism", {"kafka": {"bootstrapServers": "k:9093", "security": {
        "protocol": "SASL_PLAINTEXT", "sasl": {"mechanism": "GSSAPI", "usernameSecretRef": {"name": "s", "key": "u"},
                                               "passwordSecretRef": {"name": "s", "key": "p"}}}}},
     "Input should be 'PLAIN', 'SCRAM-SHA-256' or 'SCRAM-SHA-512'"),
    ("scale target of another kind", {"scaleTargetRef": {"kind": "StatefulSet", "name": "w"}},
     "Input should be 'Deployment'"),
]


@pytest.mark.parametrize(("spec_changes", "expected"), [(c, e) for _, c, e in RULE_CASES],
                         ids=[name for name, _, _ in RULE_CASES])
def test_rule(spec_changes: dict[str, Any], expected: str | None) -> None:
    spec = {k: v for k, v in base_spec(**spec_changes).items() if v is not None}
    outcome = rejection(spec)
    if expected is None:
        assert outcome is None, outcome
    else:
        assert outcome is not None and expected in outcome, outcome


@given(st.integers(0, 1000), st.integers(1, 1000))
def test_replica_bounds_are_accepted_exactly_when_ordered(low: int, high: int) -> None:
    outcome = rejection(base_spec(replicas={"min": low, "max": high}))
    assert (outcome is None) == (low <= high)


@given(st.integers(1, 1024), st.integers(1, 1024), st.integers(1, 1024))
def test_pool_bounds_are_accepted_exactly_when_ordered(low: int, initial: int, high: int) -> None:
    outcome = rejection(base_spec(pool={"min": low, "initial": initial, "max": high}))
    assert (outcome is None) == (low <= initial <= high)


@given(st.lists(st.integers(1, 604800), max_size=10))
def test_retry_tiers_are_accepted_exactly_when_strictly_ascending(delays: list[int]) -> None:
    outcome = rejection(base_spec(deadLetter={"retryTiers": [{"delaySeconds": d} for d in delays]}))
    assert (outcome is None) == (delays == sorted(set(delays)))


# --- strictness and names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"replicas": {"min": "1"}}, "Input should be a valid integer"),
    ({"replicas": {"max": 2.0}}, "Input should be a valid integer"),
    ({"paused": "true"}, "Input should be a valid boolean"),
    ({"paused": 1}, "Input should be a valid boolean"),
    ({"deadLetter": {"config": {"retention.ms": 604800000}}}, "Input should be a valid string"),
    ({"groupId": ""}, "at least 1 character"),
    ({"surprise": 1}, "Extra inputs are not permitted"),
    ({"kafka": {"bootstrapServers": "k:1", "security": {"protocol": "SASL_SSL", "sasl": {
        "mechanism": "PLAIN", "username": "u", "usernameSecretRef": {"name": "s", "key": "u"},
        "passwordSecretRef": {"name": "s", "key": "p"}}}}}, "Extra inputs are not permitted"),
])
def test_spec_is_strict(changes: dict[str, Any], message: str) -> None:
    outcome = rejection(base_spec(**changes))
    assert outcome is not None and message in outcome, outcome


def test_snake_case_names_are_accepted_and_camel_case_comes_out() -> None:
    spec = KafkaConsumerGroupSpec.model_validate({
        "kafka": {"bootstrap_servers": "k:9092"}, "group_id": "g", "topics": ["t"],
        "scale_target_ref": {"name": "w"}, "policy": {"scale_up": {"min_step": 2}}})
    assert spec.policy.scale_up.min_step == 2
    dumped = spec.to_k8s()
    assert dumped["policy"]["scaleUp"]["minStep"] == 2 and "scale_up" not in dumped["policy"]
    assert dumped["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"}


def test_from_k8s_reads_read_only_views_and_tuples() -> None:
    # kopf hands out mapping views; strict models would otherwise refuse them.
    body = MappingProxyType({"kafka": MappingProxyType({"bootstrapServers": "k:9092"}), "groupId": "g",
                             "topics": ("a", "b"), "scaleTargetRef": {"name": "w"}})
    assert KafkaConsumerGroupSpec.from_k8s(body).topics == ["a", "b"]


def test_spec_models_are_frozen() -> None:
    spec = KafkaConsumerGroupSpec.from_k8s(base_spec())
    with pytest.raises(ValidationError):
        spec.paused = True  # type: ignore[misc]


def test_defaults_match_the_design() -> None:
    spec = KafkaConsumerGroupSpec.from_k8s(base_spec())
    assert (spec.replicas.min, spec.replicas.max) == (1, 10)
    assert (spec.pool.min, spec.pool.initial, spec.pool.max) == (1, 8, 64)
    assert (spec.lag.source, spec.lag.poll_interval_seconds, spec.lag.prometheus) == ("kafka", 5, None)
    assert spec.policy.mode == "drainTime" and spec.policy.cooldown_seconds == 0
    up, down = spec.policy.scale_up, spec.policy.scale_down
    assert (up.stabilization_seconds, up.max_step_percent, up.min_step, up.period_seconds) == (0, 100, 4, 5)
    assert (down.stabilization_seconds, down.max_step_percent, down.min_step, down.period_seconds) == (120, 25, 1, 30)
    threshold = spec.policy.lag_threshold
    # earliest: the worker's own auto.offset.reset default (docs/operator.md, "One source of truth").
    assert (threshold.lag_per_consumer, threshold.offset_reset_policy) == (10, "earliest")
    assert (spec.policy.drain_time.target_drain_seconds, spec.policy.drain_time.headroom_percent) == (60, 20)
    assert spec.policy.drain_time.target_time_lag_seconds is None
    assert (spec.fallback.mode, spec.fallback.replicas, spec.fallback.failure_threshold) == ("hold", 1, 3)
    assert spec.paused is False and spec.dead_letter is None and spec.redrive is None
    dead_letter = KafkaConsumerGroupSpec.from_k8s(base_spec(deadLetter={})).dead_letter
    assert dead_letter is not None and dead_letter.enabled and dead_letter.deletion_policy == "Retain"
    assert dead_letter.retry_tiers == [] and dead_letter.config == {} and dead_letter.topic is None


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_policy_module_reads_the_same_values_from_a_sparse_and_a_full_spec(path: Path) -> None:
    # The policy module has its own fallbacks for absent fields; they must agree with the models' defaults.
    for document in kcg_documents(path):
        full = KafkaConsumerGroupSpec.from_k8s(document["spec"]).to_k8s()
        assert PolicyConfig.from_spec(document["spec"]) == PolicyConfig.from_spec(full)


# --- status --------------------------------------------------------------------------------------------------

FULL_STATUS: dict[str, Any] = {
    "observedGeneration": 3, "totalLag": 1234, "partitions": 12,
    "topPartitions": [{"topic": "orders", "partition": 4, "lag": 900, "timeLagSeconds": 12.5, "verdict": "LAGGING"}],
    "produceRatePerSecond": 120.5, "consumeRatePerSecond": 80.0, "maxTimeLagSeconds": 12.3,
    "meanTimeLagSeconds": 3.1, "desiredReplicas": 4, "currentReplicas": 3, "poolSize": 16,
    "lastScaleTime": "2026-11-21T10:00:00Z", "lastDecision": "scale up 2→4", "consecutiveLagFailures": 0,
    "deadLetter": {"topics": [{"name": "g.dlq", "role": "dlq", "exists": True, "partitions": 3, "messages": 7,
                               "oldestTime": "2026-11-21T09:00:00Z", "newestTime": "2026-11-21T09:59:00Z"}]},
    "redrive": {"requestId": "r-1", "state": "Running", "total": 7, "done": 3, "skipped": 0, "message": "3 of 7",
                "snapshot": [{"partition": 0, "startOffset": 0, "endOffset": 7}]},
    "policyMemory": {"recommendations": [[1.5, 3]], "lastLag": 10},
    "conditions": [{"type": "Ready", "status": "True", "reason": "Scaled", "message": "ok",
                    "lastTransitionTime": "2026-11-21T10:00:00Z", "observedGeneration": 3}],
}


def test_status_round_trips() -> None:
    status = KafkaConsumerGroupStatus.from_k8s(FULL_STATUS)
    assert status.to_k8s() == FULL_STATUS
    assert status.redrive is not None and status.redrive.snapshot[0].end_offset == 7


def test_partial_status_for_a_merge_patch_leaves_out_what_was_not_set() -> None:
    partial = KafkaConsumerGroupStatus(total_lag=5, pool_size=8)
    assert partial.to_k8s(only_set=True) == {"totalLag": 5, "poolSize": 8}
    assert partial.to_k8s()["conditions"] == []  # a full dump would replace the stored conditions


def test_status_reader_tolerates_unknown_fields_and_rejects_bad_times() -> None:
    assert KafkaConsumerGroupStatus.from_k8s({"somethingNew": 1, "totalLag": 3}).total_lag == 3
    with pytest.raises(ValidationError, match="time zone"):
        KafkaConsumerGroupStatus.from_k8s({"lastScaleTime": "2026-11-21T10:00:00"})
    with pytest.raises(ValidationError):
        KafkaConsumerGroupStatus.from_k8s({"lastScaleTime": "yesterday"})


# --- conditions ----------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 21, 10, 0, 0, tzinfo=UTC)
T1 = datetime(2026, 11, 21, 10, 5, 0, tzinfo=UTC)


def test_set_condition_appends_a_new_type() -> None:
    (ready,) = set_condition([], "Ready", "True", "Scaled", "ok", 2, T0)
    assert ready == Condition(type="Ready", status="True", reason="Scaled", message="ok",
                              last_transition_time="2026-11-21T10:00:00Z", observed_generation=2)


@pytest.mark.parametrize(("new_status", "transition"), [("False", "2026-11-21T10:00:00Z"),
                                                        ("True", "2026-11-21T10:05:00Z"),
                                                        ("Unknown", "2026-11-21T10:05:00Z")])
def test_set_condition_keeps_the_transition_time_while_status_is_unchanged(new_status: models.ConditionStatus,
                                                                          transition: str) -> None:
    before = set_condition([], "KafkaReachable", "False", "BrokersUnreachable", "down", 1, T0)
    (after,) = set_condition(before, "KafkaReachable", new_status, "StillDown", "still down", 2, T1)
    assert after.last_transition_time == transition
    assert (after.status, after.reason, after.message, after.observed_generation) == (
        new_status, "StillDown", "still down", 2)


def test_set_condition_keeps_other_conditions_in_place_and_reads_dicts() -> None:
    existing = [{"type": "Ready", "status": "False", "reason": "Starting", "message": "",
                 "lastTransitionTime": "2026-11-21T09:00:00Z"},
                {"type": "Scaling", "status": "False", "reason": "Steady", "message": "",
                 "lastTransitionTime": "2026-11-21T09:00:00Z"}]
    result = set_condition(existing, "Ready", "True", "Scaled", "ok", 4, T0.timestamp())
    assert [c.type for c in result] == ["Ready", "Scaling"]
    assert result[1] == Condition.from_k8s(existing[1])
    assert conditions_to_k8s(result)[0] == {"type": "Ready", "status": "True", "reason": "Scaled", "message": "ok",
                                            "lastTransitionTime": "2026-11-21T10:00:00Z", "observedGeneration": 4}
    assert is_true(result, "Ready") and not is_true(result, "Scaling") and not is_true(result, "TargetFound")
    assert get_condition(result, "Scaling") == result[1]
    assert [c.type for c in remove_condition(result, "Ready")] == ["Scaling"]


def test_set_condition_collapses_duplicate_types() -> None:
    twice = [{"type": "Ready", "status": "True", "reason": "A", "lastTransitionTime": "2026-11-21T09:00:00Z"}] * 2
    assert len(set_condition(twice, "Ready", "True", "B", "", 1, T0)) == 1


@pytest.mark.parametrize("reason", ["", "two words", "Trailing-", "1Digit"])
def test_set_condition_rejects_reasons_that_are_not_one_camel_case_word(reason: str) -> None:
    with pytest.raises(ValueError, match="CamelCase"):
        set_condition([], "Ready", "True", reason, "", 1, T0)


def test_set_condition_refuses_naive_times() -> None:
    with pytest.raises(ValueError, match="naive"):
        set_condition([], "Ready", "True", "Scaled", "", 1, datetime(2026, 1, 1))


@given(st.lists(st.sampled_from(["True", "False", "Unknown"]), min_size=1, max_size=20))
def test_transition_time_moves_exactly_when_status_changes(statuses: list[models.ConditionStatus]) -> None:
    conditions: list[Condition] = []
    for step, status in enumerate(statuses):
        previous = get_condition(conditions, "Ready")
        conditions = set_condition(conditions, "Ready", status, "Checked", f"step {step}", step,
                                   T0.timestamp() + 60 * step)
        current = get_condition(conditions, "Ready")
        assert current is not None and len(conditions) == 1
        changed = previous is None or previous.status != status
        assert (current.last_transition_time == models.rfc3339(T0.timestamp() + 60 * step)) == changed


# --- the time-lag target as a duration ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("200ms", 0.2), ("1.5s", 1.5), ("1m30s", 90.0), ("2h", 7200.0),
                                               ("1ms", 0.001), ("0.5ms", 0.0005), ("1h0m0.25s", 3600.25)])
def test_duration_strings_read_as_kubernetes_writes_them(text: str, seconds: float) -> None:
    assert models.duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0.2", "200", "ms", "1.s", "-1s", "1 s", "1d", "200us", ""])
def test_duration_strings_without_a_unit_or_with_others_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        models.duration_seconds(text)


def test_time_lag_target_from_either_field_never_both() -> None:
    def drain(**fields: Any) -> models.DrainTimePolicy:
        return KafkaConsumerGroupSpec.from_k8s(base_spec(policy={"drainTime": fields})).policy.drain_time

    assert drain(targetTimeLag="200ms").time_lag_target_seconds == pytest.approx(0.2)
    assert drain(targetTimeLagSeconds=3).time_lag_target_seconds == 3.0
    assert drain().time_lag_target_seconds is None
    assert drain(targetTimeLag="24h").time_lag_target_seconds == 86400.0
    both = rejection(base_spec(policy={"drainTime": {"targetTimeLag": "200ms", "targetTimeLagSeconds": 1}}))
    assert both is not None and models.TIME_LAG_ONE_FORM.message in both
    for out_of_range in ("0ms", "0.5ms", "24h1s", "25h"):
        message = rejection(base_spec(policy={"drainTime": {"targetTimeLag": out_of_range}}))
        assert message is not None and models.TIME_LAG_IN_RANGE.message in message, out_of_range
    # The policy reads the same spec as a float number of seconds.
    config = PolicyConfig.from_spec({"policy": {"drainTime": {"targetTimeLag": "1.5s"}}})
    assert config.drain_time.target_time_lag_seconds == 1.5
    assert PolicyConfig.from_spec({"policy": {"drainTime": {"targetTimeLagSeconds": 2}}}
                                  ).drain_time.target_time_lag_seconds == 2.0
    with pytest.raises(ValueError, match="not both"):
        PolicyConfig.from_spec({"policy": {"drainTime": {"targetTimeLag": "1s", "targetTimeLagSeconds": 1}}})
    with pytest.raises(ValueError, match="not a duration"):
        PolicyConfig.from_spec({"policy": {"drainTime": {"targetTimeLag": "0.2"}}})

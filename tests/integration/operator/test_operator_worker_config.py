"""The CR as the workers' one source of truth, a refused scale, and Secrets with binary keys — on the real
API server and broker, with the real operator process.

* template mode: the Deployment the API server stores carries the CR's settings, secrets as references;
* scaleTargetRef: WorkerConfigMismatch turns True naming the field, and False once the Deployment agrees;
* a ValidatingAdmissionPolicy refuses the scale: the condition names it, and once the policy is gone the
  group scales at once — a refused scale did not start the hour-long cooldown;
* a Strimzi-style Secret with a binary `ca.p12` beside the keys the CR uses does not break the resource,
  and a CR that references the binary key gets a condition naming the Secret and the key.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import yaml
from operator_testkit import (
    FAST,
    OperatorProcess,
    apply_kcg,
    backlog,
    condition,
    create_deployment,
    replicas_of,
    status_of,
)

from support import NO_NODE_SELECTOR, wait_for

pytestmark = pytest.mark.integration


def deployment_json(stack: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout))


def condition_is(stack: Any, namespace: str, kcg: str, kind: str, status: str) -> dict[str, Any] | None:
    found = condition(status_of(stack, namespace, kcg), kind)
    return found if found.get("status") == status else None


def apply_binary_secret(stack: Any, namespace: str, name: str, data: dict[str, bytes]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
    stack.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(manifest))


P12 = bytes(range(256))  # not UTF-8, as a PKCS#12 keystore


def test_template_mode_writes_the_cr_into_every_worker_container(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-tmpl", partitions=2), unique_name("g")
    spec = {
        "kafka": {"bootstrapServers": stack.kafka_sasl_bootstrap,
                  "security": {"protocol": "SASL_PLAINTEXT",
                               "sasl": {"mechanism": "PLAIN",
                                        "usernameSecretRef": {"name": "login", "key": "username"},
                                        "passwordSecretRef": {"name": "login", "key": "password"}}}},
        "groupId": group, "topics": [topic],
        "template": {"spec": {"selector": {"matchLabels": {"app": "w"}}, "template": {
            "metadata": {"labels": {"app": "w"}},
            "spec": {"nodeSelector": NO_NODE_SELECTOR, "containers": [
                {"name": "worker", "image": "registry.invalid/worker:1",
                 "env": [{"name": "LAGPILOT_GROUP_ID", "value": "typed-twice"}, {"name": "KEEP", "value": "me"}]},
                {"name": "sidecar", "image": "registry.invalid/sidecar:1"}]}}}},
        **FAST, "deadLetter": {"retryTiers": [{"delaySeconds": 10}]},
    }
    apply_binary_secret(stack, namespace, "login", {"username": stack.kafka_sasl_username.encode(),
                                                     "password": stack.kafka_sasl_password.encode(),
                                                     "ca.p12": P12})
    apply_kcg(stack, namespace, "tmpl", spec)

    def stored_env() -> list[dict[str, dict[str, Any]]] | None:
        found = stack.kubectl("get", "deployment", "tmpl", "-n", namespace, "-o", "json", check=False)
        if found.returncode != 0:
            return None
        containers = json.loads(found.stdout)["spec"]["template"]["spec"]["containers"]
        return [{e["name"]: e for e in c.get("env", [])} for c in containers]

    worker, sidecar = wait_for(stored_env, 60, "the templated Deployment")
    for env in (worker, sidecar):
        assert env["LAGPILOT_BOOTSTRAP_SERVERS"]["value"] == stack.kafka_sasl_bootstrap
        assert env["LAGPILOT_GROUP_ID"]["value"] == group  # the CR wins over the template's own value
        assert env["LAGPILOT_TOPICS"]["value"] == topic
        assert env["LAGPILOT_KAFKA_AUTO_OFFSET_RESET"]["value"] == "earliest"
        assert env["LAGPILOT_KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_PLAINTEXT"
        assert env["LAGPILOT_KAFKA_SASL_PASSWORD"] == {
            "name": "LAGPILOT_KAFKA_SASL_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "login", "key": "password"}}}
        assert (env["LAGPILOT_DEAD_LETTER"]["value"], env["LAGPILOT_DLQ_TOPIC"]["value"]) == ("true", f"{group}.dlq")
        assert env["LAGPILOT_RETRY_DELAYS"]["value"] == "10"
    assert worker["KEEP"]["value"] == "me"
    assert stack.kafka_sasl_password not in json.dumps(deployment_json(stack, namespace, "tmpl"))
    # The Secret also holds a binary key nobody references: the lag is read through SASL all the same.
    wait_for(lambda: condition_is(stack, namespace, "tmpl", "KafkaReachable", "True"), 60,
             "KafkaReachable=True with a binary key in the Secret")
    mismatch = wait_for(lambda: condition_is(stack, namespace, "tmpl", "WorkerConfigMismatch", "False"), 30,
                        "WorkerConfigMismatch=False in template mode")
    assert mismatch["reason"] == "WorkerConfigMatches"


def test_a_target_whose_workers_disagree_with_the_cr_is_reported_until_fixed(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-mismatch", partitions=1), unique_name("g")
    create_deployment(stack, namespace, "worker", 1)
    stack.kubectl("set", "env", "deployment/worker", "-n", namespace, f"LAGPILOT_GROUP_ID={group}-old",
                  f"LAGPILOT_TOPICS={topic}", f"LAGPILOT_BOOTSTRAP_SERVERS={stack.kafka_bootstrap}")
    apply_kcg(stack, namespace, "mm", {"kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group,
                                       "topics": [topic], "scaleTargetRef": {"name": "worker"}, **FAST})
    found = wait_for(lambda: condition_is(stack, namespace, "mm", "WorkerConfigMismatch", "True"), 60,
                     "WorkerConfigMismatch=True")
    assert found["reason"] == "WorkerConfigMismatch"
    assert f"groupId (container worker has '{group}-old', spec.groupId is '{group}')" in found["message"], found
    assert "topics (" not in found["message"] and "bootstrapServers (" not in found["message"]

    stack.kubectl("set", "env", "deployment/worker", "-n", namespace, f"LAGPILOT_GROUP_ID={group}")
    fixed = wait_for(lambda: condition_is(stack, namespace, "mm", "WorkerConfigMismatch", "False"), 60,
                     "WorkerConfigMismatch=False once the Deployment agrees")
    assert fixed["reason"] == "WorkerConfigMatches"


def test_a_referenced_binary_secret_key_is_named_in_a_condition(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic = create_topic("op-p12", partitions=1)
    apply_binary_secret(stack, namespace, "cluster-ca", {"ca.crt": b"not used here", "ca.p12": P12})
    create_deployment(stack, namespace, "tls-worker", 1)
    apply_kcg(stack, namespace, "p12", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap,
                  "security": {"protocol": "SSL", "tls": {"caSecretRef": {"name": "cluster-ca", "key": "ca.p12"}}}},
        "groupId": unique_name("g"), "topics": [topic], "scaleTargetRef": {"name": "tls-worker"}, **FAST})
    found = wait_for(lambda: condition_is(stack, namespace, "p12", "KafkaReachable", "False"), 60,
                     "KafkaReachable=False for the binary key")
    assert found["reason"] == "SecretKeyUnreadable"
    assert "Secret cluster-ca key ca.p12 is not UTF-8 text" in found["message"]
    assert condition(status_of(stack, namespace, "p12"), "Ready")["reason"] != "ReconcileError"


VAP = """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: {name}}}
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [apps]
        apiVersions: [v1]
        operations: [UPDATE]
        resources: [deployments/scale]
  validations:
    - expression: "object.spec.replicas <= 2"
      message: "capped at 2 replicas by the platform team"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: {name}}}
spec:
  policyName: {name}
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels: {{kubernetes.io/metadata.name: {namespace}}}
"""


def test_a_refused_scale_leaves_the_policy_memory_unchanged(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    topic, group = create_topic("op-refused", partitions=4), unique_name("g")
    backlog(stack.kafka_bootstrap, topic, group, partitions=4, per_partition=30)
    create_deployment(stack, namespace, "capped", 1)
    policy = VAP.format(name=f"cap-{namespace}", namespace=namespace)
    stack.kubectl("apply", "-f", "-", input_text=policy)
    try:
        # The policy is enforced once the API server has loaded it: wait until a scale to 3 is refused.
        wait_for(lambda: stack.kubectl("scale", "deployment/capped", "-n", namespace, "--replicas=3",
                                       "--dry-run=server", check=False).returncode != 0, 60,
                 "the admission policy in force")
        spec = {"kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
                "scaleTargetRef": {"name": "capped"}, "replicas": {"min": 1, "max": 4},
                "pool": {"min": 1, "max": 1, "initial": 1}, **FAST}
        spec["policy"] = {**FAST["policy"], "cooldownSeconds": 3600}
        apply_kcg(stack, namespace, "refused", spec)
        scaling = wait_for(lambda: condition_is(stack, namespace, "refused", "Scaling", "False"), 60,
                           "Scaling=False naming the refusal")
        assert scaling["reason"] == "ScaleRejected", scaling
        assert "capped at 2 replicas by the platform team" in scaling["message"]
        assert "from 1 to 4 replicas" in scaling["message"]
        status = status_of(stack, namespace, "refused")
        assert status["currentReplicas"] == 1 and status["desiredReplicas"] == 4
        assert (status.get("policyMemory") or {}).get("lastReplicaChange") is None
        assert replicas_of(stack, namespace, "capped") == 1
    finally:
        stack.kubectl("delete", "-f", "-", "--ignore-not-found", input_text=policy)
    # Had the refused scale been remembered, the hour-long cooldown would hold one replica now.
    wait_for(lambda: replicas_of(stack, namespace, "capped") == 4, 60, "the scale once the policy is gone")
    active = wait_for(lambda: condition_is(stack, namespace, "refused", "Scaling", "True"), 30, "Scaling=True")
    assert active["reason"] == "Active"
    assert status_of(stack, namespace, "refused")["policyMemory"]["lastReplicaChange"] is not None

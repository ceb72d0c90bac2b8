"""The operator loop on the real stack: kopf + kube-apiserver + Kafka, scaling a real Deployment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from support import (
    NO_NODE_SELECTOR,
    deployment_replicas,
    free_port,
    kcg_status,
    metric_value,
    pending_deployment,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


class Operator:
    """`kopf run` of lagpilot_operator.handlers as a process the test can kill and restart."""

    def __init__(self, stack: Any, namespace: str, log_dir: Path) -> None:
        self.stack, self.namespace, self.log_dir = stack, namespace, log_dir
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = {**self.stack.env(), "LAGPILOT_METRICS_PORT": str(self.metrics_port),
               "LAGPILOT_METRICS_ADDRESS": "127.0.0.1"}
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "kopf"), "run", "--standalone", "--namespace", self.namespace,
             "-m", "lagpilot_operator.handlers"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


@pytest.fixture(scope="module")
def crds_applied(stack: Any) -> None:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_for(lambda: "True" in stack.kubectl("get", "crd", "kafkaconsumergroups.lagpilot.io", "-o",
                                             "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                                             check=False).stdout, 60, "the CRD to be Established")


@pytest.fixture
def operator(stack: Any, namespace: str, crds_applied: None, tmp_path: Path) -> Iterator[Operator]:
    runner = Operator(stack, namespace, tmp_path)
    runner.start()
    yield runner
    runner.stop()
    if os.environ.get("LAGPILOT_SHOW_OPERATOR_LOG"):
        print(runner.log_text())


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition in range(partitions):
        for i in range(per_partition):
            producer.produce(topic, value=f"{partition}:{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for `group` as a group member would (then leave the group)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def deployment(stack: Any, namespace: str, name: str, replicas: int) -> None:
    stack.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(pending_deployment(name, replicas)))


def replicas_of(stack: Any, namespace: str, name: str) -> int:
    return deployment_replicas(stack, namespace, name)


def kcg(stack: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    manifest = {"apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    stack.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(manifest))


def status_of(stack: Any, namespace: str, name: str) -> dict[str, Any]:
    return kcg_status(stack, namespace, name)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


FAST = {
    "lag": {"pollIntervalSeconds": 2},
    "policy": {
        "mode": "lagThreshold",
        "lagThreshold": {"lagPerConsumer": 10},
        "scaleUp": {"stabilizationSeconds": 0, "maxStepPercent": 1000, "minStep": 100, "periodSeconds": 1},
        "scaleDown": {"stabilizationSeconds": 6, "maxStepPercent": 100, "minStep": 100, "periodSeconds": 1},
    },
}


@pytest.mark.slow
def test_backlog_scales_up_within_partitions_then_down_to_min(stack: Any, namespace: str, operator: Operator,
                                                              create_topic: Any, unique_name: Any) -> None:
    topic = create_topic("op-backlog", partitions=6)
    group = unique_name("op-group")
    produce(stack.kafka_bootstrap, topic, 6, 50)
    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(6), 0))  # 300 messages of lag
    deployment(stack, namespace, "worker", 1)
    kcg(stack, namespace, "orders", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": "worker"}, "replicas": {"min": 1, "max": 20},
        "pool": {"min": 1, "max": 2, "initial": 1}, **FAST})
    # 300 lag / 10 per consumer = 30 slots; pool max 2 → 15 replicas wanted, capped at 6 partitions.
    wait_for(lambda: replicas_of(stack, namespace, "worker") == 6, 30, "replicas to rise to the partition count")
    status = wait_for(lambda: (s := status_of(stack, namespace, "orders")).get("poolSize") == 2 and s, 20,
                      "pool size 2 in status")
    assert status["desiredReplicas"] == 6 and status["totalLag"] == 300 and status["partitions"] == 6
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "KafkaReachable")["status"] == "True"
    assert condition(status, "Ready")["observedGeneration"] == 1
    pool_cm = stack.kubectl("get", "configmap", "orders-lagpilot-pool", "-n", namespace, "-o",
                            "jsonpath={.data.poolSize}").stdout
    assert pool_cm == "2"
    events = stack.kubectl("get", "events", "-n", namespace, "--field-selector",
                           "involvedObject.kind=KafkaConsumerGroup", "-o", "json").stdout
    # The reaction is one decision straight to the cap (the step limits allow it), not a ramp over polls.
    # (How fast it comes is the loop benchmark's to measure: on the real node under a full test run the
    # operator's start-up alone varied by seconds.)
    replica_steps = [e["message"] for e in json.loads(events)["items"]
                     if e["reason"] == "ScaledUp" and "replicas" in e["message"]]
    assert replica_steps and all(m.startswith("scale up 1→6 replicas") for m in replica_steps), \
        "\n".join(replica_steps)  # whole: pytest's repr of the list cuts long messages in the middle

    # Never above the partition count, however long the backlog stays.
    for _ in range(3):
        wait_for(lambda: status_of(stack, namespace, "orders").get("consecutiveLagFailures") == 0, 10, "a poll")
        assert replicas_of(stack, namespace, "worker") == 6

    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(6), 50))  # backlog gone
    wait_for(lambda: replicas_of(stack, namespace, "worker") == 1, 40, "replicas back to min after stabilization")
    # A reconcile applies the scale, then exports its metrics, then writes the status: the status of the
    # scale-down (desiredReplicas 1) is what says its metrics are out. (Waiting for totalLag 0 raced: the
    # reconciles the stabilization window held at 6 had already written lag 0; a full run caught the
    # metric still at 6 between the scale and its export.)
    wait_for(lambda: (s := status_of(stack, namespace, "orders")).get("desiredReplicas") == 1
             and s.get("totalLag") == 0, 10, "the scale-down's status: desiredReplicas 1, lag 0")
    text = operator.metrics()
    assert metric_value(text, "lagpilot_desired_replicas", {"name": "orders", "namespace": namespace}) == 1
    reconciles = metric_value(text, "lagpilot_reconcile_duration_seconds_count")
    assert reconciles is not None and reconciles >= 1
    wait_for(lambda: (metric_value(operator.metrics(), "lagpilot_reconcile_duration_seconds_count") or 0) > reconciles,
             10, "the next reconcile to be counted in the duration histogram")


@pytest.mark.slow
def test_kafka_unreachable_holds_replicas_and_says_why(stack: Any, namespace: str, operator: Operator,
                                                       unique_name: Any) -> None:
    deployment(stack, namespace, "blind", 3)
    closed = free_port()
    kcg(stack, namespace, "blind", {
        "kafka": {"bootstrapServers": f"127.0.0.1:{closed}"}, "groupId": unique_name("g"), "topics": ["t"],
        "scaleTargetRef": {"name": "blind"}, "replicas": {"min": 0, "max": 10}, **FAST})
    blind_from = time.monotonic()
    status = wait_for(lambda: (s := status_of(stack, namespace, "blind")).get("consecutiveLagFailures", 0) >= 3
                      and s, 90, "three failed lag reads")
    # librdkafka logs every refused connection: at its default reconnect backoff ~20 lines a second for each
    # client, at the operator's (a second) about one. Per client: a failed read retires its client, and one
    # that a dead-letter check still holds goes on trying until that check times out.
    refused = Counter(line.split("|")[3] for line in operator.log_text().splitlines()
                      if f"Connect to ipv4#127.0.0.1:{closed} failed" in line and line.count("|") >= 4)
    blind_seconds = time.monotonic() - blind_from
    assert refused and max(refused.values()) <= 2 * blind_seconds, \
        f"refused-connection log lines per client in {blind_seconds:.0f} s: {dict(refused)}"
    reachable = condition(status, "KafkaReachable")
    assert reachable["status"] == "False" and reachable["reason"] == "KafkaUnreachable"
    assert f"127.0.0.1:{closed}" in reachable["message"]
    assert condition(status, "Ready")["status"] == "False"
    assert replicas_of(stack, namespace, "blind") == 3  # held: never scaled (to zero) while blind


def test_missing_target_is_a_condition_not_a_crash(stack: Any, namespace: str, operator: Operator,
                                                   create_topic: Any, unique_name: Any) -> None:
    topic = create_topic("op-missing", partitions=2)
    kcg(stack, namespace, "orphan", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": unique_name("g"), "topics": [topic],
        "scaleTargetRef": {"name": "does-not-exist"}, **FAST})
    status = wait_for(lambda: condition(status_of(stack, namespace, "orphan"), "TargetFound").get("status") == "False"
                      and status_of(stack, namespace, "orphan"), 30, "TargetFound=False")
    assert "does-not-exist" in condition(status, "TargetFound")["message"]
    # The same operator keeps serving other resources.
    deployment(stack, namespace, "present", 1)
    kcg(stack, namespace, "healthy", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": unique_name("g"), "topics": [topic],
        "scaleTargetRef": {"name": "present"}, **FAST})
    wait_for(lambda: condition(status_of(stack, namespace, "healthy"), "Ready").get("status") == "True", 30,
             "the healthy resource to be Ready")


def test_template_mode_owns_its_deployment(stack: Any, namespace: str, operator: Operator, create_topic: Any,
                                           unique_name: Any) -> None:
    topic = create_topic("op-template", partitions=2)
    template = {"metadata": {"labels": {"app": "tw"}},
                "spec": {"selector": {"matchLabels": {"app": "tw"}},
                         "template": {"metadata": {"labels": {"app": "tw"}},
                                      "spec": {"nodeSelector": NO_NODE_SELECTOR,
                                               "containers": [{"name": "worker", "image": "registry.invalid/w:1"}]}}}}
    kcg(stack, namespace, "owned", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": unique_name("g"), "topics": [topic],
        "template": template, "replicas": {"min": 2, "max": 4}, **FAST})
    wait_for(lambda: stack.kubectl("get", "deployment", "owned", "-n", namespace, check=False).returncode == 0, 30,
             "the owned Deployment")
    created = json.loads(stack.kubectl("get", "deployment", "owned", "-n", namespace, "-o", "json").stdout)
    owner = created["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "KafkaConsumerGroup" and owner["name"] == "owned" and owner["controller"] is True
    env = {e["name"]: e for e in created["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LAGPILOT_POOL_CONFIGMAP"]["value"] == "owned-lagpilot-pool"
    assert env["LAGPILOT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert created["spec"]["replicas"] == 2


@pytest.mark.slow
def test_restart_resumes_without_a_spurious_scale(stack: Any, namespace: str, operator: Operator,
                                                  create_topic: Any, unique_name: Any) -> None:
    topic = create_topic("op-restart", partitions=4)
    group = unique_name("g")
    produce(stack.kafka_bootstrap, topic, 4, 20)
    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(4), 0))
    deployment(stack, namespace, "steady", 1)
    spec = {"kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
            "scaleTargetRef": {"name": "steady"}, "replicas": {"min": 1, "max": 4},
            "pool": {"min": 1, "max": 1, "initial": 1}, **FAST}
    spec["policy"] = {**FAST["policy"], "scaleDown": {**FAST["policy"]["scaleDown"], "stabilizationSeconds": 120}}
    kcg(stack, namespace, "steady", spec)
    wait_for(lambda: replicas_of(stack, namespace, "steady") == 4, 30, "scale up to 4")
    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(4), 20))  # lag gone: scale-down is due later
    wait_for(lambda: status_of(stack, namespace, "steady").get("totalLag") == 0, 20, "lag 0 in status")
    before = status_of(stack, namespace, "steady")["policyMemory"]["lastTime"]
    operator.stop(signal.SIGKILL)
    operator.start()
    # The restarted operator must remember the 120 s window from status: several polls, no scale to 1.
    # Its polls are counted in its metrics: an unchanging group's status is not rewritten every poll.
    def new_polls() -> bool:
        assert replicas_of(stack, namespace, "steady") == 4, "a restart must not scale down early"
        try:
            polls = metric_value(operator.metrics(), "lagpilot_reconcile_duration_seconds_count") or 0.0
        except OSError:  # the restarted process is not serving metrics yet
            return False
        return polls >= 3

    wait_for(new_polls, 30, "three reconciles by the restarted operator")
    status = status_of(stack, namespace, "steady")
    assert status["desiredReplicas"] == 4
    assert status["policyMemory"]["lastTime"] > before  # its first poll wrote the status it resumed from

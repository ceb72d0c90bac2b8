"""Helpers for the operator's integration tests: the operator process, Kafka backlogs, cluster reads."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition

from support import deployment_replicas, free_port, kcg_status, pending_deployment

API_VERSION = "lagpilot.io/v1alpha1"
# Fast loops for tests: a 2 s poll, instant scale-up, a 6 s scale-down window, no DLQ topics created.
FAST: dict[str, Any] = {
    "lag": {"pollIntervalSeconds": 2},
    "policy": {
        "mode": "lagThreshold",
        "lagThreshold": {"lagPerConsumer": 10},
        "scaleUp": {"stabilizationSeconds": 0, "maxStepPercent": 1000, "minStep": 100, "periodSeconds": 1},
        "scaleDown": {"stabilizationSeconds": 6, "maxStepPercent": 100, "minStep": 100, "periodSeconds": 1},
    },
    "deadLetter": {"enabled": False},
}


class OperatorProcess:
    """`kopf run -m lagpilot_operator.handlers` limited to one namespace; stoppable and restartable."""

    def __init__(self, env: dict[str, str], namespace: str, log_dir: Path, extra_args: tuple[str, ...] = (),
                 kopf: Path | None = None, metrics_port: int | None = None) -> None:
        """`kopf`: another installation's kopf (bench/fleet_bench.py runs an older operator from its own venv);
        `metrics_port`: a given port instead of a free one."""
        self.env, self.namespace, self.log_dir = env, namespace, log_dir
        self.extra_args = extra_args
        self.kopf = kopf or Path(sys.executable).parent / "kopf"
        self.metrics_port = metrics_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = {**self.env, "LAGPILOT_METRICS_PORT": str(self.metrics_port), "LAGPILOT_METRICS_ADDRESS": "127.0.0.1"}
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [str(self.kopf), "run", "--standalone", "--namespace", self.namespace,
             "-m", "lagpilot_operator.handlers", *self.extra_args], env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def metrics_text(self) -> str:
        """The operator's /metrics, as Prometheus would scrape it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())


def backlog(bootstrap: str, topic: str, group: str, partitions: int, per_partition: int) -> None:
    """`per_partition` records in each partition, and the group committed at offset 0 everywhere."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition in range(partitions):
        for i in range(per_partition):
            producer.produce(topic, value=f"{partition}:{i}".encode(), partition=partition)
    assert producer.flush(30) == 0
    commit(bootstrap, group, topic, dict.fromkeys(range(partitions), 0))


def commit(bootstrap: str, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets as a member of `group` would, then leave the group."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def create_deployment(stack: Any, namespace: str, name: str, replicas: int) -> None:
    # Its Pods select no node: they stay Pending, which is all the replica count needs.
    stack.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(pending_deployment(name, replicas)))


def replicas_of(stack: Any, namespace: str, name: str) -> int:
    return deployment_replicas(stack, namespace, name)


def apply_kcg(stack: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    manifest = {"apiVersion": API_VERSION, "kind": "KafkaConsumerGroup",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    stack.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(manifest))


def apply_secret(stack: Any, namespace: str, name: str, data: dict[str, str]) -> None:
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "stringData": data}
    stack.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(manifest))


def status_of(stack: Any, namespace: str, name: str) -> dict[str, Any]:
    return kcg_status(stack, namespace, name)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def events_text(stack: Any, namespace: str) -> str:
    return str(stack.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)


def produce(bootstrap: str, topic: str, partitions: int, per_partition: int) -> None:
    """`per_partition` more records in each partition."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for partition in range(partitions):
        for i in range(per_partition):
            producer.produce(topic, value=f"{partition}:{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


def quiet_group(stack: Any, namespace: str, name: str, topic: str, group: str, partitions: int, *,
                replicas: int, replicas_min: int, replicas_max: int) -> None:
    """A KafkaConsumerGroup `name` whose group has consumed every record (lag 0), scaling the Deployment
    `name` (created with `replicas`) between the bounds, pool 1, with the FAST timings."""
    produce(stack.kafka_bootstrap, topic, partitions, 5)
    commit(stack.kafka_bootstrap, group, topic, dict.fromkeys(range(partitions), 5))
    create_deployment(stack, namespace, name, replicas)
    apply_kcg(stack, namespace, name, {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": name}, "replicas": {"min": replicas_min, "max": replicas_max},
        "pool": {"min": 1, "max": 1, "initial": 1}, **FAST})


def annotate(stack: Any, namespace: str, name: str, *pairs: str) -> None:
    """`kubectl annotate --overwrite`; `key-` removes the annotation."""
    stack.kubectl("annotate", "--overwrite", "kcg", name, "-n", namespace, *pairs)


def patch_spec(stack: Any, namespace: str, name: str, patch: dict[str, Any]) -> None:
    stack.kubectl("patch", "kcg", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": patch}))


def poll_time(status: dict[str, Any]) -> float:
    """When the operator last decided (policyMemory.lastTime): tells one reconcile from the next."""
    return float((status.get("policyMemory") or {}).get("lastTime") or 0.0)


def event_messages(stack: Any, namespace: str, reason: str) -> list[str]:
    """Messages of the KafkaConsumerGroup Events with `reason` (ScaledUp, ScaledDown, ...)."""
    out = stack.kubectl("get", "events", "-n", namespace, "--field-selector",
                        f"involvedObject.kind=KafkaConsumerGroup,reason={reason}", "-o", "json").stdout
    return [str(e.get("message", "")) for e in json.loads(out)["items"]]


def produce_dead_letters(bootstrap: str, dlq: str, source_topic: str, group: str, ids: range,
                         partitions: int) -> None:
    """Record i into DLQ partition i % partitions, value str(i), with the headers the worker writes
    (lagpilot_contract.headers) naming source partition i % partitions, plus a header of its own."""
    from lagpilot_contract import headers as h

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": "true"})
    for i in ids:
        partition = i % partitions
        contract = {h.ORIGINAL_TOPIC: source_topic, h.ORIGINAL_PARTITION: str(partition),
                    h.ORIGINAL_OFFSET: str(i), h.ORIGINAL_TIMESTAMP: "1767225600000",
                    h.ORIGINAL_TIMESTAMP_TYPE: "CreateTime", h.CONSUMER_GROUP: group,
                    h.EXCEPTION_CLASS: "app.errors.Permanent", h.EXCEPTION_MESSAGE: "boom", h.ATTEMPTS: "1",
                    h.WORKER_ID: "test:1", h.FAILURE_KIND: h.FAILURE_PERMANENT}
        producer.produce(dlq, key=f"k{i}".encode(), value=str(i).encode(), partition=partition,
                         headers=[("trace-id", f"t-{i}".encode()), *((k, v.encode()) for k, v in contract.items())])
    assert producer.flush(30) == 0



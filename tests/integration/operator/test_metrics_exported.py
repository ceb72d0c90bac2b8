"""Every metric the Grafana dashboard and the Prometheus alert rules use is exported by the code: the real
operator (`kopf run` against the stack) and a real worker (the CLI against the real broker) run a
scenario that exercises them, both /metrics are scraped and parsed with prometheus_client's parser, and
each name deploy/grafana and deploy/prometheus select must have samples (a family declared but never
set, as the produce/consume rate gauges were, does not count)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from operator_testkit import API_VERSION, OperatorProcess, backlog

from support import (
    dashboard_expressions,
    free_port,
    metric_samples,
    metric_value,
    pending_deployment,
    promql_metric_names,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]

HANDLER = textwrap.dedent('''
    from lagpilot_worker.retry import PermanentError, TransientError

    _seen = set()


    def handle(record):
        """Every 10th record is poison (dead-lettered); every 10th other one fails once (retried in place)."""
        number = int(record.value.split(b":")[1])
        if number % 10 == 7:
            raise PermanentError("poison")
        if number % 10 == 3 and (record.partition, record.offset) not in _seen:
            _seen.add((record.partition, record.offset))
            raise TransientError("flaky once")
''')


def referenced_names() -> set[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "lagpilot-dashboard.json").read_text())
    groups = yaml.safe_load((REPO / "deploy" / "prometheus" / "lagpilot-rules.yaml").read_text())["groups"]
    expressions = [*dashboard_expressions(dashboard), *(r["expr"] for g in groups for r in g["rules"])]
    names: set[str] = set()
    for expr in expressions:
        names |= promql_metric_names(expr)
    return names


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def apply(stack: Any, manifest: dict[str, Any]) -> None:
    stack.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(manifest))


@pytest.fixture
def steady_traffic(kafka_bootstrap: str) -> Iterator[Callable[[str], None]]:
    """start(topic): about 40 records/s into both partitions until the test ends."""
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(topic: str) -> None:
        def run() -> None:
            producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
            number = 1000
            while not stop.is_set():
                for partition in (0, 1):
                    producer.produce(topic, value=f"{partition}:{number}".encode(), partition=partition)
                    number += 1
                producer.poll(0)
                stop.wait(0.05)
            producer.flush(10)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)

    yield start
    stop.set()
    for thread in threads:
        thread.join(15)


def test_every_dashboard_and_alert_metric_is_exported_by_the_running_operator_and_worker(
        stack: Any, namespace: str, crd_applied: None, create_topic: Callable[..., str],
        unique_name: Callable[[str], str], steady_traffic: Callable[[str], None], tmp_path: Path) -> None:
    topic = create_topic("exported", partitions=2)
    group = unique_name("g")
    # A backlog (committed at 0) before any worker runs, so the operator scales up (a decision) first.
    backlog(stack.kafka_bootstrap, topic, group, 2, 150)

    operator = OperatorProcess({**stack.env(), "LAGPILOT_VERDICT_WINDOW_SECONDS": "8"}, namespace, tmp_path)
    operator.start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        stack.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(pending_deployment("worker", 1)))
        policy = {"mode": "lagThreshold", "lagThreshold": {"lagPerConsumer": 10},
                  "scaleUp": {"stabilizationSeconds": 0, "maxStepPercent": 1000, "minStep": 100, "periodSeconds": 1}}
        apply(stack, {"apiVersion": API_VERSION, "kind": "KafkaConsumerGroup",
                      "metadata": {"name": "orders", "namespace": namespace},
                      "spec": {"kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group,
                               "topics": [topic], "scaleTargetRef": {"name": "worker"},
                               "replicas": {"min": 1, "max": 4}, "pool": {"min": 1, "max": 2, "initial": 1},
                               "lag": {"pollIntervalSeconds": 2}, "policy": policy,
                               "deadLetter": {"enabled": True}}})
        # A second resource whose Kafka cannot be reached: its reconciles count errors.
        apply(stack, {"apiVersion": API_VERSION, "kind": "KafkaConsumerGroup",
                      "metadata": {"name": "blind", "namespace": namespace},
                      "spec": {"kafka": {"bootstrapServers": f"127.0.0.1:{free_port()}"},
                               "groupId": unique_name("blind"), "topics": ["t"],
                               "scaleTargetRef": {"name": "worker"}, "replicas": {"min": 1, "max": 1},
                               "lag": {"pollIntervalSeconds": 2}, "deadLetter": {"enabled": False}}})
        def operator_metric(metric: str, **labels: str) -> float | None:
            try:
                text = scrape(operator.metrics_port)
            except OSError:        # not listening yet
                return None
            return metric_value(text, metric, {"namespace": namespace, **labels})

        wait_for(lambda: (operator_metric("lagpilot_desired_replicas", name="orders") or 0) == 2, 60,
                 "the backlog to scale the group up to its 2 partitions")
        dlq = f"{group}.dlq"
        wait_for(lambda: operator_metric("lagpilot_dlq_messages", name="orders", topic=dlq) is not None, 60,
                 "the operator to create and look at the DLQ")

        (tmp_path / "exportedhandlers.py").write_text(HANDLER)
        http_port = free_port()
        env = {**stack.env(), "PYTHONPATH": str(tmp_path)}
        env.pop("LAGPILOT_POOL_CONFIGMAP", None)
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "lagpilot_worker.cli", "--handler", "exportedhandlers:handle",
                 "--bootstrap-servers", stack.kafka_bootstrap, "--group", group, "--topic", topic,
                 "--pool-size", "2", "--http-host", "127.0.0.1", "--http-port", str(http_port),
                 "--commit-interval", "0.5", "--no-breaker", "--dead-letter"],
                env=env, stdout=log, stderr=subprocess.STDOUT)
        steady_traffic(topic)

        def worker_text() -> str:
            assert worker is not None and worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            try:
                return scrape(http_port)
            except OSError:
                return ""

        wait_for(lambda: (metric_value(worker_text(), "lagpilot_worker_messages_dead_lettered_total") or 0) > 0
                 and (metric_value(worker_text(), "lagpilot_worker_messages_retried_total") or 0) > 0, 60,
                 "the worker to dead-letter and retry records")
        wait_for(lambda: (operator_metric("lagpilot_dlq_messages", name="orders", topic=dlq) or 0) > 0, 60,
                 "the operator to count the dead-lettered records")
        wait_for(lambda: operator_metric("lagpilot_consumergroup_consume_rate", name="orders") is not None
                 and operator_metric("lagpilot_consumergroup_produce_rate", name="orders") is not None, 60,
                 "the measured rates")
        wait_for(lambda: operator_metric("lagpilot_reconcile_errors_total", name="blind") is not None, 120,
                 "a failed reconcile of the resource whose Kafka is unreachable")
        wait_for(lambda: operator_metric("lagpilot_consumergroup_time_lag_seconds", name="orders") is not None
                 and operator_metric("lagpilot_consumergroup_partition_verdict", name="orders") is not None, 60,
                 "time lag and verdicts")

        operator_text, worker_scrape = scrape(operator.metrics_port), worker_text()
        present = {s.name for s in metric_samples(operator_text)} | {s.name for s in metric_samples(worker_scrape)}
        referenced = referenced_names()
        assert len(referenced) >= 20
        assert referenced <= present, f"used by deploy/ but not exported: {sorted(referenced - present)}"
        # The rates the status reports are the ones exported.
        status = json.loads(stack.kubectl("get", "kcg", "orders", "-n", namespace, "-o", "json").stdout)["status"]
        assert status["consumeRatePerSecond"] >= 0 and status["produceRatePerSecond"] > 0
        produce_rate = metric_value(operator_text, "lagpilot_consumergroup_produce_rate",
                                    {"namespace": namespace, "name": "orders"})
        assert produce_rate is not None and produce_rate > 0
        # Each resource's first status patch, then the ones its news made (the scale-up's desiredReplicas).
        writes = {s.labels["reason"]: s.value for s in metric_samples(operator_text)
                  if s.name == "lagpilot_status_writes_total"}
        assert writes.get("first") == 2, writes
        assert sum(count for reason, count in writes.items() if reason != "first") >= 1, writes
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        operator.stop()

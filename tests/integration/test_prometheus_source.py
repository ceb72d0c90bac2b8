"""The Prometheus lag source: the real Prometheus scrapes kafka_exporter-style series, the operator queries it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_operator_loop import FAST, Operator, condition, deployment, kcg, replicas_of, status_of

from support import free_port, wait_for

pytestmark = pytest.mark.integration
QUERY = 'sum by (topic, partition) (kafka_consumergroup_lag{consumergroup="{group}"})'


class ExporterSeries:
    """Serves kafka_exporter's `kafka_consumergroup_lag` lines for one group; the test sets the values."""

    def __init__(self, group: str, topic: str) -> None:
        self.group, self.topic = group, topic
        self.lags: dict[int, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = ["# TYPE kafka_consumergroup_lag gauge"] + [
                    f'kafka_consumergroup_lag{{consumergroup="{outer.group}",topic="{outer.topic}",'
                    f'partition="{p}"}} {lag}' for p, lag in sorted(outer.lags.items())]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"


@pytest.fixture
def exporter(stack: Any, unique_name: Any) -> Iterator[ExporterSeries]:
    series = ExporterSeries(unique_name("prom-group"), unique_name("prom-topic"))
    target = stack.add_scrape_target(series.group, series.address)
    yield series
    target.unlink()
    series.server.shutdown()


@pytest.mark.slow
def test_prometheus_lag_drives_replicas(stack: Any, namespace: str, exporter: ExporterSeries,
                                        tmp_path: Path) -> None:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(Path(__file__).parents[2] / "crds"))
    exporter.lags = {0: 200, 1: 100, 2: 0}
    operator = Operator(stack, namespace, tmp_path)
    operator.start()
    try:
        deployment(stack, namespace, "prom-worker", 1)
        kcg(stack, namespace, "prom", {
            "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": exporter.group,
            "topics": [exporter.topic], "scaleTargetRef": {"name": "prom-worker"},
            "replicas": {"min": 1, "max": 10}, "pool": {"min": 1, "max": 1, "initial": 1},
            **FAST, "lag": {"source": "prometheus", "pollIntervalSeconds": 2,
                            "prometheus": {"url": stack.prometheus_url, "query": QUERY}}})
        # 300 lag / 10 per consumer = 30 slots, pool 1, capped at the 3 partitions Prometheus reports.
        wait_for(lambda: replicas_of(stack, namespace, "prom-worker") == 3, 60, "replicas from Prometheus lag")
        # The scale is applied before the status is written: a busy machine may show the one before the other.
        status = wait_for(lambda: (s := status_of(stack, namespace, "prom")).get("totalLag") == 300 and s, 30,
                          "the Prometheus lag in status")
        assert status["partitions"] == 3
        assert condition(status, "LagMetricAvailable")["status"] == "True"
        assert "produceRatePerSecond" not in status  # Prometheus gives lag, not traffic rates

        exporter.lags = {0: 0, 1: 0, 2: 0}
        wait_for(lambda: replicas_of(stack, namespace, "prom-worker") == 1, 60, "scale back after lag drains")
    finally:
        operator.stop()


@pytest.mark.slow
def test_prometheus_down_holds_replicas(stack: Any, namespace: str, unique_name: Any, tmp_path: Path) -> None:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(Path(__file__).parents[2] / "crds"))
    operator = Operator(stack, namespace, tmp_path)
    operator.start()
    try:
        deployment(stack, namespace, "held", 2)
        dead = f"http://127.0.0.1:{free_port()}"
        kcg(stack, namespace, "held", {
            "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": unique_name("g"), "topics": ["t"],
            "scaleTargetRef": {"name": "held"}, "replicas": {"min": 0, "max": 10},
            **FAST, "lag": {"source": "prometheus", "pollIntervalSeconds": 2,
                            "prometheus": {"url": dead, "query": QUERY}}})
        status = wait_for(lambda: (s := status_of(stack, namespace, "held")).get("consecutiveLagFailures", 0) >= 3
                          and s, 60, "three failed Prometheus reads")
        metric = condition(status, "LagMetricAvailable")
        assert metric["status"] == "False" and metric["reason"] == "PrometheusUnavailable" and dead in metric["message"]
        assert replicas_of(stack, namespace, "held") == 2
    finally:
        operator.stop()

"""`--e2e-backend=kind`: the same scenarios on a kind cluster, with images built from docker/*.Dockerfile.

What differs from the node backend (e2e/node_backend.py), and why:

* The images are built with Docker: docker/worker.Dockerfile, then e2e/worker.Dockerfile on it (the
  handler added the way docs/worker.md tells users), and docker/operator.Dockerfile.
* Kafka runs inside the cluster (apache/kafka, the version pinned in hack/versions.env, KRaft, one
  node) with two listeners: `kafka.<ns>.svc:9092` for Pods and the operator, and a NodePort mapped to
  127.0.0.1:<free port> on this machine (kind `extraPortMappings`) for the load generator and the ledger.
* As on the node backend, the operator is `helm install`ed from charts/lagpilot into each scenario's
  namespace, and a worker or operator crash is `ctr task kill --signal SIGKILL` (run in the kind node);
  e2e/pods.py has that code for both. The broker outage is SIGSTOP/SIGCONT of the broker's JVM from
  the node.

Not run on the machine this was written on (no Docker engine there): `docker info` failing skips the
backend with the reason. kind and kubectl come through pytest-kind (KIND_VERSION pinned below).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import apply_crd
from e2e.pods import E2E_DIR, REPO, PodBackend, wait_until_broker_answers
from support import api_client, free_port, unique_name

os.environ.setdefault("KIND_VERSION", "v0.27.0")  # read by pytest_kind at import: node image Kubernetes 1.32

WORKER_BASE_IMAGE = "lagpilot-worker:e2e"
WORKER_IMAGE = "lagpilot-e2e-worker:e2e"
OPERATOR_IMAGE = "lagpilot-operator:e2e"
KAFKA_NAMESPACE = "kafka"
KAFKA_NODE_PORT = 30092


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers, else why not (shown as the skip reason)."""
    try:
        result = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                                text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return f"`docker info` failed: {lines[-1] if lines else f'exit {result.returncode}'}"
    return None


def _kafka_version() -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KAFKA_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("KAFKA_VERSION missing from hack/versions.env")


def _run(*args: str, cwd: Path | None = None, timeout: float = 1800) -> str:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


class KindBackend(PodBackend):
    name = "kind"

    def __init__(self, *, work_dir: Path, keep_cluster: bool = False) -> None:
        from pytest_kind.cluster import KindCluster

        self.work_dir = work_dir
        self.keep_cluster = keep_cluster
        self.host_port = free_port()
        self.kafka_bootstrap = f"127.0.0.1:{self.host_port}"
        self.pod_kafka_bootstrap = f"kafka.{KAFKA_NAMESPACE}.svc.cluster.local:9092"
        bin_dir = Path(os.environ.get("LAGPILOT_BIN_DIR", "/nonexistent"))
        kubectl = bin_dir / "kubectl"
        self.cluster = KindCluster(unique_name("lagpilot-e2e"), work_dir / "kubeconfig",
                                   kubectl_path=kubectl if kubectl.exists() else None)
        self.kubeconfig = work_dir / "kubeconfig"
        self.helm_path = bin_dir / "helm"
        self.worker_image = WORKER_IMAGE
        self.operator_image = OPERATOR_IMAGE
        self.node = f"{self.cluster.name}-control-plane"

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._build_images()
        config = self.work_dir / "kind.yaml"
        config.write_text(yaml.safe_dump({
            "kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
            "nodes": [{"role": "control-plane", "extraPortMappings": [
                {"containerPort": KAFKA_NODE_PORT, "hostPort": self.host_port, "listenAddress": "127.0.0.1"}]}],
        }))
        self.cluster.create(config_file=config)
        self.cluster.ensure_kubectl()
        self.kubectl_path = Path(self.cluster.kubectl_path)
        for image in (WORKER_IMAGE, OPERATOR_IMAGE):
            self.cluster.load_docker_image(image)
        self.api = api_client(str(self.cluster.kubeconfig_path))
        apply_crd(self.kubectl)
        self._deploy_kafka()

    def stop(self) -> None:
        if not self.keep_cluster:
            self.cluster.delete()

    def _build_images(self) -> None:
        _run("docker", "build", "-f", "docker/worker.Dockerfile", "-t", WORKER_BASE_IMAGE, ".", cwd=REPO)
        _run("docker", "build", "-f", "docker/operator.Dockerfile", "-t", OPERATOR_IMAGE, ".", cwd=REPO)
        _run("docker", "build", "-f", str(E2E_DIR / "worker.Dockerfile"), "--build-arg",
             f"WORKER_IMAGE={WORKER_BASE_IMAGE}", "-t", WORKER_IMAGE, str(E2E_DIR))

    def _deploy_kafka(self) -> None:
        version = _kafka_version()
        listeners = f"INTERNAL://:9092,EXTERNAL://:{KAFKA_NODE_PORT},CONTROLLER://:9093"
        advertised = f"INTERNAL://{self.pod_kafka_bootstrap},EXTERNAL://{self.kafka_bootstrap}"
        env = {
            "KAFKA_NODE_ID": "1", "KAFKA_PROCESS_ROLES": "broker,controller",
            "KAFKA_LISTENERS": listeners, "KAFKA_ADVERTISED_LISTENERS": advertised,
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "INTERNAL:PLAINTEXT,EXTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "KAFKA_INTER_BROKER_LISTENER_NAME": "INTERNAL", "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1", "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
            "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        }
        manifests: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KAFKA_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kafka", "namespace": KAFKA_NAMESPACE},
             "spec": {"type": "NodePort", "selector": {"app": "kafka"}, "ports": [
                 {"name": "internal", "port": 9092, "targetPort": 9092},
                 {"name": "external", "port": KAFKA_NODE_PORT, "targetPort": KAFKA_NODE_PORT,
                  "nodePort": KAFKA_NODE_PORT}]}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kafka", "namespace": KAFKA_NAMESPACE},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "kafka"}}, "template": {
                 "metadata": {"labels": {"app": "kafka"}},
                 "spec": {"containers": [{"name": "kafka", "image": f"apache/kafka:{version}",
                                          "env": [{"name": k, "value": v} for k, v in env.items()],
                                          "readinessProbe": {"tcpSocket": {"port": 9092}, "periodSeconds": 2}}]}}}},
        ]
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(manifests))
        self.kubectl("rollout", "status", "deployment/kafka", "-n", KAFKA_NAMESPACE, "--timeout=300s", timeout=330)
        wait_until_broker_answers(self.kafka_bootstrap, 120)

    # -- what the scenarios use ---------------------------------------------------------------------------

    def runtime_command(self, *args: str) -> list[str]:
        return ["docker", "exec", self.node, "ctr", "-n", "k8s.io", *args]

    def _node_exec(self, *command: str) -> str:
        return _run("docker", "exec", self.node, *command, timeout=60)

    @contextlib.contextmanager
    def broker_unresponsive(self) -> Iterator[None]:
        self._node_exec("pkill", "-STOP", "-f", "kafka.Kafka")
        try:
            yield
        finally:
            self._node_exec("pkill", "-CONT", "-f", "kafka.Kafka")
            wait_until_broker_answers(self.kafka_bootstrap)


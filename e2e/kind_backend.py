"""`--e2e-backend=kind`: the same scenarios on a kind cluster, with images built from docker/*.Dockerfile.

What differs from the local backend, and why:

* Worker Pods run the image built from docker/worker.Dockerfile plus e2e/handlers.py (a real kubelet
  and containerd, no test double).
* Kafka runs inside the cluster (apache/kafka, the version pinned in hack/versions.env, KRaft, one
  node) with two listeners: `kafka.<ns>.svc:9092` for Pods and the operator, and a NodePort mapped to
  127.0.0.1:<free port> on this machine (kind `extraPortMappings`) for the load generator and the ledger.
* The operator runs in the cluster too (image from docker/operator.Dockerfile, one Pod per scenario
  namespace), because it must reach Kafka at the in-cluster address the resource names. "SIGKILL the
  operator" is a forced Pod deletion (`--grace-period=0 --force`); the Deployment starts a new one.
* A worker crash is a SIGKILL of the container's process from the kind node (`crictl inspect` gives its
  pid); the broker outage is SIGSTOP/SIGCONT of the broker's JVM from the node, as locally.

Not run on the machine this was written on (no Docker engine there): `docker info` failing skips the
backend with the reason. kind and kubectl come through pytest-kind (KIND_VERSION pinned below).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from e2e.harness import E2E_DIR, REPO, WORKER_CONTAINER, api_client, apply_crd
from support import unique_name, wait_for

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class KindOperator:
    """The operator as a Deployment in the scenario's namespace; same interface as OperatorProcess."""

    def __init__(self, backend: KindBackend, namespace: str, log_path: Path) -> None:
        self.backend, self.namespace, self.log_path = backend, namespace, log_path
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        if self.starts > 1:
            return  # the Deployment already started a replacement Pod after kill()
        manifests: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "lagpilot-e2e"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": f"lagpilot-e2e-{self.namespace}"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
             "subjects": [{"kind": "ServiceAccount", "name": "lagpilot-e2e", "namespace": self.namespace}]},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "lagpilot-operator"},
             "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                      "selector": {"matchLabels": {"app": "lagpilot-operator"}},
                      "template": {"metadata": {"labels": {"app": "lagpilot-operator"}}, "spec": {
                          "serviceAccountName": "lagpilot-e2e",
                          "containers": [{"name": "operator", "image": OPERATOR_IMAGE, "imagePullPolicy": "Never",
                                          "command": ["kopf", "run", "--standalone",
                                                      f"--namespace={self.namespace}",
                                                      "-m", "lagpilot_operator.handlers"],
                                          "env": [{"name": "LAGPILOT_METRICS_PORT", "value": "0"}]}]}}}},
        ]
        self.backend.kubectl("apply", "-n", self.namespace, "-f", "-",
                             input_text=yaml.safe_dump_all(manifests))

    def kill(self) -> None:
        self.backend.kubectl("delete", "pod", "-n", self.namespace, "-l", "app=lagpilot-operator",
                             "--grace-period=0", "--force", "--wait=false", check=False)

    def stop(self, grace: float = 15.0) -> None:
        self.log_path.write_text(self.log_tail(10_000))
        self.backend.kubectl("delete", "deployment", "lagpilot-operator", "-n", self.namespace, "--wait=false",
                             check=False)
        self.backend.kubectl("delete", "clusterrolebinding", f"lagpilot-e2e-{self.namespace}", check=False)

    def restart(self) -> None:
        self.kill()

    @property
    def alive(self) -> bool:
        out = self.backend.kubectl("get", "deployment", "lagpilot-operator", "-n", self.namespace, "-o",
                                   "jsonpath={.status.readyReplicas}", check=False)
        return out.stdout.strip() == "1"

    def log_tail(self, lines: int = 60) -> str:
        return self.backend.kubectl("logs", "-n", self.namespace, "deployment/lagpilot-operator",
                                    f"--tail={lines}", check=False).stdout


class KindBackend:
    name = "kind"

    def __init__(self, *, work_dir: Path, keep_cluster: bool = False) -> None:
        from pytest_kind.cluster import KindCluster

        self.work_dir = work_dir
        self.keep_cluster = keep_cluster
        self.host_port = _free_port()
        self.kafka_bootstrap = f"127.0.0.1:{self.host_port}"
        self.pod_kafka_bootstrap = f"kafka.{KAFKA_NAMESPACE}.svc.cluster.local:9092"
        kubectl = Path(os.environ.get("LAGPILOT_BIN_DIR", "/nonexistent")) / "kubectl"
        self.cluster = KindCluster(unique_name("lagpilot-e2e"), work_dir / "kubeconfig",
                                   kubectl_path=kubectl if kubectl.exists() else None)
        self.node = f"{self.cluster.name}-control-plane"
        self.api: Any = None

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
        with tempfile.TemporaryDirectory() as context:
            (Path(context) / "handlers.py").write_bytes((E2E_DIR / "handlers.py").read_bytes())
            (Path(context) / "Dockerfile").write_text(
                f"FROM {WORKER_BASE_IMAGE}\nCOPY --chown=10001:10001 handlers.py /app/handlers.py\n")
            _run("docker", "build", "-t", WORKER_IMAGE, context)

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
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.kafka_bootstrap})
        wait_for(lambda: _answers(admin), 120, "in-cluster Kafka reachable from this machine")

    # -- what the scenarios use ---------------------------------------------------------------------------

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        self.cluster.ensure_kubectl()
        result = subprocess.run([str(self.cluster.kubectl_path), f"--kubeconfig={self.cluster.kubeconfig_path}",
                                 *args], input=input_text, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def worker_container(self, env: list[dict[str, Any]]) -> dict[str, Any]:
        # `command` set: the image's CMD (--help) is not appended; the handler comes from LAGPILOT_HANDLER.
        return {"name": WORKER_CONTAINER, "image": WORKER_IMAGE, "imagePullPolicy": "Never",
                "command": ["lagpilot-worker"], "env": env,
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1}}

    def pod_spec_extra(self) -> dict[str, Any]:
        return {}

    def operator(self, namespace: str, log_path: Path) -> KindOperator:
        return KindOperator(self, namespace, log_path)

    def _node_exec(self, *command: str) -> str:
        return _run("docker", "exec", self.node, *command, timeout=60)

    def kill_worker(self, namespace: str, pod: str) -> None:
        container_id = self.kubectl("get", "pod", pod, "-n", namespace, "-o",
                                    "jsonpath={.status.containerStatuses[0].containerID}").stdout
        pid = self._node_exec("crictl", "inspect", "--output", "go-template", "--template", "{{.info.pid}}",
                              container_id.split("://", 1)[-1]).strip()
        self._node_exec("kill", "-KILL", pid)

    @contextlib.contextmanager
    def broker_unresponsive(self) -> Iterator[None]:
        self._node_exec("pkill", "-STOP", "-f", "kafka.Kafka")
        try:
            yield
        finally:
            self._node_exec("pkill", "-CONT", "-f", "kafka.Kafka")
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": self.kafka_bootstrap})
            wait_for(lambda: _answers(admin), 60, "the broker to answer after SIGCONT")


def _answers(admin: Any) -> bool:
    try:
        admin.list_topics(timeout=2)
    except Exception:  # not reachable yet
        return False
    return True

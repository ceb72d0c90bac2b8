"""`--e2e-backend=node` (the default): the scenarios on the local stack's real node.

Worker Pods run the e2e worker image (docker/worker.Dockerfile + e2e/handlers.py, e2e/worker.Dockerfile)
in containerd through the stack's kubelet, and reach Kafka at the broker's listener for Pods on the
bridge address (`KAFKA_PODS_BOOTSTRAP_SERVERS`). The operator is `helm install`ed from charts/lagpilot
into each scenario's namespace (e2e/pods.py). The test process itself (load generator, ledger, watches)
uses the broker's loopback listener.

Faults: a worker or operator crash is a SIGKILL of the container's process through containerd
(`ctr task kill`); the broker outage is SIGSTOP/SIGCONT of the broker's JVM, a local process, on a
broker of the scenario's own (`PrivateBroker`) so that scenarios running alongside never see it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from e2e.harness import apply_crd
from e2e.pods import REPO, PodBackend, wait_until_broker_answers
from support import api_client, free_port, parse_env_lines, wait_for_group_coordinator


def read_env_file(path: Path) -> dict[str, str]:
    return parse_env_lines(path.read_text())


def _require_node(node_enabled: bool, images: dict[str, str]) -> None:
    missing = [key for key in ("e2e-worker", "operator") if key not in images]
    if not node_enabled or missing:
        raise RuntimeError("the e2e scenarios and the loop benchmark run on the real node: start the stack with "
                           "it (the default; this one was started with LAGPILOT_NODE=0)"
                           + (f"; images missing from the node's table: {missing}" if missing else ""))


class NodeBackend(PodBackend):
    name = "node"

    def __init__(self, *, kubeconfig: str, bin_dir: Path, stack_dir: Path, kafka_bootstrap: str,
                 pod_kafka_bootstrap: str, images: dict[str, str], work_dir: Path) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.kubectl_path = bin_dir / "kubectl"
        self.helm_path = bin_dir / "helm"
        self.stack_dir = stack_dir
        self.kafka_bootstrap = kafka_bootstrap
        self.pod_kafka_bootstrap = pod_kafka_bootstrap
        self.work_dir = work_dir
        self.worker_image = images["e2e-worker"]
        self.operator_image = images["operator"]
        self.pod_logs_root = stack_dir / "node" / "pod-logs"
        self.containerd_socket = stack_dir / "node" / "containerd" / "containerd.sock"
        self.api = api_client(kubeconfig)

    def node_log_lines(self, pod: str, limit: int = 30) -> list[str]:
        found: list[str] = []
        for component in ("kubelet", "containerd"):
            path = self.stack_dir / "logs" / f"{component}.log"
            if path.exists():
                with path.open(errors="replace") as log:
                    found += [f"{component}: {line.rstrip()}" for line in log if pod in line]
        return found[-limit:]

    @classmethod
    def from_stack(cls, stack: Any, work_dir: Path) -> NodeBackend:
        """From the `stack` fixture; the address for Pods is stack-wide, so it comes from the env file."""
        env = read_env_file(stack.stack_dir / "env")
        _require_node(env.get("LAGPILOT_NODE") == "1", stack.node_images)
        return cls(kubeconfig=stack.kubeconfig, bin_dir=stack.bin_dir, stack_dir=stack.stack_dir,
                   kafka_bootstrap=stack.kafka_bootstrap, pod_kafka_bootstrap=env["KAFKA_PODS_BOOTSTRAP_SERVERS"],
                   images=stack.node_images, work_dir=work_dir)

    @classmethod
    def from_stack_up(cls, work_dir: Path) -> NodeBackend:
        """Runs `hack/stack.py up` (reuses what runs; builds this checkout's images if they are new) and
        reads the endpoints and this checkout's image table from what it prints."""
        result = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "up"], capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"could not start the local stack:\n{result.stderr[-4000:]}")
        return cls.from_env(parse_env_lines(result.stdout), work_dir)

    @classmethod
    def from_env(cls, env: dict[str, str], work_dir: Path) -> NodeBackend:
        """From a running stack's `export` lines (`.stack/env`, or what `stack.py up` printed): nothing
        is started, so a stack someone else runs is used as it is."""
        images = json.loads(Path(env["LAGPILOT_NODE_IMAGES"]).read_text()) if "LAGPILOT_NODE_IMAGES" in env else {}
        _require_node(env.get("LAGPILOT_NODE") == "1", images)
        return cls(kubeconfig=env["KUBECONFIG"], bin_dir=Path(env["LAGPILOT_BIN_DIR"]),
                   stack_dir=Path(env["LAGPILOT_STACK_DIR"]), kafka_bootstrap=env["KAFKA_BOOTSTRAP_SERVERS"],
                   pod_kafka_bootstrap=env["KAFKA_PODS_BOOTSTRAP_SERVERS"], images=images, work_dir=work_dir)

    def start(self) -> None:
        apply_crd(self.kubectl)

    def stop(self) -> None:
        """Nothing of its own to stop: each scenario's namespace, operator and Pods go with the scenario."""

    def runtime_command(self, *args: str) -> list[str]:
        return ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *args]

    # -- broker outage ----------------------------------------------------------------------------------

    def with_broker(self, broker: PrivateBroker) -> NodeBackend:
        """This backend with a Kafka broker of its own: same control plane and node, other Kafka."""
        view = copy.copy(self)
        view.kafka_bootstrap = broker.bootstrap
        view.pod_kafka_bootstrap = broker.pod_bootstrap
        view.stack_dir = broker.stack_dir
        return view

    def _broker_pid(self) -> int:
        pid = int((self.stack_dir / "pids" / "kafka.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"kafka.Kafka" not in cmdline:
            raise RuntimeError(f"pid {pid} from the stack's kafka.pid is not the broker")
        return pid

    @contextlib.contextmanager
    def broker_unresponsive(self) -> Iterator[None]:
        """SIGSTOP the broker for the duration of the block, SIGCONT it after, and wait until it answers.

        Unreachable (connections hang, requests time out) while its data stays. Holds the stack's own
        lock (`<stack>/lock`, the one `hack/stack.py up/down` take) meanwhile: an `up` would otherwise
        see a broker that does not answer and replace it with fresh storage.
        """
        with (self.stack_dir / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pid = self._broker_pid()
            os.kill(pid, signal.SIGSTOP)
            try:
                yield
            finally:
                os.kill(pid, signal.SIGCONT)
                wait_until_broker_answers(self.kafka_bootstrap)


class PrivateBroker:
    """A Kafka broker of its own (`hack/stack.py`'s recipe, its own folder and free ports), stopped by pid.

    With `node_ip`, the node's listener for Pods on the bridge address, on a port of its own; without it
    (bench/fleet_bench.py: no Pod reads it) no such listener. `ports` names the ports to use (KAFKA,
    KAFKA_CONTROLLER, KAFKA_SASL, KAFKA_SCRAM, KAFKA_MTLS, and KAFKA_PODS with a node) instead of free ones,
    for callers held to a range of ports.
    """

    LISTENERS = ("KAFKA", "KAFKA_CONTROLLER", "KAFKA_SASL", "KAFKA_SCRAM", "KAFKA_MTLS")

    def __init__(self, stack_dir: Path, node_ip: str | None, ports: dict[str, int] | None = None) -> None:
        self.stack_dir = stack_dir
        self.ports = dict(ports) if ports else {name: free_port() for name in self.LISTENERS}
        if node_ip is not None and "KAFKA_PODS" not in self.ports:
            self.ports["KAFKA_PODS"] = free_port(node_ip)
        self.bootstrap = f"127.0.0.1:{self.ports['KAFKA']}"
        self.pod_bootstrap = f"{node_ip}:{self.ports['KAFKA_PODS']}" if node_ip is not None else None
        self._env = {**os.environ, "LAGPILOT_STACK_DIR": str(stack_dir),
                     "LAGPILOT_NODE": "0" if node_ip is None else "1",
                     **{f"LAGPILOT_{name}_PORT": str(number) for name, number in self.ports.items()}}

    def _stack(self, statement: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """One statement of hack/stack.py with this broker's folder and ports (never `down`: that clears
        the machine-wide node)."""
        script = ("import sys; sys.path.insert(0, 'hack'); import stack;"
                  "svc = next(s for s in stack.SERVICES if s.name == 'kafka');" + statement)
        return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=self._env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def start(self) -> PrivateBroker:
        result = self._stack("stack.start_process(svc); stack.wait_ready(svc)", 180)
        if result.returncode != 0:
            self.stop()
            raise RuntimeError(f"the private Kafka broker did not start:\n{result.stderr[-3000:]}")
        wait_for_group_coordinator(self.bootstrap, 90)
        return self

    def stop(self) -> None:
        self._stack("stack.stop_process(svc.name); stack.remove_kafka_data()", 90)

"""The fault primitives of e2e/faults.py on a real Pod: a SIGKILL through containerd restarts the container;
latency and a partition toward the broker hold only while in force, only in the Pod's netns, and leave no
rule behind in the host's root netns (nor in the Pod's once undone)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from e2e import faults

from support import unique_name, wait_for

pytestmark = pytest.mark.integration

# Three TCP connects to the broker's Pod listener from inside the Pod: each takes one round trip.
CONNECT_TIMES = """
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
for _ in range(3):
    started = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=3).close()
        print(round((time.monotonic() - started) * 1000, 1))
    except OSError:
        print("timeout")
"""


def _pod(stack: Any, namespace: str) -> str:
    if os.environ.get("LAGPILOT_NODE") != "1" or "e2e-worker" not in stack.node_images:
        pytest.fail("needs the real node: run the stack with LAGPILOT_NODE=1", pytrace=False)
    name = unique_name("faults")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
           "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
               "name": "worker", "image": stack.node_images["e2e-worker"], "imagePullPolicy": "Never",
               "command": ["python3", "-c", "import time; time.sleep(3600)"]}]}}
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    return name


def _connects(stack: Any, namespace: str, pod: str, broker: faults.Endpoint) -> list[str]:
    out: str = stack.kubectl("exec", "-n", namespace, pod, "--", "python3", "-c", CONNECT_TIMES, broker.host,
                        str(broker.port), timeout=60).stdout
    return out.split()


def test_latency_and_partition_hold_only_while_in_force_and_leave_nothing(stack: Any, namespace: str,
                                                                          tmp_path: Path) -> None:
    pod = _pod(stack, namespace)
    broker = faults.Endpoint.parse(os.environ["KAFKA_PODS_BOOTSTRAP_SERVERS"])
    handle = faults.NodeRuntime(stack.kubectl).pod(namespace, pod)

    assert all(float(ms) < 150 for ms in _connects(stack, namespace, pod, broker))
    with faults.latency(handle, broker, 200, tmp_path / "delay.log"):
        assert len(faults.netns_fault_rules(handle.netns)) == 1
        assert faults.host_fault_rules() == []
        delayed = _connects(stack, namespace, pod, broker)
    assert all(200 <= float(ms) < 1000 for ms in delayed), delayed
    assert "released" in (tmp_path / "delay.log").read_text()
    assert faults.netns_fault_rules(handle.netns) == []
    assert all(float(ms) < 150 for ms in _connects(stack, namespace, pod, broker))

    with faults.partition(handle, broker):
        assert len(faults.netns_fault_rules(handle.netns)) == 2
        assert faults.host_fault_rules() == []
        cut = _connects(stack, namespace, pod, broker)
    assert cut == ["timeout"] * 3
    assert faults.netns_fault_rules(handle.netns) == []
    assert all(float(ms) < 150 for ms in _connects(stack, namespace, pod, broker))
    assert faults.host_fault_rules() == []
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"


def test_sigkill_through_the_runtime_restarts_the_container(stack: Any, namespace: str) -> None:
    pod = _pod(stack, namespace)
    runtime = faults.NodeRuntime(stack.kubectl)
    killed = runtime.kill_container(namespace, pod)
    started = time.monotonic()

    def restarted() -> dict[str, Any] | None:
        status = json.loads(stack.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)["status"]
        container = status["containerStatuses"][0]
        return container if container.get("restartCount", 0) >= 1 and "running" in container["state"] else None

    container = wait_for(restarted, 60, f"{pod} restarted after the SIGKILL")
    assert container["lastState"]["terminated"]["exitCode"] == 137   # 128 + SIGKILL
    assert faults.container_id({"status": {"containerStatuses": [container]}}, "worker") != killed.container_id
    print(f"\nSIGKILL through containerd -> container running again: {time.monotonic() - started:.1f} s")

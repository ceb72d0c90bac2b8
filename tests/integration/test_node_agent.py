"""The kubelet test double (e2e/node_agent.py) against the real control plane: the controller-manager and the
scheduler create and bind the Pods, the double runs them as local processes and reports their status."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from e2e.node_agent import (
    TEST_DOUBLE_KEY,
    ContainerView,
    KubeletDouble,
    PodConfigError,
    Termination,
    container_argv,
    exit_status,
    expand_references,
    render_status,
    resolve_env,
    restart_delay,
)
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from support import wait_for

if TYPE_CHECKING:
    from conftest import Stack

pytestmark = pytest.mark.integration

# A stand-in for a worker: answers /readyz and /env on the port the double assigns, records SIGTERM.
SERVER = textwrap.dedent("""
    import http.server, json, os, pathlib, signal, sys

    name = os.environ["POD_NAME"]
    markers = pathlib.Path(os.environ["MARKER_DIR"])
    keys = ("POD_NAME", "POD_NAMESPACE", "POD_IP", "GREETING", "SECRET_TOKEN", "CM_COLOR", "KUBECONFIG",
            "LAGPILOT_HTTP_PORT", "LAGPILOT_HTTP_HOST")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/readyz":
                body = b"ok"
            elif self.path == "/env":
                body = json.dumps({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:],
                                   "pid": os.getpid()}).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def on_term(signum, frame):
        if os.environ.get("IGNORE_SIGTERM") == "1":
            print("TERM ignored", flush=True)
            return
        (markers / f"{name}.terminated").write_text(str(os.getpid()))
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    server = http.server.ThreadingHTTPServer(
        (os.environ["LAGPILOT_HTTP_HOST"], int(os.environ["LAGPILOT_HTTP_PORT"])), Handler)
    print("serving", name, flush=True)
    server.serve_forever()
""")


@pytest.fixture
def core(stack: Stack) -> Iterator[client.CoreV1Api]:
    api = client.ApiClient(_configuration(stack.kubeconfig))
    yield client.CoreV1Api(api)
    api.close()  # type: ignore[no-untyped-call]


def _configuration(kubeconfig: str) -> client.Configuration:
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    return dict(json.loads(call(*args, _preload_content=False, **kwargs).data))


@pytest.fixture
def agent(stack: Stack, namespace: str, tmp_path: Path, unique_name: Callable[[str], str]) -> Iterator[KubeletDouble]:
    double = KubeletDouble(stack.kubeconfig, unique_name("node"), tmp_path / "logs", namespaces={namespace})
    double.start()
    try:
        yield double
    finally:
        double.stop()


def pods(core: client.CoreV1Api, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = raw(core.list_namespaced_pod, namespace, label_selector=selector)["items"]
    return items


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    statuses: list[dict[str, Any]] = pod.get("status", {}).get("containerStatuses") or [{}]
    return statuses[0]


def fetch_json(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return dict(json.loads(response.read()))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def server_container(script: Path, markers: Path, **extra_env: str) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "GREETING", "value": "hello"},
        {"name": "MARKER_DIR", "value": str(markers)},
        *({"name": k, "value": v} for k, v in extra_env.items()),
    ]
    return {
        "name": "web",
        "image": "no-such-image:never-pulled",
        "command": ["python", str(script)],
        "args": ["--greeting=$(GREETING)", "--literal=$$(GREETING)"],
        "env": env,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1},
    }


def test_deployment_pods_run_as_processes_scale_down_with_sigterm_and_restart_after_sigkill(
        stack: Stack, namespace: str, agent: KubeletDouble, core: client.CoreV1Api, tmp_path: Path) -> None:
    script, markers = tmp_path / "server.py", tmp_path / "markers"
    script.write_text(SERVER)
    markers.mkdir()
    stack.kubectl("-n", namespace, "create", "secret", "generic", "creds", "--from-literal=token=s3cret")
    stack.kubectl("-n", namespace, "create", "configmap", "settings", "--from-literal=color=teal")
    container = server_container(script, markers)
    container["env"] += [
        {"name": "SECRET_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "CM_COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
    ]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [container], "terminationGracePeriodSeconds": 10,
                                  **agent.placement()}},
        },
    }
    stack.kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(deployment))

    node = raw(core.read_node, agent.node_name)
    assert node["metadata"]["labels"][TEST_DOUBLE_KEY] == "kubelet"
    assert node["metadata"]["annotations"][TEST_DOUBLE_KEY] == "kubelet"

    def two_ready() -> list[dict[str, Any]] | None:
        found = pods(core, namespace, "app=web")
        ok = len(found) == 2 and all(p["status"].get("phase") == "Running" and is_ready(p) for p in found)
        return found if ok else None

    running = wait_for(two_ready, 90, "2 Running, Ready pods")
    for pod in running:
        name = pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == agent.node_name  # bound by the real scheduler
        assert pod["status"]["podIP"] == "127.0.0.1"
        port = agent.pod_port(name)
        assert port is not None
        seen = fetch_json(port, "/env")
        assert seen["env"] == {
            "POD_NAME": name, "POD_NAMESPACE": namespace, "POD_IP": "127.0.0.1", "GREETING": "hello",
            "SECRET_TOKEN": "s3cret", "CM_COLOR": "teal", "KUBECONFIG": stack.kubeconfig,
            "LAGPILOT_HTTP_PORT": str(port), "LAGPILOT_HTTP_HOST": "127.0.0.1"}
        assert seen["argv"] == ["--greeting=hello", "--literal=$(GREETING)"]
        assert seen["pid"] == agent.pod_pid(name)
        assert "serving" in agent.log_path(name).read_text()
    wait_for(lambda: raw(client.AppsV1Api(core.api_client).read_namespaced_deployment, "web", namespace)
             .get("status", {}).get("availableReplicas") == 2, 30, "deployment available")

    # Scale down: the ReplicaSet controller deletes one Pod gracefully; the double SIGTERMs its process,
    # which exits, and then removes the Pod from the API.
    pids = {p["metadata"]["name"]: agent.pod_pid(p["metadata"]["name"]) for p in running}
    stack.kubectl("-n", namespace, "scale", "deployment/web", "--replicas=1")
    remaining = wait_for(lambda: p if len(p := pods(core, namespace, "app=web")) == 1 else None, 60,
                         "one pod left after scale-down")[0]
    survivor = remaining["metadata"]["name"]
    (removed,) = set(pids) - {survivor}
    removed_pid = pids[removed]
    assert removed_pid is not None
    assert (markers / f"{removed}.terminated").read_text() == str(removed_pid)  # it got SIGTERM and exited
    assert not pid_alive(removed_pid)

    # Fault injection: SIGKILL the survivor's process; restartPolicy Always restarts it and counts it.
    killed = agent.kill_pod_process(survivor, signal.SIGKILL)
    restarted = wait_for(
        lambda: p if (container_status(p := raw(core.read_namespaced_pod, survivor, namespace))
                      .get("restartCount") == 1 and is_ready(p)) else None,
        60, "restartCount 1 and Ready again")
    last = container_status(restarted)["lastState"]["terminated"]
    assert (last["exitCode"], last["signal"]) == (128 + signal.SIGKILL, signal.SIGKILL)
    new_pid = agent.pod_pid(survivor)
    assert new_pid is not None and new_pid != killed
    assert not pid_alive(killed)
    new_port = agent.pod_port(survivor)
    assert new_port is not None and fetch_json(new_port, "/env")["pid"] == new_pid

    started = agent.started_pids()
    assert len(started) == 3  # two replicas and one restart
    agent.stop()
    assert agent.live_pids() == []
    assert not any(pid_alive(pid) for pid in started)
    with pytest.raises(ApiException) as missing:
        raw(core.read_node, agent.node_name)
    assert missing.value.status == 404


def test_terminal_phase_and_sigkill_after_the_grace_period(
        stack: Stack, namespace: str, agent: KubeletDouble, core: client.CoreV1Api, tmp_path: Path) -> None:
    script, markers = tmp_path / "server.py", tmp_path / "markers"
    script.write_text(SERVER)
    markers.mkdir()
    failing = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "exits-3", "labels": {"app": "once"}},
               "spec": {"restartPolicy": "Never", **agent.placement(),
                        "containers": [{"name": "main", "image": "none", "command": ["python", "-c",
                                                                                     "raise SystemExit(3)"]}]}}
    stubborn_container = server_container(script, markers, IGNORE_SIGTERM="1")
    stubborn = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn", "labels": {"app": "stubborn"}},
                "spec": {"terminationGracePeriodSeconds": 2, "containers": [stubborn_container], **agent.placement()}}
    for manifest in (failing, stubborn):
        stack.kubectl("-n", namespace, "apply", "-f", "-", input_text=json.dumps(manifest))

    failed = wait_for(lambda: p if (p := raw(core.read_namespaced_pod, "exits-3", namespace))["status"]
                      .get("phase") == "Failed" else None, 60, "exits-3 Failed")
    status = container_status(failed)
    assert status["state"]["terminated"]["exitCode"] == 3
    assert status["restartCount"] == 0
    assert not is_ready(failed)

    wait_for(lambda: is_ready(raw(core.read_namespaced_pod, "stubborn", namespace)), 60, "stubborn Ready")
    pid = agent.pod_pid("stubborn")
    assert pid is not None
    deleted_at = time.monotonic()
    stack.kubectl("-n", namespace, "delete", "pod", "stubborn", "--wait=false")

    def gone() -> bool:
        try:
            raw(core.read_namespaced_pod, "stubborn", namespace)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, 30, "stubborn pod removed")
    elapsed = time.monotonic() - deleted_at
    assert elapsed >= 1.9, f"removed after {elapsed:.1f}s, before the 2 s grace period"
    assert "TERM ignored" in agent.log_path("stubborn").read_text()  # SIGTERM first, SIGKILL after the grace
    assert not pid_alive(pid)
    assert not (markers / "stubborn.terminated").exists()


# --- the pure pieces, table-driven (no stack needed) ----------------------------------------------------------


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("$(A)-$(B)", {"A": "1", "B": "2"}, "1-2"),
    ("$(MISSING)", {}, "$(MISSING)"),
    ("$$(A)", {"A": "1"}, "$(A)"),
    ("$$$(A)", {"A": "1"}, "$1"),
    ("no refs $ here", {}, "no refs $ here"),
])
def test_expand_references_follows_kubernetes_rules(text: str, env: dict[str, str], expected: str) -> None:
    assert expand_references(text, env) == expected


def test_resolve_env_orders_sources_and_reports_missing_keys() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}}, "spec": {}}
    secrets = {("ns", "s", "k"): "v"}
    container = {"envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
                 "env": [{"name": "CM_A", "value": "override-$(CM_A)"},
                         {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                         {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x", "optional": True}}},
                         {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}}]}
    env = resolve_env(pod, container, secret=lambda ns, n, k: secrets.get((ns, n, k)), config_map=lambda *_: None,
                      list_config_map=lambda ns, n: {"A": "a"} if (ns, n) == ("ns", "cm") else None)
    assert env == {"CM_A": "override-a", "S": "v", "APP": "x"}
    with pytest.raises(PodConfigError):
        resolve_env(pod, {"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}]},
                    secret=lambda *_: None, config_map=lambda *_: None)


def test_container_argv_maps_the_command_or_the_image() -> None:
    commands = {"lagpilot-worker": ["/py", "-m", "lagpilot_worker.cli"]}
    assert container_argv({"command": ["lagpilot-worker", "--x"], "args": ["$(V)"]}, {"V": "1"}, commands, {}) == [
        "/py", "-m", "lagpilot_worker.cli", "--x", "1"]
    assert container_argv({"command": ["/bin/true"]}, {}, commands, {}) == ["/bin/true"]
    assert container_argv({"image": "img:1", "args": ["a"]}, {}, {}, {"img:1": ["/entry"]}) == ["/entry", "a"]
    with pytest.raises(PodConfigError):
        container_argv({"name": "c", "image": "unknown"}, {}, commands, {})


def test_restart_backoff_and_exit_status() -> None:
    assert [restart_delay(n, 1.0, 10.0) for n in range(1, 7)] == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert exit_status(-9) == (137, "Error", 9)
    assert exit_status(0) == (0, "Completed", None)
    assert exit_status(3) == (3, "Error", None)


def test_render_status_keeps_foreign_conditions_and_reports_restarts() -> None:
    scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    pod = {"status": {"conditions": [scheduled]}}
    crash = Termination(137, "Error", 9, 100.0, 110.0, "testdouble://1")
    view = ContainerView(name="c", image="i", pid=42, started_at=120.0, ready=True, restart_count=1,
                         last_termination=crash, waiting=None, finished=False, sandbox_at=90.0)
    status = render_status(pod, view)
    assert status["phase"] == "Running"
    assert scheduled in status["conditions"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    (container,) = status["containerStatuses"]
    assert container["restartCount"] == 1 and "running" in container["state"]
    assert container["lastState"]["terminated"]["exitCode"] == 137
    done = render_status(pod, ContainerView(name="c", image="i", pid=None, started_at=None, ready=False,
                                            restart_count=0, last_termination=Termination(0, "Completed", None,
                                                                                          1.0, 2.0, "x"),
                                            waiting=None, finished=True, sandbox_at=0.0))
    assert done["phase"] == "Succeeded"
    assert done["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

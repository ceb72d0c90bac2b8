"""Every version of the local stack is pinned once, in hack/versions.env; the build files must agree."""

from __future__ import annotations

import base64
import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HACK = Path(__file__).resolve().parents[2] / "hack"


def pins() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (HACK / "versions.env").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_kubernetes_wrapper_module_matches_pins() -> None:
    go_mod = (HACK / "k8s" / "go.mod").read_text()
    assert f"require k8s.io/kubernetes {pins()['KUBERNETES_VERSION']}" in go_mod
    staging = re.findall(r"^\s+(k8s\.io/\S+) => \1 (\S+)$", go_mod, flags=re.MULTILINE)
    assert len(staging) >= 30, "every staging module of k8s.io/kubernetes needs a replace line"
    assert {version for _, version in staging} == {pins()["KUBERNETES_STAGING_VERSION"]}


def test_etcd_and_helm_modules_match_pins() -> None:
    assert f"go.etcd.io/etcd/server/v3 {pins()['ETCD_VERSION']}" in (HACK / "etcd" / "go.mod").read_text()
    assert f"helm.sh/helm/v3 {pins()['HELM_VERSION']}" in (HACK / "helm" / "go.mod").read_text()


def test_kafka_pom_defaults_match_pins() -> None:
    pom = (HACK / "kafka" / "pom.xml").read_text()
    assert f"<kafka.version>{pins()['KAFKA_VERSION']}</kafka.version>" in pom
    assert f"<log4j.version>{pins()['LOG4J_VERSION']}</log4j.version>" in pom


def test_kafka_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # A dash-first id made `kafka-storage format -t <id>` fail in CI (argparse read it as an option).
    spec = importlib.util.spec_from_file_location("lagpilot_stack", HACK / "stack.py")
    assert spec is not None and spec.loader is not None
    stack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, stack)  # dataclasses look their module up there
    spec.loader.exec_module(stack)
    dash_first = b"\xf8" + bytes(15)  # base64url of 0b111110... is '-'
    draws = iter([dash_first, dash_first, bytes(range(16))])
    cluster_id = stack.new_kafka_cluster_id(lambda size: next(draws))
    assert cluster_id == base64.urlsafe_b64encode(bytes(range(16))).decode().rstrip("=")
    assert len(cluster_id) == 22


def _load_stack(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("lagpilot_stack", HACK / "stack.py")
    assert spec is not None and spec.loader is not None
    stack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, stack)
    spec.loader.exec_module(stack)
    return stack


def test_a_broker_without_the_tls_listeners_is_not_ready_so_up_replaces_it(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    # A broker started by an older stack.py answers on PLAINTEXT but has no SCRAM/mTLS listener: `up`
    # must restart it instead of reusing it, or the TLS tests could never connect.
    monkeypatch.setenv("LAGPILOT_STACK_DIR", str(tmp_path))
    stack = _load_stack(monkeypatch)
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "server.properties").write_text(stack.kafka_properties())
    listening = {stack.PORTS[key] for key in ("kafka", "kafka-controller", "kafka-sasl", "kafka-pods")}
    monkeypatch.setattr(stack, "kafka_answers",
                        lambda host=stack.HOST, port_number=None: (port_number or stack.PORTS["kafka"]) in listening)
    monkeypatch.setattr(stack, "port_open", lambda number: number in listening)
    assert not stack.kafka_ready()
    listening |= {stack.PORTS["kafka-scram"], stack.PORTS["kafka-mtls"]}
    assert stack.kafka_ready()
    listening.discard(stack.PORTS["kafka-pods"])  # with the node (the default), the Pods' listener too
    assert not stack.kafka_ready()
    monkeypatch.setenv("LAGPILOT_NODE", "0")
    (tmp_path / "kafka" / "server.properties").write_text(stack.kafka_properties())  # one without the node's
    assert stack.kafka_ready()


def test_a_broker_started_with_other_settings_is_not_ready_so_up_replaces_it(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    # Every listener answers, but the broker runs on the settings an older stack.py wrote (a test may rely
    # on a newer one, such as the lowest group session): `up` restarts it.
    monkeypatch.setenv("LAGPILOT_STACK_DIR", str(tmp_path))
    stack = _load_stack(monkeypatch)
    monkeypatch.setattr(stack, "kafka_answers", lambda host=stack.HOST, port_number=None: True)
    monkeypatch.setattr(stack, "port_open", lambda number: True)
    assert not stack.kafka_ready(), "no record of the settings it started with"
    (tmp_path / "kafka").mkdir()
    written = stack.kafka_properties()
    (tmp_path / "kafka" / "server.properties").write_text(written.replace("group.consumer.min.session", "#"))
    assert not stack.kafka_ready()
    (tmp_path / "kafka" / "server.properties").write_text(written)
    assert stack.kafka_ready()


def test_the_broker_config_has_the_scram_and_mtls_listeners_on_their_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAGPILOT_KAFKA_SCRAM_PORT", "29095")
    monkeypatch.setenv("LAGPILOT_KAFKA_MTLS_PORT", "29096")
    stack = _load_stack(monkeypatch)
    properties = dict(line.split("=", 1) for line in stack.kafka_properties().splitlines() if "=" in line)
    assert "SCRAM://127.0.0.1:29095" in properties["listeners"]
    assert "MTLS://127.0.0.1:29096" in properties["advertised.listeners"]
    assert "SCRAM:SASL_SSL" in properties["listener.security.protocol.map"]
    assert "MTLS:SSL" in properties["listener.security.protocol.map"]
    assert properties["listener.name.scram.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert properties["listener.name.mtls.ssl.client.auth"] == "required"
    env = "\n".join(stack.env_lines())
    assert "KAFKA_SCRAM_BOOTSTRAP_SERVERS=127.0.0.1:29095" in env
    assert "KAFKA_MTLS_BOOTSTRAP_SERVERS=127.0.0.1:29096" in env


def test_a_disk_too_full_for_the_kubelet_is_named_before_the_node_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    # A CI rehearsal on a disk 98 % full: the kubelet reported DiskPressure and admitted no Pod, and every
    # Pod-running test timed out waiting. `up` now says so first.
    stack = _load_stack(monkeypatch)
    gib = 2**30
    assert stack.node_disk_problem(34 * gib, 252 * gib) is None
    problem = stack.node_disk_problem(int(2.6 * gib), 252 * gib)
    assert problem is not None and "2.6 GiB" in problem and "DiskPressure" in problem
    assert stack.node_disk_problem(0, 0) is None  # unknown size: no verdict


def test_the_machine_s_node_is_taken_over_only_from_a_stack_that_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _load_stack(monkeypatch)
    ours, theirs = Path("/work/a/.stack/node"), Path("/tmp/clone/.stack/node")
    assert stack.node_takeover(None, ours, owner_alive=False) == "ours"
    assert stack.node_takeover(ours, ours, owner_alive=True) == "ours"
    assert stack.node_takeover(theirs, ours, owner_alive=False) == "clear"   # killed with its session
    assert stack.node_takeover(theirs, ours, owner_alive=True) == "refuse"   # another checkout's, running


def test_a_stack_folder_reached_through_a_symlink_knows_its_running_processes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A worktree whose `.stack` was a symlink to the running stack's folder ran `up`: `running_pid` looks
    for the state folder's path in a process's command line, did not find the symlink's path in the
    processes started with the real one, and `up` cleared the running node as a dead one."""
    real = tmp_path / "real-stack"
    (real / "pids").mkdir(parents=True)
    link = tmp_path / "worktree-stack"
    link.symlink_to(real)
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(60)", str(real)])
    try:
        (real / "pids" / "kafka.pid").write_text(str(sleeper.pid))
        monkeypatch.setenv("LAGPILOT_STACK_DIR", str(link))
        stack = _load_stack(monkeypatch)
        assert real == stack.STATE
        assert stack.running_pid("kafka") == sleeper.pid
    finally:
        sleeper.kill()
        sleeper.wait()

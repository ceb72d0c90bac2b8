"""The local stack is real: Kafka lag through the admin API, a working control plane, Prometheus scraping."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_api_client import PrometheusConnect

from support import free_port, pending_deployment, unique_name, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def test_kafka_lag_from_admin_api(kafka_bootstrap: str, create_topic) -> None:  # type: ignore[no-untyped-def]
    topic = create_topic("stack-lag", partitions=3)
    group = unique_name("stack-group")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    per_partition = {0: 10, 1: 20, 2: 30}
    for partition, count in per_partition.items():
        for i in range(count):
            producer.produce(topic, value=f"{partition}-{i}".encode(), partition=partition)
    assert producer.flush(30) == 0

    # A group member consumes and commits by hand: 4 from partition 0, 5 from partition 1, none from 2.
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, 0, 0), TopicPartition(topic, 1, 0)])
    seen = {0: 0, 1: 0}
    while seen[0] < 4 or seen[1] < 5:
        message = consumer.poll(10)
        assert message is not None and message.error() is None, "no message within 10 s"
        if seen[message.partition()] < {0: 4, 1: 5}[message.partition()]:
            seen[message.partition()] += 1
    consumer.commit(offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 5)], asynchronous=False)
    consumer.close()

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    partitions = [TopicPartition(topic, p) for p in per_partition]
    committed_future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, partitions)])[group]
    committed = {tp.partition: tp.offset for tp in committed_future.result(timeout=30).topic_partitions}
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions})
    end = {tp.partition: future.result(timeout=30).offset for tp, future in ends.items()}

    assert end == per_partition
    assert committed[0] == 4 and committed[1] == 5 and committed[2] < 0  # -1001: never committed
    lag = {p: end[p] - committed[p] for p in (0, 1)}
    assert lag == {0: 6, 1: 15}


def test_control_plane_runs_deployments_and_crds(stack, namespace: str) -> None:  # type: ignore[no-untyped-def]
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.stacktest.lagpilot.io"},
        "spec": {"group": "stacktest.lagpilot.io", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "size": {"type": "integer", "minimum": 1}}}}}}}]},
    }
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(crd))
    # Polled: kubectl 1.34's `wait --for=condition=Established` fails at once on a CRD created a moment ago
    # whose conditions the apiserver has not set yet (".status.conditions accessor error: <nil>").
    wait_for(lambda: stack.kubectl("get", "crd", "widgets.stacktest.lagpilot.io", "-o",
                                   "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                                   check=False).stdout == "True", 60, "the test CRD to be Established")
    widget = {"apiVersion": "stacktest.lagpilot.io/v1", "kind": "Widget", "metadata": {"name": "w1"},
              "spec": {"size": 3}}
    stack.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(widget))
    assert stack.kubectl("get", "widget", "w1", "-n", namespace, "-o", "jsonpath={.spec.size}").stdout == "3"
    bad = stack.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                        input_text=json.dumps({**widget, "spec": {"size": 0}}))
    assert bad.returncode != 0 and "should be greater than or equal to 1" in bad.stderr

    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input_text=json.dumps(pending_deployment("web", 2, image="registry.invalid/web:1")))
    wait_for(lambda: stack.kubectl("get", "replicasets", "-n", namespace, "-l", "app=web", "-o", "name").stdout,
             60, "the controller-manager to create a ReplicaSet")
    wait_for(lambda: len(stack.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
                         .stdout.split()) == 2, 60, "two Pods (Pending: they select no node)")

    stack.kubectl("patch", "deployment", "web", "-n", namespace, "--subresource=scale", "--type=merge",
                  "-p", '{"spec":{"replicas":4}}')
    wait_for(lambda: len(stack.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "name")
                         .stdout.split()) == 4, 60, "four Pods after scaling through the scale subresource")
    scale = json.loads(stack.kubectl("get", "--raw",
                                     f"/apis/apps/v1/namespaces/{namespace}/deployments/web/scale").stdout)
    assert scale["spec"]["replicas"] == 4


class _MetricsHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"# TYPE lagpilot_stack_probe gauge\nlagpilot_stack_probe 42\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def test_prometheus_scrapes_and_answers_queries(stack) -> None:  # type: ignore[no-untyped-def]
    server = HTTPServer(("127.0.0.1", 0), _MetricsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    job = unique_name("probe")
    target = stack.add_scrape_target(job, f"127.0.0.1:{server.server_port}", {"probe": job})
    try:
        prometheus = PrometheusConnect(url=stack.prometheus_url, disable_ssl=True)
        result = wait_for(lambda: prometheus.custom_query(f'lagpilot_stack_probe{{probe="{job}"}}'), 60,
                          "Prometheus to scrape the test's target")
        assert float(result[0]["value"][1]) == 42.0
    finally:
        target.unlink()
        server.shutdown()


def test_port_taken_stops_with_cause_and_fix(tmp_path: Path, stack) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        # Control plane only (LAGPILOT_NODE=0): the node's bridge, iptables and containerd are the machine's,
        # and they belong to the running stack; this second one only has to stop at the port check.
        env = {**os.environ, "LAGPILOT_STACK_DIR": str(tmp_path / "state"), "LAGPILOT_KAFKA_PORT": str(taken),
               "LAGPILOT_NODE": "0"}
        result = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "up"], env=env,
                                capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2
    assert f"port {taken} on 127.0.0.1 (kafka) is already in use" in result.stderr
    assert "LAGPILOT_KAFKA_PORT=<free port>" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_checkout_s_stack_refuses_to_start_next_to_the_running_node(
        tmp_path: Path, stack) -> None:  # type: ignore[no-untyped-def]
    """The machine runs one node; another checkout's `up` stops before it starts anything, and says why."""
    kubelet_before = _pids_named("kubelet")
    env = {**os.environ, "LAGPILOT_STACK_DIR": str(tmp_path / "state"), "LAGPILOT_NODE": "1"}
    result = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "up"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"the machine's node is running for the stack of {stack.stack_dir.resolve()}" in result.stderr
    assert "LAGPILOT_NODE=0" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "state" / "kafka").exists(), "nothing of the second stack may have started"
    assert _pids_named("kubelet") == kubelet_before != []


def _pids_named(name: str) -> list[int]:
    """The processes whose program is `name`, without their forked children that have not exec'd yet (a
    kubelet forks for its mounts and probes: such a child shows the kubelet's command line for a moment)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError):
                if Path((entry / "cmdline").read_bytes().split(b"\0")[0].decode()).name == name:
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return sorted(pid for pid, parent in parents.items() if parent not in parents)


def test_missing_java_names_the_fix(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "openssl").symlink_to("/usr/bin/openssl")
    env = {**os.environ, "PATH": str(tools), "LAGPILOT_CACHE_DIR": str(tmp_path / "cache"),
           "LAGPILOT_STACK_DIR": str(tmp_path / "state")}
    result = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "install"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "`java` is not on PATH" in result.stderr and "install a Java 17+ JDK" in result.stderr
    assert "Traceback" not in result.stderr


def test_stack_down_stops_what_it_started(tmp_path: Path, stack) -> None:  # type: ignore[no-untyped-def]
    """A second, Prometheus-only stack in its own folder: `down` leaves none of its processes running."""
    env = {**os.environ, "LAGPILOT_STACK_DIR": str(tmp_path / "state"), "LAGPILOT_PROMETHEUS_PORT": str(free_port()),
           "LAGPILOT_NODE": "0"}  # not the machine's node, which the running stack owns
    script = (
        "import sys; sys.path.insert(0, 'hack'); import stack;"
        "svc = next(s for s in stack.SERVICES if s.name == 'prometheus');"
        "stack.start_process(svc); stack.wait_ready(svc); print(stack.running_pid('prometheus'));"
        # what prepare_kafka leaves in memory for a broker of this stack
        "memory = stack.kafka_memory_dir(); (memory / 'data').mkdir(parents=True);"
        "(memory / 'owner').write_text(str(stack.STATE.resolve())); print(memory)"
    )
    started = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120, check=True)
    pid_line, memory_line = started.stdout.split()
    pid, memory = int(pid_line), Path(memory_line)
    assert Path(f"/proc/{pid}").exists() and (memory / "data").is_dir()
    subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "down"], env=env, check=True, timeout=60)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    assert not memory.exists(), "stack-down left the broker's in-memory data behind"
    # The running stack's machine-wide host cgroup is not this stack's to remove.
    host_cgroup = Path("/sys/fs/cgroup/cpu/lagpilot-host")
    assert host_cgroup.exists() or not stack.node_images, "a control-plane-only stack's down removed the host cgroup"


def test_the_broker_keeps_its_logs_in_memory(stack) -> None:  # type: ignore[no-untyped-def]
    """KRaft fsyncs its metadata log on every write; on a busy disk that stalled the broker for seconds."""
    properties = (Path(stack.stack_dir) / "kafka" / "server.properties").read_text().splitlines()
    log_dirs = Path(next(line.split("=", 1)[1] for line in properties if line.startswith("log.dirs=")))
    assert log_dirs.parent.parent == Path("/dev/shm") and (log_dirs / "meta.properties").exists()
    assert (log_dirs.parent / "owner").read_text().strip() == str(Path(stack.stack_dir).resolve())


def test_tls_listeners_take_the_minted_certificates_and_the_mtls_principal_is_the_cn(  # type: ignore[no-untyped-def]
        stack, create_topic) -> None:
    """SCRAM-SHA-512 over TLS and mTLS answer with the env file's credentials; an ACL on the mTLS principal
    that `.stack/env` names applies to the client certificate (so tests can deny it by that name)."""
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    topic = create_topic("stack-tls")
    scram = AdminClient({"bootstrap.servers": stack.kafka_scram_bootstrap, "security.protocol": "SASL_SSL",
                         "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": stack.kafka_scram_username,
                         "sasl.password": stack.kafka_scram_password, "ssl.ca.location": str(stack.kafka_tls_ca_file)})
    assert scram.list_topics(topic, timeout=30).topics[topic].error is None
    mtls = AdminClient({"bootstrap.servers": stack.kafka_mtls_bootstrap, "security.protocol": "SSL",
                        "ssl.ca.location": str(stack.kafka_tls_ca_file),
                        "ssl.certificate.location": str(stack.kafka_tls_client_cert_file),
                        "ssl.key.location": str(stack.kafka_tls_client_key_file)})
    assert mtls.list_topics(topic, timeout=30).topics[topic].error is None
    plain = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
    pattern = (ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, stack.kafka_mtls_principal, "*",
               AclOperation.ALL, AclPermissionType.DENY)
    plain.create_acls([AclBinding(*pattern)])[AclBinding(*pattern)].result(timeout=30)
    try:
        denied = wait_for(lambda: (e := mtls.list_topics(topic, timeout=30).topics[topic].error) is not None and e,
                          30, "the DENY ACL on the mTLS principal to apply")
        assert denied.name() == "TOPIC_AUTHORIZATION_FAILED"
    finally:
        plain.delete_acls([AclBindingFilter(*pattern)])[AclBindingFilter(*pattern)].result(timeout=30)

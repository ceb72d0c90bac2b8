"""The charts installed the way a user installs them, on the real node: Pods from the project's images.

`helm install lagpilot charts/lagpilot` runs the operator as Pods (in-cluster config, the chart's
ServiceAccount and namespaced RBAC, probes, two peered replicas); `charts/lagpilot-worker` runs the
example worker image with its own ServiceAccount. Nothing here runs outside a container but the test.

Every release watches only its own test namespace (rbac.scope=namespaced): other tests share the stack,
and an operator watching every namespace would scale their resources too.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support import metric_value, unique_name, wait_for

if TYPE_CHECKING:
    from conftest import Stack

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lagpilot"
WORKER_CHART = REPO / "charts" / "lagpilot-worker"
RELEASE = "lagpilot"
OPERATOR_PODS = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
PROBE_SERVED = '"GET /healthz HTTP/1.1" 200'  # kopf's health endpoint answering a probe (aiohttp's access log)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _node_is_up(stack: Stack) -> None:
    if not stack.node_images:
        pytest.fail("these tests need the real node, which LAGPILOT_NODE=0 turned off",
                    pytrace=False)


# --- helpers -------------------------------------------------------------------------------------


def pods_bootstrap(stack: Stack) -> str:
    """Kafka's listener on the node's bridge: what a Pod (the operator too) can reach."""
    for line in (stack.stack_dir / "env").read_text().splitlines():
        if line.startswith("export KAFKA_PODS_BOOTSTRAP_SERVERS="):
            return line.split("=", 1)[1]
    raise AssertionError("KAFKA_PODS_BOOTSTRAP_SERVERS is not in the stack's env file")


def image_values(ref: str) -> dict[str, str]:
    repository, _, tag = ref.rpartition(":")
    return {"repository": repository, "tag": tag, "pullPolicy": "Never"}  # no registry: the node's own image


def kubectl_json(stack: Stack, *args: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", *args, "-o", "json").stdout))


def operator_pods(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    return list(kubectl_json(stack, "pods", "-n", namespace, "-l", OPERATOR_PODS)["items"])


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def exec_in(stack: Stack, namespace: str, pod: str, *command: str,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    return stack.kubectl("exec", "-n", namespace, pod, "--", *command, check=check)


def assert_non_root_and_read_only(stack: Stack, namespace: str, pod: str) -> None:
    assert exec_in(stack, namespace, pod, "id", "-u").stdout.strip() == "10001"
    write = exec_in(stack, namespace, pod, "sh", "-c", "echo x > /probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write


def kill_container(stack: Stack, pod: dict[str, Any]) -> None:
    """SIGKILL the pod's container through containerd, as a crash or the OOM killer would end it."""
    (status,) = pod["status"]["containerStatuses"]
    container_id = status["containerID"].removeprefix("containerd://")
    socket = stack.stack_dir / "node" / "containerd" / "containerd.sock"
    subprocess.run(["ctr", "--address", str(socket), "-n", "k8s.io", "tasks", "kill", "--signal", "SIGKILL",
                    container_id], check=True, capture_output=True, text=True, timeout=60)


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")


def log_time(line: str) -> float:
    """The epoch time of a kopf log line (the container's clock is this machine's, in UTC)."""
    match = LOG_LINE.match(line)
    assert match, line
    stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def active_spans(log: str, end: float) -> list[tuple[float, float]]:
    """When this kopf process acted: from each "Resuming operations" to the next "Pausing operations"
    (a peered kopf starts paused), the last span open until `end`."""
    spans: list[tuple[float, float]] = []
    started: float | None = None
    for line in log.splitlines():
        if "Resuming operations" in line and started is None:
            started = log_time(line)
        elif "Pausing operations" in line and started is not None:
            spans.append((started, log_time(line)))
            started = None
    if started is not None:
        spans.append((started, end))
    return spans


def peering_status(stack: Stack, namespace: str) -> dict[str, dict[str, Any]]:
    found = stack.kubectl("get", "kopfpeering", RELEASE, "-n", namespace, "-o", "json", check=False)
    return dict(json.loads(found.stdout).get("status") or {}) if found.returncode == 0 else {}


def produce(bootstrap: str, topic: str, count: int, partitions: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(count):
        producer.produce(topic, value=json.dumps({"id": i}).encode(), partition=i % partitions)
    assert producer.flush(30) == 0


def kcg_status(stack: Stack, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl_json(stack, "kafkaconsumergroup", name, "-n", namespace).get("status") or {})


def reconciled(stack: Stack, namespace: str, name: str, lag: int) -> dict[str, Any] | None:
    status = kcg_status(stack, namespace, name)
    ready = {c["type"]: c["status"] for c in status.get("conditions") or []}.get("Ready")
    return status if ready == "True" and status.get("totalLag") == lag else None


def deployment_replicas(stack: Stack, namespace: str, name: str) -> int:
    return int(kubectl_json(stack, "deployment", name, "-n", namespace)["spec"].get("replicas") or 0)


@pytest.fixture
def install(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., float]]:
    """install(chart, namespace, values, release=...) -> seconds `helm install` took; uninstalled after."""
    installed: list[tuple[str, str]] = []

    def run(chart: Path, namespace: str, values: dict[str, Any], release: str = RELEASE) -> float:
        values_file = tmp_path / f"{release}-values.yaml"
        values_file.write_text(yaml.safe_dump(values))
        lint = stack.helm("lint", "--strict", str(chart), "-f", str(values_file), check=False)
        assert lint.returncode == 0 and "[WARNING]" not in lint.stdout, lint.stdout + lint.stderr
        installed.append((release, namespace))
        started = time.monotonic()
        stack.helm("install", release, str(chart), "-n", namespace, "-f", str(values_file))
        return started

    yield run
    for release, namespace in reversed(installed):
        stack.helm("uninstall", release, "-n", namespace, "--ignore-not-found", "--wait", "--timeout=120s",
                   check=False)


def operator_values(stack: Stack, replicas: int) -> dict[str, Any]:
    return {"image": image_values(stack.node_images["operator"]), "replicaCount": replicas,
            "rbac": {"scope": "namespaced"}, "logFormat": "full"}


def wait_operator_ready(stack: Stack, namespace: str, replicas: int, started: float) -> list[dict[str, Any]]:
    def all_ready() -> list[dict[str, Any]] | None:
        pods = operator_pods(stack, namespace)
        return pods if len(pods) == replicas and all(is_ready(p) for p in pods) else None

    pods = wait_for(all_ready, 240, f"{replicas} operator pod(s) Ready", interval=0.5)
    print(f"\noperator: helm install -> {replicas} pod(s) Ready: {time.monotonic() - started:.1f} s", file=sys.stderr)
    for pod in pods:
        created = datetime.datetime.fromisoformat(pod["metadata"]["creationTimestamp"])
        ready_at = next(datetime.datetime.fromisoformat(c["lastTransitionTime"])
                        for c in pod["status"]["conditions"] if c["type"] == "Ready")
        print(f"operator pod {pod['metadata']['name']}: create -> Ready {(ready_at - created).total_seconds():.0f} s "
              "(apiserver timestamps, 1 s resolution)", file=sys.stderr)
    return pods


def scale_target(name: str, image: str) -> dict[str, Any]:
    """A Deployment for the operator to scale (the pause image: the failover test scales, nothing consumes)."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 1,
                                       "containers": [{"name": "target", "image": image,
                                                       "imagePullPolicy": "Never"}]}}},
    }


def consumer_group(name: str, bootstrap: str, group: str, topic: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "lagpilot.io/v1alpha1", "kind": "KafkaConsumerGroup", "metadata": {"name": name},
        "spec": {"kafka": {"bootstrapServers": bootstrap}, "groupId": group, "topics": [topic],
                 "scaleTargetRef": {"name": target}, "replicas": {"min": 1, "max": 4},
                 "pool": {"min": 1, "max": 1, "initial": 1}, "lag": {"pollIntervalSeconds": 2},
                 "policy": {"mode": "lagThreshold",
                            "lagThreshold": {"lagPerConsumer": 100, "offsetResetPolicy": "earliest"}}},
    }


# --- the operator chart: two peered replicas, SIGKILL of the leader -------------------------------


def test_operator_chart_runs_peered_pods_and_a_standby_takes_over_from_a_killed_leader(
        stack: Stack, namespace: str, create_topic: Callable[..., str], install: Callable[..., float]) -> None:
    started = install(CHART, namespace, operator_values(stack, replicas=2))
    pods = wait_operator_ready(stack, namespace, 2, started)
    deployment = kubectl_json(stack, "deployment", RELEASE, "-n", namespace)
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == RELEASE  # the chart's own ServiceAccount, bound to its Role
    (container,) = pod_spec["containers"]
    assert container["image"] == stack.node_images["operator"]
    assert container["readinessProbe"]["httpGet"]["path"] == container["livenessProbe"]["httpGet"]["path"]
    for pod in pods:
        assert_non_root_and_read_only(stack, namespace, pod["metadata"]["name"])

    # The election settles: both peers in the peering object, each with its own priority.
    def both_peers() -> dict[str, dict[str, Any]] | None:
        peers = peering_status(stack, namespace)
        return peers if len(peers) == 2 else None

    status = wait_for(both_peers, 60, "both operator pods in the KopfPeering")
    leader_name = max(status, key=lambda pod_name: int(status[pod_name]["priority"]))
    (follower_name,) = set(status) - {leader_name}

    def settled() -> bool:
        now = time.time()
        leader_spans = active_spans(stack.kubectl("logs", "-n", namespace, leader_name).stdout, now)
        follower_spans = active_spans(stack.kubectl("logs", "-n", namespace, follower_name).stdout, now)
        return bool(leader_spans) and leader_spans[-1][1] == now and all(end < now for _, end in follower_spans)

    wait_for(settled, 60, "the leader to act and the standby to pause")
    settled_at = time.time()

    # The leader acts, through the kubernetes Service with the chart's RBAC: a status and a scaled target.
    partitions = 4
    topic = create_topic("chart-node", partitions=partitions)
    stack.kubectl("apply", "-n", namespace, "-f", "-",
                  input_text=json.dumps(scale_target("target", stack.node_images["pause"])))
    stack.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(
        consumer_group("orders", pods_bootstrap(stack), unique_name("g"), topic, "target")))
    produce(stack.kafka_bootstrap, topic, 100, partitions)
    wait_for(lambda: reconciled(stack, namespace, "orders", 100), 120, "the KafkaConsumerGroup reconciled at lag 100")
    assert deployment_replicas(stack, namespace, "target") == 1

    # SIGKILL the leader's container. The kubelet restarts it in the same pod; it comes back ranked
    # below the standby (its emptyDir marker), so the standby takes over.
    leader = next(p for p in operator_pods(stack, namespace) if p["metadata"]["name"] == leader_name)
    killed_at = time.time()
    kill_container(stack, leader)
    produce(stack.kafka_bootstrap, topic, 200, partitions)  # lag 300: 3 slots of 100, pool 1 -> 3 replicas

    def follower_resumed() -> float | None:
        log = stack.kubectl("logs", "-n", namespace, follower_name).stdout
        resumed = [log_time(line) for line in log.splitlines() if "Resuming operations" in line]
        later = [t for t in resumed if t >= killed_at - 1]
        return later[-1] if later else None

    resumed_at = wait_for(follower_resumed, 120, "the standby to resume operations", interval=0.5)
    wait_for(lambda: deployment_replicas(stack, namespace, "target") == 3, 120,
             "the new leader to scale the target to 3 replicas")
    scaled_at = time.time()
    after = wait_for(lambda: reconciled(stack, namespace, "orders", 300), 60, "the status at lag 300")
    assert after["desiredReplicas"] == 3
    print(f"operator failover: leader SIGKILL -> standby resumes {resumed_at - killed_at:.1f} s, "
          f"-> target scaled by the new leader {scaled_at - killed_at:.1f} s", file=sys.stderr)

    # The killed container came back (same pod, restartCount 1) and stands by: it never resumed.
    restarted = wait_for(lambda: next((p for p in operator_pods(stack, namespace)
                                       if p["metadata"]["name"] == leader_name and is_ready(p)), None),
                         120, "the killed replica to be restarted and Ready")
    assert restarted["status"]["containerStatuses"][0]["restartCount"] == 1
    # Ready is the kubelet's reading of a probe; the container's log of that request reaches the log file
    # through containerd's shim a moment later, so the log is read until it shows a probe.
    restarted_log = wait_for(lambda: probed_log(stack, namespace, leader_name), 60,
                             "the restarted replica's log to show the kubelet's probe")
    assert "Resuming operations" not in restarted_log, restarted_log
    status = peering_status(stack, namespace)
    assert int(status[leader_name]["priority"]) < int(status[follower_name]["priority"])

    # Only one active at a time once the election had settled: the killed leader's span ended when
    # it was killed, the standby's began after that, and the restarted container has none.
    now = time.time()
    previous_log = stack.kubectl("logs", "-n", namespace, leader_name, "--previous").stdout
    follower_log = stack.kubectl("logs", "-n", namespace, follower_name).stdout
    leader_spans = [span for span in active_spans(previous_log, killed_at) if span[1] > settled_at]
    follower_spans = [span for span in active_spans(follower_log, now) if span[1] > settled_at]
    assert len(leader_spans) == 1 and leader_spans[0][0] < settled_at, leader_spans
    assert follower_spans == [(resumed_at, now)], follower_spans
    assert resumed_at >= killed_at
    # Both replicas started together at install: each announced itself in the peering and waited for the
    # other's entry before it could act (lagpilot peering-wait), so the standby never acted before it saw
    # the leader.
    assert active_spans(follower_log, now) == [(resumed_at, now)]
    for log in (previous_log, follower_log):
        assert "2 of 2 replicas announced" in log, log

    # The chart's RBAC was enough for everything the operator did.
    for log in (previous_log, restarted_log, follower_log):
        assert not re.search(r"forbidden|not enough permissions", log, re.IGNORECASE), log
        assert "peering announcement failed" not in log and "peering wait failed" not in log, log
        assert PROBE_SERVED in log and "kube-probe/" in log  # the kubelet's probes


def probed_log(stack: Stack, namespace: str, pod: str) -> str | None:
    """The pod's current log once it shows a kubelet probe served (the line the RBAC check below needs)."""
    log: str = stack.kubectl("logs", "-n", namespace, pod).stdout
    return log if PROBE_SERVED in log and "kube-probe/" in log else None


# --- the worker chart: example-worker Pods following the pool ConfigMap; metrics in Prometheus ---


def worker_metric(pod_ip: str, port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://{pod_ip}:{port}/metrics", timeout=5) as response:
        return metric_value(response.read().decode(), name)


def pool_configmap(stack: Stack, namespace: str, kcg: str) -> str | None:
    found = stack.kubectl("get", "configmap", f"{kcg}-lagpilot-pool", "-n", namespace, "-o", "json", check=False)
    return json.loads(found.stdout).get("data", {}).get("poolSize") if found.returncode == 0 else None


def prometheus_query(stack: Stack, query: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (the stack's Prometheus)
        return list(json.load(response)["data"]["result"])


def test_worker_chart_pods_follow_the_pool_and_prometheus_scrapes_the_operator_pod(
        stack: Stack, namespace: str, create_topic: Callable[..., str], install: Callable[..., float]) -> None:
    started = install(CHART, namespace, operator_values(stack, replicas=1))
    (operator_pod,) = wait_operator_ready(stack, namespace, 1, started)

    topic = create_topic("chart-worker", partitions=2)
    group = unique_name("g")
    worker_release = "orders"
    install(WORKER_CHART, namespace, {
        "image": image_values(stack.node_images["example-worker"]),
        "handler": "orders.handlers:handle",
        "kafka": {"bootstrapServers": pods_bootstrap(stack)},
        "groupId": group, "topics": [topic], "port": 8080,
        "consumerGroup": {"create": True, "name": "orders", "replicas": {"min": 1, "max": 1},
                          "pool": {"min": 3, "max": 3, "initial": 3}},
    }, release=worker_release)
    fullname = f"{worker_release}-lagpilot-worker"
    workers = wait_for(lambda: (items := kubectl_json(stack, "pods", "-n", namespace, "-l",
                                                      f"app.kubernetes.io/instance={worker_release}")["items"])
                       and all(is_ready(p) for p in items) and items, 240, "the worker pod Ready", interval=0.5)
    (worker,) = workers
    assert worker["spec"]["serviceAccountName"] == fullname  # its own ServiceAccount, not the operator's
    assert_non_root_and_read_only(stack, namespace, worker["metadata"]["name"])
    worker_ip = worker["status"]["podIP"]

    # The operator publishes pool 3 in the ConfigMap; the running worker follows it.
    wait_for(lambda: pool_configmap(stack, namespace, "orders") == "3", 120, "the operator's pool ConfigMap at 3")
    wait_for(lambda: worker_metric(worker_ip, 8080, "lagpilot_worker_pool_size") == 3, 60, "the worker's pool at 3")

    # Change the pool through the resource: operator -> ConfigMap -> the running worker, no restart.
    stack.kubectl("patch", "kafkaconsumergroup", "orders", "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"pool": {"min": 5, "max": 5, "initial": 5}}}))
    changed = time.monotonic()
    wait_for(lambda: worker_metric(worker_ip, 8080, "lagpilot_worker_pool_size") == 5, 120, "the worker's pool at 5")
    print(f"\npool change: KafkaConsumerGroup patch -> running worker at pool 5: {time.monotonic() - changed:.1f} s",
          file=sys.stderr)
    pod_now = kubectl_json(stack, "pod", worker["metadata"]["name"], "-n", namespace)
    assert pod_now["status"]["containerStatuses"][0]["restartCount"] == 0

    # The real workers consume: a backlog drains to lag 0 in the status.
    produce(stack.kafka_bootstrap, topic, 200, 2)
    wait_for(lambda: reconciled(stack, namespace, "orders", 0) if (worker_metric(
        worker_ip, 8080, "lagpilot_worker_messages_processed_total") or 0) >= 200 else None, 120,
        "the worker to process the backlog and the status to show lag 0")

    # Prometheus scrapes the operator Pod at its own address. Found the way a kubernetes_sd
    # (role: endpointslice) job finds it: the endpoints of the chart's metrics Service, which carries
    # prometheus.io/scrape=true. The stack's Prometheus (Debian's build) has no Kubernetes discovery,
    # so the test hands it that address as a file_sd target.
    service = kubectl_json(stack, "service", f"{RELEASE}-metrics", "-n", namespace)
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    slices = kubectl_json(stack, "endpointslices", "-n", namespace, "-l",
                          f"kubernetes.io/service-name={RELEASE}-metrics")["items"]
    addresses = [(address, endpoint["targetRef"]["name"], port["port"])
                 for piece in slices for endpoint in piece.get("endpoints") or []
                 for address in endpoint["addresses"] for port in piece["ports"] if port["name"] == "metrics"]
    assert addresses == [(operator_pod["status"]["podIP"], operator_pod["metadata"]["name"], 8080)]
    ip, pod_name, port = addresses[0]
    target = stack.add_scrape_target(f"operator-{namespace}", f"{ip}:{port}",
                                     {"kubernetes_namespace": namespace, "kubernetes_pod": pod_name})
    try:
        query = f'lagpilot_pool_size{{namespace="{namespace}",name="orders",kubernetes_pod="{pod_name}"}}'
        result = wait_for(lambda: prometheus_query(stack, query) or None, 60, "the operator's pool size in Prometheus")
        assert [float(r["value"][1]) for r in result] == [5.0]
        assert result[0]["metric"]["instance"] == f"{ip}:{port}"
    finally:
        target.unlink()

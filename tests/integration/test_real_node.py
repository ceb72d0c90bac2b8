"""The real node: Pods run in containers (containerd + runc) from the project's own images.

Two tests here stop and start the node (`node_lifecycle`), which no other test using the node may share:
hack/test.sh runs them first, beside the pure unit tests only. `make test-node` runs this module on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import unique_name, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _node_is_up(stack) -> None:  # type: ignore[no-untyped-def]
    if not stack.node_images:
        pytest.fail("these tests need the real node, which LAGPILOT_NODE=0 turned off", pytrace=False)


BRIDGE = os.environ.get("LAGPILOT_NODE_BRIDGE", "lagpilot0")
NODE_RECORD = Path("/run/lagpilot-node")  # machine-wide, as the node is: its owner and the sysctls before it

# Talks to the apiserver the way an in-cluster client does: the `kubernetes` Service's address from
# the environment the kubelet sets, the ServiceAccount token and CA the kubelet mounts.
IN_CLUSTER_PROBE = """
import json, os, ssl, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
request = urllib.request.Request(
    f"https://{host}:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews", method="POST",
    data=json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode(),
    headers={"Authorization": "Bearer " + open(sa + "/token").read(), "Content-Type": "application/json"})
context = ssl.create_default_context(cafile=sa + "/ca.crt")
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    review = json.load(response)
print(json.dumps({"host": host, "port": port, "user": review["status"]["userInfo"]["username"]}))
"""

KAFKA_PROBE = """
import sys
from confluent_kafka.admin import AdminClient
metadata = AdminClient({"bootstrap.servers": sys.argv[1]}).list_topics(timeout=15)
print(sorted(metadata.brokers))
"""


def env_value(stack, key: str) -> str:  # type: ignore[no-untyped-def]
    for line in (stack.stack_dir / "env").read_text().splitlines():
        if line.startswith(f"export {key}="):
            return str(line.split("=", 1)[1])
    raise AssertionError(f"{key} is not in {stack.stack_dir / 'env'}")


def worker_pod(name: str, namespace: str, image: str) -> dict[str, object]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "securityContext": {"runAsNonRoot": True},
            "containers": [{
                "name": "worker", "image": image, "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import time; time.sleep(3600)"],
                "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


def test_node_is_ready(stack) -> None:  # type: ignore[no-untyped-def]
    node = json.loads(stack.kubectl("get", "node", "lagpilot-node", "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == env_value(stack, "LAGPILOT_NODE_IP")
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_worker_pod_runs_non_root_read_only_and_reaches_apiserver_and_kafka(stack, namespace) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("worker")
    image = stack.node_images["worker"]
    started = time.monotonic()
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(worker_pod(name, namespace, image)))
    stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    create_to_running = time.monotonic() - started
    print(f"\nPod create -> Running: {create_to_running:.2f} s", file=sys.stderr)

    pod = json.loads(stack.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("containerd://")
    assert pod["status"]["podIP"] != env_value(stack, "LAGPILOT_NODE_IP")  # its own network namespace

    uid = stack.kubectl("exec", "-n", namespace, name, "--", "id", "-u").stdout.strip()
    assert uid == "10001"
    write = stack.kubectl("exec", "-n", namespace, name, "--", "sh", "-c", "echo x > /probe", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write

    service_ip = stack.kubectl("get", "service", "kubernetes", "-n", "default",
                               "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    probe = stack.kubectl("exec", "-n", namespace, name, "--", "python3", "-c", IN_CLUSTER_PROBE)
    seen = json.loads(probe.stdout)
    assert seen == {"host": service_ip, "port": "443", "user": f"system:serviceaccount:{namespace}:default"}

    brokers = stack.kubectl("exec", "-n", namespace, name, "--", "python3", "-c", KAFKA_PROBE,
                            env_value(stack, "KAFKA_PODS_BOOTSTRAP_SERVERS"))
    assert brokers.stdout.strip() == "[1]"


def test_the_worker_image_runs_an_init_as_pid_1_that_passes_sigterm_on(stack, namespace) -> None:  # type: ignore[no-untyped-def]
    """The worker is not PID 1: the kernel drops a signal sent to a PID 1 without a handler for it, and a
    worker that was PID 1 missed the SIGTERM of a Pod deleted while it started (before Python installed
    its handlers), running on until the kubelet's SIGKILL at the end of the grace period (a rollout's
    e2e run: exit 137, 20 s after the deletion, no "stopping" line)."""
    name = unique_name("init")
    spec = worker_pod(name, namespace, stack.node_images["worker"])
    container = spec["spec"]["containers"][0]  # type: ignore[index]
    del container["command"]  # the image's own entrypoint, as a user's Deployment without `command:`
    bootstrap = env_value(stack, "KAFKA_PODS_BOOTSTRAP_SERVERS")
    container["args"] = ["--handler=json:dumps", f"--bootstrap-servers={bootstrap}", f"--group={name}",
                         f"--topic={name}"]
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(spec))
    stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    first = stack.kubectl("exec", "-n", namespace, name, "--", "cat", "/proc/1/cmdline").stdout.split("\0")
    assert first[:3] == ["dumb-init", "--", "lagpilot-worker"], first
    wait_for(lambda: "worker started" in stack.kubectl("logs", "-n", namespace, name).stdout, 60, "the worker to start")
    # A SIGTERM to PID 1 (what the kubelet sends) reaches the worker through dumb-init: a graceful stop.
    stack.kubectl("exec", "-n", namespace, name, "--", "sh", "-c", "kill -TERM 1")
    stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=60s")
    assert '"message": "stopped"' in stack.kubectl("logs", "-n", namespace, name).stdout


def test_pod_has_no_dns_and_no_route_off_the_machine(stack, namespace) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("net")
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(worker_pod(name, namespace, stack.node_images["worker"])))
    stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    resolv = stack.kubectl("exec", "-n", namespace, name, "--", "cat", "/etc/resolv.conf", check=False).stdout
    # The kubelet's way of "no DNS" (resolvConf ""): the Pod's own loopback, where nothing listens.
    nameservers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert nameservers == ["127.0.0.1"], resolv
    routes = stack.kubectl("exec", "-n", namespace, name, "--", "cat", "/proc/net/route").stdout.splitlines()[1:]
    destinations = {line.split()[1] for line in routes}
    assert "00000000" not in destinations, routes  # no default route
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "0"


def _bridge_mac() -> str:
    return Path(f"/sys/class/net/{BRIDGE}/address").read_text().strip()


def test_the_bridge_keeps_its_mac_while_pods_come_and_go(stack, namespace) -> None:  # type: ignore[no-untyped-def]
    """A bridge without a MAC of its own takes its lowest port's and changes it when that Pod goes: the
    other Pods' ARP entries for the node's address (broker, apiserver) go stale and their connections
    stall for seconds (a partition test's healed connects timed out once, another Pod having just gone)."""
    # 3 = NET_ADDR_SET: the MAC was set, so the kernel never recomputes it from the ports.
    assert Path(f"/sys/class/net/{BRIDGE}/addr_assign_type").read_text().strip() == "3"
    before = _bridge_mac()
    names = [unique_name("mac") for _ in range(3)]
    for name in names:
        pod = worker_pod(name, namespace, stack.node_images["worker"])
        stack.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    for name in names:
        stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Running",
                      "--timeout=120s")
    seen = {_bridge_mac()}
    for name in names:
        stack.kubectl("delete", "pod", "-n", namespace, name, "--grace-period=0", "--wait=true")
        seen.add(_bridge_mac())
    assert seen == {before}, seen


# ------------------------------------------------------------------------------------------ teardown


def _stack_processes(stack_dir: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(stack_dir) in cmdline and "pytest" not in cmdline and "stack.py" not in cmdline:
                found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def _mounts(*roots: str) -> list[str]:
    targets = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [t for t in targets if any(t == r or t.startswith(r + "/") for r in roots)]


def _iptables_rules() -> list[str]:
    rules = []
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter", "mangle", "raw"):
            result = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False)
            rules += [f"{tool} {table}: {r}" for r in result.stdout.splitlines() if "KUBE-" in r or BRIDGE in r]
    return rules


def _sysctl(key: str) -> str | None:
    try:
        return Path("/proc/sys", key).read_text().strip()
    except OSError:
        return None


def _shims(stack_dir: Path) -> set[int]:
    return {int(line.split(":")[0]) for line in _stack_processes(stack_dir) if "containerd-shim" in line}


HOST_CGROUP = Path("/sys/fs/cgroup/cpu/lagpilot-host")


def _cpu_cgroup(proc_cgroup: str) -> str:
    """The cpu controller's path in a /proc/<pid>/cgroup text."""
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return path
    raise AssertionError(f"no cpu cgroup in {proc_cgroup!r}")


def test_the_stack_runs_in_a_host_cgroup_that_weighs_as_much_as_all_pods(stack, namespace) -> None:  # type: ignore[no-untyped-def]
    """Like a node's system.slice: the broker and the control plane (and a test run, hack/test.sh) share one
    cgroup beside `kubepods`, with its weight; Pods run under `kubepods`; the node's daemons stay in the root
    cgroup, ahead of both."""
    assert HOST_CGROUP.exists()
    kubepods = HOST_CGROUP.parent / "kubepods"
    assert (HOST_CGROUP / "cpu.shares").read_text() == (kubepods / "cpu.shares").read_text()
    # Inside it the servers and a test run weigh the same.
    assert (HOST_CGROUP / "servers" / "cpu.shares").read_text() == (HOST_CGROUP / "tests" / "cpu.shares").read_text()
    def service_cgroup(name: str) -> str:
        pid = (stack.stack_dir / "pids" / f"{name}.pid").read_text().strip()
        return _cpu_cgroup(Path(f"/proc/{pid}/cgroup").read_text())

    for name in ("kafka", "kube-apiserver", "etcd", "prometheus"):
        assert service_cgroup(name) == "/lagpilot-host/servers", name
    for name in ("kubelet", "containerd", "kube-proxy"):
        assert service_cgroup(name) == "/", name
    name = unique_name("weights")
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(worker_pod(name, namespace, stack.node_images["worker"])))
    stack.kubectl("wait", "-n", namespace, f"pod/{name}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    cpu = _cpu_cgroup(stack.kubectl("exec", "-n", namespace, name, "--", "cat", "/proc/1/cgroup").stdout)
    # Inside the container its own cgroup reads as "/" with a cgroup namespace; otherwise the host path.
    assert cpu == "/" or cpu.startswith("/kubepods/"), cpu


@pytest.mark.node_lifecycle
def test_up_after_a_killed_node_clears_what_it_left_and_runs_pods_again(stack, namespace) -> None:  # type: ignore[no-untyped-def]
    image = stack.node_images["worker"]
    first = unique_name("before-kill")
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(worker_pod(first, namespace, image)))
    stack.kubectl("wait", "-n", namespace, f"pod/{first}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    old_shims = _shims(stack.stack_dir)
    assert old_shims, "a running Pod has a containerd shim"
    for name in ("kube-proxy", "kubelet", "containerd"):  # as a crash or `kill -9` of the stack would
        os.kill(int((stack.stack_dir / "pids" / f"{name}.pid").read_text()), 9)

    env = {**os.environ, "LAGPILOT_STACK_DIR": str(stack.stack_dir), "LAGPILOT_NODE": "1"}
    up = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "up"], env=env, capture_output=True,
                        text=True, check=False, timeout=600)
    assert up.returncode == 0, up.stderr[-4000:]
    assert not {pid for pid in old_shims if Path(f"/proc/{pid}").exists()}, "shims of the killed node survived"

    second = unique_name("after-kill")
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(worker_pod(second, namespace, image)))
    stack.kubectl("wait", "-n", namespace, f"pod/{second}", "--for=jsonpath={.status.phase}=Running", "--timeout=120s")
    uid = stack.kubectl("exec", "-n", namespace, second, "--", "id", "-u").stdout.strip()
    assert uid == "10001"


@pytest.mark.node_lifecycle
def test_down_leaves_nothing_behind_and_up_restores_the_node(stack) -> None:  # type: ignore[no-untyped-def]
    """`stack.py down` removes every process, mount, bridge, netns, iptables rule and sysctl change.

    It stops the session's stack (the kubelet is machine-wide: there is only one node), so it brings
    the stack up again at the end; run this module on its own, not next to other tests of the stack.
    """
    baseline = json.loads((NODE_RECORD / "baseline.json").read_text())
    assert (NODE_RECORD / "owner").read_text().strip() == str((stack.stack_dir / "node").resolve())
    env = {**os.environ, "LAGPILOT_STACK_DIR": str(stack.stack_dir), "LAGPILOT_NODE": "1"}
    stack_py = [sys.executable, str(REPO / "hack" / "stack.py")]
    # The running node has mounts under the stack folder: otherwise the check after `down` proves nothing.
    assert _mounts(str(stack.stack_dir))
    assert Path(f"/sys/class/net/{BRIDGE}").exists()

    down = subprocess.run([*stack_py, "down"], env=env, capture_output=True, text=True, check=False, timeout=300)
    assert down.returncode == 0, down.stderr

    assert _stack_processes(stack.stack_dir) == []
    containerd_root = Path(os.environ.get("LAGPILOT_CACHE_DIR", Path.home() / ".cache" / "lagpilot")) / "containerd"
    assert _mounts(str(stack.stack_dir), str(containerd_root), "/var/lib/kubelet", "/run/containerd",
                   "/var/run/netns") == []
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    netns = Path("/var/run/netns")
    assert not netns.exists() or [p.name for p in netns.iterdir() if p.name.startswith("cni-")] == []
    assert _iptables_rules() == []
    assert {key: _sysctl(key) for key in baseline["sysctls"]} == baseline["sysctls"]
    assert _sysctl("net/ipv4/ip_forward") == "0"
    for path in ("/var/lib/kubelet", "/var/log/containers", "/run/containerd"):
        assert path in baseline["paths"] or not Path(path).exists(), path
    assert [p for p in Path("/sys/fs/cgroup").glob("*/kubepods")] == []
    assert not HOST_CGROUP.exists(), "the host cgroup outlived the stack"
    # Defaults the stack moves into its own folders (buildah's CNI lock, containerd's root, flex volumes).
    assert {path: Path(path).exists() for path in baseline["untouched"]} == baseline["untouched"]
    assert not (NODE_RECORD / "owner").exists() and not (NODE_RECORD / "baseline.json").exists()

    up = subprocess.run([*stack_py, "up"], env=env, capture_output=True, text=True, check=False, timeout=900)
    assert up.returncode == 0, up.stderr[-4000:]

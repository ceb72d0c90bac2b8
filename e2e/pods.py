"""What every e2e backend that runs real Pods shares (the local node, e2e/node_backend.py, and kind,
e2e/kind_backend.py): the operator installed from charts/lagpilot, the workers' ServiceAccount and
security settings rendered from charts/lagpilot-worker, a crash as SIGKILL through the container runtime,
and a recorder of each Pod's create -> Running time and output.

The charts are rendered with `helm`, never copied: the e2e operator has exactly the RBAC a user's
install gets, and a worker Pod the hardening (non-root, read-only root filesystem) the worker chart
declares.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from e2e.chaos import copied_log
from support import wait_for

REPO = Path(__file__).resolve().parent.parent
E2E_DIR = REPO / "e2e"
OPERATOR_CHART = REPO / "charts" / "lagpilot"
WORKER_CHART = REPO / "charts" / "lagpilot-worker"
WORKER_CONTAINER = "worker"
OPERATOR_CONTAINER = "operator"
OPERATOR_RELEASE = "lagpilot"
WORKER_RELEASE = "lagpilot-e2e"
# The Kubernetes version the charts are rendered for (`helm template` asks no API server).
KUBE_VERSION = "1.34.0"


def split_image(reference: str) -> tuple[str, str]:
    """'localhost/lagpilot-operator:abc' -> ('localhost/lagpilot-operator', 'abc')."""
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        raise ValueError(f"image reference without a tag: {reference}")
    return repository, tag


def run_tool(command: list[str], *, input_text: str | None = None, check: bool = True,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command[:4])} ... failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


class PodBackend:
    """The part of a backend that is the same wherever the Pods run.

    A subclass sets the attributes below and `runtime_command` (how to run `ctr` on the node).
    """

    name = "pods"
    kubectl_path: Path
    helm_path: Path
    kubeconfig: Path
    work_dir: Path
    kafka_bootstrap: str          # for the test process: load generator, ledger, admin
    pod_kafka_bootstrap: str      # for the Pods: workers and the operator
    worker_image: str
    operator_image: str
    api: Any
    pod_logs_root: Path | None = None   # the kubelet's podLogsDir, when this process can read it

    _worker_pod_spec: dict[str, Any] | None = None

    # -- tools --------------------------------------------------------------------------------------------

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_tool([str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args], input_text=input_text,
                        check=check, timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_tool([str(self.helm_path), f"--kubeconfig={self.kubeconfig}", *args], check=check,
                        timeout=timeout)

    def runtime_command(self, *args: str) -> list[str]:
        """`ctr -n k8s.io <args>` against the node's containerd, as a command line for this machine."""
        raise NotImplementedError

    # -- workers ------------------------------------------------------------------------------------------

    def _render_worker_chart(self, namespace: str, *templates: str) -> list[dict[str, Any]]:
        repository, tag = split_image(self.worker_image)
        # The chart's required values; only its ServiceAccount, RBAC and Pod hardening are used.
        out = self.helm("template", WORKER_RELEASE, str(WORKER_CHART), "-n", namespace,
                        f"--kube-version={KUBE_VERSION}", *(f"--show-only=templates/{t}" for t in templates),
                        f"--set=image.repository={repository}", f"--set=image.tag={tag}",
                        "--set=groupId=unused", "--set=handler=handlers:handle",
                        "--set=kafka.bootstrapServers=unused:9092", "--set=topics={unused}").stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    def prepare_namespace(self, namespace: str) -> None:
        """The workers' ServiceAccount with the worker chart's Role: they watch the pool-size ConfigMap."""
        documents = self._render_worker_chart(namespace, "serviceaccount.yaml", "rbac.yaml")
        self.kubectl("apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump_all(documents))

    def worker_pod_spec(self) -> dict[str, Any]:
        """The worker chart's Pod settings around the container: ServiceAccount, security context, /tmp,
        resources."""
        if self._worker_pod_spec is None:
            (deployment,) = self._render_worker_chart("default", "deployment.yaml")
            pod = deployment["spec"]["template"]["spec"]
            # Not its automountServiceAccountToken: the chart mounts the token only when it names a pool
            # ConfigMap, and the operator's template mode always does.
            self._worker_pod_spec = {key: pod[key] for key in ("serviceAccountName", "securityContext", "volumes")
                                     if key in pod}
            # Its resources too: without a CPU request a Pod is BestEffort, and the kubelet gives the
            # BestEffort cgroup cpu.shares=2: on a busy machine such workers starve (minutes to get ready).
            self._worker_pod_spec["_container"] = {
                key: pod["containers"][0][key] for key in ("securityContext", "volumeMounts", "resources")
                if key in pod["containers"][0]}
        return self._worker_pod_spec

    def worker_container(self, env: list[dict[str, Any]]) -> dict[str, Any]:
        # `command` set: the image's CMD is not appended; the handler comes from LAGPILOT_HANDLER.
        return {"name": WORKER_CONTAINER, "image": self.worker_image, "imagePullPolicy": "Never",
                "command": ["dumb-init", "--", "lagpilot-worker"], "env": env,
                # Probed every second so a scenario sees a worker Ready soon after it is; given the
                # chart's 3 s to answer (the default 1 s times out on a busy node and flips Ready).
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1,
                                   "timeoutSeconds": 3},
                **self.worker_pod_spec()["_container"]}

    def pod_spec_extra(self) -> dict[str, Any]:
        return {key: value for key, value in self.worker_pod_spec().items() if not key.startswith("_")}

    # -- faults -------------------------------------------------------------------------------------------

    def container_id(self, namespace: str, pod: str, container: str) -> str:
        out = self.kubectl("get", "pod", pod, "-n", namespace, "-o",
                           f"jsonpath={{.status.containerStatuses[?(@.name=='{container}')].containerID}}").stdout
        runtime, _, container_id = out.strip().partition("://")
        if runtime != "containerd" or not container_id:
            raise AssertionError(f"pod {namespace}/{pod} has no running {container} container ({out!r})")
        return container_id

    def kill_container(self, namespace: str, pod: str, container: str) -> None:
        """SIGKILL the container's process through containerd: a crash, the kubelet restarts it."""
        run_tool(self.runtime_command("task", "kill", "--signal", "SIGKILL",
                                      self.container_id(namespace, pod, container)), timeout=60)

    def kill_worker(self, namespace: str, pod: str) -> None:
        self.kill_container(namespace, pod, WORKER_CONTAINER)

    # -- the operator -------------------------------------------------------------------------------------

    def operator(self, namespace: str, log_path: Path) -> ChartOperator:
        return ChartOperator(self, namespace, log_path)

    def pod_recorder(self, namespace: str, out_dir: Path) -> PodRecorder:
        return PodRecorder(self.api, namespace, out_dir, self.pod_logs_root)

    def node_log_lines(self, pod: str, limit: int = 30) -> list[str]:
        """The node's own log lines (kubelet, containerd) that name a Pod: how the node stopped it."""
        return []


class ChartOperator:
    """The operator as a user installs it: `helm install` of charts/lagpilot into the scenario's namespace.

    Namespaced RBAC (a Role in that namespace, the chart's discovery ClusterRole), standalone (one
    replica, no peering), the image this checkout built. "Kill" is a SIGKILL of the operator
    container through the runtime; the kubelet restarts it, the way a crashed operator comes back.
    """

    def __init__(self, backend: PodBackend, namespace: str, log_path: Path) -> None:
        self.backend, self.namespace, self.log_path = backend, namespace, log_path
        self.starts = 0
        self._restarts_at_kill: int | None = None

    def start(self) -> None:
        self.starts += 1
        if self._restarts_at_kill is not None:
            before = self._restarts_at_kill
            wait_for(lambda: self._running_restarts() > before, 90, "the killed operator container to run again")
            self._restarts_at_kill = None
            return
        repository, tag = split_image(self.backend.operator_image)
        self.backend.helm("install", OPERATOR_RELEASE, str(OPERATOR_CHART), "-n", self.namespace, "--skip-crds",
                          "--set=rbac.scope=namespaced", "--set=peering.enabled=false",
                          "--set=metrics.service.enabled=false", f"--set=image.repository={repository}",
                          f"--set=image.tag={tag}", "--set=image.pullPolicy=Never")
        wait_for(lambda: self._running_restarts() >= 0, 120, f"the operator Pod in {self.namespace} to run")

    def _pod(self) -> dict[str, Any] | None:
        """The operator's live Pod as the API returns it (polled: read in process, not by kubectl)."""
        try:
            pods = client.CoreV1Api(self.backend.api).list_namespaced_pod(
                self.namespace, label_selector=f"app.kubernetes.io/instance={OPERATOR_RELEASE},"
                                               "app.kubernetes.io/component=operator")
        except (ApiException, urllib3.exceptions.HTTPError):
            return None  # the API server busy: the caller polls again
        items: list[dict[str, Any]] = self.backend.api.sanitize_for_serialization(pods).get("items") or []
        live = [p for p in items if not p["metadata"].get("deletionTimestamp")]
        return live[0] if live else None

    def _running_restarts(self) -> int:
        """The operator container's restart count while it runs; -1 while it does not."""
        pod = self._pod()
        for status in (pod or {}).get("status", {}).get("containerStatuses") or []:
            if status["name"] == OPERATOR_CONTAINER and "running" in (status.get("state") or {}):
                return int(status.get("restartCount") or 0)
        return -1

    def kill(self) -> None:
        """SIGKILL: no cleanup, no final status write, as if the operator crashed."""
        pod = self._pod()
        if pod is None:
            return
        self._restarts_at_kill = max(0, self._running_restarts())
        self.backend.kill_container(self.namespace, pod["metadata"]["name"], OPERATOR_CONTAINER)

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def alive(self) -> bool:
        return self._running_restarts() >= 0

    def stop(self, grace: float = 15.0) -> None:
        self.log_path.write_text(self.log_tail(100_000))
        # Uninstall also removes the chart's cluster-wide discovery ClusterRole and its binding.
        self.backend.helm("uninstall", OPERATOR_RELEASE, "-n", self.namespace, "--wait",
                          f"--timeout={int(grace) + 30}s", check=False, timeout=grace + 60)

    def log_tail(self, lines: int = 60) -> str:
        pod = self._pod()
        if pod is None:
            return ""
        name = pod["metadata"]["name"]
        parts = []
        previous = self.backend.kubectl("logs", "-n", self.namespace, name, "-c", OPERATOR_CONTAINER, "--previous",
                                        f"--tail={lines}", check=False)
        if previous.returncode == 0:
            parts.append(f"===== {name}, before its last restart =====\n{previous.stdout}")
        current = self.backend.kubectl("logs", "-n", self.namespace, name, "-c", OPERATOR_CONTAINER,
                                       f"--tail={lines}", check=False)
        parts.append(f"===== {name} =====\n{current.stdout}")
        return "\n".join(parts)


# --- what the Pods did ------------------------------------------------------------------------------------


@dataclass
class PodTimes:
    seen: float                    # the watch saw the Pod created
    running: float | None = None   # the watch first saw it Running
    containers: tuple[str, ...] = ()
    deleted: float | None = None   # the watch first saw its deletionTimestamp (the kubelet's SIGTERM follows)
    ends: dict[str, str] = field(default_factory=dict)   # container id -> how it ended, as the kubelet said


def container_end(name: str, terminated: Any) -> str:
    """One line for a container's terminated state: what a stop without log lines is run down from."""
    started = terminated.started_at.isoformat() if terminated.started_at else "?"
    finished = terminated.finished_at.isoformat() if terminated.finished_at else "?"
    signal = f", signal {terminated.signal}" if terminated.signal else ""
    return (f"{name}: exit {terminated.exit_code} ({terminated.reason or 'no reason'}{signal}), "
            f"started {started}, finished {finished}")


@dataclass
class PodRecorder:
    """Watches one namespace's Pods: create -> Running times, and each container's output copied out.

    Times come from a watch opened before the Pods exist (the Pods' own timestamps have one-second
    resolution). Output is read from the kubelet's log files while they exist, through a file handle
    kept open: the kubelet deletes them with the Pod, and a scale-down's "stopping" lines are the last
    ones a worker writes. Without a readable log folder (kind), only times are recorded.
    """

    api: Any
    namespace: str
    out_dir: Path
    logs_root: Path | None
    pods: dict[str, PodTimes] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _watch: Any = None
    _tails: dict[str, _LogTail] = field(default_factory=dict)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> PodRecorder:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        targets = [self._watch_pods] + ([self._copy_logs] if self.logs_root is not None else [])
        for target in targets:
            thread = threading.Thread(target=target, name=f"pods-{self.namespace}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.flush()
        for tail in self._tails.values():
            tail.close()

    def _watch_pods(self) -> None:
        core = client.CoreV1Api(self.api)
        resource_version = self._list_version(core)
        self._ready.set()
        while not self._stop.is_set():
            self._watch = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in self._watch.stream(core.list_namespaced_pod, self.namespace,
                                                resource_version=resource_version, timeout_seconds=60):
                    pod = event["object"]
                    resource_version = pod.metadata.resource_version
                    self._observe(event["type"], pod)
            except Exception:  # an expired resourceVersion or a dropped connection: list again
                if self._stop.wait(0.5):
                    return
                resource_version = self._list_version(core)

    def _list_version(self, core: Any) -> str:
        """The resourceVersion to watch from: Pods created after it are seen being created."""
        return str(core.list_namespaced_pod(self.namespace).metadata.resource_version)

    def _observe(self, kind: str, pod: Any) -> None:
        now = time.time()
        name = pod.metadata.name
        with self._lock:
            if kind == "ADDED" and name not in self.pods:
                self.pods[name] = PodTimes(seen=now, containers=tuple(c.name for c in pod.spec.containers))
            times = self.pods.get(name)
            if times is None or pod.status is None:
                return
            if times.running is None and pod.status.phase == "Running":
                times.running = now
            if times.deleted is None and pod.metadata.deletion_timestamp is not None:
                times.deleted = now
            for status in pod.status.container_statuses or []:
                for state in (status.state, status.last_state):
                    if state is not None and state.terminated is not None:
                        key = state.terminated.container_id or status.name
                        times.ends[key] = container_end(status.name, state.terminated)

    def how_it_ended(self, pod: str) -> str:
        """What the watch saw of a Pod's end: when it was deleted and how each container exited."""
        with self._lock:
            times = self.pods.get(pod)
            if times is None:
                return "never seen by the watch"
            deleted = (f"deleted {datetime.datetime.fromtimestamp(times.deleted, datetime.UTC).isoformat()}"
                       if times.deleted is not None else "no deletion seen")
            return "; ".join([deleted, *times.ends.values()])

    def create_to_running(self, container: str = WORKER_CONTAINER) -> list[float]:
        """Seconds from creation to Running of every Pod with that container that got there."""
        with self._lock:
            return sorted(t.running - t.seen for t in self.pods.values()
                          if t.running is not None and container in t.containers)

    # -- output ---------------------------------------------------------------------------------------

    def _copy_logs(self) -> None:
        while not self._stop.wait(0.5):
            self.flush()

    def flush(self) -> None:
        """Copy what every container wrote since the last call into <out_dir>/<namespace>_<pod>.log."""
        if self.logs_root is None:
            return
        with self._lock:
            # <podLogsDir>/<namespace>_<pod>_<uid>/<container>/<restart>.log
            for path in self.logs_root.glob(f"{self.namespace}_*/*/*.log"):
                key = str(path)
                if key not in self._tails:
                    pod = path.parent.parent.name.removeprefix(f"{self.namespace}_").rsplit("_", 1)[0]
                    with contextlib.suppress(OSError):
                        self._tails[key] = _LogTail(path, copied_log(self.out_dir, self.namespace, pod))
            for key, tail in list(self._tails.items()):
                if not tail.read():
                    tail.close()
                    del self._tails[key]

    def log_files(self) -> list[Path]:
        self.flush()
        return sorted(self.out_dir.glob(f"{self.namespace}_*.log"))


class _LogTail:
    """One CRI log file (`<time> <stream> <P|F> <text>` lines) copied as plain text while it exists."""

    def __init__(self, path: Path, out: Path) -> None:
        self.path, self.out = path, out
        self.handle = path.open("rb")
        self.inode = os.fstat(self.handle.fileno()).st_ino
        self.pending = b""
        self.partial = ""

    def read(self) -> bool:
        """Copy what is new; False once the file is gone (deleted or rotated) and read to its end.

        Whether the file is still there is checked before reading, not after: checked after, a Pod's
        last lines (its SIGTERM -> final commit), written between the read and the check by a container
        that then exited and was removed, were never copied (most likely how a rolling update's old Pod
        lost its 'stopping'/'stopped' lines once, in a cold run under load, where this thread can be
        descheduled between the two). The open handle still reads a deleted file to its end."""
        try:
            alive = self.path.stat().st_ino == self.inode
        except FileNotFoundError:
            alive = False
        data = self.pending + self.handle.read()
        *lines, self.pending = data.split(b"\n")
        if lines:
            with self.out.open("a") as out:
                for raw in lines:
                    parts = raw.decode(errors="replace").split(" ", 3)
                    if len(parts) < 4:
                        continue
                    if parts[2] == "P":   # a long line the runtime split: the rest follows
                        self.partial += parts[3]
                        continue
                    out.write(self.partial + parts[3] + "\n")
                    self.partial = ""
        return alive

    def close(self) -> None:
        self.handle.close()


def timing_summary(seconds: list[float]) -> str:
    if not seconds:
        return "no worker Pod reached Running"
    return (f"{len(seconds)} worker Pods, create -> Running median {statistics.median(seconds):.2f} s, "
            f"max {max(seconds):.2f} s")


@contextlib.contextmanager
def recording(backend: PodBackend, namespace: str, out_dir: Path) -> Iterator[PodRecorder]:
    recorder = backend.pod_recorder(namespace, out_dir).start()
    try:
        yield recorder
    finally:
        recorder.stop()


def wait_until_broker_answers(bootstrap: str, timeout: float = 60) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})

    def answers() -> bool:
        try:
            admin.list_topics(timeout=2)
        except Exception:  # any failure: not answering yet
            return False
        return True

    wait_for(answers, timeout, f"the broker at {bootstrap} to answer")

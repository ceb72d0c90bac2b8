"""`KubeletDouble`: a TEST DOUBLE for the kubelet only, so end-to-end tests run real Pods without a container runtime.

Everything else stays real: Deployments, ReplicaSets, the scheduler, the controllers and the API server
create, bind and delete the Pods; this agent only does the kubelet's part for one Node it registers:

* registers a Node (label and annotation `lagpilot.io/test-double: kubelet`, capacity, Ready condition)
  and keeps it alive (Lease in `kube-node-lease` renewed, Node status heartbeat);
* watches the Pods bound to that Node (`spec.nodeName`) and runs each Pod's FIRST container as a local
  process: `command` + `args` from the Pod spec (with Kubernetes `$(VAR)` expansion), `command[0]`
  looked up in a table (`{"lagpilot-worker": [sys.executable, "-m", "lagpilot_worker.cli"]}`) because
  there are no images; env from the Pod spec (values, fieldRef, secretKeyRef, configMapKeyRef, envFrom)
  plus env the agent adds (KUBECONFIG: there is no service-account mount);
* gives every started process a free local port in `LAGPILOT_HTTP_PORT` (and `LAGPILOT_HTTP_HOST=127.0.0.1`)
  and runs the readiness probe against that port, whatever port the probe names;
* writes Pod status like a kubelet: Pending → Running (podIP 127.0.0.1, containerStatuses, restartCount,
  lastState), Ready from the readiness probe, restarts with backoff per restartPolicy, Succeeded/Failed;
* on deletion (deletionTimestamp): SIGTERM, wait the grace period, SIGKILL the process group, then delete
  the Pod with gracePeriodSeconds=0 so it disappears.

Deliberate differences from a kubelet (it is a test double): only the first container runs (others are
not reported); no volumes, no resource limits, no liveness/startup probes; probe periods and initial
delays are capped (default 1 s) so tests are fast; workingDir is ignored; all Pods share podIP
127.0.0.1 and get their own port instead.

The control plane is shared by concurrent test runs, so by default (`dedicated=True`) the Node carries
a NoSchedule taint unique to it and only Pods that carry `placement()` (nodeSelector + toleration)
land there: another run's Pods never run here and this run's Pods never land on another run's agent.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import datetime as dt
import http.client
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("e2e.node_agent")

TEST_DOUBLE_KEY = "lagpilot.io/test-double"
TEST_DOUBLE_VALUE = "kubelet"
TAINT_KEY = TEST_DOUBLE_KEY
LOCAL_IP = "127.0.0.1"
NODE_LEASE_NAMESPACE = "kube-node-lease"
MERGE_PATCH = "application/merge-patch+json"

DEFAULT_COMMANDS: Mapping[str, Sequence[str]] = {
    "lagpilot-worker": (sys.executable, "-m", "lagpilot_worker.cli"),
    "lagpilot": (sys.executable, "-m", "lagpilot_operator.cli"),
    "python": (sys.executable,),
    "python3": (sys.executable,),
}
DEFAULT_CAPACITY: Mapping[str, str] = {"cpu": "32", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
# Inherited from the agent's own environment; everything else a process sees comes from the Pod spec.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")


class PodConfigError(Exception):
    """The Pod cannot be started as specified (missing Secret key, no command, ...): CreateContainerConfigError."""


# --- pure pieces (no I/O): env, argv, restart policy, status rendering -----------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, undefined ones stay verbatim, `$$` is `$`."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, text)


_MAP_PATH = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The downward-API value of `field_path` for this Pod (status IPs are the agent's 127.0.0.1)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": LOCAL_IP,
        "status.hostIPs": LOCAL_IP,
        "status.podIP": LOCAL_IP,
        "status.podIPs": LOCAL_IP,
    }
    if field_path in simple:
        return str(simple[field_path] or "")
    match = _MAP_PATH.match(field_path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    raise PodConfigError(f"fieldRef {field_path!r} is not supported by the kubelet test double")


Lookup = Callable[[str, str, str], str | None]   # (namespace, object name, key) -> value, None if absent


def resolve_env(pod: Mapping[str, Any], container: Mapping[str, Any], *, secret: Lookup, config_map: Lookup,
                list_secret: Callable[[str, str], Mapping[str, str] | None] | None = None,
                list_config_map: Callable[[str, str], Mapping[str, str] | None] | None = None,
                ) -> dict[str, str]:
    """The container's own env, as a kubelet builds it: envFrom first, then env (later wins, `$(VAR)` expanded)."""
    namespace = str((pod.get("metadata") or {}).get("namespace", ""))
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for kind, reader in (("configMapRef", list_config_map), ("secretRef", list_secret)):
            ref = source.get(kind)
            if ref is None:
                continue
            values = reader(namespace, ref["name"]) if reader is not None else None
            if values is None:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f"{kind} {ref['name']!r} not found")
            env.update({prefix + k: v for k, v in values.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand_references(str(item.get("value") or ""), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_ref_value(pod, source["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind = "secretKeyRef" if "secretKeyRef" in source else "configMapKeyRef"
            ref = source[kind]
            value = (secret if kind == "secretKeyRef" else config_map)(namespace, ref["name"], ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise PodConfigError(f"env {name}: {kind} {ref['name']}/{ref['key']} not found")
            env[name] = value
        else:
            raise PodConfigError(f"env {name}: valueFrom {sorted(source)} is not supported by the test double")
    return env


def container_argv(container: Mapping[str, Any], env: Mapping[str, str], commands: Mapping[str, Sequence[str]],
                   images: Mapping[str, Sequence[str]]) -> list[str]:
    """command + args with `$(VAR)` expanded; `command[0]` (or, without command, the image) mapped to a local argv."""
    command = [expand_references(str(part), env) for part in container.get("command") or []]
    args = [expand_references(str(part), env) for part in container.get("args") or []]
    if command:
        head = list(commands.get(command[0], (command[0],)))
        return [*head, *command[1:], *args]
    image = str(container.get("image") or "")
    if image in images:
        return [*images[image], *args]
    raise PodConfigError(f"container {container.get('name')!r} has no command and image {image!r} has no "
                         "entrypoint in the test double's image table")


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Never":
        return False
    if restart_policy == "OnFailure":
        return exit_code != 0
    return True  # Always (the default)


def restart_delay(consecutive_failures: int, base: float, cap: float) -> float:
    """Back-off before the n-th restart in a row: 0 for the first, then base, 2*base, ... capped (kubelet-like)."""
    if consecutive_failures <= 1:
        return 0.0
    return float(min(cap, base * 2 ** (consecutive_failures - 2)))


def exit_status(returncode: int) -> tuple[int, str, int | None]:
    """(exitCode, reason, signal) as a container runtime reports a Popen return code."""
    if returncode < 0:  # killed by a signal: shells and runtimes report 128 + signal
        return 128 - returncode, "Error", -returncode
    return returncode, "Completed" if returncode == 0 else "Error", None


def rfc3339(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Termination:
    exit_code: int
    reason: str
    signal: int | None
    started_at: float
    finished_at: float
    container_id: str

    def as_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason,
                                 "startedAt": rfc3339(self.started_at), "finishedAt": rfc3339(self.finished_at),
                                 "containerID": self.container_id}
        if self.signal is not None:
            state["signal"] = self.signal
        return state


@dataclass(frozen=True)
class ContainerView:
    """What the agent knows about a Pod's container at one moment; `render_status` turns it into Pod status."""

    name: str
    image: str
    pid: int | None                       # running process, if any
    started_at: float | None              # when the running process started
    ready: bool
    restart_count: int
    last_termination: Termination | None
    waiting: tuple[str, str] | None       # (reason, message) when not running
    finished: bool                        # terminal: will not be restarted
    sandbox_at: float                     # when the agent first took the Pod


def render_status(pod: Mapping[str, Any], view: ContainerView) -> dict[str, Any]:
    """The Pod status a kubelet would write; conditions keep their transition time while unchanged."""
    previous = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    now = rfc3339(time.time())

    def condition(kind: str, ok: bool) -> dict[str, Any]:
        status = "True" if ok else "False"
        old = previous.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else now
        return {"type": kind, "status": status, "lastProbeTime": None, "lastTransitionTime": since or now}

    container_id = f"testdouble://{view.pid}" if view.pid is not None else ""
    last: dict[str, Any] = {}
    if view.finished and view.last_termination is not None:
        state: dict[str, Any] = {"terminated": view.last_termination.as_state()}
    elif view.pid is not None and view.started_at is not None:
        state = {"running": {"startedAt": rfc3339(view.started_at)}}
    else:
        reason, message = view.waiting or ("ContainerCreating", "")
        state = {"waiting": {"reason": reason, "message": message} if message else {"reason": reason}}
    if view.last_termination is not None and not view.finished:
        last = {"terminated": view.last_termination.as_state()}
    if view.finished and view.last_termination is not None:
        phase = "Succeeded" if view.last_termination.exit_code == 0 else "Failed"
    elif view.pid is not None or view.restart_count > 0 or view.last_termination is not None:
        phase = "Running"
    else:
        phase = "Pending"
    ours = {"PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"}
    conditions = [c for kind, c in previous.items() if kind not in ours]  # PodScheduled, DisruptionTarget, ...
    conditions += [condition("PodReadyToStartContainers", True), condition("Initialized", True),
                   condition("ContainersReady", view.ready), condition("Ready", view.ready)]
    return {
        "phase": phase,
        "conditions": conditions,
        "hostIP": LOCAL_IP,
        "hostIPs": [{"ip": LOCAL_IP}],
        "podIP": LOCAL_IP,
        "podIPs": [{"ip": LOCAL_IP}],
        "startTime": (pod.get("status") or {}).get("startTime") or rfc3339(view.sandbox_at),
        "containerStatuses": [{
            "name": view.name, "image": view.image or "test-double", "imageID": "", "containerID": container_id,
            "ready": view.ready, "started": view.pid is not None, "restartCount": view.restart_count,
            "state": state, "lastState": last,
        }],
    }


_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent_thread() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends (Linux).

    The agent's test process can be killed without running stop() (a timeout, a SIGKILL); pod processes
    must not then run on forever on a shared machine. The starting thread is the Pod's runner, which lives
    as long as the Pod's processes may run.
    """
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def free_local_port() -> int:
    """A port free on 127.0.0.1 right now (the process binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCAL_IP, 0))
        return int(sock.getsockname()[1])


def probe_once(probe: Mapping[str, Any], port: int, argv_for: Callable[[Sequence[str]], list[str]],
               env: Mapping[str, str]) -> tuple[bool, str]:
    """Run one probe against the process's assigned local port: (success, message)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in probe:
            get = probe["httpGet"]
            https = get.get("scheme") == "HTTPS"
            connection = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(
                LOCAL_IP, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                connection.request("GET", get.get("path") or "/", headers=headers)
                status = connection.getresponse().status
            finally:
                connection.close()
            return 200 <= status < 400, f"HTTP {status}"  # kubelet counts 2xx and 3xx as success
        if "tcpSocket" in probe:
            with socket.create_connection((LOCAL_IP, port), timeout=timeout):
                return True, "connected"
        if "exec" in probe:
            result = subprocess.run(argv_for(probe["exec"].get("command") or []), env=dict(env), timeout=timeout,
                                    capture_output=True, check=False)
            return result.returncode == 0, f"exit {result.returncode}"
    except (OSError, http.client.HTTPException, subprocess.TimeoutExpired) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"probe kind {sorted(probe)} is not supported by the test double"


# --- the agent ---------------------------------------------------------------------------------------------


@dataclass
class _Runtime:
    """Mutable per-Pod state, guarded by `_PodRunner.lock`."""

    process: subprocess.Popen[bytes] | None = None
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    started_mono: float = 0.0
    ever_started: bool = False
    restart_count: int = 0
    consecutive_failures: int = 0
    last_termination: Termination | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    finished: bool = False
    ready: bool = False
    probe_successes: int = 0
    probe_failures: int = 0
    next_probe: float = 0.0
    next_start: float = 0.0
    closed: bool = False  # the agent is stopping: never start again


class _PodRunner:
    """One thread per Pod, like the kubelet's pod workers: start, probe, restart, terminate, report."""

    def __init__(self, agent: KubeletDouble, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.uid = str(pod["metadata"]["uid"])
        self.namespace = str(pod["metadata"]["namespace"])
        self.name = str(pod["metadata"]["name"])
        self.lock = threading.Lock()
        self.runtime = _Runtime()
        self._pod = pod
        self._gone = False
        self._wake = threading.Event()
        self._sandbox_at = time.time()
        self._last_written: dict[str, Any] | None = None
        self.log_path = agent.log_dir / f"{self.namespace}_{self.name}.log"
        self.thread = threading.Thread(target=self._run, name=f"kubelet-double-{self.name}", daemon=True)

    # -- inputs from the watch --------------------------------------------------------------------------

    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self._pod = pod
        self._wake.set()

    def mark_gone(self) -> None:
        """The Pod no longer exists in the API: kill its process at once (a kubelet does the same)."""
        self._gone = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def pod(self) -> dict[str, Any]:
        with self.lock:
            return self._pod

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["spec"]["containers"]
        return containers[0]

    # -- the loop ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self.agent.stopping:
                if self._gone:
                    self._kill_group(signal.SIGKILL)
                    return
                if (self.pod.get("metadata") or {}).get("deletionTimestamp"):
                    self._terminate_and_delete()
                    return
                self._step()
                self._report()
                self._wake.wait(self._next_wakeup())
                self._wake.clear()
            self._outlive_process()
        except Exception:
            log.exception("pod %s/%s: runner failed", self.namespace, self.name)
            self._kill_group(signal.SIGKILL)

    def _outlive_process(self) -> None:
        """The agent is stopping: stay alive until stop() has ended the process (PDEATHSIG would SIGKILL it
        as soon as this thread ends, cutting its SIGTERM grace short)."""
        with self.lock:
            process = self.runtime.process
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)

    def _next_wakeup(self) -> float:
        now = time.monotonic()
        with self.lock:
            rt = self.runtime
            if rt.finished:
                return 5.0
            due = rt.next_probe if rt.process is not None else rt.next_start
        return max(0.05, min(0.5, due - now))  # 0.5 s cap: process exits are seen by polling

    def _step(self) -> None:
        now = time.monotonic()
        with self.lock:
            rt = self.runtime
            process = rt.process
        if process is not None and process.poll() is not None:
            self._on_exit(process)
        with self.lock:
            rt = self.runtime
            wants_start = rt.process is None and not rt.finished and now >= rt.next_start and not rt.closed
            probe_due = rt.process is not None and now >= rt.next_probe
        if wants_start:
            self._start()
        elif probe_due:
            self._probe()

    def _start(self) -> None:
        pod, container = self.pod, self.container
        rt = self.runtime
        try:
            own_env = resolve_env(pod, container, secret=self.agent.read_secret_key,
                                  config_map=self.agent.read_config_map_key,
                                  list_secret=self.agent.read_secret, list_config_map=self.agent.read_config_map)
            port = free_local_port()
            env = self.agent.process_env(own_env, port)
            argv = container_argv(container, env, self.agent.commands, self.agent.images)
        except (PodConfigError, ApiException) as exc:
            self._failed_to_start("CreateContainerConfigError", str(exc))
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if rt.closed or self.agent.stopping:
                return
            with self.log_path.open("ab") as log_file:
                log_file.write(f"\n===== {rfc3339(time.time())} start #{rt.restart_count + int(rt.ever_started)}: "
                               f"{argv} port={port} =====\n".encode())
                log_file.flush()
                try:
                    process = subprocess.Popen(  # the Pod's own command, mapped by the test's table
                        argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        cwd=str(self.agent.working_dir), start_new_session=True,
                        preexec_fn=_die_with_parent_thread)  # only a prctl call: safe between fork and exec
                except OSError as exc:
                    error: OSError | None = exc
                else:
                    error = None
            if error is None:
                self.agent.remember(process)
                if rt.ever_started:
                    rt.restart_count += 1
                rt.ever_started = True
                rt.process, rt.port, rt.env = process, port, env
                rt.started_at, rt.started_mono = time.time(), time.monotonic()
                rt.waiting, rt.ready = None, False
                rt.probe_successes = rt.probe_failures = 0
                probe = container.get("readinessProbe")
                delay = float((probe or {}).get("initialDelaySeconds") or 0)
                rt.next_probe = time.monotonic() + min(delay, self.agent.probe_period_cap)
                if probe is None:
                    rt.ready = True  # no readiness probe: ready once running, as with a kubelet
                log.info("pod %s/%s: started pid %d on port %d", self.namespace, self.name, process.pid, port)
                return
        self._failed_to_start("RunContainerError", str(error))

    def _failed_to_start(self, reason: str, message: str) -> None:
        log.warning("pod %s/%s: %s: %s", self.namespace, self.name, reason, message)
        with self.lock:
            rt = self.runtime
            rt.consecutive_failures += 1
            rt.waiting = (reason, message)
            rt.next_start = time.monotonic() + max(self.agent.restart_backoff_base,
                                                   restart_delay(rt.consecutive_failures,
                                                                 self.agent.restart_backoff_base,
                                                                 self.agent.restart_backoff_max))

    def _on_exit(self, process: subprocess.Popen[bytes]) -> None:
        code, reason, sig = exit_status(int(process.returncode))
        policy = str(self.pod["spec"].get("restartPolicy") or "Always")
        with self.lock:
            rt = self.runtime
            if rt.process is not process:
                return
            rt.last_termination = Termination(code, reason, sig, rt.started_at or time.time(), time.time(),
                                              f"testdouble://{process.pid}")
            rt.process, rt.ready = None, False
            if rt.closed or not should_restart(policy, code):  # closed: being deleted, never restarted
                rt.finished = True
                rt.waiting = None
            else:
                if time.monotonic() - rt.started_mono >= self.agent.backoff_reset_seconds:
                    rt.consecutive_failures = 0
                rt.consecutive_failures += 1
                delay = restart_delay(rt.consecutive_failures, self.agent.restart_backoff_base,
                                      self.agent.restart_backoff_max)
                rt.next_start = time.monotonic() + delay
                rt.waiting = ("CrashLoopBackOff", f"back-off {delay:.0f}s restarting failed container") \
                    if delay > 0 else ("ContainerCreating", "")
        log.info("pod %s/%s: pid %d exited with %d (%s)", self.namespace, self.name, process.pid, code,
                 "finished" if rt.finished else "will restart")

    def _probe(self) -> None:
        probe = self.container.get("readinessProbe")
        with self.lock:
            rt = self.runtime
            port, env = rt.port, dict(rt.env)
        if probe is None or port is None:
            with self.lock:
                rt.next_probe = time.monotonic() + 3600
            return
        ok, message = probe_once(probe, port, self._probe_argv, env)
        period = min(float(probe.get("periodSeconds") or 10), self.agent.probe_period_cap)
        with self.lock:
            if rt.port != port:  # restarted meanwhile: the result is about an old process
                return
            if ok:
                rt.probe_successes, rt.probe_failures = rt.probe_successes + 1, 0
                if rt.probe_successes >= int(probe.get("successThreshold") or 1):
                    rt.ready = True
            else:
                rt.probe_failures, rt.probe_successes = rt.probe_failures + 1, 0
                if rt.probe_failures >= int(probe.get("failureThreshold") or 3):
                    rt.ready = False
                log.debug("pod %s/%s: readiness probe failed: %s", self.namespace, self.name, message)
            rt.next_probe = time.monotonic() + period

    def _probe_argv(self, command: Sequence[str]) -> list[str]:
        return container_argv({"command": list(command)}, self.runtime.env, self.agent.commands, self.agent.images)

    # -- status ----------------------------------------------------------------------------------------

    def _view(self) -> ContainerView:
        container = self.container
        with self.lock:
            rt = self.runtime
            return ContainerView(
                name=str(container.get("name")), image=str(container.get("image") or ""),
                pid=rt.process.pid if rt.process is not None else None, started_at=rt.started_at,
                ready=rt.ready and rt.process is not None, restart_count=rt.restart_count,
                last_termination=rt.last_termination, waiting=rt.waiting, finished=rt.finished,
                sandbox_at=self._sandbox_at)

    def _report(self) -> None:
        status = render_status(self.pod, self._view())
        comparable = _without_times(status)
        if comparable == self._last_written:
            return
        try:
            self.agent.patch_pod_status(self.namespace, self.name, status)
        except ApiException as exc:
            if exc.status == 404:
                self.mark_gone()
                return
            log.warning("pod %s/%s: status write failed: %s", self.namespace, self.name, exc.reason)
            return
        self._last_written = comparable

    # -- termination -------------------------------------------------------------------------------------

    def _terminate_and_delete(self) -> None:
        """Graceful deletion: SIGTERM the main process, wait the grace period, SIGKILL the group, delete the Pod."""
        with self.lock:
            rt = self.runtime
            process = rt.process
            rt.closed = True
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)  # PID 1 of the "container" gets SIGTERM
            deadline = time.monotonic() + self._grace_seconds()
            while process.poll() is None and time.monotonic() < deadline and not self._gone \
                    and not self.agent.stopping:
                self._wake.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                self._wake.clear()
                deadline = min(deadline, time.monotonic() + self._grace_seconds())  # a shorter re-delete wins
        self._kill_group(signal.SIGKILL)
        if process is not None:
            self._on_exit(process)
            with self.lock:
                rt.finished = True
            with contextlib.suppress(ApiException):
                self.agent.patch_pod_status(self.namespace, self.name, render_status(self.pod, self._view()))
        for attempt in range(5):  # a Pod left Terminating would block its namespace's deletion
            if self._gone or self.agent.stopping:
                break
            try:
                self.agent.delete_pod(self.namespace, self.name, self.uid)
                break
            except ApiException as exc:
                log.warning("pod %s/%s: delete failed (%s), attempt %d", self.namespace, self.name, exc.reason,
                            attempt + 1)
                self._wake.wait(1.0)
        log.info("pod %s/%s: terminated and deleted", self.namespace, self.name)

    def _grace_seconds(self) -> float:
        pod = self.pod
        value = (pod.get("metadata") or {}).get("deletionGracePeriodSeconds")
        if value is None:
            value = pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(value)

    def _kill_group(self, sig: int) -> None:
        """Signal the whole process group (a container's processes die together), then reap the main process."""
        with self.lock:
            self.runtime.closed = True
            process = self.runtime.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def _raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a client method and return the API's JSON as a dict (camelCase, as in manifests), unparsed by models."""
    response = call(*args, _preload_content=False, **kwargs)
    return dict(json.loads(response.data))


def _without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """Status without heartbeat-like timestamps, to write only on real changes."""
    copy = json.loads(json.dumps(status))
    for condition in copy.get("conditions", []):
        condition.pop("lastTransitionTime", None)
    return dict(copy)


class KubeletDouble:
    """A TEST DOUBLE for the kubelet: one Node whose Pods run as local processes (see the module docstring).

    Use as `with KubeletDouble(...) as agent:` or `start()` / `stop()`. Pods meant for it carry
    `agent.placement()` in their spec (nodeSelector + toleration) unless `dedicated=False`.
    """

    def __init__(
        self,
        kubeconfig: str,
        node_name: str,
        log_dir: Path,
        *,
        commands: Mapping[str, Sequence[str]] | None = None,
        images: Mapping[str, Sequence[str]] | None = None,
        extra_env: Mapping[str, str] | None = None,
        base_env: Mapping[str, str] | None = None,
        port_env: str = "LAGPILOT_HTTP_PORT",
        host_env: str | None = "LAGPILOT_HTTP_HOST",
        namespaces: Collection[str] | None = None,
        dedicated: bool = True,
        capacity: Mapping[str, str] | None = None,
        working_dir: Path | None = None,
        heartbeat_seconds: float = 5.0,
        lease_duration_seconds: int = 40,
        probe_period_cap: float = 1.0,
        restart_backoff_base: float = 1.0,
        restart_backoff_max: float = 10.0,
        backoff_reset_seconds: float = 60.0,
    ) -> None:
        """
        commands: `command[0]` → local argv prefix (default: lagpilot-worker, lagpilot, python, python3).
        images: image → argv prefix, for containers without `command` (the image's entrypoint).
        extra_env: added to every process, winning over the Pod's env (agent-level adaptations).
        base_env: the env a process starts from (default: PATH, HOME, LANG, PYTHONPATH... of this process).
        port_env / host_env: where the process is told its assigned port / 127.0.0.1.
        namespaces: only run Pods of these namespaces (others bound here stay Pending); None: all.
        dedicated: taint the Node so only Pods with `placement()` land on it.
        """
        self.kubeconfig = kubeconfig
        self.node_name = node_name
        self.log_dir = Path(log_dir)
        self.commands: Mapping[str, Sequence[str]] = {**DEFAULT_COMMANDS, **(commands or {})}
        self.images: Mapping[str, Sequence[str]] = dict(images or {})
        self.extra_env = dict(extra_env or {})
        self.base_env = dict(base_env) if base_env is not None else {
            k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        self.port_env = port_env
        self.host_env = host_env
        self.namespaces = frozenset(namespaces) if namespaces is not None else None
        self.dedicated = dedicated
        self.capacity = dict(capacity or DEFAULT_CAPACITY)
        self.working_dir = working_dir or Path.cwd()
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_duration_seconds = lease_duration_seconds
        self.probe_period_cap = probe_period_cap
        self.restart_backoff_base = restart_backoff_base
        self.restart_backoff_max = restart_backoff_max
        self.backoff_reset_seconds = backoff_reset_seconds

        self._api: client.ApiClient | None = None
        self._stop = threading.Event()
        self._runners: dict[str, _PodRunner] = {}
        self._runners_lock = threading.Lock()
        self._log_paths: dict[tuple[str, str], Path] = {}
        self._node_created = False  # stop() deletes only a Node (and its Lease) this agent created
        self._started: list[subprocess.Popen[bytes]] = []
        self._threads: list[threading.Thread] = []
        self._watch: watch.Watch | None = None
        self._transition_time = rfc3339(time.time())

    # -- lifecycle ---------------------------------------------------------------------------------------

    def __enter__(self) -> KubeletDouble:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def core(self) -> client.CoreV1Api:
        if self._api is None:
            raise RuntimeError("KubeletDouble is not started")
        return client.CoreV1Api(self._api)

    def start(self, ready_timeout: float = 30.0) -> None:
        """Register the Node, start heartbeats and the Pod watch; return once the Node is schedulable."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=self.kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 64  # one status writer per Pod, plus the watch and heartbeat
        self._api = client.ApiClient(configuration)
        atexit.register(self.stop)  # a test that dies without teardown still leaves no Node and no process
        try:
            self._register_node()
        except Exception:
            self.stop()  # a Node created before the Lease failed must not stay behind
            raise
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watch_loop, "watch")):
            thread = threading.Thread(target=target, name=f"kubelet-double-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        deadline = time.monotonic() + ready_timeout
        while not self._node_schedulable():
            if time.monotonic() >= deadline:
                self.stop()
                raise TimeoutError(f"node {self.node_name} not Ready and untainted after {ready_timeout:.0f}s")
            self._stop.wait(0.2)
        log.info("kubelet test double: node %s ready", self.node_name)

    def stop(self, grace_seconds: float = 3.0) -> None:
        """Stop every process this agent started (SIGTERM, then SIGKILL after `grace_seconds`), delete the Node.

        Idempotent. The Pods stay in the API, as with a node that went away; the pod GC removes them once
        the Node is gone (or the test's namespace is deleted)."""
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.stop)
        with self._runners_lock:
            runners = list(self._runners.values())
        for runner in runners:
            with runner.lock:
                runner.runtime.closed = True
            runner.wake()
        self._end_processes(list(self._started), grace_seconds)
        if self._watch is not None:
            self._watch.stop()  # type: ignore[no-untyped-call]
        for runner in runners:
            runner.thread.join(timeout=5)
        # A runner that was inside Popen while we collected pids: nothing may outlive stop().
        self._end_processes([p for p in self._started if p.poll() is None], 0.0)
        for thread in self._threads:
            thread.join(timeout=2)
        if self._api is not None and self._node_created:
            leases = client.CoordinationV1Api(self._api)
            deletions: list[tuple[Callable[..., Any], tuple[str, ...]]] = [
                (leases.delete_namespaced_lease, (self.node_name, NODE_LEASE_NAMESPACE)),
                (self.core.delete_node, (self.node_name,))]
            for delete, args in deletions:
                try:
                    _raw(delete, *args)
                except ApiException as exc:
                    if exc.status != 404:
                        log.warning("kubelet test double: cleanup failed: %s", exc.reason)
        log.info("kubelet test double: node %s stopped", self.node_name)

    @staticmethod
    def _end_processes(processes: list[subprocess.Popen[bytes]], grace_seconds: float) -> None:
        alive = [p for p in processes if p.poll() is None]
        for process in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for process in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in alive:
            # The group too: children of a pod's process must not outlive the "container". The group id is
            # the pid we started (start_new_session), so this reaches only our own processes.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)

    # -- what tests use ------------------------------------------------------------------------------------

    def placement(self) -> dict[str, Any]:
        """Pod-spec fields that put a Pod on this Node (merge into a Pod or Deployment template spec)."""
        spec: dict[str, Any] = {"nodeSelector": {"kubernetes.io/hostname": self.node_name}}
        if self.dedicated:
            spec["tolerations"] = [{"key": TAINT_KEY, "operator": "Equal", "value": self.node_name,
                                    "effect": "NoSchedule"}]
        return spec

    def kill_pod_process(self, pod_name: str, sig: int = signal.SIGKILL, namespace: str | None = None) -> int:
        """Fault injection: signal a Pod's process group (default SIGKILL, like a crash). Returns the pid."""
        runner = self._runner(pod_name, namespace)
        with runner.lock:
            process = runner.runtime.process
            if process is None or process.poll() is not None:
                raise LookupError(f"pod {pod_name} has no running process")
            os.killpg(process.pid, sig)
        runner.wake()
        return process.pid

    def pod_pid(self, pod_name: str, namespace: str | None = None) -> int | None:
        runner = self._runner(pod_name, namespace)
        with runner.lock:
            process = runner.runtime.process
            return process.pid if process is not None and process.poll() is None else None

    def pod_port(self, pod_name: str, namespace: str | None = None) -> int | None:
        """The local port assigned to the Pod's current process (its /readyz, /metrics)."""
        runner = self._runner(pod_name, namespace)
        with runner.lock:
            return runner.runtime.port if runner.runtime.process is not None else None

    def log_path(self, pod_name: str, namespace: str | None = None) -> Path:
        """The Pod's process output (all restarts appended), also after the Pod was deleted."""
        with self._runners_lock:
            found = [path for (ns, name), path in self._log_paths.items()
                     if name == pod_name and (namespace is None or ns == namespace)]
        if len(found) != 1:
            raise LookupError(f"pod {pod_name!r} is {'ambiguous' if found else 'not run'} on {self.node_name}")
        return found[0]

    def pods(self) -> list[tuple[str, str]]:
        """(namespace, name) of every Pod this agent has taken, including finished ones not yet deleted."""
        with self._runners_lock:
            return [(r.namespace, r.name) for r in self._runners.values()]

    def started_pids(self) -> list[int]:
        """Every pid this agent ever started (for tests checking that nothing is left behind)."""
        return [p.pid for p in self._started]

    def live_pids(self) -> list[int]:
        return [p.pid for p in self._started if p.poll() is None]

    def remember(self, process: subprocess.Popen[bytes]) -> None:
        self._started.append(process)

    def _runner(self, pod_name: str, namespace: str | None) -> _PodRunner:
        with self._runners_lock:
            found = [r for r in self._runners.values()
                     if r.name == pod_name and (namespace is None or r.namespace == namespace)]
        if len(found) != 1:
            raise LookupError(f"pod {pod_name!r} is {'ambiguous' if found else 'not run'} on {self.node_name}")
        return found[0]

    # -- env for a process -------------------------------------------------------------------------------

    def process_env(self, own_env: Mapping[str, str], port: int) -> dict[str, str]:
        env = {k: v for k, v in self.base_env.items() if not k.startswith("KUBERNETES_SERVICE")}
        env.update(own_env)
        env["KUBECONFIG"] = self.kubeconfig  # no service-account mount: the process reaches the API this way
        env.update(self.extra_env)
        env[self.port_env] = str(port)
        if self.host_env:
            env[self.host_env] = LOCAL_IP
        return env

    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        values = self.read_secret(namespace, name)
        return values.get(key) if values is not None else None

    def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        values = self.read_config_map(namespace, name)
        return values.get(key) if values is not None else None

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        body = self._get_json(self.core.read_namespaced_secret, name, namespace)
        if body is None:
            return None
        values = {k: base64.b64decode(v).decode() for k, v in (body.get("data") or {}).items()}
        values.update(body.get("stringData") or {})
        return values

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        body = self._get_json(self.core.read_namespaced_config_map, name, namespace)
        return dict(body.get("data") or {}) if body is not None else None

    @staticmethod
    def _get_json(reader: Callable[..., Any], name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return _raw(reader, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- API writes ------------------------------------------------------------------------------------------

    def patch_pod_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        # JSON merge patch replaces lists whole, so containerStatuses never mixes a old and a new state.
        self.core.patch_namespaced_pod_status(name, namespace, {"status": dict(status)}, _content_type=MERGE_PATCH,
                                              _preload_content=False)

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.core.delete_namespaced_pod(
                name, namespace, grace_period_seconds=0,
                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)),
                _preload_content=False)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone already, or a new Pod of the same name (uid precondition)
                raise

    # -- Node, Lease, heartbeat -----------------------------------------------------------------------------

    def _node_conditions(self) -> list[dict[str, Any]]:
        now = rfc3339(time.time())
        rows = [("Ready", "True", "KubeletReady", "kubelet test double is posting ready status"),
                ("MemoryPressure", "False", "KubeletHasSufficientMemory", "test double"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure", "test double"),
                ("PIDPressure", "False", "KubeletHasSufficientPID", "test double")]
        return [{"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": now,
                 "lastTransitionTime": self._transition_time} for t, s, r, m in rows]

    def _register_node(self) -> None:
        marker = {TEST_DOUBLE_KEY: TEST_DOUBLE_VALUE}
        spec: dict[str, Any] = {}
        if self.dedicated:
            spec["taints"] = [{"key": TAINT_KEY, "value": self.node_name, "effect": "NoSchedule"}]
        node = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {**marker, "kubernetes.io/hostname": self.node_name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64"},
                "annotations": {**marker, "node.alpha.kubernetes.io/ttl": "0"},
            },
            "spec": spec,
            "status": {
                "capacity": self.capacity, "allocatable": self.capacity,
                "conditions": self._node_conditions(),
                "addresses": [{"type": "InternalIP", "address": LOCAL_IP},
                              {"type": "Hostname", "address": self.node_name}],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                "nodeInfo": {"kubeletVersion": "v0.0.0-lagpilot-test-double", "kubeProxyVersion": "",
                             "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion":
                             "testdouble://local-process", "machineID": "", "systemUUID": "", "bootID": "",
                             "kernelVersion": "", "osImage": "kubelet test double"},
            },
        }
        node_uid = _raw(self.core.create_node, node)["metadata"]["uid"]
        self._node_created = True
        lease = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": NODE_LEASE_NAMESPACE,
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                              "uid": node_uid}]},
            "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": self.lease_duration_seconds,
                     "renewTime": micro_time(time.time())},
        }
        _raw(client.CoordinationV1Api(self._api).create_namespaced_lease, NODE_LEASE_NAMESPACE, lease)

    def _heartbeat_loop(self) -> None:
        leases = client.CoordinationV1Api(self._api)
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                leases.patch_namespaced_lease(self.node_name, NODE_LEASE_NAMESPACE,
                                              {"spec": {"renewTime": micro_time(time.time())}},
                                              _content_type=MERGE_PATCH, _preload_content=False)
                self.core.patch_node_status(self.node_name, {"status": {"conditions": self._node_conditions()}},
                                            _content_type=MERGE_PATCH, _preload_content=False)
            except ApiException as exc:
                log.warning("kubelet test double: heartbeat failed: %s", exc.reason)
            except Exception:
                log.exception("kubelet test double: heartbeat failed")

    def _node_schedulable(self) -> bool:
        try:
            node = _raw(self.core.read_node, self.node_name)
        except ApiException:
            return False
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (node.get("status") or {}).get("conditions") or [])
        foreign_taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != TAINT_KEY]
        return ready and not foreign_taints and not (node.get("spec") or {}).get("unschedulable")

    # -- Pods bound to the Node -------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self._stop.is_set():
            try:
                listing = _raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                present = set()
                for pod in listing.get("items") or []:
                    present.add(pod["metadata"]["uid"])
                    self._observe(pod)
                with self._runners_lock:
                    vanished = [r for uid, r in self._runners.items() if uid not in present]
                for runner in vanished:
                    runner.mark_gone()
                self._watch = watch.Watch()  # type: ignore[no-untyped-call]
                events = self._watch.stream(  # type: ignore[no-untyped-call]
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=10, deserialize=False)
                for event in events:
                    if self._stop.is_set():
                        break
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        self._forget(pod["metadata"]["uid"])
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(pod)
            except Exception as exc:  # a broken watch is re-listed, as informers do
                if not self._stop.is_set():
                    log.warning("kubelet test double: pod watch failed (%s); re-listing", exc)
                    self._stop.wait(1.0)

    def _observe(self, pod: dict[str, Any]) -> None:
        if self._stop.is_set():
            return
        metadata = pod["metadata"]
        if self.namespaces is not None and metadata["namespace"] not in self.namespaces:
            return
        uid = metadata["uid"]
        with self._runners_lock:
            runner = self._runners.get(uid)
            if runner is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") and \
                        not metadata.get("deletionTimestamp"):
                    return  # finished before this agent: nothing to run
                runner = _PodRunner(self, pod)
                self._runners[uid] = runner
                self._log_paths[(runner.namespace, runner.name)] = runner.log_path
                runner.thread.start()
                return
        runner.update(pod)

    def _forget(self, uid: str) -> None:
        with self._runners_lock:
            runner = self._runners.pop(uid, None)
        if runner is not None:
            runner.mark_gone()

"""Real faults on the real node: SIGKILL through the container runtime, latency and a partition between
one Pod and the broker, each confined to that Pod's network namespace and always undone.

* `NodeRuntime.kill_container(namespace, pod)`: `ctr task kill -s SIGKILL` on the Pod's container (what
  the OOM killer or `crictl stop -t 0` does); the kubelet sees the exit and restarts it.
* `latency(netns, broker, delay_ms)`: every packet the Pod sends to the broker waits `delay_ms` (see
  e2e/netdelay.py: this kernel has no `tc netem`, so an NFQUEUE rule hands the packets to a delayer
  running in the Pod's netns).
* `partition(netns, broker)`: iptables DROP of the Pod's packets to the broker and of the broker's
  packets to the Pod, in the Pod's netns (connections hang, as on a lost link; nothing is refused).

Every rule carries the comment `lagpilot-e2e-fault-<token>` and lives in the Pod's own network
namespace (entered with `nsenter --net`), never in the host's: `host_fault_rules()` lists any rule with
that prefix in the root netns, and the scenarios assert it is empty. `ip_forward` is never touched.
Undo runs in `finally`; a rule left in a Pod's netns would vanish with the Pod anyway.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RULE_COMMENT_PREFIX = "lagpilot-e2e-fault"
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
NFQUEUE_NUMBER = 7  # per netns: each Pod has its own queue namespace


# --- pure parts --------------------------------------------------------------------------------------


def container_id(pod: dict[str, Any], container: str) -> str:
    """The runtime id of a Pod's running container, from its status (`containerd://<id>`)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == container:
            value = str(status.get("containerID") or "")
            runtime, _, identifier = value.partition("://")
            if runtime != "containerd" or not identifier:
                raise ValueError(f"container {container} has no containerd id yet: {value!r}")
            return identifier
    raise ValueError(f"the Pod has no status for a container named {container}")


def network_namespace_path(container_info: dict[str, Any]) -> str:
    """The netns path of a container, from `ctr containers info` (the Pod sandbox's, shared by its containers)."""
    for namespace in ((container_info.get("Spec") or {}).get("linux") or {}).get("namespaces") or []:
        if namespace.get("type") == "network" and namespace.get("path"):
            return str(namespace["path"])
    raise ValueError("the container's spec names no network namespace path")


def task_pid(task_list: str, identifier: str) -> int | None:
    """The pid of a running task in `ctr task ls` output (columns TASK, PID, STATUS)."""
    for line in task_list.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0] == identifier and fields[2] == "RUNNING":
            return int(fields[1])
    return None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, bootstrap: str) -> Endpoint:
        """The first server of a bootstrap list (the stack's broker for Pods is a single address)."""
        host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
        return cls(host, int(port))


def partition_rules(broker: Endpoint, comment: str) -> list[list[str]]:
    """iptables rule specs (table, chain, match, target) cutting one Pod off from one broker both ways."""
    tag = ["-m", "comment", "--comment", comment]
    return [
        ["-t", "filter", "OUTPUT", "-d", broker.host, "-p", "tcp", "--dport", str(broker.port), *tag, "-j", "DROP"],
        ["-t", "filter", "INPUT", "-s", broker.host, "-p", "tcp", "--sport", str(broker.port), *tag, "-j", "DROP"],
    ]


def latency_rules(broker: Endpoint, comment: str, queue: int = NFQUEUE_NUMBER) -> list[list[str]]:
    """The Pod's packets to the broker go to the delayer's queue; without a delayer they pass (bypass)."""
    return [["-t", "mangle", "OUTPUT", "-d", broker.host, "-p", "tcp", "--dport", str(broker.port),
             "-m", "comment", "--comment", comment, "-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass"]]


def iptables_args(action: str, rule: Sequence[str]) -> list[str]:
    """`iptables -w -t <table> -A|-D <chain> <rest>` for a rule spec from `partition_rules`/`latency_rules`."""
    table_flag, table, chain, *rest = rule
    return ["iptables", "-w", table_flag, table, action, chain, *rest]


@dataclass(frozen=True)
class TaskExit:
    """A container's process exited (containerd's /tasks/exit event)."""

    container_id: str
    exited_at: float        # epoch seconds
    exit_status: int        # 0 after a clean exit (omitted from the event's JSON), 137 after SIGKILL


def rfc3339_seconds(text: str) -> float:
    """'2026-12-04T23:50:02.42154528Z' -> epoch seconds (containerd writes up to nanoseconds)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float(f"0.{fraction}") if fraction else 0.0)


def parse_task_exit(line: str) -> TaskExit | None:
    """A /tasks/exit line of `ctr events` (`<date> <time> <zone> UTC <ns> <topic> <json>`), else None."""
    fields = line.split(" ", 6)
    if len(fields) < 7 or fields[5] != "/tasks/exit":
        return None
    payload = json.loads(fields[6])
    return TaskExit(str(payload.get("container_id") or payload.get("id")),
                    rfc3339_seconds(str(payload["exited_at"])), int(payload.get("exit_status") or 0))


def fault_comment() -> str:
    return f"{RULE_COMMENT_PREFIX}-{uuid.uuid4().hex[:8]}"


def fault_rules(listing: str, prefix: str = RULE_COMMENT_PREFIX) -> list[str]:
    """Lines of `iptables -S` output that carry a fault comment."""
    return [line for line in listing.splitlines() if prefix in line]


# --- the node ------------------------------------------------------------------------------------------


def run(args: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def containerd_address() -> str:
    """The stack's containerd socket (hack/stack.py: <stack>/node/containerd/containerd.sock)."""
    explicit = os.environ.get("LAGPILOT_CONTAINERD_ADDRESS")
    if explicit:
        return explicit
    stack_dir = os.environ.get("LAGPILOT_STACK_DIR")
    if not stack_dir:
        raise RuntimeError("LAGPILOT_STACK_DIR is not set: source the stack's env file")
    return str(Path(stack_dir) / "node" / "containerd" / "containerd.sock")


@dataclass
class PodHandle:
    """A running container of a Pod as the runtime knows it."""

    namespace: str
    pod: str
    container_id: str
    netns: str


class NodeRuntime:
    """The real node's containerd, through `ctr` in the CRI plugin's `k8s.io` namespace."""

    def __init__(self, kubectl: Any, address: str | None = None) -> None:
        self.kubectl = kubectl
        self.address = address or containerd_address()

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ctr", "--address", self.address, "-n", "k8s.io", *args], check=check)

    def pod(self, namespace: str, pod: str, container: str = "worker") -> PodHandle:
        body = json.loads(self.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
        identifier = container_id(body, container)
        info = json.loads(self.ctr("containers", "info", identifier).stdout)
        return PodHandle(namespace, pod, identifier, network_namespace_path(info))

    def pid(self, handle: PodHandle) -> int | None:
        return task_pid(self.ctr("task", "ls").stdout, handle.container_id)

    def kill_container(self, namespace: str, pod: str, container: str = "worker",
                       sig: signal.Signals = signal.SIGKILL) -> PodHandle:
        """Signal the container's init process through the runtime (not the kubelet, not the API)."""
        handle = self.pod(namespace, pod, container)
        self.ctr("task", "kill", "--signal", sig.name, handle.container_id)
        return handle


class TaskExits:
    """containerd's task exit events while the block runs (`ctr events`, a process of our own)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.runtime = runtime
        self.exits: list[TaskExit] = []
        self._changed = threading.Condition()
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> TaskExits:
        self._process = subprocess.Popen(["ctr", "--address", self.runtime.address, "-n", "k8s.io", "events"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                         start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._reader.start()
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            event = parse_task_exit(line.strip())
            if event is not None:
                with self._changed:
                    self.exits.append(event)
                    self._changed.notify_all()

    def __exit__(self, *_exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)

    def wait_exit(self, container_id: str, timeout: float) -> TaskExit | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [e for e in self.exits if e.container_id == container_id]
                if found:
                    return found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)


def _netns_exists(netns: str) -> bool:
    return Path(netns).exists()


def _in_netns(netns: str, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["nsenter", f"--net={netns}", *args], check=check)


@contextlib.contextmanager
def netns_rules(netns: str, rules: list[list[str]]) -> Iterator[None]:
    """Add iptables rules in a Pod's netns; delete them on exit (unless the netns went with the Pod)."""
    added: list[list[str]] = []
    try:
        for rule in rules:
            _in_netns(netns, iptables_args("-A", rule))
            added.append(rule)
        yield
    finally:
        for rule in reversed(added):
            if _netns_exists(netns):
                _in_netns(netns, iptables_args("-D", rule), check=False)


def netns_fault_rules(netns: str) -> list[str]:
    listing = "\n".join(_in_netns(netns, ["iptables", "-w", "-t", table, "-S"]).stdout for table in IPTABLES_TABLES)
    return fault_rules(listing)


def host_fault_rules() -> list[str]:
    """Fault rules in the host's root netns: always empty (ours live in Pod netns only)."""
    listing = "\n".join(run(["iptables", "-w", "-t", table, "-S"]).stdout for table in IPTABLES_TABLES)
    return fault_rules(listing)


@dataclass
class FaultWindow:
    """When a fault was in force (time.time()), for the scenario's progress and decision checks."""

    kind: str
    pod: str
    started: float = 0.0
    ended: float = 0.0
    detail: str = ""


@contextlib.contextmanager
def partition(handle: PodHandle, broker: Endpoint) -> Iterator[FaultWindow]:
    window = FaultWindow("partition", handle.pod)
    comment = fault_comment()
    with netns_rules(handle.netns, partition_rules(broker, comment)):
        window.started = time.time()
        try:
            yield window
        finally:
            window.ended = time.time()


@contextlib.contextmanager
def latency(handle: PodHandle, broker: Endpoint, delay_ms: float, log_path: Path) -> Iterator[FaultWindow]:
    """`delay_ms` on every packet the Pod sends to the broker, from a delayer inside the Pod's netns."""
    window = FaultWindow("latency", handle.pod, detail=f"{delay_ms:.0f} ms")
    comment = fault_comment()
    with log_path.open("ab") as log:
        delayer = subprocess.Popen(
            ["nsenter", f"--net={handle.netns}", sys.executable, "-m", "e2e.netdelay",
             "--queue", str(NFQUEUE_NUMBER), "--delay-ms", str(delay_ms)],
            stdout=subprocess.PIPE, stderr=log, cwd=str(REPO), start_new_session=True)
        try:
            bound = _read_line(delayer, 20)
            if "bound" not in bound:
                raise RuntimeError(f"the delayer did not bind its queue: {bound!r} (see {log_path})")
            with netns_rules(handle.netns, latency_rules(broker, comment)):
                window.started = time.time()
                try:
                    yield window
                finally:
                    window.ended = time.time()
        finally:
            # The rule is gone: nothing new is queued; the delayer releases what it holds, then exits.
            with contextlib.suppress(ProcessLookupError):
                delayer.send_signal(signal.SIGTERM)
            try:
                out, _ = delayer.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                delayer.kill()
                out, _ = delayer.communicate(timeout=10)
            log.write(out)


def _read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The process's first stdout line, or '' if none came within `timeout` (it may have failed)."""
    assert process.stdout is not None
    stream = process.stdout
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0].decode(errors="replace") if lines else ""

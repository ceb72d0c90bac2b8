#!/usr/bin/env python3
"""Lagpilot's local stack: real Kafka (KRaft), a real Kubernetes control plane and Prometheus.

    python3 hack/stack.py install   # fetch and build everything (cached under ~/.cache/lagpilot/)
    python3 hack/stack.py up        # install, start what is not running, print `export` lines
    python3 hack/stack.py down      # stop every process this stack started (by pidfile)
    python3 hack/stack.py status    # what runs, where
    python3 hack/stack.py keda      # build KEDA, extract its CRDs, mint its certs (benchmarks; starts nothing)
    python3 hack/stack.py keda-up   # start the real KEDA against the running stack (needs LAGPILOT_AGGREGATION=1)
    python3 hack/stack.py keda-down # stop it by pidfile and remove its APIService

Standard library only, so it runs before the project's virtualenv exists. Everything binds to
127.0.0.1; state (data, pidfiles, logs, certificates, the env file) lives in .stack/ (git-ignored),
downloads and builds in ~/.cache/lagpilot/ (shared by this user's clones; LAGPILOT_CACHE_DIR moves it).
Versions are pinned in hack/versions.env.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
# Downloads and builds are shared by every clone of one user (a second clone on this machine starts warm);
# LAGPILOT_CACHE_DIR moves them (an empty folder there reproduces a fresh machine's cold run).
CACHE = Path(os.environ.get("LAGPILOT_CACHE_DIR")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lagpilot")
# Resolved: a process is known as the stack's by this path in its command line (running_pid), and a
# symlinked or relative path would not match it: `up` then took a running node for a dead one and cleared it.
STATE = Path(os.environ.get("LAGPILOT_STACK_DIR", REPO / ".stack")).resolve()
BIN = CACHE / "bin"
HOST = "127.0.0.1"


class StackError(Exception):
    """A failure with a message that names the cause and the fix."""


def versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


PINS = versions()


def port(name: str, default: int) -> int:
    raw = os.environ.get(f"LAGPILOT_{name}_PORT", str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise StackError(f"LAGPILOT_{name}_PORT={raw!r} is not a port number") from exc


PORTS = {
    "kafka": port("KAFKA", 19092),
    "kafka-controller": port("KAFKA_CONTROLLER", 19093),
    "kafka-sasl": port("KAFKA_SASL", 19094),
    "kafka-scram": port("KAFKA_SCRAM", 19095),
    "kafka-mtls": port("KAFKA_MTLS", 19096),
    "etcd": port("ETCD", 12379),
    "etcd-peer": port("ETCD_PEER", 12380),
    "apiserver": port("APISERVER", 16443),
    "prometheus": port("PROMETHEUS", 19090),
    # The real node (on unless LAGPILOT_NODE=0): Kafka's listener for Pods on the bridge address,
    # the kubelet's API on the bridge address, and health/metrics ports on 127.0.0.1.
    "kafka-pods": port("KAFKA_PODS", 19097),
    "kubelet": port("KUBELET", 19250),
    "kubelet-healthz": port("KUBELET_HEALTHZ", 19248),
    "kube-proxy-healthz": port("KUBE_PROXY_HEALTHZ", 19256),
    "kube-proxy-metrics": port("KUBE_PROXY_METRICS", 19249),
    # KEDA, for the benchmarks only (`stack.py keda` builds it, `keda-up` starts it): the operator's gRPC
    # metrics service, metrics and health probes; the adapter's secure port (the APIService's backend)
    # and its plain /metrics server (KEDA binds that one on every address: it takes a port only).
    "keda-metrics-service": port("KEDA_METRICS_SERVICE", 19666),
    "keda-operator-metrics": port("KEDA_OPERATOR_METRICS", 19680),
    "keda-operator-health": port("KEDA_OPERATOR_HEALTH", 19681),
    "keda-adapter": port("KEDA_ADAPTER", 19443),
    "keda-adapter-metrics": port("KEDA_ADAPTER_METRICS", 19682),
}
ADMIN_TOKEN_FILE = STATE / "kube" / "admin.token"
SASL_USER = "lagpilot"
SASL_PASSWORD = "lagpilot-local-only"  # noqa: S105 - a throwaway credential of the local test broker
SCRAM_USER = "lagpilot-scram"
SCRAM_PASSWORD = "lagpilot-scram-local-only"  # noqa: S105 - a throwaway credential of the local test broker
# The mTLS client's certificate subject; the broker maps it to the principal User:<CN>.
MTLS_CLIENT_CN = "lagpilot-mtls-client"


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- install


def require_tool(tool: str, why: str, fix: str) -> str:
    found = shutil.which(tool)
    if not found:
        raise StackError(f"`{tool}` is not on PATH; it is needed to {why}. Fix: {fix}")
    return found


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None, what: str) -> None:
    log_file = CACHE / "logs" / f"{what.replace(' ', '-')}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("w") as out:
        result = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        hint = ""
        if any(s in tail for s in ("dial tcp", "Could not transfer", "Temporary failure", "connection refused")):
            hint = " It looks like a failed download: check the network to the package registries and retry."
        raise StackError(f"{what} failed (exit {result.returncode}); full log: {log_file}.{hint}\n{tail}")


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(CACHE / "go" / "mod"),
        GOCACHE=str(CACHE / "go" / "build"),
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
        CGO_ENABLED="0",
    )
    return env


def stamped(name: str, version: str) -> bool:
    stamp = CACHE / "stamps" / name
    return stamp.exists() and stamp.read_text() == version


def stamp(name: str, version: str) -> None:
    path = CACHE / "stamps" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(version)


def kubernetes_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    return " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={version}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion={version}",
        ]
    )


def install_kubernetes() -> None:
    version = PINS["KUBERNETES_VERSION"]
    binaries = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
    if stamped("kubernetes", version) and all((BIN / b).exists() for b in binaries):
        return
    require_tool("go", "build the Kubernetes control plane", "install Go >= 1.24 (https://go.dev/dl/)")
    ldflags = kubernetes_ldflags(version)
    log(f"building Kubernetes {version} control plane from the Go module proxy (first time: ~5-10 min)")
    BIN.mkdir(parents=True, exist_ok=True)
    run(
        ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{BIN}/"]
        + [f"k8s.io/kubernetes/cmd/{b}" for b in binaries],
        cwd=HACK / "k8s",
        env=go_env(),
        what="build kubernetes",
    )
    stamp("kubernetes", version)


def install_etcd() -> None:
    version = PINS["ETCD_VERSION"]
    if stamped("etcd", version) and (BIN / "etcd").exists():
        return
    require_tool("go", "build etcd", "install Go >= 1.24")
    log(f"building etcd {version}")
    run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(BIN / "etcd"), "."],
        cwd=HACK / "etcd", env=go_env(), what="build etcd")
    stamp("etcd", version)


def install_helm() -> None:
    version = PINS["HELM_VERSION"]
    if stamped("helm", version) and (BIN / "helm").exists():
        return
    require_tool("go", "build helm", "install Go >= 1.24")
    log(f"building helm {version}")
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={version}"
    run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(BIN / "helm"), "helm.sh/helm/v3/cmd/helm"],
        cwd=HACK / "helm", env=go_env(), what="build helm")
    stamp("helm", version)


def kafka_home() -> Path:
    return CACHE / f"kafka-{PINS['KAFKA_VERSION']}"


def install_kafka() -> None:
    version = PINS["KAFKA_VERSION"]
    libs = kafka_home() / "libs"
    if stamped("kafka", version) and any(libs.glob("kafka_*.jar")):
        return
    require_tool("java", "run the Kafka broker", "install a Java 17+ JDK (apt-get install openjdk-17-jdk-headless)")
    require_tool("mvn", "fetch the Kafka jars from Maven Central", "install Maven (apt-get install maven)")
    log(f"fetching Apache Kafka {version} jars from Maven Central")
    shutil.rmtree(libs, ignore_errors=True)
    run(
        [
            "mvn", "-q", "-B", f"-Dmaven.repo.local={CACHE / 'm2'}",
            f"-Dkafka.version={version}",
            f"-Dscala.binary.version={PINS['SCALA_BINARY_VERSION']}",
            f"-Dlog4j.version={PINS['LOG4J_VERSION']}",
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}",
        ],
        cwd=HACK / "kafka",
        what="fetch kafka jars",
    )
    stamp("kafka", version)


def install_prometheus() -> None:
    package = PINS["PROMETHEUS_DEBIAN_PACKAGE"]
    if (BIN / "prometheus").exists() and (BIN / "promtool").exists():
        return
    require_tool("apt-get", "download Debian's prometheus package", "run on Debian/Ubuntu or put prometheus "
                 f"and promtool into {BIN}")
    log("fetching Debian's prometheus package (unpacked, never installed as a service)")
    work = CACHE / "prometheus-deb"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    download = ["apt-get", "download", package]
    if subprocess.run(download, cwd=work, capture_output=True, check=False).returncode != 0:
        # A fresh machine has no package lists yet.
        run(["apt-get", "update"], what="apt-get update")
        run(download, cwd=work, what="download prometheus deb")
    debs = list(work.glob("prometheus_*.deb"))
    if not debs:
        raise StackError(f"apt-get download {package} produced no .deb in {work}")
    run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")], what="unpack prometheus deb")
    BIN.mkdir(parents=True, exist_ok=True)
    for tool in ("prometheus", "promtool"):
        shutil.copy2(work / "root" / "usr" / "bin" / tool, BIN / tool)


def install() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    require_tool("openssl", "make the control plane's certificates", "apt-get install openssl")
    install_kafka()
    install_prometheus()
    install_etcd()
    install_kubernetes()
    install_helm()
    if node_enabled():
        install_node_packages()
        install_node_binaries()


# --------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Service:
    name: str
    ports: tuple[str, ...]
    start: Callable[[], list[str]]
    ready: Callable[[], bool]
    env: Callable[[], dict[str, str]] | None = None
    timeout: float = 90.0


def pidfile(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def running_pid(name: str) -> int | None:
    """The pid of our process `name` if it still runs (and is still ours, not a reused pid)."""
    path = pidfile(name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (ValueError, OSError):
        return None
    if not cmdline:
        # Seen right after start: a live process whose cmdline reads empty for a moment. Alive unless a zombie.
        return None if _is_zombie(pid) else pid
    return pid if str(STATE) in cmdline else None


def port_open(port_number: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port_number)) == 0


def http_ok(url: str, *, token: str | None = None, ca: Path | None = None) -> bool:
    request = urllib.request.Request(url)  # noqa: S310 - our own loopback URLs
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(request, timeout=2, context=context) as response:  # noqa: S310
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


STARTED: dict[str, subprocess.Popen[bytes]] = {}


def start_process(service: Service) -> None:
    for key in service.ports:
        if port_open(PORTS[key]):
            raise StackError(
                f"port {PORTS[key]} on {HOST} ({service.name}) is already in use by a process this stack "
                f"did not start. Stop that process, or choose another port: "
                f"LAGPILOT_{key.upper().replace('-', '_')}_PORT=<free port> make stack-up"
            )
    logs = STATE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pidfile(service.name).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if service.env:
        env.update(service.env())
    out = (logs / f"{service.name}.log").open("ab")
    process = subprocess.Popen(
        service.start(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        env=env, cwd=STATE, start_new_session=True,
    )
    pidfile(service.name).write_text(str(process.pid))
    STARTED[service.name] = process


def wait_ready(service: Service) -> None:
    deadline = time.monotonic() + service.timeout
    while time.monotonic() < deadline:
        if service.ready():
            return
        process = STARTED.get(service.name)
        returncode = process.poll() if process is not None else None
        # Our own child: its exit status is the truth. Otherwise, the pidfile and /proc.
        if returncode is not None or (process is None and running_pid(service.name) is None):
            how = f"exit status {returncode}" if returncode is None or returncode >= 0 else f"signal {-returncode}"
            raise StackError(
                f"{service.name} exited during start-up ({how}); see {STATE / 'logs' / (service.name + '.log')}"
            )
        time.sleep(0.25)  # polling a server we just started; there is no event to await
    raise StackError(f"{service.name} was not ready within {service.timeout:.0f}s; "
                     f"see {STATE / 'logs' / (service.name + '.log')}")


def running_and_ready(service: Service) -> bool:
    """A running server that does not answer at once may only be slow (a loaded machine, a long GC):
    it gets its start-up time to answer before `up` replaces it. Replacing a slow apiserver or broker
    under load would break every client of the stack at once."""
    if running_pid(service.name) is None:
        return False
    try:
        wait_ready(service)
    except StackError as exc:
        log(f"{exc}: replacing it")
        return False
    return True


# kube-apiserver's graceful stop waits up to 60 s for its open connections (watches of clients that are
# gone or going) before it gives up ("Failed to shutdown server: context deadline exceeded"); every
# `down` spent the whole 15 s grace there. Nothing of a stopping stack needs it: etcd holds the state,
# and the next apiserver resets the `kubernetes` Service's endpoints itself.
STOP_GRACE_SECONDS = {"kube-apiserver": 2.0}


def stop_process(name: str, grace: float | None = None) -> None:
    grace = STOP_GRACE_SECONDS.get(name, 15.0) if grace is None else grace
    pid = running_pid(name)
    pidfile(name).unlink(missing_ok=True)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        if _is_zombie(pid):
            break
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    log(f"stopped {name} (pid {pid})")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------------------------- Kafka


def kafka_pki() -> Path:
    return STATE / "kafka" / "pki"


def kafka_tls_files() -> dict[str, Path]:
    """The PEM files clients of the TLS listeners need (minted by `make_kafka_certificates`)."""
    pki = kafka_pki()
    return {"ca": pki / "ca.crt", "client-cert": pki / "client.crt", "client-key": pki / "client.key"}


def make_kafka_certificates() -> None:
    """A fresh CA, a broker certificate for 127.0.0.1/localhost and a client certificate, each Kafka start.

    Minted every start (never reused from a previous run, never hand-made), so a clean clone and a
    long-lived checkout see the same thing. Keys are unencrypted PKCS#8, which Kafka's PEM key store reads
    without `ssl.key.password`.
    """
    pki = kafka_pki()
    shutil.rmtree(pki, ignore_errors=True)
    pki.mkdir(parents=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=lagpilot-kafka-local-ca",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    (pki / "server.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                    "extendedKeyUsage=serverAuth\n")
    (pki / "client.cnf").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=localhost"), ("client", f"/CN={MTLS_CLIENT_CN}")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.csr"))
        openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
                "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "3650",
                "-extfile", str(pki / f"{name}.cnf"), "-out", str(pki / f"{name}.crt"))
    # Kafka's PEM key store: the private key followed by the certificate chain, in one file.
    (pki / "server.pem").write_text((pki / "server.key").read_text() + (pki / "server.crt").read_text())
    for secret in ("ca.key", "server.key", "server.pem", "client.key"):
        (pki / secret).chmod(0o600)


SHM = Path("/dev/shm")  # noqa: S108 - a folder of this stack's own in it, named by the stack, removed by stack-down


def kafka_memory_dir() -> Path | None:
    """This stack's folder for the broker's logs in memory (tmpfs), when the machine has /dev/shm.

    The broker is throwaway (fresh data each start), and its KRaft controller fsyncs the metadata log
    on every write: on a busy disk one write took 7-19 s in a CI run, the controller fenced its own
    broker, and every client timed out for half a minute. On tmpfs those fsyncs cost nothing.
    """
    if not (SHM.is_dir() and os.access(SHM, os.W_OK)):
        return None
    return SHM / f"lagpilot-kafka-{hashlib.sha256(str(STATE.resolve()).encode()).hexdigest()[:12]}"


def kafka_data_dir() -> Path:
    memory = kafka_memory_dir()
    return memory / "data" if memory is not None else STATE / "kafka" / "data"


def remove_kafka_data() -> None:
    """This stack's broker data, and the in-memory data of stacks whose folder is gone (deleted clones)."""
    shutil.rmtree(STATE / "kafka" / "data", ignore_errors=True)
    memory = kafka_memory_dir()
    if memory is None:
        return
    shutil.rmtree(memory, ignore_errors=True)
    for other in SHM.glob("lagpilot-kafka-*"):
        owner = other / "owner"
        if not owner.exists() or not Path(owner.read_text().strip()).exists():
            shutil.rmtree(other, ignore_errors=True)


def kafka_properties() -> str:
    data = kafka_data_dir()
    pki = kafka_pki()
    kafka, controller, sasl = PORTS["kafka"], PORTS["kafka-controller"], PORTS["kafka-sasl"]
    scram, mtls = PORTS["kafka-scram"], PORTS["kafka-mtls"]
    # With the real node, Pods reach the broker through a listener of its own on the bridge address.
    pods = f",PODS://{NODE_IP}:{PORTS['kafka-pods']}" if node_enabled() else ""
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{SASL_USER}="{SASL_PASSWORD}";'
    )
    listeners = (f"PLAINTEXT://{HOST}:{kafka},SASL_PLAINTEXT://{HOST}:{sasl},"
                 f"SCRAM://{HOST}:{scram},MTLS://{HOST}:{mtls}" + pods)
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{HOST}:{controller}",
            f"listeners={listeners},CONTROLLER://{HOST}:{controller}",
            f"advertised.listeners={listeners}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,"
            "SCRAM:SASL_SSL,MTLS:SSL" + (",PODS:PLAINTEXT" if pods else ""),
            "sasl.enabled.mechanisms=PLAIN",
            f"listener.name.sasl_plaintext.plain.sasl.jaas.config={plain_jaas}",
            # SASL_SSL with SCRAM-SHA-512; the users are written into the metadata log at format time.
            "listener.name.scram.sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.scram.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            # Both TLS listeners present the broker certificate; the MTLS one also demands a client
            # certificate signed by the stack's CA, and its principal is the certificate's CN.
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={pki / 'server.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={pki / 'ca.crt'}",
            "listener.name.mtls.ssl.client.auth=required",
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+).*$/$1/,DEFAULT",
            # ACLs are enforced so authorization failures can be tested; the PLAINTEXT listener's
            # ANONYMOUS principal (tests, controller) stays a super user.
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users=User:ANONYMOUS",
            "allow.everyone.if.no.acl.found=true",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            # Share groups (KIP-932) need no switch from Kafka 4.2 on: formatting at the pinned release
            # (4.4-IV2) sets share.version=2. Their coordinator's state topic is replicated once here.
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # The lowest session a group may ask for (its group configs `consumer.session.timeout.ms`,
            # `share.session.timeout.ms`, and heartbeats to match), as the classic protocol already allows
            # (group.min.session.timeout.ms, 6 s): tests that kill a member give its group a 10 s session, so
            # its partitions move on in seconds rather than after the 45 s default. Defaults are unchanged.
            "group.consumer.min.session.timeout.ms=6000",
            "group.consumer.min.heartbeat.interval.ms=1000",
            "group.share.min.session.timeout.ms=6000",
            "group.share.min.heartbeat.interval.ms=1000",
            "auto.create.topics.enable=false",
            "delete.topic.enable=true",
            "log.flush.interval.messages=9223372036854775807",
            "",
        ]
    )


def kafka_log4j() -> str:
    return "\n".join(
        [
            "Configuration:",
            "  Appenders:",
            "    Console: {name: STDOUT, PatternLayout: {pattern: '[%d] %p %m (%c)%n'}}",
            "  Loggers:",
            "    Root: {level: INFO, AppenderRef: [{ref: STDOUT}]}",
            "    Logger:",
            "      - {name: kafka, level: WARN}",
            "      - {name: org.apache.kafka, level: WARN}",
            "      - {name: state.change.logger, level: WARN}",
            "",
        ]
    )


def java_cmd(main: str, *args: str, heap: str = "512m", long_running: bool = False) -> list[str]:
    """`long_running` (the broker): both JIT tiers. C1 only (TieredStopAtLevel=1) starts a short tool
    faster, but leaves a broker that serves a whole test run on less optimized code."""
    config = STATE / "kafka"
    return [
        "java", f"-Xmx{heap}", f"-Xms{heap}", "-server", "-XX:+UseG1GC",
        *(() if long_running else ("-XX:TieredStopAtLevel=1",)),
        "-Djava.awt.headless=true", f"-Dkafka.logs.dir={config / 'logs'}",
        f"-Dlog4j2.configurationFile={config / 'log4j2.yaml'}",
        "-cp", f"{kafka_home() / 'libs'}/*", main, *args,
    ]


def new_kafka_cluster_id(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """A random KRaft cluster id (a base64url UUID) that does not start with '-'.

    One id in 64 would, and kafka-storage's argument parser reads such a value as an option, so
    `format -t -abc...` fails; Kafka's own Uuid.randomUuid() skips those ids for the same reason.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes(16)).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def prepare_kafka() -> list[str]:
    config = STATE / "kafka"
    remove_kafka_data()  # a throwaway broker: fresh data each start
    config.mkdir(parents=True, exist_ok=True)
    memory = kafka_memory_dir()
    if memory is not None:
        memory.mkdir(parents=True)
        (memory / "owner").write_text(f"{STATE.resolve()}\n")  # whose it is, for remove_kafka_data
    (config / "server.properties").write_text(kafka_properties())
    (config / "log4j2.yaml").write_text(kafka_log4j())
    make_kafka_certificates()
    run(java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={new_kafka_cluster_id()}",
                 "-c", str(config / "server.properties"),
                 "--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]", heap="256m"),
        what="format kafka storage")
    return java_cmd("kafka.Kafka", str(config / "server.properties"), long_running=True)


def kafka_ready() -> bool:
    """True when the broker answers on PLAINTEXT and listens on every listener this stack configures.

    The listener check makes `up` replace a broker started by an older stack.py that lacked a listener
    (its PLAINTEXT port answers, but tests of the newer listeners could never connect); with the real
    node, that includes the Pods' listener on the bridge address.
    """
    if node_enabled() and not kafka_answers(NODE_IP, PORTS["kafka-pods"]):
        return False
    if not kafka_config_current():
        return False
    return kafka_answers() and all(port_open(PORTS[key]) for key in ("kafka-sasl", "kafka-scram", "kafka-mtls"))


def kafka_config_current() -> bool:
    """True when the broker was started with the settings this stack.py writes: `up` replaces one started
    by an older stack.py with other settings (a lower bound a newer test relies on, say)."""
    with contextlib.suppress(OSError):
        return (STATE / "kafka" / "server.properties").read_text() == kafka_properties()
    return False


def kafka_answers(host: str = HOST, port_number: int | None = None) -> bool:
    """True when the broker answers a Kafka ApiVersions request (v0) on a PLAINTEXT listener."""
    client_id = b"lagpilot-stack"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port_number or PORTS["kafka"]), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(4)
            if len(header) < 4:
                return False
            size = struct.unpack(">i", header)[0]
            payload = b""
            while len(payload) < size:
                chunk = sock.recv(size - len(payload))
                if not chunk:
                    return False
                payload += chunk
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", payload[:6])
    return bool(correlation_id == 1 and error_code == 0)


# --------------------------------------------------------------------------------------------- Kubernetes


def kube_dir() -> Path:
    return STATE / "kube"


def openssl(*args: str) -> None:
    run(["openssl", *args], what="openssl " + args[0])


def make_certificates() -> None:
    pki = kube_dir() / "pki"
    san = (f"subjectAltName=IP:127.0.0.1,IP:{SERVICE_IP},IP:{NODE_IP},DNS:localhost,DNS:kubernetes,"
           "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n")
    san_file = pki / "san.cnf"
    if (pki / "apiserver.crt").exists() and san_file.exists() and san_file.read_text() == san:
        write_kubeconfig()
        return
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=lagpilot-local-ca",
                "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    # The bridge address is in the SAN whether or not the node runs, so switching the node on keeps the cert.
    san_file.write_text(san)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
            "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr"))
    openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(pki / "san.cnf"),
            "-out", str(pki / "apiserver.crt"))
    if not (pki / "sa.key").exists():
        openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    if not ADMIN_TOKEN_FILE.exists():
        token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        ADMIN_TOKEN_FILE.write_text(token)
        (kube_dir() / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    write_kubeconfig()


def write_kubeconfig() -> None:
    """The admin kubeconfig; its server follows where the apiserver listens (loopback, or the bridge)."""
    pki = kube_dir() / "pki"
    token = ADMIN_TOKEN_FILE.read_text()
    ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lagpilot-local", "cluster": {
            "server": f"https://{api_host()}:{PORTS['apiserver']}", "certificate-authority-data": ca}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "lagpilot-local", "context": {"cluster": "lagpilot-local", "user": "admin",
                                                            "namespace": "default"}}],
        "current-context": "lagpilot-local",
    }
    # JSON is valid YAML, and kubectl/client libraries read it as a kubeconfig.
    kubeconfig_path().write_text(json.dumps(kubeconfig, indent=2))
    kubeconfig_path().chmod(0o600)


def kubeconfig_path() -> Path:
    return kube_dir() / "admin.kubeconfig"


def etcd_cmd() -> list[str]:
    data = STATE / "etcd"
    shutil.rmtree(data, ignore_errors=True)
    client, peer = f"http://{HOST}:{PORTS['etcd']}", f"http://{HOST}:{PORTS['etcd-peer']}"
    return [
        str(BIN / "etcd"), f"--data-dir={data}", "--name=lagpilot",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=lagpilot={peer}", "--unsafe-no-fsync", "--log-level=warn",
    ]


def aggregation_enabled() -> bool:
    """LAGPILOT_AGGREGATION=1 starts the apiserver with the aggregation layer's front proxy configured, so
    an extension apiserver (KEDA's metrics adapter, for the benchmarks) can serve an APIService. Off by
    default: it changes nothing for the stack the tests use."""
    return os.environ.get("LAGPILOT_AGGREGATION", "0") == "1"


def front_proxy_files() -> dict[str, Path]:
    pki = kube_dir() / "pki"
    return {"ca": pki / "front-proxy-ca.crt", "ca-key": pki / "front-proxy-ca.key",
            "client-cert": pki / "front-proxy-client.crt", "client-key": pki / "front-proxy-client.key"}


FRONT_PROXY_CLIENT_CN = "front-proxy-client"


def make_front_proxy_certificates() -> None:
    """The aggregation layer's own CA (as kubeadm does it, not the cluster CA: a certificate it signs may
    assert any user name in the X-Remote-* headers) and the apiserver's client certificate from it."""
    files = front_proxy_files()
    if files["client-cert"].exists() and files["client-key"].exists():
        return
    files["ca"].parent.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=lagpilot-front-proxy-ca",
            "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))
    ext = files["ca"].parent / "front-proxy-client.cnf"
    ext.write_text("extendedKeyUsage=clientAuth\n")
    csr = files["ca"].parent / "front-proxy-client.csr"
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={FRONT_PROXY_CLIENT_CN}",
            "-keyout", str(files["client-key"]), "-out", str(csr))
    openssl("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
            "-CAcreateserial", "-days", "3650", "-extfile", str(ext), "-out", str(files["client-cert"]))


def aggregation_flags(files: dict[str, Path]) -> list[str]:
    """The kube-apiserver flags of the aggregation layer. The apiserver publishes the request-header CA,
    allowed names and header names in kube-system/extension-apiserver-authentication, where an extension
    apiserver's delegated authentication reads them. --enable-aggregator-routing stays off: with it the
    aggregator dials a Service's EndpointSlice addresses, and the API refuses loopback ones; without it
    an ExternalName Service (externalName 127.0.0.1) routes to an adapter on this machine's loopback."""
    return [
        f"--requestheader-client-ca-file={files['ca']}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={files['client-cert']}",
        f"--proxy-client-key-file={files['client-key']}",
        "--enable-aggregator-routing=false",
    ]


def apiserver_has_aggregation(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.startswith(b"--proxy-client-cert-file=") for arg in cmdline)


def apiserver_cmd() -> list[str]:
    make_certificates()
    pki, api = kube_dir() / "pki", PORTS["apiserver"]
    aggregation = []
    if aggregation_enabled():
        make_front_proxy_certificates()
        aggregation = aggregation_flags(front_proxy_files())
    node_flags = []
    if node_enabled():
        node_certificates()
        # Pods reach the apiserver through the `kubernetes` Service, whose endpoint is the advertise
        # address: it must be an address Pods can reach (the bridge's). The apiserver dials the kubelet
        # by the node's InternalIP (never its host name through DNS), checks its serving certificate,
        # and presents a client certificate the kubelet trusts.
        node_flags = [
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        ]
    return [
        str(BIN / "kube-apiserver"),
        f"--etcd-servers=http://{HOST}:{PORTS['etcd']}",
        f"--bind-address={api_host()}", f"--advertise-address={api_host()}", f"--secure-port={api}",
        *node_flags,
        *aggregation,
        f"--cert-dir={kube_dir() / 'certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--token-auth-file={kube_dir() / 'tokens.csv'}",
        "--service-cluster-ip-range=10.0.0.0/24",
        f"--service-account-issuer=https://{HOST}:{api}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--authorization-mode=RBAC",
        "--allow-privileged=true",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        "--v=0",
    ]


def apiserver_ready() -> bool:
    if not ADMIN_TOKEN_FILE.exists():
        return False
    return http_ok(f"https://{api_host()}:{PORTS['apiserver']}/readyz", token=ADMIN_TOKEN_FILE.read_text(),
                   ca=kube_dir() / "pki" / "ca.crt")


def controller_manager_cmd() -> list[str]:
    pki = kube_dir() / "pki"
    return [
        str(BIN / "kube-controller-manager"), f"--kubeconfig={kubeconfig_path()}",
        "--leader-elect=false", f"--bind-address={HOST}", "--secure-port=0",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
        "--use-service-account-credentials=true",
        # Its default, /usr/libexec/kubernetes/..., would be created on the machine and outlive the stack.
        f"--flex-volume-plugin-dir={kube_dir() / 'volume-plugins'}",
        "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle",
        "--concurrent-deployment-syncs=10", "--concurrent-replicaset-syncs=10",
        "--v=0",
    ]


def scheduler_cmd() -> list[str]:
    return [str(BIN / "kube-scheduler"), f"--kubeconfig={kubeconfig_path()}", "--leader-elect=false",
            f"--bind-address={HOST}", "--secure-port=0", "--v=0"]


def kubectl_ok(*args: str) -> bool:
    result = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={kubeconfig_path()}", *args],
                            capture_output=True, check=False)
    return result.returncode == 0


def controller_manager_ready() -> bool:
    # The service-account controller creating `default` in `default` proves the controllers run.
    return kubectl_ok("get", "serviceaccount", "default", "-n", "default")


def scheduler_ready() -> bool:
    log_file = STATE / "logs" / "kube-scheduler.log"
    return bool(running_pid("kube-scheduler")) and log_file.exists() and (
        b"Caches are synced" in log_file.read_bytes() or b"Attempting to acquire" in log_file.read_bytes()
        or b"Starting Kubernetes Scheduler" in log_file.read_bytes()
    )


# --------------------------------------------------------------------------------------------- Prometheus


def prometheus_cmd() -> list[str]:
    base = STATE / "prometheus"
    shutil.rmtree(base / "data", ignore_errors=True)
    (base / "targets").mkdir(parents=True, exist_ok=True)
    (base / "prometheus.yml").write_text(
        "\n".join(
            [
                "global:",
                "  scrape_interval: 2s",
                "  evaluation_interval: 2s",
                "scrape_configs:",
                "  - job_name: lagpilot",
                "    file_sd_configs:",
                f"      - files: ['{base / 'targets'}/*.json']",
                "        refresh_interval: 2s",
                "",
            ]
        )
    )
    return [
        str(BIN / "prometheus"), f"--config.file={base / 'prometheus.yml'}",
        f"--storage.tsdb.path={base / 'data'}", f"--web.listen-address={HOST}:{PORTS['prometheus']}",
        "--web.enable-lifecycle", "--log.level=warn",
    ]


def prometheus_ready() -> bool:
    return http_ok(f"http://{HOST}:{PORTS['prometheus']}/-/ready")


SERVICES = [
    Service("kafka", ("kafka", "kafka-controller", "kafka-sasl", "kafka-scram", "kafka-mtls"), prepare_kafka,
            kafka_ready, timeout=120),
    Service("etcd", ("etcd", "etcd-peer"), etcd_cmd, lambda: http_ok(f"http://{HOST}:{PORTS['etcd']}/readyz")),
    Service("kube-apiserver", ("apiserver",), apiserver_cmd, apiserver_ready, timeout=120),
    Service("kube-controller-manager", (), controller_manager_cmd, controller_manager_ready),
    Service("kube-scheduler", (), scheduler_cmd, scheduler_ready),
    Service("prometheus", ("prometheus",), prometheus_cmd, prometheus_ready),
]


# --------------------------------------------------------------------------------------------- the real node
# Part of the stack unless LAGPILOT_NODE=0 (or `stack.py up --no-node`): containerd + runc + CNI +
# a kubelet and kube-proxy built from the same Kubernetes module, so Pods run in containers from the
# project's own images. The network stays on this machine: a bridge with an address of its own, no
# gateway, no masquerade, ip_forward left at 0; Pods get one route (the Service range, via the bridge
# address, where kube-proxy's DNAT sends it to the apiserver) and no DNS server.

NODE_PACKAGES = ("containerd", "runc", "containernetworking-plugins", "buildah", "busybox-static", "debootstrap",
                 "iptables")
CNI_BIN = Path("/usr/lib/cni")
NODE_NAME = "lagpilot-node"
BRIDGE = os.environ.get("LAGPILOT_NODE_BRIDGE", "lagpilot0")
try:
    NODE_NETWORK = ipaddress.ip_interface(os.environ.get("LAGPILOT_NODE_ADDRESS", "10.88.77.1/24"))
except ValueError as _exc:
    raise SystemExit(f"LAGPILOT_NODE_ADDRESS is not an address/prefix: {_exc}") from _exc
NODE_IP = str(NODE_NETWORK.ip)
# The bridge's own MAC, set once: a bridge without one takes the lowest MAC of its ports and changes it as
# Pods come and go, and every other Pod's ARP entry for the node's address (the broker, the apiserver) then
# names a MAC nobody answers to until it is re-resolved: seconds without a connection. Locally administered
# (02:), then the node's IPv4 address.
BRIDGE_MAC = "02:00:" + ":".join(f"{octet:02x}" for octet in NODE_NETWORK.ip.packed)
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the `kubernetes` Service: first address of SERVICE_CIDR
# What the kubelet and kube-proxy change on the machine: recorded before `up`, restored at `down`.
NODE_SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
)
# Machine-wide paths the kubelet, containerd's shims and the CRI write whatever their configuration says.
NODE_GLOBAL_PATHS = (Path("/var/lib/kubelet"), Path("/var/log/containers"), Path("/run/containerd"),
                     Path("/var/run/netns"), Path("/var/lib/cni"))
# Paths nothing of the stack may create (their defaults are moved into the stack's folders); recorded
# so that a test can tell.
UNTOUCHED_PATHS = (Path("/etc/cni"), Path("/usr/libexec/kubernetes"), Path("/var/lib/containerd"),
                   Path("/var/lib/containers"))
IPTABLES = ("iptables", "ip6tables")


NODE_SERVICE_NAMES = ("kubelet", "containerd", "kube-proxy")


def node_enabled() -> bool:
    """The real node is part of the stack unless LAGPILOT_NODE=0 (a control plane without nodes)."""
    return os.environ.get("LAGPILOT_NODE", "1") != "0"


def node_dir() -> Path:
    return STATE / "node"


# The node is machine-wide (one kubelet, one bridge, the sysctls), but its folder is the stack's: a second
# checkout's stack has a folder of its own. So which folder the machine's node belongs to, and the sysctls
# and paths from before it started, are recorded machine-wide. /run is emptied at boot, as is all of a
# node's state (processes, mounts, bridge, sysctls). This is how a fresh clone's `up` finds and clears a
# node that a killed stack of another checkout left behind, and refuses to start next to one that runs.
NODE_RECORD = Path("/run/lagpilot-node")


def node_owner_file() -> Path:
    return NODE_RECORD / "owner"


def node_baseline_file() -> Path:
    return NODE_RECORD / "baseline.json"


def recorded_node_owner() -> Path | None:
    """The node folder of the stack that last started the machine's node and has not cleared it."""
    with contextlib.suppress(OSError):
        text = node_owner_file().read_text().strip()
        return Path(text) if text else None
    return None


def node_services_alive(node_root: Path) -> list[int]:
    """Pids of a kubelet, containerd or kube-proxy started for the node folder `node_root`."""
    marker = str(node_root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode(errors="replace")).name in NODE_SERVICE_NAMES and any(marker in a for a in argv):
                pids.append(int(entry.name))
    return pids


def node_takeover(owner: Path | None, ours: Path, owner_alive: bool) -> str:
    """What `up` does about the machine's node: "ours" (none recorded, or ours), "clear" (another stack's,
    left behind by a killed stack: clear it first) or "refuse" (another stack's, running)."""
    if owner is None or owner == ours:
        return "ours"
    return "refuse" if owner_alive else "clear"


def containerd_root() -> Path:
    """containerd's content and snapshots, kept in the cache across `down`/`up`: importing the images
    again after every `down` cost about a minute. Its runtime state (tasks, the shims' folders) stays
    under the stack folder, and the containers a killed stack left in its metadata are deleted at the
    next start (clear_stale_containers)."""
    return CACHE / "containerd" / "root"


def containerd_socket() -> Path:
    return node_dir() / "containerd" / "containerd.sock"


def api_host() -> str:
    """Where the apiserver listens: the bridge address when Pods must reach it, loopback otherwise."""
    return NODE_IP if node_enabled() else HOST


def read_sysctl(key: str) -> str | None:
    try:
        return Path("/proc/sys", key).read_text().strip()
    except OSError:
        return None


def write_sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        Path("/proc/sys", key).write_text(value + "\n")


def assert_no_forwarding() -> None:
    for key in ("net/ipv4/ip_forward", "net/ipv4/conf/all/forwarding"):
        if read_sysctl(key) not in (None, "0"):
            raise StackError(f"{key.replace('/', '.')} is {read_sysctl(key)}; the real node requires 0 so that "
                             "nothing a Pod sends is routed off this machine. Something else turned it on.")


def sh(*cmd: str, check: bool = False, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise StackError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    if not quiet and result.returncode != 0:
        log(f"{' '.join(cmd)}: {result.stderr.strip()}")
    return result


def package_installed(package: str) -> bool:
    result = sh("dpkg-query", "-W", "-f=${Status}", package)
    return result.returncode == 0 and result.stdout.endswith("install ok installed")


def install_node_packages() -> None:
    missing = [p for p in NODE_PACKAGES if not package_installed(p)]
    if not missing:
        return
    require_tool("apt-get", "install containerd, runc, the CNI plugins and buildah",
                 f"install the Debian packages {' '.join(missing)} yourself")
    if os.geteuid() != 0:
        raise StackError(f"the real node needs root to install {' '.join(missing)} (apt-get) and to run a kubelet")
    log(f"installing {' '.join(missing)} with apt-get")
    # The packages' maintainer scripts must not start system services (a second containerd); a
    # policy-rc.d that says "no" is Debian's switch for that, removed again right after.
    policy = Path("/usr/sbin/policy-rc.d")
    ours = not policy.exists()
    if ours:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update"], env=env, what="apt-get update")
        run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, what="apt-get install node")
    finally:
        if ours:
            policy.unlink(missing_ok=True)
    if Path("/etc/cni/net.d").exists() and any(Path("/etc/cni/net.d").iterdir()):
        raise StackError("/etc/cni/net.d is not empty after installing the node's packages (was podman installed?); "
                         "its configurations turn on ip_forward: remove them before using the real node")


def install_node_binaries() -> None:
    """kubelet and kube-proxy from the same wrapper module, version and ldflags as the control plane."""
    version = PINS["KUBERNETES_VERSION"]
    binaries = ["kubelet", "kube-proxy"]
    if stamped("kubernetes-node", version) and all((BIN / b).exists() for b in binaries):
        return
    require_tool("go", "build the kubelet and kube-proxy", "install Go >= 1.24 (https://go.dev/dl/)")
    log(f"building kubelet and kube-proxy {version} (first time: ~8 min on 2 cores)")
    started = time.monotonic()
    BIN.mkdir(parents=True, exist_ok=True)
    run(["go", "build", "-trimpath", "-ldflags", kubernetes_ldflags(version), "-o", f"{BIN}/"]
        + [f"k8s.io/kubernetes/cmd/{b}" for b in binaries], cwd=HACK / "k8s", env=go_env(), what="build kubelet")
    log(f"built kubelet and kube-proxy in {time.monotonic() - started:.0f}s")
    stamp("kubernetes-node", version)


# ------------------------------------------------------------------ node: leftovers, sysctls, network


def _mount_table() -> list[tuple[str, bool]]:
    """Every mount point of this namespace (/proc/self/mountinfo), and whether it propagates (shared:N)."""
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        optional = fields[6:fields.index("-")]
        table.append((fields[4].replace("\\040", " "), any(f.startswith("shared:") for f in optional)))
    return table


def _mounts_under(*roots: Path) -> list[str]:
    prefixes = [str(r.resolve()) + "/" for r in roots] + [str(r.resolve()) for r in roots]
    return [target for target, _ in _mount_table() if any(target == p or target.startswith(p) for p in prefixes)]


def unmount_under(*roots: Path) -> None:
    # Deepest first; a mount may be stacked several times on one path (the kubelet's rshared bind).
    for _ in range(5):
        targets = sorted(set(_mounts_under(*roots)), key=lambda t: t.count("/"), reverse=True)
        if not targets:
            return
        for target in targets:
            sh("umount", "-l", target)
    remaining = _mounts_under(*roots)
    if remaining:
        raise StackError(f"could not unmount {remaining[:5]}")


def our_processes(node_root: Path | None = None) -> list[int]:
    """Processes whose command line names the node folder (this stack's by default): containerd's shims, mostly."""
    marker = str(node_root or node_dir())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(entry.name))
    return pids


def _cgroup_pods_dirs() -> list[Path]:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # cgroup v2: one tree
        return [root / "kubepods"] if (root / "kubepods").exists() else []
    return [d / "kubepods" for d in root.iterdir() if (d / "kubepods").is_dir() and not d.is_symlink()]


def kill_pod_processes() -> None:
    """Every process in the kubelet's kubepods cgroups (containers outlive a killed shim), then the cgroups."""
    for _ in range(20):
        pids: set[int] = set()
        for top in _cgroup_pods_dirs():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)  # the kernel empties the cgroups as the processes are reaped; nothing to await
    for top in _cgroup_pods_dirs():
        for cgroup in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def remove_iptables_rules() -> None:
    """Every KUBE-* chain (kube-proxy's and the kubelet's; only this stack runs them here) and jumps to them."""
    if (BIN / "kube-proxy").exists() and shutil.which("iptables"):
        sh(str(BIN / "kube-proxy"), "--cleanup", "--v=0")
    for tool in IPTABLES:
        if not shutil.which(tool):
            continue
        for table in ("nat", "filter", "mangle", "raw"):
            listing = sh(tool, "-w", "-t", table, "-S")
            if listing.returncode != 0:
                continue
            rules = listing.stdout.splitlines()
            for rule in rules:  # jumps from the built-in chains into ours
                parts = shlex.split(rule)
                if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and any(
                        p.startswith("KUBE-") for p in parts[2:]):
                    sh(tool, "-w", "-t", table, "-D", *parts[1:])
            chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
            for chain in chains:
                sh(tool, "-w", "-t", table, "-F", chain)
            for chain in chains:
                sh(tool, "-w", "-t", table, "-X", chain)


def kube_iptables_rules() -> list[str]:
    """What of this stack is left in iptables/ip6tables (empty when clean)."""
    found = []
    for tool in IPTABLES:
        if shutil.which(tool):
            for table in ("nat", "filter", "mangle", "raw"):
                found += [f"{tool} -t {table} {r}" for r in sh(tool, "-w", "-t", table, "-S").stdout.splitlines()
                          if "KUBE-" in r or BRIDGE in r]
    return found


def our_netns() -> list[str]:
    """The CRI's network namespaces (cni-<uuid>); machine-wide, and only this stack runs a CRI here."""
    netns = Path("/var/run/netns")
    return sorted(p.name for p in netns.iterdir() if p.name.startswith("cni-")) if netns.exists() else []


def record_node_baseline() -> None:
    """Sysctls and which machine-wide paths existed, before anything of the node starts.

    Written once: after a killed stack, the file still holds the values from before that stack.
    """
    baseline = node_baseline_file()
    if baseline.exists():
        return
    NODE_RECORD.mkdir(parents=True, exist_ok=True)
    baseline.write_text(json.dumps({
        "sysctls": {key: read_sysctl(key) for key in NODE_SYSCTLS},
        "paths": [str(p) for p in NODE_GLOBAL_PATHS if p.exists()],
        "untouched": {str(p): p.exists() for p in UNTOUCHED_PATHS},
    }, indent=2))


def restore_node_baseline(node_root: Path) -> None:
    # A stack.py from before the machine-wide record kept the baseline in the node folder.
    baseline = next((b for b in (node_baseline_file(), node_root / "baseline.json") if b.exists()), None)
    if baseline is None:
        return
    recorded = json.loads(baseline.read_text())
    for key, value in recorded["sysctls"].items():
        if value is not None and read_sysctl(key) != value:
            write_sysctl(key, value)
    for path in NODE_GLOBAL_PATHS:
        if str(path) not in recorded["paths"] and path.exists():
            unmount_under(path)
            shutil.rmtree(path, ignore_errors=True)
    baseline.unlink()


def clear_node(node_root: Path | None = None) -> None:
    """Remove everything of the node, whether stopped cleanly (`down`) or left behind by a killed stack.

    `node_root` is the node folder of the stack whose node it is: this stack's by default, or another
    checkout's whose stack was killed (its folder may be gone with its clone; the machine-wide parts are not).
    """
    root = (node_root or node_dir()).resolve()
    owner = recorded_node_owner()
    if not root.exists() and owner != root:
        return
    if owner is not None and owner != root and node_services_alive(owner):
        log(f"the machine's node belongs to the running stack of {owner.parent}: left alone")
        return
    started = time.monotonic()
    if root == node_dir().resolve():
        with contextlib.suppress(StackError):
            stop_pod_tasks()
        for name in ("kube-proxy", "kubelet", "containerd"):
            stop_process(name)
    for pid in our_processes(root):  # shims of a containerd that is gone (and, for another stack's, all of it)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    kill_pod_processes()
    for name in our_netns():
        sh("ip", "netns", "delete", name)
        with contextlib.suppress(OSError):
            Path("/var/run/netns", name).unlink()
    unmount_under(root, containerd_root())  # the CRI's sandbox /dev/shm mounts live in its root
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        sh("ip", "link", "delete", BRIDGE, check=True)
    remove_iptables_rules()
    restore_node_baseline(root)
    for sub in ("containerd", "kubelet", "kube-proxy", "cni", "pod-logs"):
        shutil.rmtree(root / sub, ignore_errors=True)
    shutil.rmtree(root / "images", ignore_errors=True)
    node_owner_file().unlink(missing_ok=True)
    log(f"node cleared in {time.monotonic() - started:.1f}s")


def clear_stale_containers() -> bool:
    """Delete the containers a killed stack left in containerd's metadata (its root outlives the stack).

    Called right after containerd starts, before the kubelet: every container there is such a leftover
    (their tasks died with the shims). True when there were any.
    """
    ctr = ["ctr", "--address", str(containerd_socket()), "-n", "k8s.io"]
    if not sh(*ctr, "containers", "list", "-q").stdout.split():
        return False
    log("deleting the containers a killed stack left in containerd's metadata")
    stop_pod_tasks()
    return True


def stop_pod_tasks() -> None:
    """Kill and delete every container through containerd while it runs, so shims exit and rootfs unmount."""
    if running_pid("containerd") is None:
        return
    ctr = ["ctr", "--address", str(containerd_socket()), "-n", "k8s.io"]
    tasks = sh(*ctr, "tasks", "list", "-q").stdout.split()
    for task in tasks:
        sh(*ctr, "tasks", "kill", "-a", "-s", "SIGKILL", task)
    for task in tasks:
        sh(*ctr, "tasks", "delete", "-f", task)
    for container in sh(*ctr, "containers", "list", "-q").stdout.split():
        sh(*ctr, "containers", "delete", container)


def make_bridge() -> None:
    """The Pods' network: a bridge with the node's address; nothing routes beyond it (ip_forward stays 0)."""
    if not Path(f"/sys/class/net/{BRIDGE}").exists():
        sh("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge", check=True)
    else:
        sh("ip", "link", "set", "dev", BRIDGE, "address", BRIDGE_MAC, check=True)
    if NODE_IP not in sh("ip", "-4", "addr", "show", "dev", BRIDGE).stdout:
        sh("ip", "addr", "add", str(NODE_NETWORK), "dev", BRIDGE, check=True)
    sh("ip", "link", "set", BRIDGE, "up", check=True)
    cni = node_dir() / "cni"
    (cni / "net.d").mkdir(parents=True, exist_ok=True)
    pool = NODE_NETWORK.network
    hosts = list(pool.hosts())
    (cni / "net.d" / "10-lagpilot.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0",
        "name": "lagpilot",
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE,
            # isGateway would give the bridge the gateway address and turn on ip_forward: both unwanted.
            "isGateway": False, "ipMasq": False, "hairpinMode": False,
            "ipam": {
                "type": "host-local", "dataDir": str(cni / "ipam"),
                "ranges": [[{"subnet": str(pool), "rangeStart": str(hosts[9]), "rangeEnd": str(hosts[-1])}]],
                # The only route a Pod gets: Service addresses, to the node, where kube-proxy DNATs them
                # to endpoints on this machine. No default route.
                "routes": [{"dst": SERVICE_CIDR, "gw": NODE_IP}],
            },
        }],
    }, indent=2))


# ------------------------------------------------------------------ node: processes


def node_certificates() -> None:
    """The kubelet's serving certificate for the node IP, and the apiserver's client certificate for kubelets."""
    pki = kube_dir() / "pki"
    pairs = {"kubelet": ("/CN=lagpilot-node", f"subjectAltName=IP:{NODE_IP}\n"),
             "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", None)}
    for name, (subject, san) in pairs.items():
        if (pki / f"{name}.crt").exists():
            continue
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.csr"))
        extra = []
        if san:
            (pki / f"{name}.cnf").write_text(san)
            extra = ["-extfile", str(pki / f"{name}.cnf")]
        openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
                str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", *extra, "-out", str(pki / f"{name}.crt"))


def containerd_cmd() -> list[str]:
    base = node_dir() / "containerd"
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.toml").write_text("\n".join([
        "version = 2",
        f'root = "{containerd_root()}"',
        f'state = "{base / "state"}"',
        "[grpc]",
        f'  address = "{containerd_socket()}"',
        "[ttrpc]",
        f'  address = "{containerd_socket()}.ttrpc"',
        '[plugins."io.containerd.grpc.v1.cri"]',
        f'  sandbox_image = "{pause_image_name()}"',
        # This VM has no CAP_SYS_RESOURCE: the CRI's oom_score_adj of -998 for sandboxes fails every Pod.
        "  restrict_oom_score_adj = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        "  enable_selinux = false",
        '[plugins."io.containerd.grpc.v1.cri".containerd]',
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]',
        '  runtime_type = "io.containerd.runc.v2"',
        '[plugins."io.containerd.grpc.v1.cri".cni]',
        f'  bin_dir = "{CNI_BIN}"',
        f'  conf_dir = "{node_dir() / "cni" / "net.d"}"',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{base / "opt"}"',
        "",
    ]))
    return [shutil.which("containerd") or "containerd", "--config", str(base / "config.toml"), "--log-level", "warn"]


def containerd_ready() -> bool:
    if not containerd_socket().exists():
        return False
    return sh("ctr", "--address", str(containerd_socket()), "version").returncode == 0


def node_kubeconfig() -> Path:
    return kubeconfig_path()  # the admin identity: RBAC's Node authorizer is not enabled in this stack


def share_kubelet_root(root: Path) -> None:
    """Make the kubelet's root folder a shared bind mount of itself, as the kubelet does at start.

    The kubelet does it (MakeRShared) while its pod-resources listener starts beside it: a socket made
    before the mount and renamed into place after it crossed mounts, the rename failed with "invalid
    cross-device link" and the kubelet exited (seen once, in a fresh clone's `up` right after a `down`).
    Found done, the kubelet mounts nothing at start. `down` unmounts it with everything under the node.
    """
    root.mkdir(parents=True, exist_ok=True)
    target = str(root.resolve())
    if (target, True) in _mount_table():
        return
    sh("mount", "--bind", target, target, check=True)
    sh("mount", "--make-rshared", target, check=True)


def kubelet_cmd() -> list[str]:
    pki, base = kube_dir() / "pki", node_dir() / "kubelet"
    base.mkdir(parents=True, exist_ok=True)
    (node_dir() / "pod-logs").mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": PORTS["kubelet"], "readOnlyPort": 0,
        "healthzBindAddress": HOST, "healthzPort": PORTS["kubelet-healthz"],
        "tlsCertFile": str(pki / "kubelet.crt"), "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{containerd_socket()}",
        "cgroupDriver": "cgroupfs", "failSwapOn": False, "failCgroupV1": False,
        "resolvConf": "",  # Pods get no DNS server: everything is addressed by IP
        "clusterDNS": [],
        "podLogsDir": str(node_dir() / "pod-logs"),
        "volumePluginDir": str(base / "volume-plugins"),
        "serializeImagePulls": False,
        # Images cannot be pulled again (no registry): the kubelet must never collect them.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": f"{EVICTION_FREE_PERCENT:g}%",
                         "imagefs.available": f"{EVICTION_FREE_PERCENT:g}%", "nodefs.inodesFree": "1%"},
        "maxPods": 60,
        "nodeStatusReportFrequency": "10s",
    }
    (base / "config.json").write_text(json.dumps(config, indent=2))
    share_kubelet_root(base / "root")
    return [str(BIN / "kubelet"), f"--config={base / 'config.json'}", f"--kubeconfig={node_kubeconfig()}",
            f"--root-dir={base / 'root'}", f"--cert-dir={base / 'pki'}", f"--node-ip={NODE_IP}",
            f"--hostname-override={NODE_NAME}", "--v=0"]


def kubelet_ready() -> bool:
    if not http_ok(f"http://{HOST}:{PORTS['kubelet-healthz']}/healthz"):
        return False
    result = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={kubeconfig_path()}", "get", "node", NODE_NAME,
                             "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() == "True"


def kube_proxy_cmd() -> list[str]:
    base = node_dir() / "kube-proxy"
    base.mkdir(parents=True, exist_ok=True)
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(node_kubeconfig())},
        "mode": "iptables",
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"{HOST}:{PORTS['kube-proxy-healthz']}",
        "metricsBindAddress": f"{HOST}:{PORTS['kube-proxy-metrics']}",
        # NodePorts only on the bridge address: localhost NodePorts would set route_localnet.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"masqueradeAll": False, "localhostNodePorts": False},
        # Zeros leave the machine's conntrack settings alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
    }
    (base / "config.json").write_text(json.dumps(config, indent=2))
    return [str(BIN / "kube-proxy"), f"--config={base / 'config.json'}", "--v=0"]


def kube_proxy_ready() -> bool:
    if not http_ok(f"http://{HOST}:{PORTS['kube-proxy-healthz']}/healthz"):
        return False
    nat = sh("iptables", "-w", "-t", "nat", "-S", "KUBE-SERVICES").stdout
    return SERVICE_IP in nat


# No registry is reachable, and none may be contacted: a Pod naming any other image would have the
# kubelet ask containerd to pull it (a DNS lookup and a connection off this machine). The apiserver
# refuses such Pods, with a message that says what to do; a Pod that is only there to be counted
# (Pending, as the operator's tests use them) opts out of the node with a nodeSelector no node has.
NO_NODE_LABEL = "lagpilot.io/no-node"
LOCAL_IMAGE_POLICY = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicy",
    "metadata": {"name": "lagpilot-stack-local-images"},
    "spec": {
        "failurePolicy": "Fail",
        "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}]},
        "validations": [{
            "expression": (
                f"(has(object.spec.nodeSelector) && '{NO_NODE_LABEL}' in object.spec.nodeSelector) || "
                "(object.spec.containers + (has(object.spec.initContainers) ? object.spec.initContainers : []))"
                ".all(c, c.image.startsWith('localhost/'))"),
            "message": ("the local stack's node runs only the images the stack built (localhost/...; see "
                        "$LAGPILOT_NODE_IMAGES): no registry may be contacted from this machine. A Pod that "
                        f"must never run sets nodeSelector {NO_NODE_LABEL}: \"true\"."),
            "reason": "Forbidden",
        }],
    },
}
LOCAL_IMAGE_POLICY_BINDING = {
    "apiVersion": "admissionregistration.k8s.io/v1",
    "kind": "ValidatingAdmissionPolicyBinding",
    "metadata": {"name": "lagpilot-stack-local-images"},
    "spec": {"policyName": "lagpilot-stack-local-images", "validationActions": ["Deny"]},
}


def apply_local_image_policy() -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "List",
                           "items": [LOCAL_IMAGE_POLICY, LOCAL_IMAGE_POLICY_BINDING]})
    result = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={kubeconfig_path()}", "apply", "--server-side",
                             "--force-conflicts", "--field-manager=lagpilot-stack", "-f", "-"],
                            input=manifest, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"could not apply the local-images admission policy: {result.stderr.strip()}")


def start_node_services() -> None:
    """containerd, the node's images in it, then the kubelet and kube-proxy; sysctls checked on the way.

    The images are built and imported on every `up`, not only when containerd starts: a code change
    since the node started makes new images (cached by content, so an unchanged checkout costs seconds).
    """
    for service in NODE_SERVICES:
        if service.name == "kubelet":
            import_images_timed()  # before the kubelet, so the Pods it starts find their images
        if running_and_ready(service):
            continue
        stop_process(service.name)
        log(f"starting {service.name}")
        started = time.monotonic()
        start_process(service)
        wait_ready(service)
        assert_no_forwarding()
        log(f"{service.name} ready in {time.monotonic() - started:.1f}s")
        if service.name == "containerd" and clear_stale_containers():
            # The CRI plugin loaded those containers into its own store at start: start it again so the
            # kubelet is not shown sandboxes that no longer exist.
            stop_process(service.name)
            start_process(service)
            wait_ready(service)


def import_images_timed() -> None:
    started = time.monotonic()
    import_node_images()
    log(f"images built/imported in {time.monotonic() - started:.1f}s")


NODE_SERVICES = [
    Service("containerd", (), containerd_cmd, containerd_ready, timeout=60),
    Service("kubelet", ("kubelet-healthz",), kubelet_cmd, kubelet_ready, timeout=120),
    Service("kube-proxy", ("kube-proxy-healthz", "kube-proxy-metrics"), kube_proxy_cmd, kube_proxy_ready),
]


# ------------------------------------------------------------------ node: images


def buildah(*args: str) -> list[str]:
    # Own storage under the cache (shared by clones on this machine), never /var/lib/containers; and its
    # own network config folder: by default a build's RUN step creates /etc/cni/net.d/cni.lock.
    conf = CACHE / "buildah" / "containers.conf"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(f'[network]\nnetwork_config_dir = "{CACHE / "buildah" / "cni"}"\n')
    os.environ["CONTAINERS_CONF"] = str(conf)
    return ["buildah", "--root", str(CACHE / "buildah" / "storage"), "--runroot", str(CACHE / "buildah" / "run"),
            "--storage-driver", "overlay", *args]


def content_hash(*parts: bytes | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
                if part.is_dir() else [part]
            for file in files:
                digest.update(str(file.relative_to(REPO) if file.is_relative_to(REPO) else file).encode())
                digest.update(file.read_bytes())
        else:
            digest.update(part)
    return digest.hexdigest()[:16]


def pause_image_name() -> str:
    return f"localhost/lagpilot-pause:{content_hash(PAUSE_SCRIPT.encode(), b'busybox-static')}"


PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"


def image_exists(name: str) -> bool:
    return sh(*buildah("inspect", "--type", "image", name)).returncode == 0


def build_pause_image() -> str:
    """The sandbox image: busybox from Debian's busybox-static, a shell that sleeps until TERM."""
    name = pause_image_name()
    if image_exists(name):
        return name
    log(f"building {name}")
    rootfs = CACHE / "images" / "pause-rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    container = sh(*buildah("from", "scratch"), check=True).stdout.strip()
    try:
        sh(*buildah("copy", container, str(rootfs), "/"), check=True)
        sh(*buildah("config", "--entrypoint", json.dumps(["/bin/sh", "-c", PAUSE_SCRIPT]), "--user", "65534:65534",
                    container), check=True)
        sh(*buildah("commit", "--rm", container, name), check=True)
    except StackError:
        sh(*buildah("rm", container))
        raise
    return name


def debian_mirror() -> str:
    for source in [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]:
        with contextlib.suppress(OSError):
            for line in source.read_text().splitlines():
                words = line.split()
                if words[:1] == ["URIs:"] and "security" not in words[1]:
                    return words[1]
                if words[:1] == ["deb"] and "security" not in line:
                    return next(w for w in words[1:] if "://" in w)
    return "http://deb.debian.org/debian"


BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")


def base_image_name() -> str:
    return "localhost/lagpilot-bookworm-python:" + content_hash(" ".join(BASE_PACKAGES).encode(), b"minbase bookworm")


def build_base_image() -> str:
    """A stand-in for python:3.11-slim-bookworm from Debian packages (no container registry is reachable)."""
    name = base_image_name()
    if image_exists(name):
        return name
    require_tool("debootstrap", "build the Debian base image", "apt-get install debootstrap")
    log(f"building {name} with debootstrap (first time: ~2-3 min)")
    started = time.monotonic()
    rootfs = CACHE / "images" / "bookworm-rootfs"
    unmount_under(rootfs)
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.parent.mkdir(parents=True, exist_ok=True)
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "bookworm", str(rootfs),
             debian_mirror()], what="debootstrap bookworm")
    finally:
        unmount_under(rootfs)
    # What a container image does not need: package lists, caches, docs.
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
    container = sh(*buildah("from", "scratch"), check=True).stdout.strip()
    try:
        mount = sh(*buildah("mount", container), check=True).stdout.strip()
        sh("cp", "-a", f"{rootfs}/.", mount, check=True)
        sh(*buildah("umount", container), check=True)
        sh(*buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env", "LANG=C.UTF-8", "--cmd", "python3", container), check=True)
        sh(*buildah("commit", "--rm", container, name), check=True)
    except StackError:
        sh(*buildah("rm", container))
        raise
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"built {name} in {time.monotonic() - started:.0f}s")
    return name


@dataclasses.dataclass(frozen=True)
class ProjectImage:
    """A project image: its Dockerfile, and the packages that Dockerfile copies into its wheel (each image
    holds only its own, so a change to the operator rebuilds only the operator's image: the worker's and
    the two built on it took 66 s of a warm CI run's critical path)."""

    dockerfile: str
    packages: tuple[str, ...]


PROJECT_IMAGES = {
    "lagpilot-worker": ProjectImage("docker/worker.Dockerfile", ("contract", "worker/lagpilot_worker")),
    "lagpilot-operator": ProjectImage("docker/operator.Dockerfile", ("contract", "operator/lagpilot_operator")),
}


def project_image_name(image: str, base: str) -> str:
    project = PROJECT_IMAGES[image]
    # README.md is copied into the build too, but only as the package's long description: editing the
    # docs must not rebuild the images.
    return f"localhost/{image}:" + content_hash(
        base.encode(), REPO / project.dockerfile, REPO / "pyproject.toml", REPO / "requirements.lock",
        *(REPO / package for package in project.packages))


def build_project_image(image: str, base: str) -> str:
    name = project_image_name(image, base)
    if image_exists(name):
        return name
    dockerfile = PROJECT_IMAGES[image].dockerfile
    log(f"building {name} from {dockerfile} on {base}")
    started = time.monotonic()
    # chroot isolation runs RUN steps in the host's network namespace (pip reaches PyPI; no CNI, no bridge).
    # The host's pip configuration and CA bundle (a TLS-intercepting egress proxy) are mounted for the
    # build steps only; volumes are never committed into the image.
    host_files = [f for f in (Path("/etc/pip.conf"), Path("/etc/ssl/certs/ca-certificates.crt")) if f.is_file()]
    volumes = [arg for f in host_files for arg in ("--volume", f"{f}:{f}:ro")]
    # --layers: the dependencies' stages and layers come from the cache while pyproject.toml and the lock
    # are unchanged, so a code change rebuilds only the project's wheel (measured: 205 s -> 18 s).
    run(buildah("bud", "--pull-never", "--isolation", "chroot", "--layers", "--build-arg", f"BASE_IMAGE={base}",
                *volumes, "-f", str(REPO / dockerfile), "-t", name, str(REPO)), what=f"build {image}")
    log(f"built {name} in {time.monotonic() - started:.0f}s")
    prune_images(f"localhost/{image}", keep=name)
    return name


@dataclasses.dataclass(frozen=True)
class DerivedImage:
    """An image built FROM a project image the way docs/worker.md tells users to add their handler.

    The build context is the Dockerfile's folder (only the handler files go in); the parent image is
    the build argument WORKER_IMAGE, so the same Dockerfile builds with Docker against a registry.
    """

    dockerfile: str
    parent: str
    context: str


DERIVED_IMAGES = {
    "lagpilot-e2e-worker": DerivedImage("e2e/worker.Dockerfile", "lagpilot-worker", "e2e"),
    "lagpilot-example-worker": DerivedImage("examples/orders-worker/Dockerfile", "lagpilot-worker",
                                            "examples/orders-worker"),
}


def derived_image_inputs(image: str) -> list[Path]:
    """What a derived image's content hash covers: its Dockerfile and the files it copies."""
    derived = DERIVED_IMAGES[image]
    context = REPO / derived.context
    if image == "lagpilot-e2e-worker":
        return [REPO / derived.dockerfile, context / "handlers.py"]
    return [REPO / derived.dockerfile, context]


def derived_image_name(image: str, base: str) -> str:
    parent = project_image_name(DERIVED_IMAGES[image].parent, base)
    return f"localhost/{image}:" + content_hash(parent.encode(), *derived_image_inputs(image))


def build_derived_image(image: str, base: str) -> str:
    name = derived_image_name(image, base)
    if image_exists(name):
        return name
    derived = DERIVED_IMAGES[image]
    parent = build_project_image(derived.parent, base)
    log(f"building {name} from {derived.dockerfile} on {parent}")
    started = time.monotonic()
    run(buildah("bud", "--pull-never", "--isolation", "chroot", "--layers=false", "--build-arg",
                f"WORKER_IMAGE={parent}", "-f", str(REPO / derived.dockerfile), "-t", name,
                str(REPO / derived.context)), what=f"build {image}")
    log(f"built {name} in {time.monotonic() - started:.0f}s")
    prune_images(f"localhost/{image}", keep=name)
    return name


def prune_images(repository: str, keep: str, keep_newest: int = 4) -> None:
    """Older builds of one image (each code change makes one): out of buildah storage and the archives.

    The newest few stay: clones and worktrees of one machine share this cache, each with its own code,
    and pruning each other's builds would make every `up` rebuild.
    """
    # (`buildah images REPOSITORY` answers "image not known" without a tag: list all, keep this one's.)
    # buildah aligns the columns with spaces whatever the format says: split at the first blank.
    listing = sh(*buildah("images", "--format", "{{.Name}}:{{.Tag}} {{.CreatedAtRaw}}")).stdout
    builds = sorted((line.split(None, 1) for line in listing.splitlines() if line.startswith(repository + ":")),
                    key=lambda row: row[1], reverse=True)
    kept = {keep} | {name for name, _ in builds[:keep_newest]}
    for name, _ in builds:
        if name not in kept:
            sh(*buildah("rmi", name))
    for archive in (CACHE / "images" / "archives").glob(repository.split("/")[-1] + "_*.tar"):
        if not any(archive.name == image_archive_name(name) for name in kept):
            archive.unlink()


def image_archive_name(image: str) -> str:
    return image.split("/")[-1].replace(":", "_") + ".tar"


def node_images() -> list[str]:
    """Build (cached by content) what the node runs: the sandbox image and the project's images."""
    with buildah_session():
        base = build_base_image()
        return ([build_pause_image()] + [build_project_image(image, base) for image in PROJECT_IMAGES]
                + [build_derived_image(image, base) for image in DERIVED_IMAGES])


@contextlib.contextmanager
def buildah_session() -> Iterator[None]:
    """One buildah user at a time per cache (stacks share it), and nothing of it left in /var/lib.

    buildah 1.28 keeps a blob-info cache in /var/lib/containers/cache (commit, push) whatever --root
    says: removed again when this session made it.
    """
    blob_cache_root = Path("/var/lib/containers")
    made_blob_cache = not blob_cache_root.exists()
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "buildah.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if made_blob_cache:
                shutil.rmtree(blob_cache_root, ignore_errors=True)


# The images build in the background while the Go binaries compile and the control plane starts:
# a cold build is mostly downloads and unpacking (debootstrap, pip), the Go builds are CPU.
_image_build: concurrent.futures.Future[list[str]] | None = None


def start_image_build() -> None:
    global _image_build
    if _image_build is None:
        _image_build = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="images").submit(node_images)


def built_node_images() -> list[str]:
    if _image_build is not None:
        return _image_build.result()  # re-raises a failed build here, in the main thread
    return node_images()


def import_node_images() -> None:
    ctr = ["ctr", "--address", str(containerd_socket()), "-n", "k8s.io"]
    present = set(sh(*ctr, "images", "list", "-q").stdout.split())
    archives = CACHE / "images" / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    for name in built_node_images():
        if name in present:
            continue
        archive = archives / image_archive_name(name)
        if not archive.exists():
            tmp = archive.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            with buildah_session():
                sh(*buildah("push", name, f"docker-archive:{tmp}:{name}"), check=True)
            tmp.rename(archive)
        sh(*ctr, "images", "import", "--snapshotter", "overlayfs", str(archive), check=True)
    node_images_file().parent.mkdir(parents=True, exist_ok=True)
    node_images_file().write_text(json.dumps(node_images_table(), indent=2))
    write_operator_values()


def node_images_file() -> Path:
    """The image table of THIS checkout: clones and worktrees sharing one stack each run their own code."""
    return node_dir() / "images" / (hashlib.sha256(str(REPO).encode()).hexdigest()[:12] + ".json")


def operator_values_file() -> Path:
    """Values for `helm install ... charts/lagpilot -f <this>`: the node's own operator image, never pulled."""
    return node_images_file().with_suffix(".operator-values.yaml")


def write_operator_values() -> None:
    repository, _, tag = node_images_table()["operator"].rpartition(":")
    operator_values_file().write_text(
        "# Written by hack/stack.py: the operator image this checkout built and the node imported.\n"
        f"image:\n  repository: {repository}\n  tag: \"{tag}\"\n  pullPolicy: Never\n")


def node_images_table() -> dict[str, str]:
    base = base_image_name()
    return {"pause": pause_image_name(), "base": base,
            **{image.removeprefix("lagpilot-"): project_image_name(image, base) for image in PROJECT_IMAGES},
            **{image.removeprefix("lagpilot-"): derived_image_name(image, base) for image in DERIVED_IMAGES}}


# The kubelet's hard eviction threshold for the node's disk (evictionHard nodefs/imagefs above), and the
# margin `up` wants on top of it: below, the node reports DiskPressure and no Pod is admitted.
EVICTION_FREE_PERCENT = 1.0
NODE_DISK_MARGIN_PERCENT = 1.0


def node_disk_problem(free_bytes: int, total_bytes: int) -> str | None:
    """Why the node could not run Pods on a disk this full (None: enough room)."""
    if total_bytes <= 0:
        return None
    free_percent = 100.0 * free_bytes / total_bytes
    if free_percent >= EVICTION_FREE_PERCENT + NODE_DISK_MARGIN_PERCENT:
        return None
    return (f"only {free_bytes / 2**30:.1f} GiB ({free_percent:.1f} %) of the disk holding {node_dir()} is free: "
            f"the kubelet reports DiskPressure below {EVICTION_FREE_PERCENT:g} % and then admits no Pod. "
            "Free some space (old LAGPILOT_CACHE_DIR folders, clones) and run stack-up again")


def assert_node_disk_room() -> None:
    node_dir().mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(node_dir())
    problem = node_disk_problem(usage.free, usage.total)
    if problem:
        raise StackError(problem)


def up_node() -> None:
    if os.geteuid() != 0:
        raise StackError("the real node needs root (it runs containerd and a kubelet); "
                         "LAGPILOT_NODE=0 starts the control plane without it")
    assert_no_forwarding()
    assert_node_disk_room()
    install_node_packages()
    install_node_binaries()
    owner = recorded_node_owner()
    # A running node of another stack was refused before anything started: here the owner is gone.
    if node_takeover(owner, node_dir().resolve(), False) == "clear":
        assert owner is not None
        log(f"clearing the node that a killed stack of {owner.parent} left behind")
        clear_node(owner)
    if not all(running_pid(service.name) for service in NODE_SERVICES):
        # Never started, stopped, or killed: clear whatever a killed stack left behind (stale mounts,
        # shims, netns, the bridge, iptables chains; sysctls back to the recorded values) first.
        clear_node()
    record_node_baseline()
    node_owner_file().write_text(f"{node_dir().resolve()}\n")
    make_bridge()


# The host's cpu cgroups (cgroup v1). The kubelet puts every Pod under `kubepods`, whose weight against its
# siblings is the node's allocatable CPU (cpu.shares 1,024 a core: 2,048 here). Everything else ran in the root
# cgroup, where the kernel's autogroups give each session the weight 1,024: the broker, the apiserver, etcd and
# the test run (one session, all its workers) each weighed half as much as all Pods together, and with three
# of them busy the Pods had 40 % of the machine. In ci33 the steady scenario's worker Pods drained 22-34 msg/s a
# slot where one does 50; the operator read their idle slots as spare capacity, and the lag stayed above its
# bound. A real node keeps its daemons in a cgroup of their own (systemd's system.slice): here
# `lagpilot-host`, with kubepods' weight, so under contention the Pods get half of the machine and the host
# the other half (CFS shares only count when both want more: an idle side leaves its half to the other).
# Inside it, the stack's servers (together) and the test run weigh the same: in one flat cgroup the test run's
# many busy threads would outweigh the broker the Pods read from. The node's own daemons stay in the root
# cgroup (outside_host_cgroup).
CPU_CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
HOST_CGROUP = CPU_CGROUP_ROOT / "lagpilot-host"
SERVERS_CGROUP = HOST_CGROUP / "servers"  # the broker, the control plane, Prometheus (what `up` starts)
TESTS_CGROUP = HOST_CGROUP / "tests"      # a test run: hack/test.sh moves itself here ($LAGPILOT_TEST_CGROUP)


def host_cgroup_supported() -> bool:
    return node_enabled() and (CPU_CGROUP_ROOT / "cpu.shares").exists()


def enter_host_cgroup() -> None:
    """Create the host cgroups (if a killed stack did not leave them) and move this process into the servers'
    one: every service `up` starts from here on inherits it."""
    if not host_cgroup_supported():
        return
    HOST_CGROUP.mkdir(exist_ok=True)
    (HOST_CGROUP / "cpu.shares").write_text(f"{1024 * (os.cpu_count() or 1)}\n")
    for child in (SERVERS_CGROUP, TESTS_CGROUP):
        child.mkdir(exist_ok=True)
        (child / "cpu.shares").write_text("1024\n")
    move_into_servers_cgroup([os.getpid()])


def move_into_servers_cgroup(pids: Iterable[int]) -> None:
    """Move processes (the services of an earlier `up`) into the servers' cgroup; one that has exited is skipped."""
    if not SERVERS_CGROUP.exists():
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, OSError):
            (SERVERS_CGROUP / "cgroup.procs").write_text(f"{pid}\n")


@contextlib.contextmanager
def outside_host_cgroup() -> Iterator[None]:
    """Processes started meanwhile run in the root cgroup: the node's daemons (kubelet, containerd and the
    shims it starts, kube-proxy), as a node reserves CPU for them ahead of its workloads; there their
    threads (mostly idle, latency-bound: Pod starts, probes) are served before either side's."""
    if not SERVERS_CGROUP.exists():
        yield
        return
    (CPU_CGROUP_ROOT / "cgroup.procs").write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        move_into_servers_cgroup([os.getpid()])


def remove_host_cgroup() -> None:
    """`down`: whatever still runs in the host cgroups (a test run that joined) goes back to the root cgroup,
    and the cgroups are removed."""
    for cgroup in (SERVERS_CGROUP, TESTS_CGROUP, HOST_CGROUP):
        if not cgroup.exists():
            continue
        for _ in range(5):
            for line in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, OSError):
                    (CPU_CGROUP_ROOT / "cgroup.procs").write_text(f"{line}\n")
            try:
                cgroup.rmdir()
                break
            except OSError:  # a process forked into it meanwhile: move that one too
                time.sleep(0.1)
        else:
            raise StackError(f"{cgroup} still has processes after moving them to the root cgroup: "
                             f"{(cgroup / 'cgroup.procs').read_text().split()}")


def refuse_a_running_node_of_another_stack() -> None:
    """Before anything starts: the machine runs one node, and another checkout's stack may be using it."""
    owner = recorded_node_owner()
    alive = owner is not None and bool(node_services_alive(owner))
    if node_takeover(owner, node_dir().resolve(), alive) == "refuse":
        assert owner is not None
        raise StackError(f"the machine's node is running for the stack of {owner.parent}: stop that stack "
                         "(`make stack-down` in its checkout) first, or start this one without a node "
                         "(LAGPILOT_NODE=0)")



# --------------------------------------------------------------------------------------------- KEDA
# The real KEDA for the benchmarks (`make bench` runs `stack.py keda`; `make test` never builds it): the
# operator and the external-metrics adapter built from the Go module proxy through hack/keda, KEDA's
# CRDs, the certificates, and the commands and objects that run it against this stack. Running it needs
# the apiserver's aggregation layer (LAGPILOT_AGGREGATION=1, see aggregation_flags); docs/benchmarks.md
# has the whole recipe.

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_BINARIES = {"operator": "keda-operator", "adapter": "keda-adapter"}
# The operator also starts controllers for (Cluster)CloudEventSource: without those CRDs it logs "if kind is a
# CRD, it should be installed before calling Start", and after controller-runtime's cache sync timeout (2 min)
# the manager stops and the operator exits.
KEDA_CRDS = ("keda.sh_scaledobjects.yaml", "keda.sh_scaledjobs.yaml", "keda.sh_triggerauthentications.yaml",
             "keda.sh_clustertriggerauthentications.yaml", "eventing.keda.sh_cloudeventsources.yaml",
             "eventing.keda.sh_clustercloudeventsources.yaml")
KEDA_NAMESPACE = "keda"
KEDA_ADAPTER_SERVICE = "keda-metrics-apiserver"  # the APIService's Service; its name is in the TLS check
KEDA_OPERATOR_SERVICE = "keda-operator"


def keda_dir() -> Path:
    return STATE / "keda"


def keda_ldflags(version: str) -> str:
    # As KEDA's Makefile sets them; its release builds use the tag without the 'v'.
    return (f"-s -w -X={KEDA_MODULE}/version.Version={version.lstrip('v')} "
            f"-X={KEDA_MODULE}/version.GitCommit={version}")


def install_keda() -> None:
    """KEDA's operator and metrics adapter. Built with one package at a time and GOMAXPROCS=1 (the
    compiler's own parallelism follows it): a cold build takes long, but one of the two cores stays
    free for the stack and the benchmark that wait for it. Cached like the other components."""
    version = PINS["KEDA_VERSION"]
    if stamped("keda", version) and all((BIN / b).exists() for b in KEDA_BINARIES.values()):
        return
    require_tool("go", "build KEDA", "install Go >= 1.26 (KEDA's go.mod asks for it)")
    log(f"building KEDA {version} (operator, metrics adapter) from the Go module proxy on one core "
        "(first time: long)")
    BIN.mkdir(parents=True, exist_ok=True)
    env = go_env() | {"GOMAXPROCS": "1"}
    for command, binary in KEDA_BINARIES.items():
        run(["go", "build", "-p", "1", "-trimpath", "-ldflags", keda_ldflags(version), "-o", str(BIN / binary),
             f"{KEDA_MODULE}/cmd/{command}"],
            cwd=HACK / "keda", env=env, what=f"build {binary}")
    stamp("keda", version)


def keda_module_dir() -> Path:
    """KEDA's source in the module cache (the version hack/keda/go.mod requires), downloaded if absent."""
    result = subprocess.run(["go", "mod", "download", "-json", KEDA_MODULE], cwd=HACK / "keda", env=go_env(),
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"go mod download {KEDA_MODULE} failed: {result.stderr.strip() or result.stdout.strip()}")
    directory = json.loads(result.stdout).get("Dir", "")
    if not directory:
        raise StackError(f"go mod download {KEDA_MODULE} named no directory: {result.stdout.strip()}")
    return Path(directory)


def extract_keda_crds(module_dir: Path) -> list[Path]:
    """ScaledObject, ScaledJob, TriggerAuthentication, ClusterTriggerAuthentication and the two eventing
    CRDs, from the release's config/crd/bases, into .stack/keda/crds (`kubectl apply --server-side -f`)."""
    target = keda_dir() / "crds"
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in KEDA_CRDS:
        source = module_dir / "config" / "crd" / "bases" / name
        if not source.exists():
            raise StackError(f"{source} is missing: KEDA {PINS['KEDA_VERSION']} has no CRD file {name}")
        copied.append(target / name)
        shutil.copyfile(source, copied[-1])
    return copied


def keda_cert_dir() -> Path:
    """ca.crt, tls.crt and tls.key, as KEDA reads them from its --cert-dir: the operator's gRPC metrics
    service and the adapter's client of it both use mutual TLS with this one certificate (as KEDA's own
    cert rotation makes it), and the adapter serves the APIService with it too."""
    return keda_dir() / "certs"


def keda_cert_san() -> str:
    names = [f"DNS:{KEDA_ADAPTER_SERVICE}.{KEDA_NAMESPACE}.svc", f"DNS:{KEDA_OPERATOR_SERVICE}.{KEDA_NAMESPACE}.svc",
             "DNS:localhost", f"IP:{HOST}"]
    return f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth,clientAuth\n"


def make_keda_certificates() -> None:
    certs, pki = keda_cert_dir(), keda_dir() / "pki"
    san_file = pki / "san.cnf"
    if (certs / "tls.crt").exists() and san_file.exists() and san_file.read_text() == keda_cert_san():
        return
    certs.mkdir(parents=True, exist_ok=True)
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=lagpilot-keda-ca",
                "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    san_file.write_text(keda_cert_san())
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={KEDA_OPERATOR_SERVICE}",
            "-keyout", str(certs / "tls.key"), "-out", str(pki / "tls.csr"))
    openssl("x509", "-req", "-in", str(pki / "tls.csr"), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
            "-CAcreateserial", "-days", "3650", "-extfile", str(san_file), "-out", str(certs / "tls.crt"))
    shutil.copyfile(pki / "ca.crt", certs / "ca.crt")


def keda_env() -> dict[str, str]:
    """What KEDA reads from its environment that a Pod would have had: WATCH_NAMESPACE must be set ("" is
    every namespace), KEDA_CLUSTER_OBJECT_NAMESPACE replaces the service account's namespace file, and
    POD_NAMESPACE is where leader election (off here) and the adapter's default gRPC address would point."""
    return {
        "WATCH_NAMESPACE": "",
        "POD_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE,
        "KEDA_HTTP_DEFAULT_TIMEOUT": "3000",
        "KUBECONFIG": str(kubeconfig_path()),
    }


def keda_operator_cmd() -> list[str]:
    return [
        str(BIN / KEDA_BINARIES["operator"]),
        f"--kubeconfig={kubeconfig_path()}",
        "--leader-elect=false",
        f"--metrics-bind-address={HOST}:{PORTS['keda-operator-metrics']}",
        f"--health-probe-bind-address={HOST}:{PORTS['keda-operator-health']}",
        f"--metrics-service-bind-address={HOST}:{PORTS['keda-metrics-service']}",
        f"--cert-dir={keda_cert_dir()}",
        "--enable-cert-rotation=false",  # the default; the certificates come from make_keda_certificates
        f"--ca-dir={keda_dir() / 'ca'}",  # extra CAs for scalers' TLS (its default, /custom/ca, is a Pod path)
        "--zap-log-level=info",
    ]


def keda_adapter_cmd() -> list[str]:
    certs, kubeconfig = keda_cert_dir(), kubeconfig_path()
    return [
        str(BIN / KEDA_BINARIES["adapter"]),
        f"--bind-address={HOST}", f"--secure-port={PORTS['keda-adapter']}",
        f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}",
        f"--cert-dir={certs}",  # where the adapter's gRPC client reads ca.crt, tls.crt and tls.key
        f"--metrics-service-address={HOST}:{PORTS['keda-metrics-service']}",
        # Outside a Pod every client needs a kubeconfig: controller-runtime's (--kubeconfig), the
        # adapter's lister and discovery (--lister-kubeconfig), and the delegated authentication
        # (TokenReview, the extension-apiserver-authentication ConfigMap) and authorization
        # (SubjectAccessReview), which would otherwise want the in-cluster config.
        f"--kubeconfig={kubeconfig}", f"--lister-kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}",
        f"--port={PORTS['keda-adapter-metrics']}",
        "--zap-log-level=info",
    ]


def keda_objects(ca_bundle: bytes) -> list[dict[str, object]]:
    """The cluster objects of KEDA's metrics API outside a Pod: the namespace, an ExternalName Service
    to this machine's loopback (see aggregation_flags), the APIService that the aggregator proxies
    external.metrics.k8s.io to (checked against KEDA's CA, for the Service's DNS name), and KEDA's RBAC
    that lets the HPA controller read external metrics. The operator and adapter use the admin
    kubeconfig, so KEDA's own service account RBAC (auth-delegator, the authentication reader) is not
    needed."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": KEDA_ADAPTER_SERVICE, "namespace": KEDA_NAMESPACE},
         "spec": {"type": "ExternalName", "externalName": HOST,
                  "ports": [{"name": "https", "port": PORTS["keda-adapter"], "protocol": "TCP"}]}},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
         "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1",
                  "service": {"name": KEDA_ADAPTER_SERVICE, "namespace": KEDA_NAMESPACE, "port": PORTS["keda-adapter"]},
                  "caBundle": base64.b64encode(ca_bundle).decode(),
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "keda-external-metrics-reader"},
         "rules": [{"apiGroups": ["external.metrics.k8s.io"], "resources": ["*"], "verbs": ["*"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "keda-hpa-controller-external-metrics"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "keda-external-metrics-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler", "namespace": "kube-system"}]},
    ]


def prepare_keda() -> None:
    """Build KEDA, extract its CRDs, mint its certificates and write the objects and the run recipe into
    .stack/keda. Starts nothing and applies nothing: the stack that runs stays as it is."""
    install_keda()
    crds = extract_keda_crds(keda_module_dir())
    make_keda_certificates()
    (keda_dir() / "ca").mkdir(exist_ok=True)
    objects = keda_objects((keda_cert_dir() / "ca.crt").read_bytes())
    (keda_dir() / "objects.json").write_text(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n")
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in keda_env().items())
    recipe = [
        "# KEDA against the local stack (the apiserver must run with LAGPILOT_AGGREGATION=1)",
        # Server-side: the ScaledJob CRD is too large for the last-applied annotation of a client-side apply.
        f"kubectl apply --server-side -f {keda_dir() / 'crds'} -f {keda_dir() / 'objects.json'}",
        f"{env} {shlex.join(keda_operator_cmd())}",
        f"{env} {shlex.join(keda_adapter_cmd())}",
    ]
    (keda_dir() / "run.sh").write_text("\n".join(recipe) + "\n")
    log(f"KEDA {PINS['KEDA_VERSION']}: binaries in {BIN}, {len(crds)} CRDs in {keda_dir() / 'crds'}, "
        f"run recipe in {keda_dir() / 'run.sh'}")


KEDA_APISERVICE = "v1beta1.external.metrics.k8s.io"
KEDA_API_PATH = "/apis/external.metrics.k8s.io/v1beta1"


def keda_crd_names() -> list[str]:
    """The CRDs' object names from their file names (<group>_<plural>.yaml -> <plural>.<group>)."""
    return [f"{file.removesuffix('.yaml').split('_', 1)[1]}.{file.split('_', 1)[0]}" for file in KEDA_CRDS]


def apiservice_available(apiservice: dict[str, Any]) -> bool:
    """The aggregator's verdict on an APIService (`kubectl get apiservice -o json`): its Available
    condition is True once the apiserver has reached the backend's discovery document through the
    Service (it is False with a reason like FailedDiscoveryCheck while the adapter is not up)."""
    conditions = (apiservice.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def wait_established(crds: list[str], timeout: float) -> None:
    """Until every CRD named is Established. Not `kubectl wait --for=condition=Established`: right after
    the apply a CRD may have no status.conditions yet, and kubectl then fails at once ("<nil> is of the
    type <nil>, expected []interface{}") instead of waiting."""
    query = '{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Established")].status}{"\\n"}{end}'
    deadline = time.monotonic() + timeout
    pending = set(crds)
    while True:
        # All CRDs, not the names: `get` of a single name prints the object, not a list with .items.
        out = kubectl_output("get", "crd", "-o", f"jsonpath={query}") or ""
        pending -= {line.split("=", 1)[0] for line in out.splitlines() if line.endswith("=True")}
        if not pending:
            return
        if time.monotonic() > deadline:
            raise StackError(f"CRDs not Established after {timeout:.0f} s: {', '.join(sorted(pending))}")
        time.sleep(0.25)  # the apiserver's CRD controller sets the condition; nothing to await from here


def kubectl_output(*args: str, timeout: float = 20) -> str | None:
    try:
        result = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={kubeconfig_path()}", *args],
                                capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return result.stdout if result.returncode == 0 else None


def keda_metrics_api_ready() -> bool:
    """The APIService is Available and the external metrics API answers through the aggregator: what
    the HPA controller needs. (The adapter's own port answering is not enough: the aggregator must
    reach it through the ExternalName Service and trust its certificate.)"""
    found = kubectl_output("get", "apiservice", KEDA_APISERVICE, "-o", "json")
    if found is None or not apiservice_available(json.loads(found)):
        return False
    return kubectl_output("get", "--raw", KEDA_API_PATH) is not None


def keda_services() -> list[Service]:
    """The operator (scalers, ScaledObject -> HPA, the gRPC metrics service) and the metrics adapter
    (serves external.metrics.k8s.io to the aggregator, asking the operator over gRPC), as host
    processes with pidfiles like the rest of the stack. The adapter is ready when the metrics API
    answers through the aggregation layer."""
    return [
        Service("keda-operator", ("keda-operator-metrics", "keda-operator-health", "keda-metrics-service"),
                keda_operator_cmd, lambda: http_ok(f"http://{HOST}:{PORTS['keda-operator-health']}/readyz"),
                env=keda_env, timeout=180.0),
        Service("keda-adapter", ("keda-adapter", "keda-adapter-metrics"), keda_adapter_cmd,
                keda_metrics_api_ready, env=keda_env, timeout=180.0),
    ]


def keda_up() -> None:
    """Start the real KEDA against the running stack: its CRDs, namespace, Service, APIService and RBAC
    applied, the operator and the adapter started (or kept, if they run and answer), then wait until
    the external metrics API answers through the apiserver. Needs the aggregation layer."""
    pid = running_pid("kube-apiserver")
    if pid is None or not apiserver_has_aggregation(pid):
        raise StackError("KEDA needs the apiserver's aggregation layer: restart the stack with "
                         "LAGPILOT_AGGREGATION=1 (`make stack-down && LAGPILOT_AGGREGATION=1 make stack-up`)")
    # A cold build takes half an hour on one core: `keda` (or `make bench`) does it, never a keda-up
    # in the middle of a benchmark.
    if not (stamped("keda", PINS["KEDA_VERSION"]) and all((BIN / b).exists() for b in KEDA_BINARIES.values())):
        raise StackError(f"KEDA {PINS['KEDA_VERSION']} is not built: run `python3 hack/stack.py keda` first")
    prepare_keda()
    run([str(BIN / "kubectl"), f"--kubeconfig={kubeconfig_path()}", "apply", "--server-side",
         "--force-conflicts", "-f", str(keda_dir() / "crds"), "-f", str(keda_dir() / "objects.json")],
        what="apply KEDA objects")
    wait_established(keda_crd_names(), 60)
    for service in keda_services():
        if running_and_ready(service):
            continue
        stop_process(service.name)
        start_process(service)
        wait_ready(service)
    log(f"KEDA {PINS['KEDA_VERSION']} runs: operator pid {running_pid('keda-operator')}, adapter pid "
        f"{running_pid('keda-adapter')}; {KEDA_API_PATH} answers")


def keda_down() -> None:
    """Stop KEDA's processes by pidfile and remove its APIService: an APIService without a backend
    makes every client's API discovery wait for it (kubectl, kopf, the HPA controller). The CRDs and
    the `keda` namespace stay (harmless without the operator; the next keda-up reuses them)."""
    for service in reversed(keda_services()):
        stop_process(service.name)
    if running_pid("kube-apiserver") is not None:
        kubectl_output("delete", "apiservice", KEDA_APISERVICE, "--ignore-not-found", timeout=60)


# --------------------------------------------------------------------------------------------- commands


def env_lines() -> list[str]:
    return [
        f"export KUBECONFIG={kubeconfig_path()}",
        f"export KAFKA_BOOTSTRAP_SERVERS={HOST}:{PORTS['kafka']}",
        f"export KAFKA_SASL_BOOTSTRAP_SERVERS={HOST}:{PORTS['kafka-sasl']}",
        f"export KAFKA_SASL_USERNAME={SASL_USER}",
        f"export KAFKA_SASL_PASSWORD={SASL_PASSWORD}",
        f"export KAFKA_SCRAM_BOOTSTRAP_SERVERS={HOST}:{PORTS['kafka-scram']}",
        f"export KAFKA_SCRAM_USERNAME={SCRAM_USER}",
        f"export KAFKA_SCRAM_PASSWORD={SCRAM_PASSWORD}",
        f"export KAFKA_MTLS_BOOTSTRAP_SERVERS={HOST}:{PORTS['kafka-mtls']}",
        f"export KAFKA_MTLS_PRINCIPAL=User:{MTLS_CLIENT_CN}",
        f"export KAFKA_TLS_CA_FILE={kafka_tls_files()['ca']}",
        f"export KAFKA_TLS_CLIENT_CERT_FILE={kafka_tls_files()['client-cert']}",
        f"export KAFKA_TLS_CLIENT_KEY_FILE={kafka_tls_files()['client-key']}",
        f"export PROMETHEUS_URL=http://{HOST}:{PORTS['prometheus']}",
        f"export PROMETHEUS_TARGETS_DIR={STATE / 'prometheus' / 'targets'}",
        f"export LAGPILOT_STACK_DIR={STATE}",
        f"export LAGPILOT_BIN_DIR={BIN}",
        f"export PATH={BIN}:$PATH",
        f"export LAGPILOT_NODE={1 if node_enabled() else 0}",  # a later `stack.py up` in this shell keeps the mode
    ] + ([
        f"export LAGPILOT_NODE_IP={NODE_IP}",
        f"export KAFKA_PODS_BOOTSTRAP_SERVERS={NODE_IP}:{PORTS['kafka-pods']}",
        f"export LAGPILOT_NODE_IMAGES={node_images_file()}",
        # The README walkthrough's images (this checkout's builds): the operator chart's values for
        # them, and the example worker for examples/walkthrough.yaml.
        f"export LAGPILOT_OPERATOR_VALUES={operator_values_file()}",
        f"export LAGPILOT_EXAMPLE_WORKER_IMAGE={node_images_table()['example-worker']}",
    ] if node_enabled() else []) + ([
        # hack/test.sh moves the test run into it (see enter_host_cgroup).
        f"export LAGPILOT_TEST_CGROUP={TESTS_CGROUP}",
    ] if host_cgroup_supported() else [])


@contextlib.contextmanager
def exclusive(what: str, lock_name: str = "lock") -> Iterator[None]:
    """One `up`/`down` at a time: tests, make targets and people may call them concurrently. KEDA's
    start and stop take a lock of their own (`keda.lock`): they touch only KEDA's processes and
    objects, and an `up` of another checkout (which may build images for minutes) need not hold a
    benchmark's KEDA runs back."""
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / lock_name).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another stack command holds {STATE / lock_name}; waiting to {what}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up() -> None:
    with exclusive("start the stack"):
        _up()


def _up() -> None:
    if node_enabled():
        if os.geteuid() != 0:
            raise StackError("the real node needs root (it runs containerd and a kubelet); "
                             "LAGPILOT_NODE=0 starts the control plane without it")
        refuse_a_running_node_of_another_stack()
        install_node_packages()  # buildah and debootstrap, for the image build that starts now
        start_image_build()
    install()
    mode_file = STATE / "node-mode"
    mode = "node" if node_enabled() else "control-plane"
    if mode_file.exists() and mode_file.read_text() != mode:
        # The apiserver's address and Kafka's listeners differ between the modes: start everything anew.
        log(f"switching the stack from {mode_file.read_text()} to {mode}: restarting it")
        _down()
    if node_enabled():
        enter_host_cgroup()  # before anything starts: every service inherits it
        up_node()  # the bridge first: the apiserver and Kafka listen on its address
    mode_file.write_text(mode)
    apiserver_pid = running_pid("kube-apiserver")
    if aggregation_enabled() and apiserver_pid and not apiserver_has_aggregation(apiserver_pid):
        # Asked for explicitly (LAGPILOT_AGGREGATION=1): the running apiserver lacks the flags.
        log("LAGPILOT_AGGREGATION=1 but the running kube-apiserver has no aggregation layer: restarting it")
        stop_process("kube-apiserver")
    # Start what is not running yet; the control plane pieces start in dependency order.
    for service in SERVICES:
        if running_and_ready(service):
            continue
        stop_process(service.name)
        log(f"starting {service.name}")
        start_process(service)
        try:
            wait_ready(service)
        except StackError as first:
            # One more try: a server that died at start (a port briefly held, a signal from outside) is
            # usually fine the second time; a real fault fails again with the same message.
            log(f"{first}; starting it once more")
            stop_process(service.name)
            start_process(service)
            wait_ready(service)
    if node_enabled():
        apply_local_image_policy()  # before the kubelet runs: no Pod may make it pull from a registry
        with outside_host_cgroup():
            start_node_services()
        # Services that were already running (started by an `up` before the host cgroup existed) join it too.
        move_into_servers_cgroup(pid for service in SERVICES if (pid := running_pid(service.name)))
    (STATE / "env").write_text("\n".join(env_lines()) + "\n")
    log(f"stack is up; endpoints written to {STATE / 'env'}")
    print("\n".join(env_lines()))


def down() -> None:
    with exclusive("stop the stack"):
        _down()


def _down() -> None:
    # The host cgroups are machine-wide, like the node: only the stack whose node it is removes them (not a
    # control-plane-only stack in another folder, which a test stops while the real one runs).
    owns_node = node_enabled() and recorded_node_owner() in (None, node_dir().resolve())
    if running_pid("keda-operator") or running_pid("keda-adapter"):
        keda_down()  # before the apiserver goes: its APIService is removed too
    clear_node()  # the node first: its shims and mounts go while containerd still answers
    for service in reversed(SERVICES):
        stop_process(service.name)
    remove_kafka_data()  # in memory: gone with the broker, as everything else stack-up made
    if owns_node:
        remove_host_cgroup()
    (STATE / "node-mode").unlink(missing_ok=True)


def status() -> int:
    healthy = True
    for service in SERVICES + (NODE_SERVICES if node_enabled() or running_pid("kubelet") else []):
        pid = running_pid(service.name)
        ready = bool(pid) and service.ready()
        healthy &= ready
        print(f"{service.name:26} {'ready' if ready else 'running' if pid else 'stopped':8} pid={pid or '-'}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["install", "up", "down", "status", "env", "images",
                                            "keda", "keda-up", "keda-down"])
    parser.add_argument("--no-node", action="store_true",
                        help="the control plane without the real node (no containerd, kubelet, kube-proxy; "
                             "Pods stay Pending); same as LAGPILOT_NODE=0")
    args = parser.parse_args(argv)
    if args.no_node:
        os.environ["LAGPILOT_NODE"] = "0"
    try:
        if args.command == "install":
            install()
        elif args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "keda":
            prepare_keda()
        elif args.command == "keda-up":
            with exclusive("start KEDA", lock_name="keda.lock"):
                keda_up()
        elif args.command == "keda-down":
            with exclusive("stop KEDA", lock_name="keda.lock"):
                keda_down()
        elif args.command == "images":
            node_images()
            print(json.dumps(node_images_table(), indent=2))
        else:
            print("\n".join(env_lines()))
    except StackError as exc:
        print(f"stack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Lagpilot's local stack: real Kafka (KRaft), a real Kubernetes control plane and Prometheus.

    python3 hack/stack.py install   # fetch and build everything (cached under .cache/)
    python3 hack/stack.py up        # install, start what is not running, print `export` lines
    python3 hack/stack.py down      # stop every process this stack started (by pidfile)
    python3 hack/stack.py status    # what runs, where

Standard library only, so it runs before the project's virtualenv exists. Everything binds to
127.0.0.1; state (data, pidfiles, logs, certificates, the env file) lives in .stack/, downloads and
builds in .cache/ (both git-ignored). Versions are pinned in hack/versions.env.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HACK = REPO / "hack"
CACHE = Path(os.environ.get("LAGPILOT_CACHE_DIR", REPO / ".cache"))
STATE = Path(os.environ.get("LAGPILOT_STACK_DIR", REPO / ".stack"))
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


def install_kubernetes() -> None:
    version = PINS["KUBERNETES_VERSION"]
    binaries = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
    if stamped("kubernetes", version) and all((BIN / b).exists() for b in binaries):
        return
    require_tool("go", "build the Kubernetes control plane", "install Go >= 1.24 (https://go.dev/dl/)")
    major, minor = version.lstrip("v").split(".")[:2]
    ldflags = " ".join(
        [
            "-s -w",
            f"-X k8s.io/component-base/version.gitVersion={version}",
            f"-X k8s.io/component-base/version.gitMajor={major}",
            f"-X k8s.io/component-base/version.gitMinor={minor}",
            "-X k8s.io/component-base/version.gitTreeState=clean",
            f"-X k8s.io/client-go/pkg/version.gitVersion={version}",
        ]
    )
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


def stop_process(name: str, grace: float = 15.0) -> None:
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


def kafka_properties() -> str:
    data = STATE / "kafka" / "data"
    pki = kafka_pki()
    kafka, controller, sasl = PORTS["kafka"], PORTS["kafka-controller"], PORTS["kafka-sasl"]
    scram, mtls = PORTS["kafka-scram"], PORTS["kafka-mtls"]
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{SASL_USER}="{SASL_PASSWORD}";'
    )
    listeners = (f"PLAINTEXT://{HOST}:{kafka},SASL_PLAINTEXT://{HOST}:{sasl},"
                 f"SCRAM://{HOST}:{scram},MTLS://{HOST}:{mtls}")
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
            "SCRAM:SASL_SSL,MTLS:SSL",
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
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
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


def java_cmd(main: str, *args: str, heap: str = "512m") -> list[str]:
    config = STATE / "kafka"
    return [
        "java", f"-Xmx{heap}", f"-Xms{heap}", "-server", "-XX:+UseG1GC", "-XX:TieredStopAtLevel=1",
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
    shutil.rmtree(config / "data", ignore_errors=True)  # a throwaway broker: fresh data each start
    config.mkdir(parents=True, exist_ok=True)
    (config / "server.properties").write_text(kafka_properties())
    (config / "log4j2.yaml").write_text(kafka_log4j())
    make_kafka_certificates()
    run(java_cmd("kafka.tools.StorageTool", "format", f"--cluster-id={new_kafka_cluster_id()}",
                 "-c", str(config / "server.properties"),
                 "--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]", heap="256m"),
        what="format kafka storage")
    return java_cmd("kafka.Kafka", str(config / "server.properties"))


def kafka_ready() -> bool:
    """True when the broker answers on PLAINTEXT and listens on every listener this stack configures.

    The listener check makes `up` replace a broker started by an older stack.py that lacked a listener
    (its PLAINTEXT port answers, but tests of the newer listeners could never connect).
    """
    return kafka_answers() and all(port_open(PORTS[key]) for key in ("kafka-sasl", "kafka-scram", "kafka-mtls"))


def kafka_answers() -> bool:
    """True when the broker answers a Kafka ApiVersions request (v0) on its PLAINTEXT listener."""
    client_id = b"lagpilot-stack"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection((HOST, PORTS["kafka"]), timeout=2) as sock:
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
    return correlation_id == 1 and error_code == 0


# --------------------------------------------------------------------------------------------- Kubernetes


def kube_dir() -> Path:
    return STATE / "kube"


def openssl(*args: str) -> None:
    run(["openssl", *args], what="openssl " + args[0])


def make_certificates() -> None:
    pki = kube_dir() / "pki"
    if (pki / "apiserver.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=lagpilot-local-ca",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"))
    (pki / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
            "-keyout", str(pki / "apiserver.key"), "-out", str(pki / "apiserver.csr"))
    openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"), "-CAkey",
            str(pki / "ca.key"), "-CAcreateserial", "-days", "3650", "-extfile", str(pki / "san.cnf"),
            "-out", str(pki / "apiserver.crt"))
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
    ADMIN_TOKEN_FILE.write_text(token)
    (kube_dir() / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    ca = base64.b64encode((pki / "ca.crt").read_bytes()).decode()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lagpilot-local", "cluster": {
            "server": f"https://{HOST}:{PORTS['apiserver']}", "certificate-authority-data": ca}}],
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


def apiserver_cmd() -> list[str]:
    make_certificates()
    pki, api = kube_dir() / "pki", PORTS["apiserver"]
    return [
        str(BIN / "kube-apiserver"),
        f"--etcd-servers=http://{HOST}:{PORTS['etcd']}",
        f"--bind-address={HOST}", f"--advertise-address={HOST}", f"--secure-port={api}",
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
    return http_ok(f"https://{HOST}:{PORTS['apiserver']}/readyz", token=ADMIN_TOKEN_FILE.read_text(),
                   ca=kube_dir() / "pki" / "ca.crt")


def controller_manager_cmd() -> list[str]:
    pki = kube_dir() / "pki"
    return [
        str(BIN / "kube-controller-manager"), f"--kubeconfig={kubeconfig_path()}",
        "--leader-elect=false", f"--bind-address={HOST}", "--secure-port=0",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-account-private-key-file={pki / 'sa.key'}",
        "--use-service-account-credentials=true",
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
        f"export PATH={BIN}:$PATH",
    ]


@contextlib.contextmanager
def exclusive(what: str) -> Iterator[None]:
    """One `up`/`down` at a time: tests, make targets and people may call them concurrently."""
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another stack command holds {STATE / 'lock'}; waiting to {what}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up() -> None:
    with exclusive("start the stack"):
        _up()


def _up() -> None:
    install()
    # Start what is not running yet; the control plane pieces start in dependency order.
    for service in SERVICES:
        if running_pid(service.name) and service.ready():
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
    (STATE / "env").write_text("\n".join(env_lines()) + "\n")
    log(f"stack is up; endpoints written to {STATE / 'env'}")
    print("\n".join(env_lines()))


def down() -> None:
    with exclusive("stop the stack"):
        for service in reversed(SERVICES):
            stop_process(service.name)


def status() -> int:
    healthy = True
    for service in SERVICES:
        pid = running_pid(service.name)
        ready = bool(pid) and service.ready()
        healthy &= ready
        print(f"{service.name:26} {'ready' if ready else 'running' if pid else 'stopped':8} pid={pid or '-'}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["install", "up", "down", "status", "env"])
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install()
        elif args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
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

"""Session fixtures that hand tests the real local stack: Kafka, kube-apiserver, Prometheus.

The stack is started by `hack/stack.py up` if it is not running, and reused if it is. Every test
gets its own names (topics, groups, namespaces), so tests never see each other's data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent / "tests"))  # `support` for tests/ and e2e/
from support import api_client, parse_env_lines, release_finalizers, wait_for, wait_for_group_coordinator
from support import unique_name as _unique_name
from xdist_lanes import lane_scheduling

REPO = Path(__file__).resolve().parent
_API_CLIENTS: dict[str, Any] = {}


@dataclass(frozen=True)
class Stack:
    kubeconfig: str
    kafka_bootstrap: str
    kafka_sasl_bootstrap: str
    kafka_sasl_username: str
    kafka_sasl_password: str
    # SASL_SSL with SCRAM-SHA-512, and SSL with client certificates required (mutual TLS); the PEM files
    # are minted at each broker start under the stack's folder.
    kafka_scram_bootstrap: str
    kafka_scram_username: str
    kafka_scram_password: str
    kafka_mtls_bootstrap: str
    kafka_mtls_principal: str
    kafka_tls_ca_file: Path
    kafka_tls_client_cert_file: Path
    kafka_tls_client_key_file: Path
    prometheus_url: str
    prometheus_targets_dir: Path
    bin_dir: Path
    stack_dir: Path
    # With the real node: short name (pause, base, worker, operator, e2e-worker, example-worker) -> the
    # image reference this checkout's code built and the node has imported. Empty without the node.
    node_images: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """os.environ plus the stack's endpoints and binaries first on PATH."""
        env = dict(os.environ)
        env.update(
            KUBECONFIG=self.kubeconfig,
            KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap,
            PROMETHEUS_URL=self.prometheus_url,
            PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._tool("kubectl", args, input_text, check, timeout)

    def api(self) -> Any:
        """An API client of this process, for reads and writes that tests repeat (polled in wait_for):
        one kubectl process costs ~80 ms of CPU, a call on this kept connection a few milliseconds."""
        if self.kubeconfig not in _API_CLIENTS:
            _API_CLIENTS[self.kubeconfig] = api_client(self.kubeconfig)
        return _API_CLIENTS[self.kubeconfig]

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._tool("helm", args, None, check, timeout)

    def _tool(self, tool: str, args: tuple[str, ...], input_text: str | None, check: bool,
              timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / tool), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def add_scrape_target(self, name: str, address: str, labels: dict[str, str] | None = None) -> Path:
        """Ask Prometheus to scrape `address` (host:port); it re-reads the folder every 2 s."""
        path = self.prometheus_targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels or {}}]))
        tmp.rename(path)  # atomic: Prometheus never reads a half-written file
        return path


# Run order of each kind of test (lower runs first).
E2E, SLOW, INTEGRATION, UNIT = 0, 1, 2, 3
LONG_RUNNING = SLOW  # this and below run for tens of seconds or more


def _run_order(item: pytest.Item) -> int:
    """Longest first: the end-to-end scenarios, tests marked slow, integration tests, then unit tests.

    With pytest-xdist (`make test` runs `-n`), the two lanes of e2e scenarios and the slow tests start
    first while the many short tests fill the gaps, instead of one scenario starting last and running alone.
    """
    path = Path(str(item.fspath)).resolve()
    if (REPO / "e2e") in path.parents:
        return E2E
    if item.get_closest_marker("slow") is not None:
        return SLOW
    if (REPO / "tests" / "integration") in path.parents:
        return INTEGRATION
    return UNIT



def pytest_configure(config: pytest.Config) -> None:
    # CI (CI=true) runs the property tests on Hypothesis's fixed examples: a run that lands lands on its code,
    # not on the draw. Local runs keep drawing new examples, which is how the counterexamples get found.
    if os.environ.get("CI") == "true":
        from hypothesis import settings

        settings.register_profile("ci", derandomize=True)
        settings.load_profile("ci")
    # Here, not in pyproject.toml's markers: pyproject.toml is part of the images' content hash.
    config.addinivalue_line("markers", "shard_failover: the 3-replica shard failover test (`make test-shards` "
                            "runs it alone)")


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadgroup":
        return None
    return lane_scheduling()(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first, and every long test followed by a unit test.

    `make test` runs pytest-xdist's `loadgroup` scheduling: the e2e scenarios are two groups (lanes,
    e2e/conftest.py) that start first, each on one worker; every other test is a unit of its own, taken
    from the front of this list by whichever worker is free (xdist keeps a worker's queue at two or
    three units; a worker running a lane is given only the cheapest unit, when its last scenario is
    pending: tests/xdist_lanes.py). A long test queued behind another long one on a busy worker would
    run late while other workers idle; queued behind a unit test of milliseconds, the next long test
    goes to whichever worker is free first (longest-processing-time-first scheduling).
    """
    order = {item: _run_order(item) for item in items}
    items.sort(key=order.__getitem__)  # stable: the order within each kind stays as collected
    long_running = [item for item in items if order[item] <= LONG_RUNNING]
    unit = [item for item in items if order[item] == UNIT]
    if not long_running or len(unit) < len(long_running):
        return
    fillers = unit[:len(long_running)]
    placed = set(long_running) | set(fillers)
    rest = [item for item in items if item not in placed]
    items[:] = [item for pair in zip(long_running, fillers, strict=True) for item in pair] + rest


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The running local stack; `up` starts what is not running and reuses what is (seconds when warm)."""
    result = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), "up"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"could not start the local stack:\n{result.stderr[-4000:]}", pytrace=False)
    # `up` prints the endpoints; read them from its output rather than the shared env file: the
    # node's image table is this checkout's (worktrees and clones may share one stack).
    values = parse_env_lines(result.stdout)
    stack_dir = Path(values["LAGPILOT_STACK_DIR"])
    wait_for_group_coordinator(values["KAFKA_BOOTSTRAP_SERVERS"])
    return Stack(
        kubeconfig=values["KUBECONFIG"],
        kafka_bootstrap=values["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_sasl_bootstrap=values["KAFKA_SASL_BOOTSTRAP_SERVERS"],
        kafka_sasl_username=values["KAFKA_SASL_USERNAME"],
        kafka_sasl_password=values["KAFKA_SASL_PASSWORD"],
        kafka_scram_bootstrap=values["KAFKA_SCRAM_BOOTSTRAP_SERVERS"],
        kafka_scram_username=values["KAFKA_SCRAM_USERNAME"],
        kafka_scram_password=values["KAFKA_SCRAM_PASSWORD"],
        kafka_mtls_bootstrap=values["KAFKA_MTLS_BOOTSTRAP_SERVERS"],
        kafka_mtls_principal=values["KAFKA_MTLS_PRINCIPAL"],
        kafka_tls_ca_file=Path(values["KAFKA_TLS_CA_FILE"]),
        kafka_tls_client_cert_file=Path(values["KAFKA_TLS_CLIENT_CERT_FILE"]),
        kafka_tls_client_key_file=Path(values["KAFKA_TLS_CLIENT_KEY_FILE"]),
        prometheus_url=values["PROMETHEUS_URL"],
        prometheus_targets_dir=Path(values["PROMETHEUS_TARGETS_DIR"]),
        bin_dir=Path(values["LAGPILOT_BIN_DIR"]),
        stack_dir=stack_dir,
        node_images=json.loads(Path(values["LAGPILOT_NODE_IMAGES"]).read_text())
        if "LAGPILOT_NODE_IMAGES" in values else {},
    )


@pytest.fixture(scope="session")
def kafka_bootstrap(stack: Stack) -> str:
    return stack.kafka_bootstrap


@pytest.fixture(scope="session")
def kubeconfig(stack: Stack) -> str:
    return stack.kubeconfig


@pytest.fixture(scope="session")
def prometheus_url(stack: Stack) -> str:
    return stack.prometheus_url


@pytest.fixture(params=["classic", "consumer"])
def group_protocol(request: pytest.FixtureRequest) -> str:
    """The worker's group protocol: classic (cooperative-sticky) and KIP-848's consumer protocol."""
    return str(request.param)


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    return _unique_name


@pytest.fixture
def kafka_admin(kafka_bootstrap: str):  # type: ignore[no-untyped-def]
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def create_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """create_topic(prefix="t", partitions=1, config=None) -> a new topic's name; deleted after the test."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def create(prefix: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = _unique_name(prefix)
        new_topic = NewTopic(name, partitions, 1, config=config or {})
        futures = admin.create_topics([new_topic], operation_timeout=30)
        futures[name].result(timeout=60)
        created.append(name)
        # Metadata reaches the broker's cache asynchronously; wait until it lists all partitions.
        wait_for(lambda: (t := admin.list_topics(name, timeout=10).topics.get(name)) is not None
                 and t.error is None and len(t.partitions) == partitions, 30, f"topic {name} in metadata")
        return name

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except Exception as exc:
                print(f"cleanup: could not delete topic: {exc}")


@pytest.fixture
def namespace(stack: Stack) -> Iterator[str]:
    """A fresh Kubernetes namespace for one test, deleted afterwards (without waiting)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(stack.api())
    name = _unique_name("t")
    core.create_namespace({"metadata": {"name": name}})

    def default_account_exists() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return False
        return True

    # The service-account controller creates `default`; pods are rejected until it exists.
    wait_for(default_account_exists, 30, f"default service account in {name}")
    yield name
    release_finalizers(stack, name)
    try:
        core.delete_namespace(name, propagation_policy="Background")  # without waiting
    except ApiException as exc:
        print(f"cleanup: could not delete namespace {name}: {exc.reason}")

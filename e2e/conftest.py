"""Fixtures of the end-to-end scenarios: a backend (local stack + kubelet double, or kind), the operator
as a killable process, one namespace/topic/group per scenario, and the ledger that accounts for ids.

`--e2e-backend=local` (default, CI): the project's local Kafka and Kubernetes control plane; worker
Pods run as local processes through the kubelet test double (e2e/node_agent.py).
`--e2e-backend=kind`: a kind cluster with images built from docker/*.Dockerfile; skipped with the
reason when no Docker engine answers.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import LocalBackend, Scenario
from support import unique_name, wait_for

BACKENDS = ("local", "kind")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e-backend", choices=BACKENDS, default="local",
                     help="where the e2e scenarios run: local (stack + kubelet double, default) or kind")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_dir = Path(__file__).parent
    for item in items:
        if e2e_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


# --- the backend ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def e2e_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--e2e-backend"))


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, e2e_backend_name: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work_dir = tmp_path_factory.mktemp("e2e")
    if e2e_backend_name == "kind":
        from e2e.kind_backend import KindBackend, docker_unavailable_reason

        reason = docker_unavailable_reason()
        if reason:
            pytest.skip(f"--e2e-backend=kind needs a Docker engine: {reason}")
        kind = KindBackend(work_dir=work_dir)
        kind.start()
        yield kind
        kind.stop()
        return
    stack = request.getfixturevalue("stack")
    local = LocalBackend(kubeconfig=stack.kubeconfig, kafka_bootstrap=stack.kafka_bootstrap, bin_dir=stack.bin_dir,
                         stack_dir=stack.stack_dir, work_dir=work_dir, node_name=unique_name("e2e-node"))
    local.start()
    yield local
    local.stop()


@pytest.fixture
def e2e_namespace(backend: Any) -> Iterator[str]:
    name = unique_name("e2e")
    backend.kubectl("create", "namespace", name)
    wait_for(lambda: backend.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             30, f"default service account in {name}")
    yield name
    backend.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def e2e_topics(backend: Any) -> Iterator[Callable[..., str]]:
    """e2e_topics(prefix, partitions) -> a new topic on the backend's broker; deleted after the scenario."""
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient({"bootstrap.servers": backend.kafka_bootstrap})
    created: list[str] = []

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = unique_name(prefix)
        admin.create_topics([NewTopic(name, partitions, 1)], operation_timeout=30)[name].result(timeout=60)
        created.append(name)
        wait_for(lambda: (t := admin.list_topics(name, timeout=10).topics.get(name)) is not None
                 and t.error is None and len(t.partitions) == partitions, 30, f"topic {name} in metadata")
        return name

    yield create
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except Exception as exc:  # cleanup only: the broker may be slow right after an outage
                print(f"cleanup: could not delete topic: {exc}")


# --- one scenario ----------------------------------------------------------------------------------------


@pytest.fixture
def scenario(backend: Any, e2e_namespace: str, e2e_topics: Callable[..., str], tmp_path: Path,
             request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """A namespace, the operator watching it (already running), and cleanup of loads, ledgers and watches."""
    operator = backend.operator(e2e_namespace, tmp_path / "operator.log")
    operator.start()
    run = Scenario(backend=backend, namespace=e2e_namespace, work_dir=tmp_path, make_topic=e2e_topics,
                   operator=operator)
    yield run
    for load in run.loads:
        load.stop()
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        print(run.diagnostics())
    for group in run.groups:
        # Deleted while the operator still runs: a deadLetter.deletionPolicy=Delete finalizer needs it. The
        # Deployment goes with the group (owner reference), so the pods stop before the namespace does.
        run.kubectl("delete", "kcg", group.name, "-n", e2e_namespace, "--timeout=60s", check=False, timeout=90)
    operator.stop()
    for group in run.groups:
        group.watch.stop()
    for ledger in run.ledgers:
        ledger.stop()
    if failed:
        # pytest keeps the temporary folders of its last runs: the operator's and the pods' output stay there.
        pod_logs = Path(getattr(backend, "work_dir", tmp_path)) / "pods"
        for log in pod_logs.glob(f"{e2e_namespace}_*.log"):
            shutil.copy2(log, tmp_path / log.name)
        print(f"scenario logs (operator, pods) in {tmp_path}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so the scenario fixture knows whether the test failed."""
    report: Any = yield
    setattr(item, f"rep_{report.when}", report)
    return report  # type: ignore[no-any-return]

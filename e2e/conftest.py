"""Fixtures of the end-to-end scenarios: a backend (the local stack's real node, or kind), the operator
installed from its chart in each scenario's namespace, one namespace/topic/group per scenario, and the
ledger that accounts for ids.

`--e2e-backend=node` (default, CI): the project's local Kafka and Kubernetes control plane and its real
node (containerd, kubelet, kube-proxy); worker and operator Pods run in containers from the images the
stack built from this checkout (e2e/node_backend.py).
`--e2e-backend=kind`: a kind cluster with images built from docker/*.Dockerfile; skipped with the
reason when no Docker engine answers.

Every worker Pod's create -> Running time is recorded; the session's summary prints median and max.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.harness import Scenario
from e2e.pods import timing_summary
from support import unique_name, wait_for

BACKENDS = ("node", "kind")
CREATE_TO_RUNNING = "worker_pod_create_to_running_seconds"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--e2e-backend", choices=BACKENDS, default="node",
                     help="where the e2e scenarios run: node (the local stack's real node, default) or kind")


# The scenarios run in two lanes: one lane runs its scenarios one after another, the two lanes side by side
# (hack/test.sh: `--dist loadgroup`), next to the lighter tests. Each scenario runs an operator Pod, two to
# five worker Pods, a load generator and a ledger; five of them at once (what plain `--dist load` did) kept
# the 2-core node at a load average of 22-25, where probes time out, rebalances take seconds and the
# scenarios' progress bounds fail for the host's sake. The lanes are balanced by measured duration (s).
E2E_LANES: dict[str, tuple[str, int]] = {
    "test_broker_outage.py::test_broker_outage_holds_replicas_and_loses_nothing": ("e2e-lane-a", 88),
    "test_chaos.py::test_rolling_update_during_a_burst_loses_nothing": ("e2e-lane-a", 107),
    "test_chaos.py::test_30s_partition_of_one_worker_fails_over_and_loses_nothing": ("e2e-lane-a", 75),
    "test_chaos.py::test_200ms_latency_to_the_broker_slows_but_loses_nothing": ("e2e-lane-a", 82),
    "test_share_group.py::test_share_group_scales_past_its_partitions_and_a_killed_worker_loses_nothing":
        ("e2e-lane-a", 110),
    "test_faults.py::test_worker_and_operator_crashes_lose_nothing": ("e2e-lane-b", 90),
    "test_burst.py::test_burst_scales_up_drains_and_returns_to_min": ("e2e-lane-b", 95),
    "test_chaos.py::test_worker_pods_deleted_with_and_without_grace_lose_nothing": ("e2e-lane-b", 60),
    "test_bad_input.py::test_failures_go_through_retries_to_the_dlq_and_invalid_edits_are_rejected":
        ("e2e-lane-b", 67),
    "test_steady.py::test_steady_load_does_not_flap_and_keeps_lag_bounded": ("e2e-lane-b", 89),
    "test_partitions_cap.py::test_replicas_never_exceed_partitions_pool_grows_instead": ("e2e-lane-b", 49),
}
DEFAULT_LANE = "e2e-lane-b"


def e2e_lane(nodeid: str) -> str:
    """The lane of a scenario (its node id relative to e2e/); a scenario not in the table joins lane b."""
    key = nodeid.split("e2e/", 1)[-1].split("[", 1)[0]
    return E2E_LANES.get(key, (DEFAULT_LANE, 0))[0]


# tryfirst: pytest-xdist's worker reads the xdist_group marks in its own hook of this name.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_dir = Path(__file__).parent
    for item in items:
        if e2e_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group(e2e_lane(item.nodeid)))


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
    from e2e.node_backend import NodeBackend

    stack = request.getfixturevalue("stack")
    try:
        node = NodeBackend.from_stack(stack, work_dir)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    node.start()
    yield node
    node.stop()


@pytest.fixture
def e2e_namespace(backend: Any) -> Iterator[str]:
    name = unique_name("e2e")
    backend.kubectl("create", "namespace", name)
    wait_for(lambda: backend.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
             30, f"default service account in {name}")
    backend.prepare_namespace(name)
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
    recorder = backend.pod_recorder(e2e_namespace, tmp_path / "pods").start()
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
    recorder.stop()
    timings = recorder.create_to_running()
    request.node.user_properties.append((CREATE_TO_RUNNING, timings))
    print(f"{e2e_namespace}: {timing_summary(timings)}")
    if failed:
        # pytest keeps the temporary folders of its last runs: the operator's and the pods' output stay there.
        print(f"scenario logs (operator.log, pods/) in {tmp_path}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the item, so the scenario fixture knows whether the test failed."""
    report: Any = yield
    setattr(item, f"rep_{report.when}", report)
    return report  # type: ignore[no-any-return]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Worker Pod create -> Running over the session (also from xdist workers: reports carry them)."""
    seconds: list[float] = []
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for key, value in getattr(report, "user_properties", ()):
                if key == CREATE_TO_RUNNING:
                    seconds.extend(value)
    if seconds:
        terminalreporter.write_line(f"e2e: {timing_summary(sorted(seconds))}")

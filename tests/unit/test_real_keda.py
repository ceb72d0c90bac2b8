"""bench/real_keda.py, the real KEDA's pieces that the loop and seed benchmarks share: the worker Deployment
a KEDA user scales, KEDA up only around consecutive KEDA runs, and pod-seconds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from support import load_script

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def real_keda() -> ModuleType:
    return load_script("real_keda", BENCH / "real_keda.py")


def test_the_worker_deployment_runs_the_given_container_from_one_replica(real_keda: ModuleType) -> None:
    container = {"name": "worker", "image": "localhost/e2e-worker:1"}
    manifest = real_keda.worker_deployment("grp", container, {"nodeSelector": {"lagpilot.io/node": "1"}})
    assert (manifest["kind"], manifest["metadata"]["name"], manifest["spec"]["replicas"]) == ("Deployment", "grp", 1)
    assert manifest["spec"]["selector"]["matchLabels"] == manifest["spec"]["template"]["metadata"]["labels"]
    pod = manifest["spec"]["template"]["spec"]
    assert pod["containers"] == [container]
    assert pod["nodeSelector"] == {"lagpilot.io/node": "1"}


def test_keda_is_up_only_around_consecutive_keda_runs(real_keda: ModuleType,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def fake_keda(stack_dir: Path) -> Iterator[None]:
        events.append(f"up {stack_dir}")
        yield
        events.append("down")

    monkeypatch.setattr(real_keda, "real_keda", fake_keda)

    def run(name: str) -> str:
        events.append(name)
        return name.upper()

    results = real_keda.run_in_order(["lagpilot", "keda-a", "keda-b", "drainTime", "keda-c"],
                                     lambda name: name.startswith("keda"), Path("/stack"), run)
    assert results == ["LAGPILOT", "KEDA-A", "KEDA-B", "DRAINTIME", "KEDA-C"]
    assert events == ["lagpilot", "up /stack", "keda-a", "keda-b", "down", "drainTime", "up /stack", "keda-c", "down"]


def test_keda_goes_down_when_a_keda_run_fails(real_keda: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def fake_keda(stack_dir: Path) -> Iterator[None]:
        events.append("up")
        try:
            yield
        finally:
            events.append("down")

    monkeypatch.setattr(real_keda, "real_keda", fake_keda)

    def run(name: str) -> None:
        raise RuntimeError(name)

    with pytest.raises(RuntimeError, match="keda-a"):
        real_keda.run_in_order(["keda-a", "keda-b"], lambda name: True, Path("/stack"), run)
    assert events == ["up", "down"]


def test_pod_seconds_integrate_the_steps_inside_the_window(real_keda: ModuleType) -> None:
    history = [(0.0, 1), (10.0, 4), (30.0, 2)]
    assert real_keda.pod_seconds(history, 5.0, 40.0) == 1 * 5 + 4 * 20 + 2 * 10
    assert real_keda.pod_seconds([], 0.0, 10.0) == 0.0

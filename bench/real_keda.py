"""The real KEDA as the benchmarks run it (bench/loop_bench.py, bench/seed_bench.py): one definition of what a
KEDA user deploys and of how the benchmarks start KEDA, read its HPA and count pod-seconds.

* the worker Deployment a KEDA user scales: the same e2e worker container as Lagpilot's runs, the worker's
  pool fixed by the caller (`LAGPILOT_POOL_SIZE` in its env);
* the `ScaledObject` with the `kafka` trigger and KEDA's defaults (`scaled_object`), its `lagThreshold`
  sized the way a user with multi-slot pods sizes it (`keda_lag_threshold`);
* KEDA itself, up only while a block runs (`real_keda`: `hack/stack.py keda-up` / `keda-down`; needs
  the stack with LAGPILOT_AGGREGATION=1 and KEDA built by `hack/stack.py keda`), and the runs of an
  invocation grouped so that consecutive KEDA runs share one KEDA (`run_in_order`);
* the KEDA-made HPA's status over time (`HpaRecorder`); pod-seconds of a step function (`pod_seconds`);
* the backend: the stack as `--stack-env` describes it, or `hack/stack.py up` (`node_backend`).

Imported by the bench scripts from this folder (they put bench/ on sys.path).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
for _extra in (REPO, REPO / "tests"):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

from e2e.node_backend import NodeBackend, read_env_file  # noqa: E402
from kubernetes import client  # noqa: E402

from support import wait_for  # noqa: E402

T = TypeVar("T")
R = TypeVar("R")

# KEDA's defaults, as the ScaledObject below leaves them (recorded in the benchmarks' JSON, not sent).
KEDA_DEFAULTS = {"pollingInterval": 30, "cooldownPeriod": 300, "hpaSyncPeriodSeconds": 15,
                 "hpaScaleUp": "max(4 pods, 100 %) per 15 s", "hpaScaleDownStabilizationSeconds": 300}
# The lag per consumer slot both benchmarks size KEDA's lagThreshold from (loop_bench: Lagpilot's
# lagThreshold run targets the same lagPerConsumer).
LAG_PER_SLOT = 100


def keda_lag_threshold(lag_per_slot: int, pool: int) -> int:
    """KEDA's `lagThreshold` is the lag per replica (the HPA's AverageValue target). A user whose pods
    each run `pool` consumer slots sizes it to what one pod works off: the same lag per slot that
    Lagpilot's lagThreshold run targets (lagPerConsumer), times the pool. With lag 100 per slot of
    20 msg/s that is 5 s of a pod's work; the KEDA default (10) would ask for a pod per 10 records
    and be capped by maxReplicaCount at once, whatever the pool."""
    return lag_per_slot * pool


def scaled_object(*, name: str, deployment: str, bootstrap: str, group: str, topic: str, lag_threshold: int,
                  min_replicas: int, max_replicas: int) -> dict[str, Any]:
    """The ScaledObject a KEDA user writes for a Kafka consumer Deployment. pollingInterval,
    cooldownPeriod and the HPA behavior are left out: KEDA's and the HPA's defaults. The offset reset
    policy matches the worker's (`auto.offset.reset: earliest`), as KEDA's docs ask: it decides the lag
    of a partition without a committed offset. KEDA's trigger metadata values are strings."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"name": deployment},
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "triggers": [{
                "type": "kafka",
                "metadata": {
                    "bootstrapServers": bootstrap,
                    "consumerGroup": group,
                    "topic": topic,
                    "lagThreshold": str(lag_threshold),
                    "offsetResetPolicy": "earliest",
                },
            }],
        },
    }


def worker_deployment(name: str, container: dict[str, Any], pod_spec_extra: dict[str, Any]) -> dict[str, Any]:
    """The Deployment KEDA scales: one replica to begin with, Pods labelled `app: <name>`."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [container], "terminationGracePeriodSeconds": 20,
                                           **pod_spec_extra}}}}


@contextlib.contextmanager
def real_keda(stack_dir: Path) -> Iterator[None]:
    """KEDA's operator and adapter up (`hack/stack.py keda-up`: waits until the external metrics API
    answers through the aggregator) for the block, and down after it, APIService included."""
    env = dict(os.environ, LAGPILOT_STACK_DIR=str(stack_dir))

    def stack(command: str) -> None:
        result = subprocess.run([sys.executable, str(REPO / "hack" / "stack.py"), command], env=env,
                                capture_output=True, text=True, check=False, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"stack.py {command} failed:\n{result.stderr[-4000:]}")

    stack("keda-up")
    print(json.dumps({"event": "keda_up"}), flush=True)
    try:
        yield
    finally:
        stack("keda-down")
        print(json.dumps({"event": "keda_down"}), flush=True)


def run_in_order(items: Sequence[T], uses_keda: Callable[[T], bool], stack_dir: Path,
                 run: Callable[[T], R]) -> list[R]:
    """`run` each item in the order given; KEDA runs only while its items do: consecutive KEDA items
    share one keda-up ... keda-down."""
    results: list[R] = []
    for keda, group in itertools.groupby(items, key=uses_keda):
        with real_keda(stack_dir) if keda else contextlib.nullcontext():
            results.extend(run(item) for item in group)
    return results


@dataclass
class HpaRecorder:
    """Every change of the KEDA-made HPA's status (the external metric's value, current and desired
    replicas), polled every 2 s: the real KEDA's view of the lag, for the model's calibration."""

    api: client.ApiClient
    namespace: str
    name: str
    points: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> HpaRecorder:
        threading.Thread(target=self._run, name="hpa-recorder", daemon=True).start()
        return self

    def _run(self) -> None:
        autoscaling = client.AutoscalingV2Api(self.api)
        last: tuple[Any, ...] | None = None
        while not self._stop.is_set():
            try:
                hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler(self.name, self.namespace)
            except client.ApiException:
                hpa = None
            if hpa is not None and hpa.status is not None:
                metric = None
                for current in hpa.status.current_metrics or []:
                    if current.external is not None and current.external.current is not None:
                        value = current.external.current.average_value or current.external.current.value
                        metric = str(value) if value is not None else None
                seen = (metric, hpa.status.current_replicas, hpa.status.desired_replicas)
                if seen != last:
                    last = seen
                    self.points.append({"time": time.time(), "metric_average_value": metric,
                                        "current_replicas": seen[1], "desired_replicas": seen[2]})
            self._stop.wait(2.0)

    def stop(self) -> None:
        self._stop.set()

    def timeline(self, start: float) -> list[dict[str, Any]]:
        return [{**p, "time": round(p["time"] - start, 1)} for p in self.points]


def start_scaling(backend: NodeBackend, namespace: str, scaled: dict[str, Any]) -> HpaRecorder:
    """Apply the ScaledObject and wait until KEDA made its HPA and the HPA read the metric once: from
    then on KEDA scales. The recorder runs until stopped."""
    backend.kubectl("apply", "-n", namespace, "-f", "-", input_text=json.dumps(scaled))
    hpa = HpaRecorder(backend.api, namespace, f"keda-hpa-{scaled['metadata']['name']}").start()
    try:
        wait_for(lambda: any(p["metric_average_value"] is not None for p in hpa.points), 120,
                 "the KEDA HPA to read its external metric")
    except BaseException:
        hpa.stop()
        stop_scaling(backend, namespace, scaled["metadata"]["name"])
        raise
    return hpa


def stop_scaling(backend: NodeBackend, namespace: str, name: str) -> None:
    """The ScaledObject goes while KEDA runs (its finalizer), before the namespace."""
    backend.kubectl("delete", "scaledobject", name, "-n", namespace, "--timeout=60s", check=False, timeout=90)


def pod_seconds(history: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """Integral of a step function given as (time, value) changes, over [start, end]."""
    total = 0.0
    for index, (t, value) in enumerate(history):
        t_next = history[index + 1][0] if index + 1 < len(history) else end
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            total += value * (hi - lo)
    return total


def node_backend(stack_env: Path | None, work_dir: Path) -> NodeBackend:
    """The stack `stack_env`'s `export` lines describe (e.g. .stack/env), as it runs; without it,
    `hack/stack.py up` with the node (reuses the running stack, and gives this checkout's images)."""
    if stack_env is not None:
        return NodeBackend.from_env(read_env_file(stack_env), work_dir)
    return NodeBackend.from_stack_up(work_dir)

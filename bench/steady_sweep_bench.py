"""The e2e steady scenario in the simulator, across slot speeds and pod start times. Pure: no stack.

e2e/test_steady.py produces 150 msg/s for 80 s on 4 partitions to a group of 1-4 replicas x pool 1-4 (initial
1), 2 s polls, a 20 s drain target, and asserts that once the group has its size (its last growth, then the
drain target) the lag stays under 10 s of production, and that it had its size within 45 s. On a loaded CI
machine its slots drain 27-36 msg/s rather than the 50 a 20 ms handler allows, and a worker Pod takes 2-19 s
from create to joining: the test failed there now and then. This runs the same scenario in
`lagpilot_operator.core.simulate` over that space (a message's cost in a slot x the pods' start time) with
the test's own verdict, so a policy change shows where it holds and where it does not, without a stack.

    .venv/bin/python bench/steady_sweep_bench.py [--compare REV]

`--compare REV` runs REV's policy first (its `operator/lagpilot_operator` from `git archive`, on PYTHONPATH in a
child process), then this checkout's. One JSON line per case; the last line is the summary.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from lagpilot_operator.core import simulate

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # e2e.harness imports tests/support

from e2e.harness import grew  # noqa: E402  # the steady test's own rule

RATE = 150.0
LOAD_SECONDS = 80.0
PARTITIONS = 4
BOUND = RATE * 10           # e2e/test_steady.py: never more than 10 s of production behind once sized
SIZED_WITHIN_SECONDS = 45.0
WARM_UP_SECONDS = 25.0
DRAIN_SECONDS = 20.0
MESSAGE_MS = (20, 24, 28, 32, 36, 40, 44)   # a message's time in a slot: 50 down to 23 msg/s a slot
START_SECONDS = (3, 6, 9, 12, 15, 18)        # a worker Pod's create -> joined


@dataclass
class DecidedShapes(simulate.LagpilotController):
    """The policy's controller, remembering each decided shape (time, replicas, pool) as the status shows it: the
    simulated world applies a pool change a little after the replicas."""

    shapes: list[tuple[float, int, int]] = field(default_factory=list)

    def on_tick(self, world: simulate.World) -> None:
        if not self.shapes:
            self.shapes.append((world.time, len(world.pods), world.desired_pool))
        super().on_tick(world)
        shape = (len(world.pods), world.desired_pool)
        if shape != self.shapes[-1][1:]:
            self.shapes.append((world.time, *shape))


def run_case(message_ms: int, start_seconds: float) -> dict[str, Any]:
    from lagpilot_operator.core.policy import (
        DrainTimeConfig,
        PolicyConfig,
        PoolBounds,
        ReplicaBounds,
        ScalingBehavior,
    )

    # The group e2e/harness.py creates for the steady scenario (its GroupSpec defaults and test_steady's bounds).
    config = PolicyConfig(
        replicas=ReplicaBounds(min=1, max=4), pool=PoolBounds(min=1, max=4, initial=1), poll_interval_seconds=2,
        drain_time=DrainTimeConfig(target_drain_seconds=20),
        scale_up=ScalingBehavior(stabilization_seconds=0, max_step_percent=100, min_step=4, period_seconds=2),
        scale_down=ScalingBehavior(stabilization_seconds=15, max_step_percent=100, min_step=1, period_seconds=2))
    # The e2e worker declares 1 s commits (LAGPILOT_COMMIT_INTERVAL_SECONDS).
    model = simulate.WorldModel.with_cost(simulate.parse_cost(f"io={message_ms}ms"), partitions=PARTITIONS,
                                          commit_interval_seconds=1.0, startup_seconds=start_seconds)
    trace = simulate.Trace("steady", (simulate.Segment(LOAD_SECONDS, RATE), simulate.Segment(30.0, 0.0)))
    controller = DecidedShapes("drainTime", config)
    result = simulate.run(trace, model, controller)
    points = [p for p in result.points if p.time <= LOAD_SECONDS]
    # The test's "sized" (e2e.harness.GroupWatch.growth_times, from the status: one decision's replicas and pool
    # together): the last growth while the load ran, more replicas or a bigger pool that is more capacity.
    growths = [after[0] for before, after in itertools.pairwise(controller.shapes)
               if after[0] <= LOAD_SECONDS and grew(before[1:], after[1:])]
    sized = max(growths, default=0.0)
    settled = max(WARM_UP_SECONDS, sized + DRAIN_SECONDS)
    lag_after = max((p.committed_lag for p in points if p.time >= settled), default=0)
    peak = max(points, key=lambda p: p.committed_lag)
    drained = next((p.time for p in points if p.time > peak.time and p.committed_lag <= RATE), None)
    return {
        "message_ms": message_ms, "slot_msg_per_s": round(1000 / message_ms, 1), "pod_start_seconds": start_seconds,
        "sized_seconds": sized, "lag_after_sized": lag_after, "peak_lag": peak.committed_lag,
        "peak_seconds": peak.time, "backlog_drained_seconds": drained,
        "final_shape": f"{points[-1].replicas}x{points[-1].pool}",
        "passes": lag_after <= BOUND and sized <= SIZED_WITHIN_SECONDS,
    }


def sweep() -> list[dict[str, Any]]:
    return [run_case(ms, start) for ms, start in itertools.product(MESSAGE_MS, START_SECONDS)]


def sweep_of(revision: str) -> list[dict[str, Any]]:
    """The sweep with `revision`'s operator package, in a child process."""
    archive = subprocess.run(["git", "archive", revision, "operator/lagpilot_operator"], cwd=REPO, check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix="steady-sweep-") as folder:
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
        env = {**os.environ, "PYTHONPATH": str(Path(folder) / "operator")}
        child = subprocess.run([sys.executable, __file__, "--cases-only"], env=env, check=True, capture_output=True,
                               text=True)
    return [json.loads(line) for line in child.stdout.splitlines()]


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    failing = [c for c in cases if not c["passes"]]
    drains = [c["backlog_drained_seconds"] - c["peak_seconds"] for c in cases
              if c["backlog_drained_seconds"] is not None]
    return {"cases": len(cases), "passing": len(cases) - len(failing),
            "failing": [f"{c['slot_msg_per_s']} msg/s/slot, pods in {c['pod_start_seconds']} s" for c in failing],
            "worst_lag_after_sized": max(c["lag_after_sized"] for c in cases),
            "peak_to_drained_seconds_max": max(drains, default=None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", metavar="REV", help="run REV's policy first, then this checkout's")
    parser.add_argument("--cases-only", action="store_true", help=argparse.SUPPRESS)  # the child of --compare
    args = parser.parse_args()
    if args.cases_only:
        for case in sweep():
            print(json.dumps(case))
        return
    runs: dict[str, list[dict[str, Any]]] = {}
    if args.compare:
        runs[args.compare] = sweep_of(args.compare)
    runs["checkout"] = sweep()
    for name, cases in runs.items():
        for case in cases:
            print(json.dumps({"event": "case", "policy": name, **case}))
    print(json.dumps({"event": "summary", **{name: summary(cases) for name, cases in runs.items()}}))


if __name__ == "__main__":
    main()

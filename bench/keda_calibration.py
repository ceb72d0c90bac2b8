"""The KEDA model's calibration: replay the loop benchmark's trace through `lagpilot simulate`'s KEDA side
and compare it with the real KEDA's replica timeline (lagpilot_operator.core.calibration). Pure and fast.

    .venv/bin/python bench/keda_calibration.py [--fresh bench-results/loop.jsonl] [--simulator-world]

Reads the recorded measurements (bench/data: the run the model was first fitted to, 2026-12-06, and the
re-measurement at 9da9dd0) and, with `--fresh`, a loop benchmark's output as well (its last JSON line,
or a whole JSON file; skipped, with a note, when it has no KEDA run). Prints to stderr:

* what the real world did in each run (one pod's consumption per slot, a new pod's start to consuming,
  every HPA reading beside the true backlog) and the world measured from the recorded runs, pooled: the
  same for every run replayed (a fresh run is replayed in it too, not in its own);
* per measurement, the replay at each pool's central commit excess, against the bounds (replica-seconds
  within 10 %, each step within one 30 s polling period);
* per measurement, the replay over each pool's commit-trail noise band: which stretches of it give
  which steps, and whether any reproduces the run within the bounds.

The last line on stdout is one JSON object: the world, and per measurement its summary (`passed`: the
central replay within the bounds for every run; `reproduced_within_noise`: every run within the bounds
somewhere in its band). It exits 0 either way, so a miss does not stop the benchmarks after it
(tests/unit/operator/test_calibration.py fails on one). `--simulator-world` replays in `lagpilot
simulate`'s default world instead (the calibration before the world was measured).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "operator")]  # this checkout's model, not an installed one

from lagpilot_operator.core import calibration  # noqa: E402

DATA = REPO / "bench" / "data"
RECORDED = {
    "2026-12-06": DATA / "real_keda_loop_2026-12-06.json",
    "2026-12-06_9da9dd0": DATA / "real_keda_loop_2026-12-06_9da9dd0.json",
}


def read_measurement(path: Path) -> Any:
    """A whole JSON file, or the last JSON line of a benchmark's output."""
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        lines = [line for line in text.splitlines() if line.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorded", type=Path, action="append", metavar="FILE",
                        help="a recorded measurement instead of bench/data's two (repeat for several)")
    parser.add_argument("--fresh", type=Path, help="a loop benchmark's output (JSON lines; the last is read)")
    parser.add_argument("--simulator-world", action="store_true",
                        help="replay in lagpilot simulate's default world, not the measured one")
    args = parser.parse_args(argv)
    recorded = {p.stem: p for p in args.recorded} if args.recorded else RECORDED
    measurements: dict[str, Any] = {label: read_measurement(path) for label, path in recorded.items()}
    if args.fresh is not None and args.fresh.exists():
        measurements["fresh"] = read_measurement(args.fresh)
    out: dict[str, Any] = {}
    usable = {label: m for label, m in measurements.items()
              if isinstance(m, dict) and calibration.calibratable(m)}
    for label in measurements.keys() - usable.keys():
        out[label] = {"skipped": "no KEDA run with a replica timeline"}
    observations = {label: calibration.observe(m, label) for label, m in usable.items()}
    world: calibration.MeasuredWorld | None = None
    measured_from = [o for label in recorded if label in observations for o in observations[label]]
    if not args.simulator_world and measured_from:
        world = calibration.measure_world(measured_from)
        out["world"] = world.to_dict()
    central = {label: calibration.calibrate(m, world) for label, m in usable.items()}
    for label, found in observations.items():
        print(f"== what the real world did: {label}", file=sys.stderr)
        readings = {c.run: c.model_readings for c in central[label]}
        cost = float(usable[label]["config"]["cost_ms"]) / 1000
        print(calibration.format_observations(found, world, cost, readings), file=sys.stderr)
    if world is not None:
        print(calibration.format_world(world), file=sys.stderr)
    for label, measurement in usable.items():
        runs = central[label]
        where = "the simulator's default world" if world is None else "the measured world"
        print(f"== calibration of the KEDA model against the {label} measurement ({where})", file=sys.stderr)
        print(calibration.format_table(runs), file=sys.stderr)
        bands = calibration.noise_bands(measurement, world) if world is not None else []
        if bands:
            print("   over each pool's commit-trail band (mean +/- 2 sd of its samples):", file=sys.stderr)
            print(calibration.format_noise(bands), file=sys.stderr)
        out[label] = calibration.summary(runs, bands)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

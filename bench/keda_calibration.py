"""The KEDA model's calibration: replay the loop benchmark's trace through `lagpilot simulate`'s KEDA side
and compare it with the real KEDA's replica timeline (lagpilot_operator.core.calibration). Pure and fast.

    .venv/bin/python bench/keda_calibration.py [--fresh bench-results/loop.jsonl]

Reads the recorded measurement (bench/data/real_keda_loop_2026-12-06.json) and, with `--fresh`, the last
JSON line of a loop benchmark run as well (skipped, with a note, when it has no KEDA run). Prints the
table to stderr and one JSON object (the last line) per measurement under its name, with `passed`; it
exits 0 either way, so a miss does not stop the benchmarks after it (tests/unit/operator/test_calibration.py
fails on one).
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

RECORDED = REPO / "bench" / "data" / "real_keda_loop_2026-12-06.json"


def last_json_line(path: Path) -> Any:
    lines = [line for line in path.read_text().splitlines() if line.strip().startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recorded", type=Path, default=RECORDED, help="default %(default)s")
    parser.add_argument("--fresh", type=Path, help="a loop benchmark's output (JSON lines; the last is read)")
    args = parser.parse_args(argv)
    measurements: dict[str, Any] = {"recorded": json.loads(args.recorded.read_text())}
    if args.fresh is not None and args.fresh.exists():
        measurements["fresh"] = last_json_line(args.fresh)
    out: dict[str, Any] = {}
    for name, measurement in measurements.items():
        if not isinstance(measurement, dict) or not calibration.calibratable(measurement):
            out[name] = {"skipped": "no KEDA run with a replica timeline"}
            continue
        runs = calibration.calibrate(measurement)
        print(f"== calibration of the KEDA model against the {name} measurement", file=sys.stderr)
        print(calibration.format_table(runs), file=sys.stderr)
        out[name] = calibration.summary(runs)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

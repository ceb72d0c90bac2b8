#!/usr/bin/env bash
# The benchmarks, one after another on the running local stack (`make bench` starts it first).
# Each benchmark prints JSON lines while it runs; its last line is its summary object. This script keeps
# every benchmark's full output in bench-results/<name>.jsonl and prints one JSON object at the end that
# holds each benchmark's summary, so one invocation gives all numbers side by side.
# LAGPILOT_STACK_DIR (as for hack/stack.py) names the running stack's state, e.g. a worktree on its main checkout's stack.
# BENCH_ONLY="worker operator" runs a subset; BENCH_QUICK=1 passes --quick to the loop and seed benchmarks.
# `seed` is the seed articles' load (bench/seed_bench.py). By default it searches the highest rate at which
# P99 <= 200 ms holds (a 2-core machine cannot produce, store and consume 12,000 msg/s of 1.2 KB JSON),
# for Lagpilot and then for the real KEDA with the worker's pool fixed at 8, on the same load;
# BENCH_SEED_ARGS replaces its flags, e.g. BENCH_SEED_ARGS="--mode headline" for the issue's 12,000 msg/s.
# `compare` installs the runtime of two commits (BENCH_COMPARE_BASELINE, default c47d1fb: the runtime
# before it was split into parts; BENCH_COMPARE_CANDIDATE, default HEAD) into temporary venvs and runs
# them in turns with a no-op handler.
# `probe` (bench/probe_bench.py, issue 17) is the CPU of one probe of a cluster's log ends against one read of
# all its groups, at the fleet bench's size per cluster (334 topics of 10 partitions); about a minute.
# `fleet` (bench/fleet_bench.py, issue 17) runs 1,000 KafkaConsumerGroups on one operator process, the operator
# of BENCH_FLEET_BASELINE (default fb31b65: before the fleet work) then this checkout's; BENCH_QUICK=1
# makes it 50 groups and a 60 s window. Its full size takes about 25 minutes.
# `cpuloop` (bench/loop_bench.py --scenario cpu, issue 15) is the loop with a CPU-bound handler (5 ms of CPU a
# message under the GIL) in worker Pods limited to 250m, drainTime only: does the operator move capacity to Pods
# when a Pod's slots stop adding throughput? About 7 minutes; BENCH_CPULOOP_ARGS adds flags (e.g. --burst-rate 150).
# `steady` (bench/steady_sweep_bench.py) is pure: the e2e steady scenario in the simulator over slot speeds and
# pod start times, with the test's own verdict; BENCH_STEADY_BASELINE (default f363493: before the busy span)
# runs first. Seconds.
# `calibration` (bench/keda_calibration.py) is pure: the KEDA model against the recorded real-KEDA runs, and
# against this invocation's loop run when `loop` ran before it. It needs no stack.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bench-results
mkdir -p "$out"
only=${BENCH_ONLY:-worker operator probe loop cpuloop calibration steady seed rebalance share compare fleet}
needs_stack=0
for name in $only; do [[ "$name" == calibration || "$name" == steady ]] || needs_stack=1; done
if (( needs_stack )); then
  # shellcheck disable=SC1090,SC1091
  source "${LAGPILOT_STACK_DIR:-.stack}/env"
fi
ran_loop=0
loop_args=()
fleet_args=(--compare "${BENCH_FLEET_BASELINE:-fb31b65}")
if [[ "${BENCH_QUICK:-}" == "1" ]]; then loop_args+=(--quick); fleet_args+=(--quick); fi
for name in $only; do
  case "$name" in
    worker) cmd=(.venv/bin/python bench/worker_bench.py) ;;
    operator) cmd=(.venv/bin/python bench/operator_bench.py) ;;
    probe) cmd=(.venv/bin/python bench/probe_bench.py) ;;
    loop) cmd=(.venv/bin/python bench/loop_bench.py "${loop_args[@]}"); ran_loop=1 ;;
    # shellcheck disable=SC2206  # BENCH_CPULOOP_ARGS is split into flags on purpose
    cpuloop) cmd=(.venv/bin/python bench/loop_bench.py --scenario cpu ${BENCH_CPULOOP_ARGS:-}) ;;
    calibration) cmd=(.venv/bin/python bench/keda_calibration.py)
                 if (( ran_loop )); then cmd+=(--fresh "$out/loop.jsonl"); fi ;;
    # shellcheck disable=SC2206  # BENCH_SEED_ARGS is split into flags on purpose
    seed) cmd=(.venv/bin/python bench/seed_bench.py "${loop_args[@]}" ${BENCH_SEED_ARGS:---mode search --policy lagpilot,keda-pool-8}) ;;
    steady) cmd=(.venv/bin/python bench/steady_sweep_bench.py --compare "${BENCH_STEADY_BASELINE:-f363493}") ;;
    rebalance) cmd=(.venv/bin/python bench/rebalance_bench.py) ;;
    share) cmd=(.venv/bin/python bench/share_bench.py) ;;
    compare) cmd=(.venv/bin/python bench/runtime_compare_bench.py
                  --baseline "${BENCH_COMPARE_BASELINE:-c47d1fb}" --candidate "${BENCH_COMPARE_CANDIDATE:-HEAD}") ;;
    fleet) cmd=(.venv/bin/python bench/fleet_bench.py "${fleet_args[@]}") ;;
    *) echo "unknown benchmark '$name' (worker, operator, probe, loop, cpuloop, calibration, steady, seed, rebalance, share, compare, fleet)" >&2
       exit 2 ;;
  esac
  echo "== bench: $name" >&2
  "${cmd[@]}" | tee "$out/$name.jsonl" >&2
done
.venv/bin/python - "$out" $only <<'PY'
import json
import sys
from pathlib import Path

out, names = Path(sys.argv[1]), sys.argv[2:]
summary = {}
for name in names:
    lines = [line for line in (out / f"{name}.jsonl").read_text().splitlines() if line.strip().startswith("{")]
    summary[name] = json.loads(lines[-1]) if lines else None
print(json.dumps(summary, indent=2, sort_keys=True))
PY

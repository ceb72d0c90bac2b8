#!/usr/bin/env bash
# The whole test run: the local stack (started first, in the background), the virtual environment and lint
# meanwhile, then unit + integration + end-to-end tests.
# Leaves the stack running for a fast next run, except in CI (CI=true), where it stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
started_here=0
if ! python3 hack/stack.py status >/dev/null 2>&1; then started_here=1; fi
stack_pid=""
stack_log="$(mktemp)"
cleanup() {
  # A stack still starting (lint failed meanwhile) is waited for, so `down` finds every process it started.
  if [[ -n "$stack_pid" ]]; then wait "$stack_pid" 2>/dev/null || true; fi
  if [[ "$started_here" == 1 && "${CI:-}" == "true" ]]; then python3 hack/stack.py down || true; fi
  rm -f "$stack_log"
}
trap cleanup EXIT

# The stack needs only the system Python: it starts (or, cold, builds) while pip and the linters run.
SECONDS=0
python3 hack/stack.py up >/dev/null 2>"$stack_log" &
stack_pid=$!

echo "== virtual environment"
make -s venv

echo "== lint (ruff, mypy)"
"$VENV/bin/ruff" check .
# mypy's cache is keyed by module and checked by content hash, so clones on one machine share it.
MYPY_CACHE_DIR="${LAGPILOT_CACHE_DIR:-$HOME/.cache/lagpilot}/mypy" "$VENV/bin/mypy"

# The operator's and the worker's unit tests are pure (no Kafka, no Kubernetes, no node): they start now,
# while the stack is still starting, and run on beside the node's lifecycle tests below.
echo "== the operator's and worker's unit tests (beside the stack's start and the node's lifecycle tests)"
phase_start=$SECONDS
unit_log="$(mktemp)"
"$VENV/bin/pytest" tests/unit/operator tests/unit/worker -q -p no:cacheprovider -n 2 "$@" >"$unit_log" 2>&1 &
unit_pid=$!

echo "== local stack (Kafka, Kubernetes control plane with a real node, Prometheus)"
stack_rc=0
wait "$stack_pid" || stack_rc=$?
stack_pid=""
cat "$stack_log"
if [[ "$stack_rc" != 0 ]]; then wait "$unit_pid" || true; echo "stack-up failed (exit $stack_rc)"; exit "$stack_rc"; fi
echo "stack ready after ${SECONDS}s (started with the virtual environment, lint and the unit tests)"
# shellcheck disable=SC1091
source .stack/env

# The node's own lifecycle tests stop, kill and start the node: nothing else may use it meanwhile. They
# mostly wait on the node's processes; the unit tests above fill the CPU meanwhile.
echo "== the node's own lifecycle (stop, kill, start)"
lifecycle_rc=0
"$VENV/bin/pytest" tests/integration/test_real_node.py -q -p no:cacheprovider -m node_lifecycle "$@" || lifecycle_rc=$?
unit_rc=0
wait "$unit_pid" || unit_rc=$?
echo "-- unit tests:"
cat "$unit_log"
rm -f "$unit_log"
echo "unit tests and node lifecycle took $((SECONDS - phase_start))s (from the unit tests' start)"
if [[ "$unit_rc" != 0 || "$lifecycle_rc" != 0 ]]; then
  echo "failed: unit tests exit $unit_rc, node lifecycle tests exit $lifecycle_rc"; exit 1
fi

echo "== tests (the other unit tests, integration, e2e)"
# Most tests wait on real servers (rebalances, polls, scale-downs), not on the CPU: run them side by side.
# Every test has its own namespace, topics and group; the scenario that stops a broker has its own broker.
# The remaining unit tests stay in this run: conftest.py queues one behind each long test.
# The test run joins the stack's cgroup for tests (hack/stack.py, enter_host_cgroup): beside the stack's servers
# in the host cgroup, which weighs as much as all Pods together. Only now: the node's lifecycle tests above
# removed and re-created it.
if [[ -n "${LAGPILOT_TEST_CGROUP:-}" && -d "$LAGPILOT_TEST_CGROUP" ]]; then
  echo $$ > "$LAGPILOT_TEST_CGROUP/cgroup.procs"
fi
SECONDS=0
"$VENV/bin/pytest" tests e2e -q -p no:cacheprovider -n "${LAGPILOT_TEST_WORKERS:-5}" --dist loadgroup \
  --ignore=tests/unit/operator --ignore=tests/unit/worker -m "not node_lifecycle" \
  --durations=30 "$@"
echo "tests took ${SECONDS}s"

#!/usr/bin/env bash
# The whole test run: lint, the local stack, unit + integration + end-to-end tests.
# Leaves the stack running for a fast next run, except in CI (CI=true), where it stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
started_here=0
if ! python3 hack/stack.py status >/dev/null 2>&1; then started_here=1; fi
cleanup() {
  if [[ "$started_here" == 1 && "${CI:-}" == "true" ]]; then python3 hack/stack.py down || true; fi
}
trap cleanup EXIT

echo "== lint (ruff, mypy)"
"$VENV/bin/ruff" check .
"$VENV/bin/mypy"

echo "== local stack (Kafka, Kubernetes control plane with a real node, Prometheus)"
SECONDS=0
python3 hack/stack.py up >/dev/null
echo "stack ready after ${SECONDS}s"
# shellcheck disable=SC1091
source .stack/env

echo "== tests (unit, integration, e2e)"
# Most tests wait on real servers (rebalances, polls, scale-downs), not on the CPU: run them side by side.
# Every test has its own namespace, topics and group; the scenario that stops a broker has its own broker.
SECONDS=0
"$VENV/bin/pytest" tests e2e -q -p no:cacheprovider -n "${LAGPILOT_TEST_WORKERS:-5}" --dist loadgroup \
  -m "not node_lifecycle" --durations=30 "$@"
echo "tests took ${SECONDS}s"

echo "== the node's own lifecycle (stop, kill, start): alone, nothing else may share the node meanwhile"
SECONDS=0
"$VENV/bin/pytest" tests/integration/test_real_node.py -q -p no:cacheprovider -m node_lifecycle "$@"
echo "node lifecycle tests took ${SECONDS}s"

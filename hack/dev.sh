#!/usr/bin/env bash
# The main job: the local stack, our CRDs applied, and the operator in the foreground (kopf run).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 hack/stack.py up >/dev/null
# shellcheck disable=SC1091
source .stack/env
kubectl apply --server-side -f crds/
echo "operator: watching all namespaces of $KUBECONFIG (Ctrl-C stops it; the stack keeps running: make stack-down)"
exec .venv/bin/kopf run --standalone --all-namespaces --liveness=http://127.0.0.1:8081/healthz -m lagpilot_operator.handlers

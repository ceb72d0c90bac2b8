# Lagpilot: the two commands are `make dev` (run the operator on the local stack) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STACK := $(PYTHON) hack/stack.py

.PHONY: help dev test test-node test-shards venv lock stack-install stack-up stack-down stack-status crds crds-check lint unit integration e2e bench clean

help:
	@echo "make dev         bring the local stack up, apply crds/, run the operator (kopf run) in the foreground"
	@echo "make test        install everything, bring the stack up, run lint + unit + integration + e2e tests"
	@echo "make test-node   start the stack with the real node (root) and run its tests"
	@echo "make test-shards run the 3-replica shard failover test alone (make test runs it too)"
	@echo "make stack-up    start Kafka, the Kubernetes control plane and Prometheus; prints export lines"
	@echo "make stack-down  stop every process of the local stack"
	@echo "make bench       build KEDA (first time), then run the benchmarks (JSON out; BENCH_ONLY='share compare' runs some)"
	@echo "make lock        re-pin the Python dependencies in requirements.lock (commit it)"

# Every dependency is pinned by requirements.lock (pip-compile of pyproject's extras), so a new release
# of kopf or confluent-kafka cannot change what a fresh clone installs. `make lock` updates it.
# uv installs the pins (pip took 45-80 s per fresh clone with a warm cache, uv about 10 s); its cache
# lives with the stack's, so a second clone on the machine is warm. The venv keeps pip for `make lock`.
UV_VERSION := 0.13.9
LAGPILOT_CACHE_DIR ?= $(HOME)/.cache/lagpilot
$(VENV)/.installed: pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed: set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'uv==$(UV_VERSION)'
	UV_CACHE_DIR=$(LAGPILOT_CACHE_DIR)/uv $(VENV)/bin/uv pip install -q --python $(PY) -c requirements.lock -e '.[dev,e2e]'
	@touch $@

venv: $(VENV)/.installed

# Re-resolve the pins from pyproject.toml (newest versions its ranges allow); commit the result.
# `make lock UPGRADE=kopf` moves one package only.
lock: venv
	$(PY) -m pip install -q --disable-pip-version-check 'pip-tools>=7.4,<8'
	$(VENV)/bin/pip-compile --quiet --strip-extras --extra dev --extra e2e --no-emit-index-url --no-emit-find-links \
		--unsafe-package lagpilot $(if $(UPGRADE),--upgrade-package $(UPGRADE),--upgrade) \
		--output-file requirements.lock pyproject.toml

stack-install:
	@$(STACK) install

stack-up:
	@$(STACK) up

stack-down:
	@$(STACK) down

stack-status:
	@$(STACK) status

crds: venv
	$(VENV)/bin/lagpilot crds --write
	cp crds/kafkaconsumergroups.lagpilot.io.yaml charts/lagpilot/crds/

crds-check: venv
	$(VENV)/bin/lagpilot crds --check

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest tests/unit -q

integration: venv
	@$(STACK) up >/dev/null
	$(VENV)/bin/pytest tests/integration -q

e2e: venv
	@$(STACK) up >/dev/null
	$(VENV)/bin/pytest e2e -q

# Main job: the operator against the project's own local Kafka and control plane.
dev: venv
	@bash hack/dev.sh

# The test command (.ci/run calls exactly this).
test:
	@bash hack/test.sh

# The real node's own tests only (containerd, runc, CNI, kubelet, kube-proxy; two of them stop and
# start the node). `make test` runs them too.
test-node: venv
	@$(STACK) up >/dev/null
	$(VENV)/bin/pytest tests/integration/test_real_node.py -q -p no:cacheprovider

# The 3-replica shard failover test, alone (`make test` runs it among the integration tests).
test-shards: venv
	@$(STACK) up >/dev/null
	$(VENV)/bin/pytest tests/integration/operator/test_operator_shards.py -q -p no:cacheprovider -m shard_failover

# KEDA (the benchmarks' baseline) is built, cached and prepared here only: `make test` never builds it.
bench: venv
	@$(STACK) keda
	@# The loop benchmark runs the real KEDA: its metrics API needs the apiserver's aggregation layer.
	@LAGPILOT_AGGREGATION=1 $(STACK) up >/dev/null
	@bash hack/bench.sh

clean:
	@$(STACK) down
	rm -rf .stack

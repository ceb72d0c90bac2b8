"""Fixtures for the operator's integration tests: the CRD applied, and `kopf run` of the real operator.

The operator runs as a subprocess (`kopf run --standalone --namespace <test namespace>`), so it sees
only this test's resources and has its own metrics registry on a free 127.0.0.1 port.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_testkit import OperatorProcess

from support import wait_for

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def crd_applied(stack: Any) -> None:
    stack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    wait_for(lambda: "True" in stack.kubectl("get", "crd", "kafkaconsumergroups.lagpilot.io", "-o",
                                             "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                                             check=False).stdout, 60, "the CRD to be Established")


@pytest.fixture
def operator(stack: Any, namespace: str, crd_applied: None, tmp_path: Path) -> Iterator[OperatorProcess]:
    # A status write every poll (no skipped refreshes, docs/operator.md "Writes"): these tests tell one
    # reconcile from the next by policyMemory.lastTime (operator_testkit.poll_time).
    process = OperatorProcess({**stack.env(), "LAGPILOT_STATUS_REFRESH_SECONDS": "1"}, namespace, tmp_path)
    process.start()
    yield process
    process.stop()
    if os.environ.get("LAGPILOT_SHOW_OPERATOR_LOG"):
        print(process.log_text())

"""The operator's start-up: a problem it cannot get past stops it at once, saying what to do."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from operator_testkit import OperatorProcess

from support import free_port


def test_a_taken_metrics_port_stops_the_operator_and_names_the_port(stack: Any, namespace: str, crd_applied: None,
                                                                    tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):  # someone else's server on the operator's metrics port
        operator = OperatorProcess(stack.env(), namespace, tmp_path, metrics_port=port)
        operator.start()
        assert operator.process is not None
        try:
            # Before, kopf retried the start-up 60 s later and reconciled nothing meanwhile, silently.
            code = operator.process.wait(30)
        finally:
            operator.stop()
    log = operator.log_text()
    assert code != 0, log
    assert f"cannot serve /metrics on 127.0.0.1:{port}" in log, log
    assert "LAGPILOT_METRICS_PORT" in log, log

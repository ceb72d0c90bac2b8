"""The README's walkthrough, executed command by command on the local stack, so the docs cannot rot."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import release_finalizers

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def walkthrough_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("<!-- walkthrough:begin -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def test_walkthrough_has_the_promised_steps() -> None:
    commands = walkthrough_commands()
    assert commands[0] == 'eval "$(make -s stack-up)"'
    assert any(c.startswith("kubectl apply --server-side -f crds/") for c in commands)
    assert any(c.startswith("helm install lagpilot charts/lagpilot") for c in commands)
    assert commands[-1] == "kubectl get kcg -n demo -w"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clean_walkthrough(stack: Any) -> Iterator[None]:
    """The walkthrough uses fixed names (demo, lagpilot-system, walkthrough-orders): clear them around it."""

    def clean() -> None:
        release_finalizers(stack, "demo")
        stack.helm("uninstall", "lagpilot", "--namespace", "lagpilot-system", check=False)
        for namespace in ("demo", "lagpilot-system"):
            stack.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=60s", check=False)
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
        if "walkthrough-orders" in admin.list_topics(timeout=10).topics:
            admin.delete_topics(["walkthrough-orders"])["walkthrough-orders"].result(timeout=30)

    clean()
    yield
    clean()


@pytest.mark.slow
def test_walkthrough_runs_and_scales(stack: Any, clean_walkthrough: None) -> None:
    env = {**stack.env(), "LAGPILOT_METRICS_PORT": str(_free_port())}
    background: list[subprocess.Popen[bytes]] = []
    shell_prefix = ""  # `eval "$(...)"` sets variables for the commands after it, as in a person's shell
    try:
        for command in walkthrough_commands():
            if command.startswith("eval "):
                shell_prefix += command + "\n"
                continue
            if command.endswith("&"):
                background.append(subprocess.Popen(["bash", "-c", shell_prefix + "exec " + command[:-1]], cwd=REPO,
                                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   start_new_session=True))
                continue
            if command.endswith(" -w"):
                watch_until_scaled(shell_prefix, command, env)
                continue
            result = subprocess.run(["bash", "-c", shell_prefix + command], cwd=REPO, env=env, capture_output=True,
                                    text=True, timeout=300, check=False)
            assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
    finally:
        for process in background:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def watch_until_scaled(shell_prefix: str, command: str, env: dict[str, str]) -> None:
    """Read `kubectl get kcg -w` lines until the printer columns show the scaled shape."""
    watch = subprocess.Popen(["bash", "-c", shell_prefix + "exec " + command], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    # The deadline ends the watch (and so the loop below) even if kubectl prints nothing more.
    timer = threading.Timer(90, lambda: os.killpg(watch.pid, signal.SIGTERM))
    timer.start()
    try:
        assert watch.stdout is not None
        for line in watch.stdout:  # each line is an event kubectl prints: no polling needed
            lines.append(line.rstrip())
            columns = line.split()
            if lines[0].split()[:7] == ["NAME", "LAG", "TIMELAG", "REPLICAS", "DESIRED", "POOL", "READY"] and \
                    len(columns) >= 7 and columns[0] == "orders" and columns[1] == "3000" and \
                    columns[3] == "4" and columns[5] == "8" and columns[6] == "True":
                return
    finally:
        timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watch.pid, signal.SIGTERM)
        watch.wait(10)
    raise AssertionError("the walkthrough never showed orders at 4 replicas, pool 8:\n" + "\n".join(lines))

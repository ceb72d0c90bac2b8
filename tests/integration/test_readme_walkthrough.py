"""The README's walkthrough, executed command by command on the local stack, so the docs cannot rot."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
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
    assert commands[0] == 'eval "$(make -s stack-up)"'  # the stack with its real node (the default)
    assert any(c.startswith("kubectl apply --server-side -f crds/") for c in commands)
    # The operator runs as a Pod from the chart; the workers from the example handler image.
    assert any(c.startswith("helm install lagpilot charts/lagpilot") for c in commands)
    assert not any("kopf run" in c for c in commands)
    assert any("$LAGPILOT_EXAMPLE_WORKER_IMAGE" in c and "examples/walkthrough.yaml" in c for c in commands)
    assert commands[-1] == "kubectl get kcg -n demo -w"


@pytest.fixture
def clean_walkthrough(stack: Any) -> Iterator[None]:
    """The walkthrough uses fixed names (demo, lagpilot-system, walkthrough-orders): clear them around it.

    Other checkouts run it against the same stack: one at a time on this machine (a machine-wide lock),
    or one run's clean-up deletes the other's namespaces mid-run.
    """

    def clean() -> None:
        stack.helm("uninstall", "lagpilot", "--namespace", "lagpilot-system", "--wait", "--timeout=120s",
                   check=False)
        release_finalizers(stack, "demo")  # the operator is gone: nobody else releases them
        for namespace in ("demo", "lagpilot-system"):
            stack.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False)
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": stack.kafka_bootstrap})
        if "walkthrough-orders" in admin.list_topics(timeout=10).topics:
            admin.delete_topics(["walkthrough-orders"])["walkthrough-orders"].result(timeout=30)
        # The workers committed: a second run must start from an unconsumed backlog again.
        with contextlib.suppress(Exception):  # no such group (first run)
            admin.delete_consumer_groups(["walkthrough-orders"])["walkthrough-orders"].result(timeout=30)

    with Path("/tmp/lagpilot-walkthrough.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        clean()
        yield
        clean()


@pytest.mark.slow
def test_walkthrough_runs_and_scales(stack: Any, clean_walkthrough: None) -> None:
    env = stack.env()
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
                watch_until_drained(shell_prefix, command, env)
                continue
            result = subprocess.run(["bash", "-c", shell_prefix + command], cwd=REPO, env=env, capture_output=True,
                                    text=True, timeout=300, check=False)
            assert result.returncode == 0, f"`{command}` failed:\n{result.stdout}\n{result.stderr}"
    finally:
        for process in background:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


COLUMNS = ["NAME", "LAG", "TIMELAG", "REPLICAS", "DESIRED", "POOL", "READY", "PAUSED", "AGE"]


def watch_until_drained(shell_prefix: str, command: str, env: dict[str, str]) -> None:
    """Read `kubectl get kcg -w` lines until they show the backlog, the scale-up and then lag 0.

    The operator runs in its Pod and the example workers in theirs: lag 0 means the workers consumed
    and committed all 3,000 messages.
    """
    watch = subprocess.Popen(["bash", "-c", shell_prefix + "exec " + command], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    lines: list[str] = []
    backlog = scaled = False
    # The deadline ends the watch (and so the loop below) even if kubectl prints nothing more.
    timer = threading.Timer(300, lambda: os.killpg(watch.pid, signal.SIGTERM))
    timer.start()
    try:
        assert watch.stdout is not None
        for line in watch.stdout:  # each line is an event kubectl prints: no polling needed
            lines.append(line.rstrip())
            assert lines[0].split() == COLUMNS, lines[0]
            row = dict(zip(COLUMNS, line.split(), strict=False))
            if row.get("NAME") != "orders" or len(row) != len(COLUMNS):
                continue  # no status yet (empty columns)
            lag, replicas, pool = int(row["LAG"]), int(row["REPLICAS"]), int(row["POOL"])
            backlog |= lag >= 1000
            # The operator scaled up for it: a larger pool (from the initial 2) or more replicas; which
            # of the two first, and how far, depends on how fast the workers drain on this machine.
            scaled |= backlog and (pool > 2 or replicas > 1)
            if backlog and scaled and lag == 0 and row["READY"] == "True":
                print("\n" + "\n".join(lines))  # what the README shows
                return
    finally:
        timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(watch.pid, signal.SIGTERM)
        watch.wait(10)
    raise AssertionError("the walkthrough never showed the backlog, a scale-up (pool or replicas), then lag 0:\n"
                         + "\n".join(lines))

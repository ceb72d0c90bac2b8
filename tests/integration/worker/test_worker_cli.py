"""The CLI as a process: SIGTERM is a graceful shutdown that leaves the group, and Kafka security
settings (librdkafka names, credentials from env and mounted files) reach consumer and producer."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from worker_testkit import CliWorker, Topics, cli_env, committed_offsets, http_get, produce, read_topic

from lagpilot_contract import naming
from support import wait_for

pytestmark = pytest.mark.integration

HANDLER = textwrap.dedent('''
    import os
    import time

    from lagpilot_worker.retry import PermanentError

    _out = open(os.environ["TEST_PROCESSED_FILE"], "a", buffering=1)


    def slow(record):
        """Two seconds per record: a SIGTERM always finds work in flight."""
        _out.write(f"start {record.offset}\\n")
        time.sleep(2)
        _out.write(f"done {record.offset}\\n")


    def reject_odd(record):
        if int(record.value) % 2:
            raise PermanentError("odd")
        _out.write(f"done {record.value.decode()}\\n")
''')


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(kafka_bootstrap)
    yield made
    made.delete_all()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "clihandlers.py").write_text(HANDLER)
    return tmp_path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_sigterm_finishes_in_flight_work_commits_and_leaves_the_group(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        workdir: Path) -> None:
    topic = create_topic("term", partitions=2)
    group = unique_name("g")
    produce(kafka_bootstrap, topic, [(f"k{i}".encode(), b"x") for i in range(40)])
    processed = workdir / "processed.txt"
    env = cli_env(workdir)
    env["TEST_PROCESSED_FILE"] = str(processed)
    worker = CliWorker(["--handler", "clihandlers:slow", "--bootstrap-servers", kafka_bootstrap, "--group", group,
                        "--topic", topic, "--pool-size", "4", "--http-host", "127.0.0.1", "--http-port", "0",
                        "--no-dead-letter", "--shutdown-timeout", "15"], env, workdir, workdir / "w.log").start()
    try:
        worker.http_port()
        wait_for(lambda: sum(line.startswith("start") for line in lines(processed)) >= 4, 60, "4 records in flight")
        started = time.monotonic()
        assert worker.terminate(timeout=30) == 0
        assert time.monotonic() - started < 10      # the records in hand take 2 s; nothing new starts
    finally:
        worker.stop_if_running()
    starts = {int(line.split()[1]) for line in lines(processed) if line.startswith("start")}
    done = [line for line in lines(processed) if line.startswith("done")]
    assert len(done) == len(starts), "work in flight at SIGTERM was not finished"
    messages = [entry.get("message") for entry in worker.logs()]
    assert "stopping: finishing the records in hand" in messages and "stopped" in messages
    committed = committed_offsets(kafka_bootstrap, group, topic, 2)
    assert sum(offset or 0 for offset in committed.values()) == len(done), "finished work was not committed"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    description = admin.describe_consumer_groups([group])[group].result(timeout=30)
    assert description.state == ConsumerGroupState.EMPTY, "the worker did not leave the group"
    assert not description.members


@pytest.mark.slow
def test_security_settings_and_credentials_from_env_and_files(
        stack: Any, create_topic: Callable[..., str], unique_name: Callable[[str], str], topics: Topics,
        workdir: Path) -> None:
    topic = create_topic("sasl", partitions=1)
    group = unique_name("g")
    dlq = topics.create(naming.dead_letter_topic(group), partitions=1)
    produce(stack.kafka_bootstrap, topic, [(None, str(i).encode()) for i in range(6)])
    processed = workdir / "processed.txt"
    password_file = workdir / "password"
    password_file.write_text(stack.kafka_sasl_password + "\n")   # as a mounted Secret file would be

    def start(password_path: Path, name: str) -> CliWorker:
        env = cli_env(workdir)
        env.update(TEST_PROCESSED_FILE=str(processed), LAGPILOT_KAFKA_SASL_USERNAME=stack.kafka_sasl_username)
        return CliWorker(["--handler", "clihandlers:reject_odd", "--bootstrap-servers", stack.kafka_sasl_bootstrap,
                          "--group", group, "--topic", topic, "--http-host", "127.0.0.1", "--http-port", "0",
                          "--dead-letter", "--kafka-config", "security.protocol=SASL_PLAINTEXT",
                          "--kafka-config", "sasl.mechanism=PLAIN",
                          "--kafka-config-file", f"sasl.password={password_path}"],
                         env, workdir, workdir / f"{name}.log").start()

    wrong = workdir / "wrong"
    wrong.write_text("not-the-password")
    denied = start(wrong, "denied")
    try:
        port = denied.http_port()
        time.sleep(5)
        status, body = http_get(port, "/readyz")
        assert status == 503 and "assignment" in body      # never joined the group: no credentials, no data
        assert not lines(processed)
    finally:
        denied.stop_if_running()
    allowed = start(password_file, "allowed")
    try:
        wait_for(lambda: len(lines(processed)) == 3, 60, "even records processed over SASL")
        dead = wait_for(lambda: len(r := read_topic(stack.kafka_bootstrap, dlq)) == 3 and r, 60,
                        "odd records dead-lettered over SASL (the producer got the credentials too)")
        assert sorted(int(r.value or b"0") for r in dead) == [1, 3, 5]
        assert allowed.terminate() == 0
    finally:
        allowed.stop_if_running()

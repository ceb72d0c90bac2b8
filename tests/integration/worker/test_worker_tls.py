"""The worker CLI on the stack's SASL_SSL (SCRAM-SHA-512) and mutual-TLS listeners, configured the way a
Pod gets its credentials: env from a Secret's keys (`secretKeyRef`) and files from a Secret volume.

There is no kubelet in the stack, so the test does its part: it stores the Secret in the real API
server and hands the worker what the kubelet would make of it (env values, files named after keys).
Records are produced through the plaintext listener; the worker consumes, commits and dead-letters
through the TLS listeners only.
"""

from __future__ import annotations

import base64
import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_testkit import CliWorker, Topics, cli_env, committed_offsets, produce, read_topic

from lagpilot_contract import naming
from support import wait_for
from tls_testkit import key_material, mint_foreign_pki

pytestmark = pytest.mark.integration

HANDLER = textwrap.dedent('''
    import os

    from lagpilot_worker.retry import PermanentError

    _out = open(os.environ["TEST_PROCESSED_FILE"], "a", buffering=1)


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
    (tmp_path / "tlshandlers.py").write_text(HANDLER)
    return tmp_path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def secret_as_kubelet_sees_it(stack: Any, namespace: str, name: str, data: dict[str, str],
                              volume: Path) -> dict[str, str]:
    """Store the Secret in the API server, read it back, and mount it: one file per key under `volume`."""
    manifest = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
                "stringData": data}
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(manifest))
    stored = json.loads(stack.kubectl("get", "secret", name, "-n", namespace, "-o", "json").stdout)["data"]
    values = {key: base64.b64decode(value).decode() for key, value in stored.items()}
    volume.mkdir(parents=True, exist_ok=True)
    for key, value in values.items():
        (volume / key).write_text(value)
        (volume / key).chmod(0o400)
    return values


def start_worker(workdir: Path, name: str, bootstrap: str, group: str, topic: str, env_settings: dict[str, str],
                 config: list[str]) -> CliWorker:
    env = {**cli_env(workdir), "TEST_PROCESSED_FILE": str(workdir / f"{name}.processed"), **env_settings}
    return CliWorker(["--handler", "tlshandlers:reject_odd", "--bootstrap-servers", bootstrap, "--group", group,
                      "--topic", topic, "--http-host", "127.0.0.1", "--http-port", "0",
                      "--dead-letter", *config],
                     env, workdir, workdir / f"{name}.log").start()


def log_text(worker: CliWorker) -> str:
    return worker.log_path.read_text(errors="replace")


def test_scram_over_tls_from_secret_env_and_mutual_tls_from_secret_files(
        stack: Any, namespace: str, create_topic: Any, unique_name: Any, topics: Topics, workdir: Path) -> None:
    topic = create_topic("w-tls", partitions=2)
    produce(stack.kafka_bootstrap, topic, [(None, str(i).encode()) for i in range(10)])
    scram_group, mtls_group = unique_name("g-scram"), unique_name("g-mtls")
    scram_dlq = topics.create(naming.dead_letter_topic(scram_group))
    mtls_dlq = topics.create(naming.dead_letter_topic(mtls_group))
    login = secret_as_kubelet_sees_it(stack, namespace, "scram-login", {
        "username": stack.kafka_scram_username, "password": stack.kafka_scram_password}, workdir / "scram-login")
    tls = workdir / "client-tls"
    secret_as_kubelet_sees_it(stack, namespace, "client-tls", {
        "ca.crt": stack.kafka_tls_ca_file.read_text(), "tls.crt": stack.kafka_tls_client_cert_file.read_text(),
        "tls.key": stack.kafka_tls_client_key_file.read_text()}, tls)

    # SCRAM: protocol and mechanism as plain env, the login from secretKeyRef env, the CA from a volume.
    scram = start_worker(workdir, "scram", stack.kafka_scram_bootstrap, scram_group, topic, {
        "LAGPILOT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LAGPILOT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "LAGPILOT_KAFKA_SASL_USERNAME": login["username"], "LAGPILOT_KAFKA_SASL_PASSWORD": login["password"],
        "LAGPILOT_KAFKA_SSL_CA_LOCATION": str(tls / "ca.crt")}, [])
    # mTLS: certificate and key read from the mounted Secret's files into librdkafka's PEM settings.
    mtls = start_worker(workdir, "mtls", stack.kafka_mtls_bootstrap, mtls_group, topic, {}, [
        "--kafka-config", "security.protocol=SSL", "--kafka-config", f"ssl.ca.location={tls / 'ca.crt'}",
        "--kafka-config-file", f"ssl.certificate.pem={tls / 'tls.crt'}",
        "--kafka-config-file", f"ssl.key.pem={tls / 'tls.key'}"])
    try:
        runs = ((scram, "scram", scram_group, scram_dlq), (mtls, "mtls", mtls_group, mtls_dlq))
        for worker, name, group, dlq in runs:
            processed = workdir / f"{name}.processed"
            wait_for(lambda processed=processed: len(lines(processed)) == 5, 60,
                     f"the even records processed through the {name} listener")
            dead = wait_for(lambda dlq=dlq: len(r := read_topic(stack.kafka_bootstrap, dlq)) == 5 and r, 60,
                            f"the odd records dead-lettered through the {name} listener (the producer's login)")
            assert sorted(int(r.value or b"0") for r in dead) == [1, 3, 5, 7, 9]
            wait_for(lambda group=group: sum(o or 0 for o in committed_offsets(
                stack.kafka_bootstrap, group, topic, 2).values()) == 10, 60, f"{name}: every offset committed")
            assert worker.terminate() == 0
    finally:
        scram.stop_if_running()
        mtls.stop_if_running()
    for worker in (scram, mtls):
        text = log_text(worker)
        assert stack.kafka_scram_password not in text
        assert not any(line in text for line in key_material(stack.kafka_tls_client_key_file.read_text()))


@pytest.mark.slow
def test_a_wrong_password_or_an_untrusted_ca_is_named_in_the_log_and_nothing_is_consumed(
        stack: Any, namespace: str, create_topic: Any, unique_name: Any, workdir: Path) -> None:
    topic = create_topic("w-tls-bad", partitions=1)
    produce(stack.kafka_bootstrap, topic, [(None, b"0")])
    foreign = mint_foreign_pki(workdir / "foreign")
    wrong_password = f"wrong-{uuid.uuid4().hex}"
    base = {"LAGPILOT_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "LAGPILOT_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "LAGPILOT_KAFKA_SASL_USERNAME": stack.kafka_scram_username}
    bad_password = start_worker(workdir, "badpw", stack.kafka_scram_bootstrap, unique_name("g"), topic, {
        **base, "LAGPILOT_KAFKA_SASL_PASSWORD": wrong_password,
        "LAGPILOT_KAFKA_SSL_CA_LOCATION": str(stack.kafka_tls_ca_file)}, [])
    bad_ca = start_worker(workdir, "badca", stack.kafka_scram_bootstrap, unique_name("g"), topic, {
        **base, "LAGPILOT_KAFKA_SASL_PASSWORD": stack.kafka_scram_password,
        "LAGPILOT_KAFKA_SSL_CA_LOCATION": str(foreign.ca)}, [])
    try:
        wait_for(lambda: "Authentication failed" in log_text(bad_password), 60,
                 "the wrong password's worker to log the refused login")
        wait_for(lambda: "certificate verify failed" in log_text(bad_ca), 60,
                 "the untrusted CA's worker to log the failed verification")
    finally:
        bad_password.stop_if_running()
        bad_ca.stop_if_running()
    assert not lines(workdir / "badpw.processed") and not lines(workdir / "badca.processed")
    for worker in (bad_password, bad_ca):
        text = log_text(worker)
        assert wrong_password not in text and stack.kafka_scram_password not in text


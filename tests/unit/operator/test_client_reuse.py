"""Kafka admin clients are shared per cluster and credentials and dropped when unused; the Prometheus
lag read gives up on a server that accepts the connection and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lagpilot_operator.kafka import kafka_lag, prom_lag

OLD = {"bootstrap.servers": "127.0.0.1:1", "sasl.password": "old"}
NEW = {"bootstrap.servers": "127.0.0.1:1", "sasl.password": "new"}


def test_leases_free_a_key_only_when_its_last_user_leaves() -> None:
    leases = kafka_lag.ClientLeases()
    assert leases.assign("a", "k1") == set() and leases.assign("b", "k1") == set()
    assert leases.assign("a", "k2") == set()        # b still uses k1
    assert leases.assign("a", "k2") == set()        # same key again: nothing to free
    assert leases.release("b") == {"k1"}
    assert leases.release("b") == set()             # twice is harmless
    assert leases.assign("a", "k3") == {"k2"}
    assert leases.release("a") == {"k3"} and leases.users("k3") == 0


def test_resources_on_one_cluster_and_credentials_share_one_client() -> None:
    pool = kafka_lag.AdminClientPool()
    first = pool.get(OLD, owner=("ns", "a"))
    assert pool.get(dict(OLD), owner=("ns", "b")) is first and len(pool) == 1


def test_rotated_credentials_evict_the_old_client_once_nobody_uses_it() -> None:
    pool = kafka_lag.AdminClientPool()
    old = pool.get(OLD, owner=("ns", "a"))
    pool.get(OLD, owner=("ns", "b"))
    assert pool.get(NEW, owner=("ns", "a")) is not old and len(pool) == 2  # b still reads with the old one
    pool.get(NEW, owner=("ns", "b"))
    assert len(pool) == 1 and pool.get(OLD) is not old  # the old client was dropped


def test_a_deleted_resource_releases_its_client() -> None:
    pool = kafka_lag.AdminClientPool()
    pool.get(OLD, owner=("ns", "a"))
    pool.get(NEW, owner=("ns", "b"))
    pool.release(("ns", "a"))
    assert len(pool) == 1
    pool.release(("ns", "b"))
    assert len(pool) == 0


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An HTTP address that accepts connections and never answers (a hung Prometheus)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()


def test_a_prometheus_that_never_answers_fails_the_read_within_its_timeouts(silent_server: str) -> None:
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            prom_lag.read_lag(silent_server, "up", timeout=1.0)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    connect, read_timeout = prom_lag.http_timeouts(1.0)
    # Every attempt waits at most the read timeout; one retry with a short backoff.
    bound = (prom_lag.RETRIES + 1) * read_timeout + 2.0
    reader.join(bound + 5.0)
    assert outcome, f"read_lag still waiting after {time.monotonic() - started:.1f}s (no read timeout)"
    assert isinstance(outcome[0], prom_lag.PrometheusUnavailable)
    assert time.monotonic() - started <= bound
    assert (connect, read_timeout) == (prom_lag.CONNECT_TIMEOUT_SECONDS, 1.0 + prom_lag.READ_MARGIN_SECONDS)

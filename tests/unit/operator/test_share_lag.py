"""share_lag without Kafka: the mapping of a coordinator's answer to the LagSample the policy reads, the
security settings, and the client against an in-process fake broker (asyncio, loopback): version
negotiation, kept connections and coordinators, SASL logins, and the pool's leases."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
import scramp

from lagpilot_operator.core.observations import LagHistory, LagSample, partition_lag, total_lag
from lagpilot_operator.kafka import kafka_lag, share_lag
from lagpilot_operator.kafka import kafka_protocol as proto
from tls_testkit import mint_foreign_pki

T = TypeVar("T")
LOG = {("orders", 0): (0, 100), ("orders", 1): (40, 100)}  # (log start, log end)


def offsets(partition: int, start: int, lag: int | None, error: int = 0) -> proto.SharePartitionOffsets:
    return proto.SharePartitionOffsets("orders", partition, start, 0, lag, error, None)


def group(*partitions: proto.SharePartitionOffsets, error: int = 0) -> proto.ShareGroupOffsets:
    return proto.ShareGroupOffsets("sg", error, None, partitions)


def lags(sample: LagSample, reset: str = "earliest") -> dict[int, int]:
    return {p.partition: partition_lag(p, reset) for p in sample.partitions}  # type: ignore[arg-type]


def test_v1_lag_is_the_partition_lag_the_policy_reads() -> None:
    sample = share_lag.share_sample(1.0, LOG, group(offsets(0, 10, 35), offsets(1, 50, 0)))
    assert sample.protocol == "share" and sample.time == 1.0
    assert lags(sample) == {0: 35, 1: 0}
    # Not the SPSO distance (90 and 50): acknowledged records above the SPSO are not lag.
    assert [(p.end_offset, p.start_offset) for p in sample.partitions] == [(100, 0), (100, 40)]


def test_v0_falls_back_to_the_distance_from_the_start_offset() -> None:
    sample = share_lag.share_sample(1.0, LOG, group(offsets(0, 10, None), offsets(1, 20, -1)))
    # Partition 1's SPSO is below the log start: records deleted by retention are not lag.
    assert lags(sample) == {0: 90, 1: 60}


def test_a_partition_without_share_state_follows_the_offset_reset_policy() -> None:
    sample = share_lag.share_sample(1.0, LOG, group(offsets(0, -1, -1)))  # partition 1 not even answered
    assert [p.committed for p in sample.partitions] == [None, None]
    assert lags(sample, "earliest") == {0: 100, 1: 60}
    assert lags(sample, "latest") == {0: 1, 1: 1}  # woken, like a consumer group that never committed
    assert share_lag.share_sample(1.0, LOG, None).partitions == sample.partitions  # no group at all


def test_the_consume_rate_of_a_share_group_is_its_acknowledgement_rate() -> None:
    history = LagHistory()
    history.add(share_lag.share_sample(0.0, {("orders", 0): (0, 100)}, group(offsets(0, 0, 100))))
    # 10 s later: 50 records more produced, 80 acknowledged (lag 100 + 50 - 80).
    history.add(share_lag.share_sample(10.0, {("orders", 0): (0, 150)}, group(offsets(0, 0, 70))))
    assert history.produce_rate() == 5.0
    assert history.consume_rate() == 8.0
    assert total_lag(history.samples[-1]) == 70


def test_authorization_errors_are_named() -> None:
    with pytest.raises(kafka_lag.KafkaAuthorizationFailed):
        share_lag.share_sample(1.0, LOG, group(offsets(0, 0, 0, error=proto.TOPIC_AUTHORIZATION_FAILED)))
    with pytest.raises(kafka_lag.KafkaAuthorizationFailed):
        share_lag.group_result([group(error=proto.GROUP_AUTHORIZATION_FAILED)], "sg")


def test_group_errors() -> None:
    assert share_lag.group_result([group(error=proto.GROUP_ID_NOT_FOUND)], "sg") is None
    with pytest.raises(kafka_lag.LagReadError, match="COORDINATOR_LOAD_IN_PROGRESS") as caught:
        share_lag.group_result([group(error=proto.COORDINATOR_LOAD_IN_PROGRESS)], "sg")
    # Retried on the next poll like any Kafka error, but the shared AdminClient was not at fault: kept.
    assert caught.value.reason == "KafkaError" and not kafka_lag.retire_client_after(caught.value)
    with pytest.raises(kafka_lag.LagReadError, match="no such group"):
        share_lag.group_result([group()], "other")


def test_security_comes_from_the_admin_clients_settings() -> None:
    assert share_lag.security_from_settings({"bootstrap.servers": "k:9092"}) == share_lag.Security("PLAINTEXT")
    security = share_lag.security_from_settings({
        "bootstrap.servers": "k:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc-lag", "sasl.password": "hunter2-secret", "ssl.ca.pem": "-----BEGIN CERTIFICATE-----"})
    assert (security.tls, security.sasl, security.mechanism, security.verify_hostname) == (
        True, True, "SCRAM-SHA-512", True)
    assert (security.username, security.password, security.ca_pem) == (
        "svc-lag", "hunter2-secret", "-----BEGIN CERTIFICATE-----")
    # Neither a log line nor a traceback's locals show a credential, and broker texts are scrubbed of them.
    assert "hunter2" not in repr(security) and "svc-lag" not in repr(security)
    assert security.scrub("user svc-lag, password hunter2-secret") == "user ***, password ***"
    # librdkafka's switch for host name verification is honoured (its default verifies).
    assert not share_lag.security_from_settings({"bootstrap.servers": "k:9093", "security.protocol": "SSL",
                                                 "ssl.endpoint.identification.algorithm": "none"}).verify_hostname


@pytest.mark.parametrize("settings", [{"security.protocol": "SASL_SSL"},  # librdkafka's default: GSSAPI
                                      {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "OAUTHBEARER"},
                                      {"security.protocol": "QUIC"}])
def test_what_the_reader_cannot_speak_is_named(settings: dict[str, str]) -> None:
    with pytest.raises(share_lag.ShareGroupReadError) as caught:
        share_lag.security_from_settings({"bootstrap.servers": "k:9092", **settings})
    assert caught.value.reason == "KafkaError"


def test_an_unreadable_ca_or_client_key_is_named_without_its_text() -> None:
    with pytest.raises(kafka_lag.SecretKeyUnreadable, match="caSecretRef"):
        share_lag.tls_context(share_lag.Security("SSL", ca_pem="-----BEGIN CERTIFICATE-----\nnot base64\n"))
    key = "-----BEGIN PRIVATE KEY-----\nTUlJQ2VRSUJBREFOQmdrcWhraUc5dzBCQVFFRkFBU0NBbU13Z2dKZkFnRUFBb0dCQUxH\n"
    with pytest.raises(kafka_lag.SecretKeyUnreadable, match="certSecretRef") as caught:
        share_lag.tls_context(share_lag.Security("SSL", cert_pem="-----BEGIN CERTIFICATE-----\nx\n", key_pem=key))
    assert "TUlJ" not in str(caught.value)


def test_bootstrap_addresses() -> None:
    assert share_lag.bootstrap_addresses("k1:9092, k2:19092,[::1]:9092") == [
        ("k1", 9092), ("k2", 19092), ("::1", 9092)]
    with pytest.raises(kafka_lag.LagReadError):
        share_lag.bootstrap_addresses("k1")


# --- the client against a fake broker -------------------------------------------------------------------------

FULL = {proto.API_VERSIONS: (0, 4), proto.FIND_COORDINATOR: (0, 6), proto.DESCRIBE_SHARE_GROUP_OFFSETS: (0, 1),
        proto.SASL_HANDSHAKE: (0, 1), proto.SASL_AUTHENTICATE: (0, 2)}


def frame(correlation: int, body: bytes, *, flexible: bool) -> bytes:
    header = struct.pack(">i", correlation) + (b"\x00" if flexible else b"")
    return struct.pack(">i", len(header) + len(body)) + header + body


class FakeBroker:
    """Answers ApiVersions with `versions`, FindCoordinator with itself, DescribeShareGroupOffsets with one
    partition (SPSO 10, lag 35) in whatever version was asked, after `not_coordinator` NOT_COORDINATOR answers.
    With `login` (mechanism, username, password) it wants a SASL login first (PLAIN, or SCRAM through
    scramp's server side). Records the (api, version) of each request and counts the connections."""

    def __init__(self, versions: Mapping[int, tuple[int, int]] = FULL, *, not_coordinator: int = 0,
                 login: tuple[str, str, str] | None = None, session_lifetime_ms: int = 0) -> None:
        self.versions = versions
        self.not_coordinator = not_coordinator
        self.login = login
        self.session_lifetime_ms = session_lifetime_ms
        self.requests: list[tuple[int, int]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.writers)

    def drop_connections(self) -> None:
        """Close every connection, as a broker does with idle ones (connections.max.idle.ms)."""
        for writer in self.writers:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        scram: Any = None
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                request = await reader.readexactly(size)
                api, version, correlation, client_id_length = struct.unpack(">hhih", request[:10])
                body = request[10 + max(client_id_length, 0) + (1 if proto.is_flexible(api, version) else 0):]
                self.requests.append((api, version))
                if api == proto.API_VERSIONS:
                    answer = (proto.Writer().int16(0).compact_array_length(len(self.versions)).bytes()
                              + b"".join(struct.pack(">hhh", k, lo, hi) + b"\x00"
                                         for k, (lo, hi) in self.versions.items())
                              + struct.pack(">i", 0) + b"\x00")
                    writer.write(frame(correlation, answer, flexible=False))  # header v0, always
                elif api == proto.SASL_HANDSHAKE:
                    assert self.login is not None
                    mechanism = proto.Reader(body).string()
                    answer = (proto.Writer().int16(0 if mechanism == self.login[0] else 33).int32(1)
                              .string(self.login[0]).bytes())
                    writer.write(frame(correlation, answer, flexible=False))
                elif api == proto.SASL_AUTHENTICATE:
                    token = proto.Reader(body).compact_bytes() if version >= 2 else proto.Reader(body).int32_bytes()
                    scram, error, reply = self.authenticate(token, scram)
                    answer_writer = proto.Writer().int16(error)
                    message = "Authentication failed: Invalid username or password" if error else None
                    if version >= 2:
                        answer_writer.compact_string(message).compact_bytes(reply)
                    else:
                        answer_writer.nullable_string(message).int32_bytes(reply)
                    answer = answer_writer.bytes() + (struct.pack(">q", self.session_lifetime_ms) if version else b"")
                    writer.write(frame(correlation, answer + (b"\x00" if version >= 2 else b""),
                                       flexible=version >= 2))
                elif api == proto.FIND_COORDINATOR:
                    answer = (proto.Writer().int32(0).compact_array_length(1).compact_string("sg").int32(1)
                              .compact_string("127.0.0.1").int32(self.port).int16(0).compact_string(None)
                              .no_tagged_fields().no_tagged_fields().bytes())
                    writer.write(frame(correlation, answer, flexible=True))
                else:
                    error = proto.NONE
                    if self.not_coordinator:
                        self.not_coordinator -= 1
                        error = proto.NOT_COORDINATOR
                    answer = (proto.Writer().int32(0).compact_array_length(1).compact_string("sg")
                              .compact_array_length(1).compact_string("orders").bytes() + bytes(16)
                              + proto.Writer().compact_array_length(1).int32(0).bytes()
                              + struct.pack(">qi", 10, 0) + (struct.pack(">q", 35) if version >= 1 else b"")
                              + proto.Writer().int16(0).compact_string(None).no_tagged_fields().no_tagged_fields()
                              .int16(error).compact_string(None).no_tagged_fields().no_tagged_fields().bytes())
                    writer.write(frame(correlation, answer, flexible=True))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def authenticate(self, token: bytes, scram: Any) -> tuple[Any, int, bytes]:
        """(SCRAM server state, error code, auth bytes) for one SaslAuthenticate token."""
        assert self.login is not None
        mechanism, username, password = self.login
        if mechanism == "PLAIN":
            return None, 0 if token == proto.sasl_plain_token(username, password) else 58, b""
        if scram is None:
            server_mechanism = scramp.ScramMechanism(mechanism)
            auth = server_mechanism.make_auth_info(password, iteration_count=4096)
            scram = server_mechanism.make_server(lambda name: auth if name == username else None)
            scram.set_client_first(token.decode())
            return scram, 0, scram.get_server_first().encode()
        try:
            scram.set_client_final(token.decode())
        except scramp.ScramException:
            return scram, 58, b""
        return scram, 0, scram.get_server_final().encode()

    async def run(self, use: Callable[[int], Awaitable[T]]) -> T:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            return await use(self.port)

    async def ask(self, **settings: str) -> tuple[int, proto.ShareGroupOffsets | None]:
        async def use(port: int) -> tuple[int, proto.ShareGroupOffsets | None]:
            async with share_lag.ShareCluster({"bootstrap.servers": f"127.0.0.1:{port}", **settings}) as cluster:
                return await cluster.describe("sg", {"orders": [0]})

        return await self.run(use)


def test_the_client_asks_the_highest_version_both_speak() -> None:
    broker = FakeBroker()
    version, answer = asyncio.run(broker.ask())
    assert version == 1 and answer is not None and answer.partitions[0].lag == 35
    # ApiVersions v3, FindCoordinator v6 (key type group), then DescribeShareGroupOffsets on the same connection
    assert broker.requests == [(18, 3), (10, 6), (90, 1)]


def test_a_v0_broker_is_read_without_a_lag_field() -> None:
    broker = FakeBroker({**FULL, proto.DESCRIBE_SHARE_GROUP_OFFSETS: (0, 0)})
    version, answer = asyncio.run(broker.ask())
    assert version == 0 and answer is not None
    assert (answer.partitions[0].start_offset, answer.partitions[0].lag) == (10, None)


def test_a_broker_without_share_group_offsets_is_a_clear_error() -> None:
    broker = FakeBroker({proto.API_VERSIONS: (0, 4), proto.FIND_COORDINATOR: (0, 6)})
    with pytest.raises(share_lag.ShareGroupOffsetsUnsupported, match="DescribeShareGroupOffsets"):
        asyncio.run(broker.ask())


def test_nobody_listening_is_unreachable() -> None:
    async def closed_port() -> int:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = int(server.sockets[0].getsockname()[1])
        server.close()
        await server.wait_closed()
        return port

    async def ask(port: int) -> None:
        async with share_lag.ShareCluster({"bootstrap.servers": f"127.0.0.1:{port}"}) as cluster:
            await cluster.describe("sg", {"orders": [0]})

    port = asyncio.run(closed_port())
    with pytest.raises(kafka_lag.KafkaUnreachable, match=f"127.0.0.1:{port}: \\[Errno"):
        asyncio.run(ask(port))


def polls(broker: FakeBroker, count: int, between: Callable[[], None] = lambda: None,
          ) -> list[tuple[int, proto.ShareGroupOffsets | None]]:
    """`count` reads through one ShareCluster, as the operator's polls do; `between` runs after each."""
    async def use(port: int) -> list[tuple[int, proto.ShareGroupOffsets | None]]:
        answers = []
        async with share_lag.ShareCluster({"bootstrap.servers": f"127.0.0.1:{port}"}) as cluster:
            for _ in range(count):
                answers.append(await cluster.describe("sg", {"orders": [0]}))
                assert cluster.coordinator_of("sg") == ("127.0.0.1", port)
                between()
        return answers

    return asyncio.run(broker.run(use))


def test_the_connection_and_the_coordinator_are_kept_across_polls() -> None:
    broker = FakeBroker()
    answers = polls(broker, 3)
    assert [version for version, _ in answers] == [1, 1, 1]
    assert broker.connections == 1
    assert broker.requests == [(18, 3), (10, 6), (90, 1), (90, 1), (90, 1)]  # one lookup, one ApiVersions


def test_not_coordinator_looks_the_coordinator_up_again_at_once() -> None:
    broker = FakeBroker(not_coordinator=1)
    [(_, answer)] = polls(broker, 1)
    assert answer is not None and answer.partitions[0].lag == 35
    assert broker.requests == [(18, 3), (10, 6), (90, 1), (10, 6), (90, 1)]


def test_a_connection_the_broker_closed_is_replaced_at_once() -> None:
    broker = FakeBroker()
    answers = polls(broker, 2, between=broker.drop_connections)
    assert all(answer is not None for _, answer in answers)
    assert broker.connections == 2
    # The broken connection's coordinator is forgotten with it: looked up again on the new connection.
    assert broker.requests[-3:] == [(18, 3), (10, 6), (90, 1)]


def test_a_closed_cluster_keeps_no_connection() -> None:
    async def use(port: int) -> int:
        cluster = share_lag.ShareCluster({"bootstrap.servers": f"127.0.0.1:{port}"})
        await cluster.describe("sg", {"orders": [0]})
        assert cluster.open_connections == 1
        await cluster.close()
        with pytest.raises(share_lag.ShareGroupReadError, match="closed"):
            await cluster.describe("sg", {"orders": [0]})
        return cluster.open_connections

    assert asyncio.run(FakeBroker().run(use)) == 0


# --- SASL against the fake broker ---------------------------------------------------------------------------


def sasl(mechanism: str, username: str, password: str) -> dict[str, str]:
    return {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism, "sasl.username": username,
            "sasl.password": password}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_login_before_the_first_request(mechanism: str) -> None:
    broker = FakeBroker(login=(mechanism, "svc-lag", "right-pass"))
    _, answer = asyncio.run(broker.ask(**sasl(mechanism, "svc-lag", "right-pass")))
    assert answer is not None and answer.partitions[0].lag == 35
    rounds = 1 if mechanism == "PLAIN" else 2  # SCRAM: client-first, then client-final
    assert broker.requests == [(18, 3), (17, 1), *[(36, 2)] * rounds, (10, 6), (90, 1)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_a_refused_login_is_named_without_the_credentials(mechanism: str) -> None:
    broker = FakeBroker(login=(mechanism, "svc-lag", "right-pass"))
    with pytest.raises(kafka_lag.KafkaAuthenticationFailed, match="refused the login") as caught:
        asyncio.run(broker.ask(**sasl(mechanism, "svc-lag", "wrong-pass-123")))
    assert caught.value.reason == "AuthenticationFailed" and not kafka_lag.retire_client_after(caught.value)
    assert "spec.kafka.security" in str(caught.value)
    assert "wrong-pass-123" not in str(caught.value) and "right-pass" not in str(caught.value)


def test_a_mechanism_the_listener_does_not_offer_is_named() -> None:
    broker = FakeBroker(login=("SCRAM-SHA-512", "svc-lag", "right-pass"))
    with pytest.raises(kafka_lag.KafkaAuthenticationFailed, match=r"SCRAM-SHA-256 is not enabled.*SCRAM-SHA-512"):
        asyncio.run(broker.ask(**sasl("SCRAM-SHA-256", "svc-lag", "right-pass")))


def test_a_sasl_session_with_a_lifetime_is_replaced_by_a_new_connection_before_it_ends() -> None:
    broker = FakeBroker(login=("PLAIN", "svc-lag", "right-pass"), session_lifetime_ms=100)

    async def use(port: int) -> None:
        settings = {"bootstrap.servers": f"127.0.0.1:{port}", **sasl("PLAIN", "svc-lag", "right-pass")}
        async with share_lag.ShareCluster(settings) as cluster:
            await cluster.describe("sg", {"orders": [0]})
            await cluster.describe("sg", {"orders": [0]})  # well within the session
            assert broker.connections == 1
            await asyncio.sleep(0.1)  # past 80% of the 100 ms
            await cluster.describe("sg", {"orders": [0]})
            assert broker.connections == 2 and cluster.open_connections == 1

    asyncio.run(broker.run(use))


# --- the pool ----------------------------------------------------------------------------------------------------


def test_the_pool_shares_a_cluster_and_closes_it_with_its_last_user() -> None:
    async def use(port: int) -> None:
        pool = share_lag.ShareLagClients()
        settings = {"bootstrap.servers": f"127.0.0.1:{port}"}
        first = await pool.get(settings, ("ns", "a"), "sg")
        assert await pool.get(dict(settings), ("ns", "b"), "sg") is first and len(pool) == 1
        await first.describe("sg", {"orders": [0]})
        assert pool.open_connections() == 1
        await pool.release(("ns", "a"))
        assert first.open_connections == 1  # b still reads through it
        # b moves to another group: sg's coordinator is forgotten, the connection stays.
        assert await pool.get(settings, ("ns", "b"), "other") is first
        assert first.coordinator_of("sg") is None and first.open_connections == 1
        # b moves to other credentials: the old cluster has no user left and is closed.
        second = await pool.get({**settings, "client.id": "x"}, ("ns", "b"), "other")
        assert second is not first and len(pool) == 1 and first.open_connections == 0
        await pool.release(("ns", "b"))
        assert len(pool) == 0 and pool.open_connections() == 0
        await pool.release(("ns", "never-seen"))  # harmless
        await pool.close()

    asyncio.run(FakeBroker().run(use))


@pytest.mark.parametrize("memfd", [True, False])
def test_a_client_certificate_loads_without_a_file_left_behind(
        memfd: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = mint_foreign_pki(tmp_path / "pki")
    monkeypatch.setattr(share_lag.tempfile, "tempdir", str(tmp_path))  # where a fallback folder would go
    if not memfd:
        monkeypatch.delattr(share_lag.os, "memfd_create")
    context = share_lag.tls_context(share_lag.Security(
        "SSL", ca_pem=pki.ca.read_text(), cert_pem=pki.client_cert.read_text(), key_pem=pki.client_key.read_text()))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pki"]  # the key was written nowhere else

"""Reading a share group's lag (KIP-932) from Kafka (I/O, plus the pure mapping to a LagSample).

A share group has no committed offsets: its consumers acquire records, acknowledge them one by one, and
the broker keeps per share-partition a start offset (SPSO, below which every record is done) and the
state of the records in flight above it. Kafka 4.2+ reports the share-partition's lag (KIP-1226) in
DescribeShareGroupOffsets v1: records from the SPSO to the end offset that are not yet acknowledged.

confluent-kafka (librdkafka) has no call for it, so this module asks the group coordinator itself
(asyncio), with the messages of `kafka_protocol`; the topics' partitions and log-start/end offsets still
come from the shared AdminClient (`kafka_lag.read_log_offsets`).

Security: the same resolved settings the AdminClient gets (`kafka_lag.client_settings`, credentials read
from the resource's Secrets once): TLS through `ssl` (the CA of `ssl.ca.pem`, else the system store; the
client certificate and key for mutual TLS; the broker's host name verified, as librdkafka's default
`ssl.endpoint.identification.algorithm=https` does), and SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over
SaslHandshake v1 + SaslAuthenticate (KIP-152), the SCRAM exchange computed by the `scramp` library. A
refused login, an untrusted broker certificate and a refused client certificate get the condition
reasons the AdminClient's do (`kafka_lag.connection_failure`). Credentials never reach a message: the
broker's and the libraries' texts are scrubbed of them, and `Security` does not show them.

Connections are kept: `ShareLagClients` holds one `ShareCluster` per cluster and credentials (the key of
the AdminClientPool), leased by the resources that read through it and closed when the last one goes
(deleted, switched to other credentials or to a consumer group, or the operator stops). A ShareCluster
keeps one connection per broker, reused across polls, and each group's coordinator until the coordinator
answers NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE or its connection breaks. A request on a reused
connection that turns out closed (brokers close idle ones after `connections.max.idle.ms`) is sent once
more on a new one; a SASL session with a lifetime (`connections.max.reauth.ms`) is replaced by a new
connection before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from confluent_kafka.admin import AdminClient

from lagpilot_operator.core.observations import LagSample, PartitionKey, PartitionOffsets
from lagpilot_operator.kafka import kafka_lag
from lagpilot_operator.kafka import kafka_protocol as proto
from lagpilot_operator.kafka.kafka_lag import (
    KafkaAuthorizationFailed,
    KafkaUnreachable,
    LagReadError,
    SecretKeyUnreadable,
)

log = logging.getLogger(__name__)

CLIENT_ID = "lagpilot-operator"
CLIENT_SOFTWARE = ("lagpilot", "0.1.0")
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a larger size prefix is a garbled stream, not a response
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# A SASL session the broker limits (connections.max.reauth.ms) is replaced by a new connection once this
# share of its lifetime has passed, instead of logging in again on the same connection (KIP-368).
SESSION_RENEW_FRACTION = 0.8
CLOSE_SECONDS = 2.0  # how long a close waits for the TLS close_notify exchange
Address = tuple[str, int]


class ShareGroupOffsetsUnsupported(LagReadError):
    reason = "ShareGroupOffsetsUnsupported"


class ShareGroupReadError(LagReadError):
    """The share-group exchange failed (a coordinator error, a garbled answer). The same reason as any Kafka
    error, but its own type: the shared AdminClient had no part in it, so it is not retired for it
    (`kafka_lag.retire_client_after`)."""


class TlsAnswer(proto.ProtocolError):
    """A TLS listener's answer (an alert record) to a request sent without TLS."""


class CoordinatorMoved(ShareGroupReadError):
    """The cached coordinator answered NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE: it is looked up again."""


# --- pure -------------------------------------------------------------------------------------------------------


def bootstrap_addresses(servers: str) -> list[tuple[str, int]]:
    """`host:port` pairs of a bootstrap list (pure); `[v6::addr]:port` keeps its brackets off."""
    addresses: list[tuple[str, int]] = []
    for item in (s.strip() for s in servers.split(",")):
        if not item:
            continue
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ShareGroupReadError(f"bootstrap server {item!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    if not addresses:
        raise ShareGroupReadError("no bootstrap servers")
    return addresses


@dataclass(frozen=True)
class Security:
    """How the reader connects: its view of the AdminClient's librdkafka settings. No credential is in its
    repr, so neither a log line nor a traceback's locals can show one."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    cert_pem: str | None = field(default=None, repr=False)
    key_pem: str | None = field(default=None, repr=False)
    verify_hostname: bool = True

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def scrub(self, text: str) -> str:
        """`text` (a broker's error message, a library's) with the username and password masked."""
        for secret in (self.password, self.username):
            if secret:
                text = text.replace(secret, "***")
        return text


def security_from_settings(settings: Mapping[str, str]) -> Security:
    """The reader's `Security` from the librdkafka settings `kafka_lag.client_settings` resolved from the
    resource's Secrets (pure): one source of credentials for the AdminClient and this reader.

    The broker's host name is verified against its certificate unless the settings say
    `ssl.endpoint.identification.algorithm=none`, like librdkafka (whose default, `https`, verifies it).
    """
    protocol = settings.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ShareGroupReadError(f"security.protocol {protocol} is not one of {', '.join(PROTOCOLS)}")
    mechanism = None
    if protocol.startswith("SASL_"):
        mechanism = settings.get("sasl.mechanism", "GSSAPI").upper()  # librdkafka's default mechanism
        if mechanism not in SASL_MECHANISMS:
            raise ShareGroupReadError(f"SASL mechanism {mechanism}: the share-group lag reader speaks "
                                      f"{', '.join(SASL_MECHANISMS)}")
    return Security(
        protocol=protocol, mechanism=mechanism, username=settings.get("sasl.username", ""),
        password=settings.get("sasl.password", ""), ca_pem=settings.get("ssl.ca.pem"),
        cert_pem=settings.get("ssl.certificate.pem"), key_pem=settings.get("ssl.key.pem"),
        verify_hostname=settings.get("ssl.endpoint.identification.algorithm", "https").lower() != "none")


def share_sample(sampled_at: float, log_offsets: Mapping[PartitionKey, tuple[int, int]],
                 group: proto.ShareGroupOffsets | None) -> LagSample:
    """The LagSample of a share group (pure): `log_offsets` (log start, end) per partition of the topics,
    `group` the coordinator's answer (None: the group does not exist yet).

    Per partition, `committed` is set so that `end - committed` is the group's lag there:
    * v1 with a lag (>= 0): end - lag, the broker's count of records from the SPSO on that are not yet
      acknowledged (acquired ones included: they are not done until acknowledged).
    * v0, or a lag of -1: the SPSO itself. Records above it that are already acknowledged are then
      counted too (an overcount of up to the share group's in-flight window per partition).
    * no state for the partition (or no group): None, and the policy's offsetResetPolicy says whether
      the whole retained partition is lag, like a consumer group that never committed.
    """
    found: dict[PartitionKey, proto.SharePartitionOffsets] = {}
    if group is not None:
        for answer in group.partitions:
            if answer.error_code in (proto.TOPIC_AUTHORIZATION_FAILED, proto.GROUP_AUTHORIZATION_FAILED):
                raise KafkaAuthorizationFailed(
                    f"reading offsets of share group {group.group_id}: not authorized "
                    f"({proto.error_name(answer.error_code)}); grant the operator's Kafka principal Describe on "
                    "the topics and the group")
            if answer.error_code == proto.NONE and answer.start_offset >= 0:
                found[(answer.topic, answer.partition)] = answer
    partitions: list[PartitionOffsets] = []
    for (topic, partition), (start, end) in sorted(log_offsets.items()):
        offsets = found.get((topic, partition))
        committed: int | None = None
        if offsets is not None:
            if offsets.lag is not None and offsets.lag >= 0:
                committed = max(0, end - offsets.lag)
            else:
                committed = min(offsets.start_offset, end)
        partitions.append(PartitionOffsets(topic=topic, partition=partition, end_offset=end, committed=committed,
                                           start_offset=start))
    return LagSample(time=sampled_at, partitions=tuple(partitions), protocol="share")


def group_result(groups: Sequence[proto.ShareGroupOffsets], group_id: str) -> proto.ShareGroupOffsets | None:
    """The answer for `group_id` (pure); None when the group does not exist (no member ever joined)."""
    for group in groups:
        if group.group_id != group_id:
            continue
        if group.error_code == proto.GROUP_ID_NOT_FOUND:
            return None
        if group.error_code == proto.GROUP_AUTHORIZATION_FAILED:
            raise KafkaAuthorizationFailed(f"reading offsets of share group {group_id}: not authorized; grant the "
                                           "operator's Kafka principal Describe on the group")
        if group.error_code != proto.NONE:
            raise ShareGroupReadError(f"reading offsets of share group {group_id}: {proto.error_name(group.error_code)}"
                               + (f" ({group.error_message})" if group.error_message else ""))
        return group
    raise ShareGroupReadError(f"reading offsets of share group {group_id}: the coordinator's answer has no such group")


# --- I/O: TLS --------------------------------------------------------------------------------------------------


def tls_context(security: Security) -> ssl.SSLContext:
    """The TLS client context of `security`: the CA (else the system store), verification of the broker's
    certificate and host name, and the client certificate for mutual TLS."""
    try:
        context = ssl.create_default_context(cadata=security.ca_pem) if security.ca_pem else \
            ssl.create_default_context()
    except (ssl.SSLError, ValueError) as exc:
        raise SecretKeyUnreadable(f"the CA of spec.kafka.security.tls.caSecretRef does not load as PEM certificates "
                                  f"({_ssl_text(exc)})") from None
    context.check_hostname = security.verify_hostname
    if security.cert_pem is not None and security.key_pem is not None:
        try:
            _load_client_certificate(context, security.cert_pem, security.key_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise SecretKeyUnreadable(
                f"the client certificate and key of spec.kafka.security.tls (certSecretRef, keySecretRef) do not "
                f"load ({_ssl_text(exc)}); they must be the PEM certificate and its unencrypted PEM key") from None
    return context


def _load_client_certificate(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """`ssl` loads a certificate and key from a file only: they go to an anonymous in-memory file (Linux's
    memfd, never on a disk) or, where there is none, to a private temporary folder, gone after loading."""
    data = (cert_pem.rstrip("\n") + "\n" + key_pem).encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("lagpilot-client-tls", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as memory:
                memory.write(data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except FileNotFoundError:
            pass  # no /proc: the folder below
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="lagpilot-tls-") as folder:  # mode 0700
        path = Path(folder) / "client.pem"
        path.touch(mode=0o600)
        path.write_bytes(data)
        context.load_cert_chain(path)


def _ssl_text(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return str(exc.verify_message)
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


CONNECTING = "reading share-group offsets"


def _tls_failure(exc: ssl.SSLError, where: str) -> LagReadError:
    """The condition of a failed TLS handshake, named like the AdminClient's."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return kafka_lag.connection_failure(kafka_lag.REASON_TLS_VERIFICATION_FAILED, _ssl_text(exc), CONNECTING,
                                            where)
    return kafka_lag.connection_failure(kafka_lag.REASON_TLS_HANDSHAKE_FAILED, _ssl_text(exc), CONNECTING, where)


def _login_failure(where: str, detail: str) -> LagReadError:
    return kafka_lag.connection_failure(kafka_lag.REASON_AUTHENTICATION_FAILED, detail, CONNECTING, where)


# --- I/O: connections -------------------------------------------------------------------------------------------


class _Connection:
    """One broker connection: requests one at a time (the operator needs no pipelining). A request that does
    not finish (an error, a timeout's cancellation) leaves the stream out of step, so it closes the
    connection: it is never used again."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: Address) -> None:
        self._reader, self._writer, self.address = reader, writer, address
        self.where = f"{address[0]}:{address[1]}"
        self._next_id = 0
        self._lock = asyncio.Lock()
        self.broken = False
        self.renew_at: float | None = None  # time.monotonic() after which a new connection is opened instead
        self.versions: Mapping[int, tuple[int, int]] = {}

    def usable(self) -> bool:
        return (not self.broken and not self._writer.is_closing()
                and (self.renew_at is None or time.monotonic() < self.renew_at))

    async def request(self, api_key: int, version: int, body: bytes) -> bytes:
        async with self._lock:
            if self.broken:
                raise ConnectionResetError(f"the connection to {self.where} is closed")
            try:
                self._next_id += 1
                self._writer.write(proto.request_frame(api_key, version, self._next_id, CLIENT_ID, body))
                await self._writer.drain()
                prefix = await self._reader.readexactly(4)
                size = struct.unpack(">i", prefix)[0]
                if not 0 < size <= MAX_FRAME_BYTES:
                    if proto.looks_like_tls_record(prefix):
                        raise TlsAnswer(f"a TLS record from {self.where} where a Kafka response was expected")
                    raise proto.ProtocolError(f"response size {size} from {self.where}")
                frame = await self._reader.readexactly(size)
                return proto.response_body(frame, self._next_id,
                                           flexible_header=proto.response_header_is_flexible(api_key, version))
            except BaseException:
                self.abort()
                raise

    def version(self, api_key: int, name: str) -> int:
        version = proto.pick_version(api_key, self.versions.get(api_key))
        if version is None:
            broker = self.versions.get(api_key)
            needs = ("share-group lag needs Kafka 4.1+ with share groups enabled"
                     if api_key == proto.DESCRIBE_SHARE_GROUP_OFFSETS else "the broker is older than this client")
            raise ShareGroupOffsetsUnsupported(
                f"the broker at {self.where} does not speak {name} in a version this operator knows "
                f"(broker: {broker or 'not at all'}, operator: {proto.SUPPORTED[api_key]}); {needs}")
        return version

    def abort(self) -> None:
        """Close at once, without waiting for anything (usable in a cancelled task)."""
        self.broken = True
        self._writer.transport.abort()

    async def close(self) -> None:
        self.broken = True
        self._writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(CLOSE_SECONDS):
                await self._writer.wait_closed()
        if not self._writer.transport.is_closing():
            self._writer.transport.abort()


async def _open(address: Address, security: Security, context: ssl.SSLContext | None) -> _Connection:
    """A connection to `address`, its TLS handshake done, ApiVersions asked and, for SASL, logged in.

    OSError or IncompleteReadError: nobody (or not Kafka) answered. A TLS or login failure: the LagReadError
    that names it."""
    host, port = address
    try:
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
    except ssl.SSLError as exc:
        raise _tls_failure(exc, f"{host}:{port}") from exc
    except ConnectionResetError as exc:
        if context is None:
            raise
        # What a PLAINTEXT listener does with a TLS hello (librdkafka: "SSL handshake failed: Disconnected").
        raise kafka_lag.connection_failure(
            kafka_lag.REASON_TLS_HANDSHAKE_FAILED, "the broker closed the connection during the TLS handshake: a "
            "PLAINTEXT listener?", CONNECTING, f"{host}:{port}") from exc
    connection = _Connection(reader, writer, address)
    try:
        # An ApiVersions response always has response header v0, whatever the request's version.
        body = await connection.request(proto.API_VERSIONS, 3, proto.api_versions_request(*CLIENT_SOFTWARE))
        result = proto.parse_api_versions_response(body)
        if result.error_code != proto.NONE:
            raise ShareGroupReadError(f"ApiVersions at {host}:{port}: {proto.error_name(result.error_code)}")
        connection.versions = result.versions
        if security.sasl:
            await _login(connection, security)
    except ssl.SSLError as exc:
        # With TLS 1.3 the broker's refusal of the client certificate arrives after the client finished
        # its half of the handshake: on the first read.
        connection.abort()
        raise _tls_failure(exc, connection.where) from exc
    except TlsAnswer as exc:
        connection.abort()
        raise KafkaUnreachable(f"{CONNECTING}: the listener at {connection.where} speaks TLS, and "
                               f"spec.kafka.security.protocol is {security.protocol}; use SSL or SASL_SSL there, or "
                               "point bootstrapServers at a listener without TLS") from exc
    except BaseException:
        connection.abort()
        raise
    log.debug("share-group reader connected to %s (%s%s)", connection.where, security.protocol,
              f", {security.mechanism}" if security.mechanism else "")
    return connection


async def _login(connection: _Connection, security: Security) -> None:
    """SaslHandshake v1, then the mechanism's tokens in SaslAuthenticate requests (KIP-152)."""
    mechanism = security.mechanism or ""
    handshake_version = connection.version(proto.SASL_HANDSHAKE, "SaslHandshake")
    handshake = proto.parse_sasl_handshake_response(await connection.request(
        proto.SASL_HANDSHAKE, handshake_version, proto.sasl_handshake_request(mechanism)))
    if handshake.error_code != proto.NONE:
        offered = ", ".join(handshake.mechanisms) or "none: not a SASL listener?"
        raise _login_failure(connection.where, f"{proto.error_name(handshake.error_code)}: SASL mechanism "
                                               f"{mechanism} is not enabled on this listener (it offers {offered})")
    version = connection.version(proto.SASL_AUTHENTICATE, "SaslAuthenticate")

    async def exchange(token: bytes) -> bytes:
        answer = proto.parse_sasl_authenticate_response(await connection.request(
            proto.SASL_AUTHENTICATE, version, proto.sasl_authenticate_request(token, version)), version)
        if answer.error_code != proto.NONE:
            said = security.scrub(answer.error_message) if answer.error_message else ""
            raise _login_failure(connection.where, f"{proto.error_name(answer.error_code)}"
                                                   + (f": {said}" if said else ""))
        if answer.session_lifetime_ms > 0:
            connection.renew_at = time.monotonic() + answer.session_lifetime_ms / 1000 * SESSION_RENEW_FRACTION
        return answer.auth_bytes

    if mechanism == "PLAIN":
        await exchange(proto.sasl_plain_token(security.username, security.password))
        return
    # Imported here: scramp and its ASN.1 library took ~0.1 s of CPU at every operator start, and only
    # share groups on SCRAM clusters use it.
    import scramp

    try:
        client = scramp.ScramClient([mechanism], security.username, security.password)
        client.set_server_first((await exchange(client.get_client_first().encode())).decode())
        client.set_server_final((await exchange(client.get_client_final().encode())).decode())
    except (scramp.ScramException, UnicodeDecodeError) as exc:
        # The broker's SCRAM answer did not verify (its signature, a nonce that is not ours), or the
        # credentials cannot be SCRAM text. The library's words only: no credential is in them, and they are
        # scrubbed all the same.
        said = security.scrub(str(exc.args[0]) if exc.args else type(exc).__name__)
        raise _login_failure(connection.where, f"SCRAM exchange: {said}") from None


class ShareCluster:
    """Connections to one cluster with one set of credentials: one per broker, reused across polls, and each
    group's coordinator remembered. Use it in one event loop; `close` (or `async with`) ends it."""

    def __init__(self, settings: Mapping[str, str]) -> None:
        self.bootstrap = settings["bootstrap.servers"]
        self._addresses = bootstrap_addresses(self.bootstrap)
        self._security = security_from_settings(settings)
        self._context: ssl.SSLContext | None = None
        self._connections: dict[Address, _Connection] = {}
        self._opening: dict[Address, asyncio.Lock] = {}
        self._coordinators: dict[str, Address] = {}
        self._closed = False

    @property
    def open_connections(self) -> int:
        return sum(1 for connection in self._connections.values() if connection.usable())

    def coordinator_of(self, group_id: str) -> Address | None:
        return self._coordinators.get(group_id)

    def forget_group(self, group_id: str) -> None:
        self._coordinators.pop(group_id, None)

    async def __aenter__(self) -> ShareCluster:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        self._coordinators.clear()
        for connection in connections:
            await connection.close()

    def _tls(self) -> ssl.SSLContext | None:
        if not self._security.tls:
            return None
        if self._context is None:
            self._context = tls_context(self._security)
        return self._context

    def _drop(self, connection: _Connection) -> None:
        """A connection broke: forget it and the coordinators found at its address."""
        connection.abort()
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
        for group_id in [g for g, address in self._coordinators.items() if address == connection.address]:
            del self._coordinators[group_id]

    async def _connection(self, address: Address) -> _Connection:
        """The open connection to `address`; a new one if there is none, it broke, or its SASL session ends."""
        async with self._opening.setdefault(address, asyncio.Lock()):
            if self._closed:
                raise ShareGroupReadError(f"the share-group reader of {self.bootstrap} is closed")
            current = self._connections.pop(address, None)
            if current is not None:
                if current.usable():
                    self._connections[address] = current
                    return current
                await current.close()
            connection = await _open(address, self._security, self._tls())
            if self._closed:  # closed while this one was opening: do not keep it
                connection.abort()
                raise ShareGroupReadError(f"the share-group reader of {self.bootstrap} is closed")
            self._connections[address] = connection
            return connection

    async def _any_connection(self) -> _Connection:
        """A connection to any broker (FindCoordinator may ask any): an open one, else a bootstrap server."""
        for connection in self._connections.values():
            if connection.usable():
                return connection
        failures: list[str] = []
        for host, port in self._addresses:
            try:
                return await self._connection((host, port))
            except (OSError, asyncio.IncompleteReadError) as exc:
                failures.append(f"{host}:{port}: {str(exc) or type(exc).__name__}")
        raise KafkaUnreachable(f"no bootstrap server answered ({'; '.join(failures)}); check bootstrapServers and "
                               "the network path from the operator")

    async def _request(self, connection: _Connection, api_key: int, version: int, body: bytes) -> bytes:
        try:
            return await connection.request(api_key, version, body)
        except (OSError, asyncio.IncompleteReadError, proto.ProtocolError):
            self._drop(connection)
            raise

    async def _coordinator(self, group_id: str) -> _Connection:
        address = self._coordinators.get(group_id)
        if address is None:
            connection = await self._any_connection()
            body = await self._request(
                connection, proto.FIND_COORDINATOR, connection.version(proto.FIND_COORDINATOR, "FindCoordinator"),
                proto.find_coordinator_request(proto.COORDINATOR_KEY_GROUP, [group_id]))
            found = [c for c in proto.parse_find_coordinator_response(body) if c.key == group_id]
            if not found or found[0].error_code != proto.NONE:
                why = proto.error_name(found[0].error_code) if found else "no answer for the group"
                # COORDINATOR_NOT_AVAILABLE and the like pass: the next poll asks again.
                raise ShareGroupReadError(f"finding the coordinator of share group {group_id}: {why}")
            address = self._coordinators[group_id] = (found[0].host, found[0].port)
        try:
            return await self._connection(address)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._coordinators.pop(group_id, None)
            raise KafkaUnreachable(f"the coordinator of share group {group_id} at {address[0]}:{address[1]} did not "
                                   f"answer ({str(exc) or type(exc).__name__}); the operator must reach every broker's "
                                   "advertised listener") from exc

    async def _describe_once(self, group_id: str, topics: Mapping[str, Sequence[int]],
                             ) -> tuple[int, proto.ShareGroupOffsets | None]:
        connection = await self._coordinator(group_id)
        version = connection.version(proto.DESCRIBE_SHARE_GROUP_OFFSETS, "DescribeShareGroupOffsets")
        body = await self._request(connection, proto.DESCRIBE_SHARE_GROUP_OFFSETS, version,
                                   proto.describe_share_group_offsets_request(group_id, topics))
        groups = proto.parse_describe_share_group_offsets_response(body, version)
        for group in groups:
            if group.group_id == group_id and group.error_code in (proto.NOT_COORDINATOR,
                                                                   proto.COORDINATOR_NOT_AVAILABLE):
                self.forget_group(group_id)
                raise CoordinatorMoved(f"reading offsets of share group {group_id}: "
                                       f"{proto.error_name(group.error_code)} from {connection.where}; its "
                                       "coordinator is looked up again")
        return version, group_result(groups, group_id)

    async def describe(self, group_id: str, topics: Mapping[str, Sequence[int]],
                       ) -> tuple[int, proto.ShareGroupOffsets | None]:
        """(version used, the group's offsets or None if it does not exist), from its group coordinator.

        Once more at once, on new connections, when a kept connection broke or the coordinator moved."""
        return await _twice(lambda: self._describe_once(group_id, topics))


async def _twice(attempt: Callable[[], Awaitable[tuple[int, proto.ShareGroupOffsets | None]]],
                 ) -> tuple[int, proto.ShareGroupOffsets | None]:
    try:
        return await attempt()
    except (OSError, asyncio.IncompleteReadError, CoordinatorMoved) as exc:
        log.debug("share-group offsets: retrying after %s: %s", type(exc).__name__, exc)
    return await attempt()


class ShareLagClients:
    """One `ShareCluster` per cluster and credentials (the AdminClientPool's key), shared by the resources that
    read share-group lag from it. A resource leases its cluster with `get`; when it moves to other settings
    or goes (`release`), a cluster nobody uses is closed, and a group nobody reads any more is forgotten.
    Bounded: at most one cluster per resource, one connection per broker of each."""

    def __init__(self) -> None:
        self._clusters: dict[str, ShareCluster] = {}
        self._uses: dict[Hashable, tuple[str, str]] = {}  # owner -> (cluster key, group id)

    async def get(self, settings: Mapping[str, str], owner: Hashable, group_id: str) -> ShareCluster:
        key = kafka_lag.settings_fingerprint(settings)
        cluster = self._clusters.get(key)
        if cluster is None:
            cluster = self._clusters[key] = ShareCluster(settings)
        previous, self._uses[owner] = self._uses.get(owner), (key, group_id)
        if previous is not None and previous != (key, group_id):
            await self._retire(previous)
        return cluster

    async def release(self, owner: Hashable) -> None:
        """`owner` stopped reading share-group lag (deleted, a consumer group now, or the operator stops)."""
        previous = self._uses.pop(owner, None)
        if previous is not None:
            await self._retire(previous)

    async def close(self) -> None:
        clusters = list(self._clusters.values())
        self._clusters.clear()
        self._uses.clear()
        for cluster in clusters:
            await cluster.close()

    def __len__(self) -> int:
        return len(self._clusters)

    def open_connections(self) -> int:
        """Broker connections open across every cluster (at most one per broker of each)."""
        return sum(cluster.open_connections for cluster in self._clusters.values())

    async def _retire(self, use: tuple[str, str]) -> None:
        key, group_id = use
        if use in self._uses.values():
            return
        cluster = self._clusters.get(key)
        if cluster is None:
            return
        if any(used_key == key for used_key, _ in self._uses.values()):
            cluster.forget_group(group_id)
            return
        del self._clusters[key]
        await cluster.close()


async def read_share_lag(admin: AdminClient, settings: Mapping[str, str], group_id: str, topics: list[str],
                         request_timeout: float = 10.0, cluster: ShareCluster | None = None) -> LagSample:
    """One sample of a share group's lag: log offsets from the AdminClient, the group's from its coordinator,
    through `cluster`'s kept connections (None: connections of this call only).

    `request_timeout` bounds each of the two reads (the AdminClient's calls, then the coordinator's)."""
    bootstrap = settings["bootstrap.servers"]
    sampled_at = time.time()
    log_offsets = await asyncio.to_thread(kafka_lag.read_log_offsets, admin, bootstrap, topics, request_timeout)
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(log_offsets):
        by_topic.setdefault(topic, []).append(partition)
    try:
        async with asyncio.timeout(request_timeout):
            if cluster is None:
                async with ShareCluster(settings) as once:
                    _, group = await once.describe(group_id, by_topic)
            else:
                _, group = await cluster.describe(group_id, by_topic)
    except TimeoutError as exc:
        raise KafkaUnreachable(f"reading offsets of share group {group_id}: Kafka at {bootstrap} did not answer "
                               f"within {request_timeout:g} s") from exc
    except (proto.ProtocolError, asyncio.IncompleteReadError, OSError) as exc:
        raise ShareGroupReadError(f"reading offsets of share group {group_id}: {type(exc).__name__}: {exc}") from exc
    return share_sample(sampled_at, log_offsets, group)

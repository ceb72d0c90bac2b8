"""The few Kafka wire-protocol messages the operator speaks itself (pure: bytes in, bytes out, no I/O).

Why: reading a share group's lag (KIP-932) needs DescribeShareGroupOffsets (API key 90), which no
maintained Python client offers as of this writing: confluent-kafka 2.16 has no share-group admin call,
kafka-python 3.0.12 and aiokafka 0.14 do not implement the request, and kio 0.6.5 has its message types
but no client (connections, coordinator lookup, version negotiation) and brings a native extension.
A few messages are enough, so they are encoded here, field by field in the order of Apache Kafka's
message schemas (clients/src/main/resources/common/message/*.json):

* ApiVersions (18) v3: which versions of each API the broker speaks.
* FindCoordinator (10) v4-v6: the group coordinator of a group. A share group's offsets are answered by
  its *group* coordinator (key type 0, the group id), like a consumer group's; key type 2 ("share")
  finds the share-state coordinator of one share-partition ("group:topicId:partition"), which only
  brokers talk to.
* DescribeShareGroupOffsets (90) v0-v1: per partition the share-partition start offset (SPSO) and, from
  v1 (KIP-1226), the broker's own lag of the share-partition.

* SaslHandshake (17) v1 and SaslAuthenticate (36) v0-v2 (KIP-152): the SASL login of a SASL_PLAINTEXT or
  SASL_SSL listener. The handshake names the mechanism; each SaslAuthenticate then carries one token of
  the mechanism's exchange (PLAIN: one token, RFC 4616; SCRAM: two rounds, RFC 5802, computed by the
  `scramp` library in `share_lag`).

ApiVersions v3, FindCoordinator v4+, DescribeShareGroupOffsets and SaslAuthenticate v2 are "flexible"
versions: compact strings and arrays (unsigned varint length + 1, 0 for null), a tagged-field section
after every structure, request header v2 and response header v1, except that an ApiVersions response
always has header v0 (so a client can parse it before it knows versions). SaslHandshake (every version)
and SaslAuthenticate v0-v1 are not: int16-length strings, int32-length arrays and bytes, request header
v1 and response header v0.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

API_VERSIONS = 18
FIND_COORDINATOR = 10
DESCRIBE_SHARE_GROUP_OFFSETS = 90
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36

# The versions this module encodes and decodes, per API (inclusive).
SUPPORTED: dict[int, tuple[int, int]] = {
    API_VERSIONS: (3, 3),
    FIND_COORDINATOR: (4, 6),
    DESCRIBE_SHARE_GROUP_OFFSETS: (0, 1),
    # v0 sends the mechanism's tokens as raw frames without a Kafka header; v1 wraps them in SaslAuthenticate.
    SASL_HANDSHAKE: (1, 1),
    SASL_AUTHENTICATE: (0, 2),
}
# The first flexible version of each API (None: no version of it is).
_FLEXIBLE_FROM: dict[int, int | None] = {
    API_VERSIONS: 3, FIND_COORDINATOR: 3, DESCRIBE_SHARE_GROUP_OFFSETS: 0, SASL_HANDSHAKE: None, SASL_AUTHENTICATE: 2,
}

COORDINATOR_KEY_GROUP = 0

# Error codes (org.apache.kafka.common.protocol.Errors) the operator tells apart.
NONE = 0
UNKNOWN_TOPIC_OR_PARTITION = 3
COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
TOPIC_AUTHORIZATION_FAILED = 29
GROUP_AUTHORIZATION_FAILED = 30
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
UNSUPPORTED_VERSION = 35
SASL_AUTHENTICATION_FAILED = 58
GROUP_ID_NOT_FOUND = 69
ERROR_NAMES = {
    -1: "UNKNOWN_SERVER_ERROR", UNKNOWN_TOPIC_OR_PARTITION: "UNKNOWN_TOPIC_OR_PARTITION",
    COORDINATOR_LOAD_IN_PROGRESS: "COORDINATOR_LOAD_IN_PROGRESS",
    COORDINATOR_NOT_AVAILABLE: "COORDINATOR_NOT_AVAILABLE", NOT_COORDINATOR: "NOT_COORDINATOR",
    TOPIC_AUTHORIZATION_FAILED: "TOPIC_AUTHORIZATION_FAILED",
    GROUP_AUTHORIZATION_FAILED: "GROUP_AUTHORIZATION_FAILED", UNSUPPORTED_VERSION: "UNSUPPORTED_VERSION",
    42: "INVALID_REQUEST", GROUP_ID_NOT_FOUND: "GROUP_ID_NOT_FOUND",
    UNSUPPORTED_SASL_MECHANISM: "UNSUPPORTED_SASL_MECHANISM", ILLEGAL_SASL_STATE: "ILLEGAL_SASL_STATE",
    SASL_AUTHENTICATION_FAILED: "SASL_AUTHENTICATION_FAILED",
}


def error_name(code: int) -> str:
    return ERROR_NAMES.get(code, f"error code {code}")


class ProtocolError(Exception):
    """A frame that does not parse as the message it should be (truncated, bad length, wrong id)."""


# --- primitives -------------------------------------------------------------------------------------------------


class Writer:
    def __init__(self) -> None:
        self._buf = bytearray()

    def int8(self, value: int) -> Writer:
        self._buf += struct.pack(">b", value)
        return self

    def int16(self, value: int) -> Writer:
        self._buf += struct.pack(">h", value)
        return self

    def int32(self, value: int) -> Writer:
        self._buf += struct.pack(">i", value)
        return self

    def uvarint(self, value: int) -> Writer:
        while value >= 0x80:
            self._buf.append((value & 0x7F) | 0x80)
            value >>= 7
        self._buf.append(value)
        return self

    def string(self, value: str) -> Writer:
        """The classic (int16-length) non-nullable string of non-flexible versions."""
        return self.nullable_string(value)

    def nullable_string(self, value: str | None) -> Writer:
        """The classic (int16-length) string, used by the request header's client id."""
        if value is None:
            return self.int16(-1)
        data = value.encode()
        self.int16(len(data))
        self._buf += data
        return self

    def compact_string(self, value: str | None) -> Writer:
        if value is None:
            return self.uvarint(0)
        data = value.encode()
        self.uvarint(len(data) + 1)
        self._buf += data
        return self

    def compact_array_length(self, length: int | None) -> Writer:
        return self.uvarint(0 if length is None else length + 1)

    def int32_bytes(self, value: bytes) -> Writer:
        """The classic (int32-length) bytes field of non-flexible versions."""
        self.int32(len(value))
        self._buf += value
        return self

    def compact_bytes(self, value: bytes) -> Writer:
        self.uvarint(len(value) + 1)
        self._buf += value
        return self

    def no_tagged_fields(self) -> Writer:
        return self.uvarint(0)

    def bytes(self) -> bytes:
        return bytes(self._buf)


class Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, count: int) -> bytes:
        if count < 0 or self._pos + count > len(self._data):
            raise ProtocolError(f"frame truncated: wanted {count} bytes at {self._pos} of {len(self._data)}")
        chunk = self._data[self._pos:self._pos + count]
        self._pos += count
        return chunk

    def int8(self) -> int:
        return int(struct.unpack(">b", self._take(1))[0])

    def int16(self) -> int:
        return int(struct.unpack(">h", self._take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def int64(self) -> int:
        return int(struct.unpack(">q", self._take(8))[0])

    def uvarint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self._take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 28:
                raise ProtocolError("unsigned varint longer than 5 bytes")

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(bytes=self._take(16))

    def compact_nullable_string(self) -> str | None:
        length = self.uvarint()
        return None if length == 0 else self._take(length - 1).decode()

    def compact_string(self) -> str:
        value = self.compact_nullable_string()
        if value is None:
            raise ProtocolError("null where the schema has a non-nullable string")
        return value

    def nullable_string(self) -> str | None:
        """The classic (int16-length) string; -1 is null."""
        length = self.int16()
        return None if length == -1 else self._take(length).decode()

    def string(self) -> str:
        value = self.nullable_string()
        if value is None:
            raise ProtocolError("null where the schema has a non-nullable string")
        return value

    def array_length(self) -> int:
        """The classic (int32) array length; -1 (null) where the schema allows none is an error."""
        length = self.int32()
        if length < 0:
            raise ProtocolError("null where the schema has a non-nullable array")
        return length

    def int32_bytes(self) -> bytes:
        length = self.int32()
        if length < 0:
            raise ProtocolError("null where the schema has non-nullable bytes")
        return self._take(length)

    def compact_bytes(self) -> bytes:
        length = self.uvarint()
        if length == 0:
            raise ProtocolError("null where the schema has non-nullable bytes")
        return self._take(length - 1)

    def compact_array_length(self) -> int:
        length = self.uvarint()
        if length == 0:
            raise ProtocolError("null where the schema has a non-nullable array")
        return length - 1

    def skip_tagged_fields(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self._take(self.uvarint())

    def rest(self) -> bytes:
        return self._data[self._pos:]

    def done(self) -> None:
        if self._pos != len(self._data):
            raise ProtocolError(f"{len(self._data) - self._pos} bytes left after the message")


# --- framing ----------------------------------------------------------------------------------------------------


def is_flexible(api_key: int, api_version: int) -> bool:
    """Whether `api_version` of `api_key` is a flexible version (request header v2, response header v1)."""
    first = _FLEXIBLE_FROM[api_key]
    return first is not None and api_version >= first


def response_header_is_flexible(api_key: int, api_version: int) -> bool:
    """Response header v1 or v0: an ApiVersions response always has v0, whatever the request's version."""
    return api_key != API_VERSIONS and is_flexible(api_key, api_version)


def request_frame(api_key: int, api_version: int, correlation_id: int, client_id: str | None, body: bytes) -> bytes:
    """A size-prefixed request: header v2 for a flexible version, else header v1 (without tagged fields)."""
    header = Writer().int16(api_key).int16(api_version).int32(correlation_id).nullable_string(client_id)
    if is_flexible(api_key, api_version):
        header.no_tagged_fields()
    head = header.bytes()
    return struct.pack(">i", len(head) + len(body)) + head + body


def response_body(frame: bytes, correlation_id: int, *, flexible_header: bool) -> bytes:
    """The body of a response frame (without its size prefix), after checking the correlation id.

    `flexible_header`: header v1 (correlation id + tagged fields); False for header v0, which
    ApiVersions responses and the responses of non-flexible versions use (`response_header_is_flexible`).
    """
    reader = Reader(frame)
    got = reader.int32()
    if got != correlation_id:
        raise ProtocolError(f"response to request {got} where {correlation_id} was expected")
    if flexible_header:
        reader.skip_tagged_fields()
    return reader.rest()


def looks_like_tls_record(prefix: bytes) -> bool:
    """Whether the 4 bytes where a response's size should be start a TLS record (a content type 20-23 then
    major version 3): what a TLS listener answers a request sent in plain text with (pure)."""
    return len(prefix) >= 2 and 20 <= prefix[0] <= 23 and prefix[1] == 3


def pick_version(api_key: int, broker: tuple[int, int] | None) -> int | None:
    """The highest version both this module and the broker speak, or None if there is none."""
    ours = SUPPORTED[api_key]
    if broker is None:
        return None
    low, high = max(ours[0], broker[0]), min(ours[1], broker[1])
    return high if low <= high else None


# --- ApiVersions ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiVersionsResult:
    error_code: int
    versions: Mapping[int, tuple[int, int]]  # api key -> (min, max)


def api_versions_request(client_name: str, client_version: str) -> bytes:
    """ApiVersionsRequest v3: ClientSoftwareName, ClientSoftwareVersion (the broker checks both are
    `[a-zA-Z0-9](?:[a-zA-Z0-9\\-.]*[a-zA-Z0-9])?`)."""
    return Writer().compact_string(client_name).compact_string(client_version).no_tagged_fields().bytes()


def parse_api_versions_response(body: bytes) -> ApiVersionsResult:
    """ApiVersionsResponse v3: ErrorCode, ApiKeys[ApiKey, MinVersion, MaxVersion], ThrottleTimeMs, tags.

    The feature lists live in tagged fields, skipped here.
    """
    reader = Reader(body)
    error_code = reader.int16()
    versions: dict[int, tuple[int, int]] = {}
    for _ in range(reader.compact_array_length()):
        key, low, high = reader.int16(), reader.int16(), reader.int16()
        reader.skip_tagged_fields()
        versions[key] = (low, high)
    reader.int32()  # ThrottleTimeMs
    reader.skip_tagged_fields()
    reader.done()
    return ApiVersionsResult(error_code, versions)


# --- FindCoordinator --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coordinator:
    key: str
    node_id: int
    host: str
    port: int
    error_code: int
    error_message: str | None


def find_coordinator_request(key_type: int, keys: Sequence[str]) -> bytes:
    """FindCoordinatorRequest v4-v6 (same layout): KeyType, CoordinatorKeys."""
    writer = Writer().int8(key_type).compact_array_length(len(keys))
    for key in keys:
        writer.compact_string(key)
    return writer.no_tagged_fields().bytes()


def parse_find_coordinator_response(body: bytes) -> list[Coordinator]:
    """FindCoordinatorResponse v4-v6: ThrottleTimeMs, Coordinators[Key, NodeId, Host, Port, ErrorCode,
    ErrorMessage]."""
    reader = Reader(body)
    reader.int32()  # ThrottleTimeMs
    coordinators: list[Coordinator] = []
    for _ in range(reader.compact_array_length()):
        key, node_id, host, port = reader.compact_string(), reader.int32(), reader.compact_string(), reader.int32()
        error_code, error_message = reader.int16(), reader.compact_nullable_string()
        reader.skip_tagged_fields()
        coordinators.append(Coordinator(key, node_id, host, port, error_code, error_message))
    reader.skip_tagged_fields()
    reader.done()
    return coordinators


# --- DescribeShareGroupOffsets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharePartitionOffsets:
    topic: str
    partition: int
    start_offset: int          # share-partition start offset (SPSO); -1: the group has no state for it
    leader_epoch: int
    lag: int | None            # v1+: the broker's lag (-1 when it cannot tell); None in v0
    error_code: int
    error_message: str | None


@dataclass(frozen=True)
class ShareGroupOffsets:
    group_id: str
    error_code: int
    error_message: str | None
    partitions: tuple[SharePartitionOffsets, ...]


def describe_share_group_offsets_request(group_id: str, topics: Mapping[str, Sequence[int]] | None) -> bytes:
    """DescribeShareGroupOffsetsRequest v0-v1 (same layout): Groups[GroupId, Topics[TopicName, Partitions]].

    `topics` None asks for every topic-partition the group has state for (a null Topics array).
    """
    writer = Writer().compact_array_length(1).compact_string(group_id)
    if topics is None:
        writer.compact_array_length(None)
    else:
        writer.compact_array_length(len(topics))
        for topic, partitions in topics.items():
            writer.compact_string(topic).compact_array_length(len(partitions))
            for partition in partitions:
                writer.int32(partition)
            writer.no_tagged_fields()
    return writer.no_tagged_fields().no_tagged_fields().bytes()


def parse_describe_share_group_offsets_response(body: bytes, version: int) -> list[ShareGroupOffsets]:
    """DescribeShareGroupOffsetsResponse v0-v1: ThrottleTimeMs, Groups[GroupId, Topics[TopicName, TopicId,
    Partitions[PartitionIndex, StartOffset, LeaderEpoch, Lag (v1+), ErrorCode, ErrorMessage]], ErrorCode,
    ErrorMessage]."""
    reader = Reader(body)
    reader.int32()  # ThrottleTimeMs
    groups: list[ShareGroupOffsets] = []
    for _ in range(reader.compact_array_length()):
        group_id = reader.compact_string()
        partitions: list[SharePartitionOffsets] = []
        for _ in range(reader.compact_array_length()):
            topic = reader.compact_string()
            reader.uuid()  # TopicId
            for _ in range(reader.compact_array_length()):
                index, start, epoch = reader.int32(), reader.int64(), reader.int32()
                lag = reader.int64() if version >= 1 else None
                error_code, error_message = reader.int16(), reader.compact_nullable_string()
                reader.skip_tagged_fields()
                partitions.append(SharePartitionOffsets(topic, index, start, epoch, lag, error_code, error_message))
            reader.skip_tagged_fields()
        error_code, error_message = reader.int16(), reader.compact_nullable_string()
        reader.skip_tagged_fields()
        groups.append(ShareGroupOffsets(group_id, error_code, error_message, tuple(partitions)))
    reader.skip_tagged_fields()
    reader.done()
    return groups


# --- SaslHandshake, SaslAuthenticate (KIP-152) ------------------------------------------------------------------


@dataclass(frozen=True)
class SaslHandshakeResult:
    error_code: int
    mechanisms: tuple[str, ...]  # what the listener has enabled (the broker lists them on every answer)


def sasl_handshake_request(mechanism: str) -> bytes:
    """SaslHandshakeRequest v0-v1 (same layout, not flexible): Mechanism."""
    return Writer().string(mechanism).bytes()


def parse_sasl_handshake_response(body: bytes) -> SaslHandshakeResult:
    """SaslHandshakeResponse v0-v1: ErrorCode, Mechanisms (an int32-length array of int16-length strings)."""
    reader = Reader(body)
    error_code = reader.int16()
    mechanisms = tuple(reader.string() for _ in range(reader.array_length()))
    reader.done()
    return SaslHandshakeResult(error_code, mechanisms)


@dataclass(frozen=True)
class SaslAuthenticateResult:
    error_code: int
    error_message: str | None
    auth_bytes: bytes = field(repr=False)  # the mechanism's answer (SCRAM: server-first or server-final)
    session_lifetime_ms: int  # v1+: after how long the broker closes the connection unless it logs in again; 0: never


def sasl_authenticate_request(auth_bytes: bytes, version: int) -> bytes:
    """SaslAuthenticateRequest v0-v2: AuthBytes (int32 length in v0-v1, compact + tags in v2)."""
    if is_flexible(SASL_AUTHENTICATE, version):
        return Writer().compact_bytes(auth_bytes).no_tagged_fields().bytes()
    return Writer().int32_bytes(auth_bytes).bytes()


def parse_sasl_authenticate_response(body: bytes, version: int) -> SaslAuthenticateResult:
    """SaslAuthenticateResponse v0-v2: ErrorCode, ErrorMessage, AuthBytes, SessionLifetimeMs (v1+)."""
    reader = Reader(body)
    error_code = reader.int16()
    if is_flexible(SASL_AUTHENTICATE, version):
        error_message, auth_bytes = reader.compact_nullable_string(), reader.compact_bytes()
    else:
        error_message, auth_bytes = reader.nullable_string(), reader.int32_bytes()
    lifetime = reader.int64() if version >= 1 else 0
    if is_flexible(SASL_AUTHENTICATE, version):
        reader.skip_tagged_fields()
    reader.done()
    return SaslAuthenticateResult(error_code, error_message, auth_bytes, lifetime)


def sasl_plain_token(username: str, password: str) -> bytes:
    """The one message of SASL PLAIN (RFC 4616): authzid (empty), NUL, authcid, NUL, password, UTF-8."""
    return b"\x00" + username.encode() + b"\x00" + password.encode()

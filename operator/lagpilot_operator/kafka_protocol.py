"""The few Kafka wire-protocol messages the operator speaks itself (pure: bytes in, bytes out, no I/O).

Why: reading a share group's lag (KIP-932) needs DescribeShareGroupOffsets (API key 90), which no
maintained Python client offers as of this writing: confluent-kafka 2.16 has no share-group admin call,
kafka-python 3.0.12 and aiokafka 0.14 do not implement the request, and kio 0.6.5 has its message types
but no client (connections, coordinator lookup, version negotiation) and brings a native extension.
Four messages are enough, so they are encoded here, field by field in the order of Apache Kafka's
message schemas (clients/src/main/resources/common/message/*.json):

* ApiVersions (18) v3: which versions of each API the broker speaks.
* FindCoordinator (10) v4-v6: the group coordinator of a group. A share group's offsets are answered by
  its *group* coordinator (key type 0, the group id), like a consumer group's; key type 2 ("share")
  finds the share-state coordinator of one share-partition ("group:topicId:partition"), which only
  brokers talk to.
* DescribeShareGroupOffsets (90) v0-v1: per partition the share-partition start offset (SPSO) and, from
  v1 (KIP-1226), the broker's own lag of the share-partition.

All of them are "flexible" versions: compact strings and arrays (unsigned varint length + 1, 0 for
null), a tagged-field section after every structure, request header v2 and response header v1, except
that an ApiVersions response always has header v0 (so a client can parse it before it knows versions).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

API_VERSIONS = 18
FIND_COORDINATOR = 10
DESCRIBE_SHARE_GROUP_OFFSETS = 90

# The versions this module encodes and decodes, per API (inclusive).
SUPPORTED: dict[int, tuple[int, int]] = {
    API_VERSIONS: (3, 3),
    FIND_COORDINATOR: (4, 6),
    DESCRIBE_SHARE_GROUP_OFFSETS: (0, 1),
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
UNSUPPORTED_VERSION = 35
GROUP_ID_NOT_FOUND = 69
ERROR_NAMES = {
    -1: "UNKNOWN_SERVER_ERROR", UNKNOWN_TOPIC_OR_PARTITION: "UNKNOWN_TOPIC_OR_PARTITION",
    COORDINATOR_LOAD_IN_PROGRESS: "COORDINATOR_LOAD_IN_PROGRESS",
    COORDINATOR_NOT_AVAILABLE: "COORDINATOR_NOT_AVAILABLE", NOT_COORDINATOR: "NOT_COORDINATOR",
    TOPIC_AUTHORIZATION_FAILED: "TOPIC_AUTHORIZATION_FAILED",
    GROUP_AUTHORIZATION_FAILED: "GROUP_AUTHORIZATION_FAILED", UNSUPPORTED_VERSION: "UNSUPPORTED_VERSION",
    42: "INVALID_REQUEST", GROUP_ID_NOT_FOUND: "GROUP_ID_NOT_FOUND",
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


def request_frame(api_key: int, api_version: int, correlation_id: int, client_id: str | None, body: bytes) -> bytes:
    """A size-prefixed request with header v2 (every request here is a flexible version)."""
    header = (Writer().int16(api_key).int16(api_version).int32(correlation_id).nullable_string(client_id)
              .no_tagged_fields().bytes())
    return struct.pack(">i", len(header) + len(body)) + header + body


def response_body(frame: bytes, correlation_id: int, *, flexible_header: bool) -> bytes:
    """The body of a response frame (without its size prefix), after checking the correlation id.

    `flexible_header`: header v1 (correlation id + tagged fields); False for header v0, which
    ApiVersions responses always use.
    """
    reader = Reader(frame)
    got = reader.int32()
    if got != correlation_id:
        raise ProtocolError(f"response to request {got} where {correlation_id} was expected")
    if flexible_header:
        reader.skip_tagged_fields()
    return reader.rest()


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

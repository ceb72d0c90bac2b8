"""kafka_protocol byte for byte: every expected frame below is spelled out field by field in the order of
Apache Kafka's message schemas (clients/src/main/resources/common/message/<Name>.json), independently of
the module's Writer, so a field out of order, a missing tagged-field section or a classic (int16) length
where a compact (varint) one belongs fails here."""

from __future__ import annotations

import struct
import uuid

import pytest

from lagpilot_operator import kafka_protocol as proto


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def cstr(s: str | None) -> bytes:
    """COMPACT_(NULLABLE_)STRING: unsigned varint length + 1 (0: null), then UTF-8 (lengths < 127 here)."""
    return b"\x00" if s is None else bytes([len(s.encode()) + 1]) + s.encode()


def carr(n: int | None) -> bytes:
    return b"\x00" if n is None else bytes([n + 1])


TAGS = b"\x00"  # an empty tagged-field section


def test_request_header_v2_and_size_prefix() -> None:
    frame = proto.request_frame(90, 1, 7, "lagpilot-operator", b"BODY")
    header = i16(90) + i16(1) + i32(7) + i16(17) + b"lagpilot-operator" + TAGS  # client id: classic int16 string
    assert frame == i32(len(header) + 4) + header + b"BODY"


def test_api_versions_request_v3() -> None:
    # ClientSoftwareName, ClientSoftwareVersion, tags
    assert proto.api_versions_request("lagpilot", "0.1.0") == cstr("lagpilot") + cstr("0.1.0") + TAGS


def test_api_versions_response_v3_skips_the_tagged_feature_lists() -> None:
    body = (i16(0) + carr(2)                                  # ErrorCode, ApiKeys
            + i16(10) + i16(0) + i16(6) + TAGS                # FindCoordinator 0-6
            + i16(90) + i16(0) + i16(1) + TAGS                # DescribeShareGroupOffsets 0-1
            + i32(0)                                          # ThrottleTimeMs
            + b"\x01" + b"\x01" + b"\x03" + b"\x00\x00\x00")  # one tagged field: tag 1, 3 bytes (skipped)
    assert proto.parse_api_versions_response(body) == proto.ApiVersionsResult(0, {10: (0, 6), 90: (0, 1)})


def test_find_coordinator_request_v4_to_v6() -> None:
    # KeyType (0: group), CoordinatorKeys, tags
    assert proto.find_coordinator_request(0, ["sg-1"]) == i8(0) + carr(1) + cstr("sg-1") + TAGS


def test_find_coordinator_response_v4_to_v6() -> None:
    body = (i32(0) + carr(1)                                                   # ThrottleTimeMs, Coordinators
            + cstr("sg-1") + i32(3) + cstr("kafka-3") + i32(9092) + i16(0) + cstr(None) + TAGS
            + TAGS)
    assert proto.parse_find_coordinator_response(body) == [proto.Coordinator("sg-1", 3, "kafka-3", 9092, 0, None)]


def test_describe_share_group_offsets_request() -> None:
    expected = (carr(1) + cstr("sg-1")                                 # Groups[GroupId
                + carr(2)                                              #   Topics[
                + cstr("orders") + carr(2) + i32(0) + i32(1) + TAGS    #     TopicName, Partitions
                + cstr("audit") + carr(1) + i32(0) + TAGS              #   ]
                + TAGS                                                 # ] (group's tags)
                + TAGS)                                                # request's tags
    assert proto.describe_share_group_offsets_request("sg-1", {"orders": [0, 1], "audit": [0]}) == expected


def test_describe_share_group_offsets_request_null_topics_means_all() -> None:
    assert proto.describe_share_group_offsets_request("sg-1", None) == carr(1) + cstr("sg-1") + carr(None) + TAGS + TAGS


TOPIC_ID = uuid.UUID("0f5c1d6e-7a1b-4c2d-9e3f-112233445566")


def response(version: int, partitions: list[tuple[int, int, int, int, int, str | None]], group_error: int = 0) -> bytes:
    """A DescribeShareGroupOffsetsResponse for one group and topic; partitions (index, start, epoch, lag,
    error, message), Lag written only from v1."""
    rows = b"".join(i32(index) + i64(start) + i32(epoch) + (i64(lag) if version >= 1 else b"") + i16(error)
                    + cstr(message) + TAGS
                    for index, start, epoch, lag, error, message in partitions)
    return (i32(0) + carr(1)                                                    # ThrottleTimeMs, Groups[
            + cstr("sg-1") + carr(1)                                            #   GroupId, Topics[
            + cstr("orders") + TOPIC_ID.bytes + carr(len(partitions)) + rows + TAGS  # TopicName, TopicId, Partitions
            + i16(group_error) + cstr(None) + TAGS                              #   ErrorCode, ErrorMessage]
            + TAGS)


def test_describe_share_group_offsets_response_v1_has_the_brokers_lag() -> None:
    body = response(1, [(0, 120, 4, 35, 0, None), (1, -1, 4, -1, 0, None)])
    assert proto.parse_describe_share_group_offsets_response(body, 1) == [proto.ShareGroupOffsets(
        "sg-1", 0, None, (proto.SharePartitionOffsets("orders", 0, 120, 4, 35, 0, None),
                          proto.SharePartitionOffsets("orders", 1, -1, 4, -1, 0, None)))]


def test_describe_share_group_offsets_response_v0_has_no_lag() -> None:
    body = response(0, [(0, 120, 4, 0, 0, None)])
    [group] = proto.parse_describe_share_group_offsets_response(body, 0)
    assert group.partitions == (proto.SharePartitionOffsets("orders", 0, 120, 4, None, 0, None),)
    # v0 bytes read as v1 run out: the versions are really different layouts.
    with pytest.raises(proto.ProtocolError):
        proto.parse_describe_share_group_offsets_response(body, 1)


def test_trailing_or_missing_bytes_are_protocol_errors() -> None:
    body = response(1, [(0, 120, 4, 35, 0, None)])
    with pytest.raises(proto.ProtocolError):
        proto.parse_describe_share_group_offsets_response(body + b"\x00", 1)
    with pytest.raises(proto.ProtocolError):
        proto.parse_describe_share_group_offsets_response(body[:-3], 1)


def test_response_header_v1_and_v0() -> None:
    assert proto.response_body(i32(5) + TAGS + b"BODY", 5, flexible_header=True) == b"BODY"
    assert proto.response_body(i32(5) + b"BODY", 5, flexible_header=False) == b"BODY"
    with pytest.raises(proto.ProtocolError, match="response to request 4"):
        proto.response_body(i32(4) + TAGS, 5, flexible_header=True)


@pytest.mark.parametrize("value, encoded", [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02")])
def test_unsigned_varints(value: int, encoded: bytes) -> None:
    assert proto.Writer().uvarint(value).bytes() == encoded
    assert proto.Reader(encoded).uvarint() == value


def test_a_long_string_gets_a_multi_byte_varint_length() -> None:
    name = "t" * 200
    assert proto.Writer().compact_string(name).bytes() == b"\xc9\x01" + name.encode()  # 201 = 0x49 | 0x80, 0x01


@pytest.mark.parametrize("broker, expected", [((0, 1), 1), ((0, 0), 0), ((0, 5), 1), ((2, 3), None), (None, None)])
def test_version_negotiation_takes_the_highest_common_version(broker: tuple[int, int] | None,
                                                              expected: int | None) -> None:
    assert proto.pick_version(proto.DESCRIBE_SHARE_GROUP_OFFSETS, broker) == expected

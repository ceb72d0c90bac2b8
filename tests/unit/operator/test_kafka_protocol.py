"""kafka_protocol byte for byte: every expected frame below is spelled out field by field in the order of
Apache Kafka's message schemas (clients/src/main/resources/common/message/<Name>.json), independently of
the module's Writer, so a field out of order, a missing tagged-field section or a classic (int16) length
where a compact (varint) one belongs fails here."""

from __future__ import annotations

import struct
import uuid

import pytest

from lagpilot_operator.kafka import kafka_protocol as proto


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


# --- SaslHandshake, SaslAuthenticate (KIP-152) -----------------------------------------------------------------


def str16(s: str | None) -> bytes:
    """(NULLABLE_)STRING of non-flexible versions: int16 length (-1: null), then UTF-8."""
    return i16(-1) if s is None else i16(len(s.encode())) + s.encode()


def test_request_header_v1_for_versions_that_are_not_flexible() -> None:
    # SaslHandshake is never flexible: header v1 has no tagged-field section after the client id.
    frame = proto.request_frame(17, 1, 3, "lagpilot-operator", b"BODY")
    header = i16(17) + i16(1) + i32(3) + str16("lagpilot-operator")
    assert frame == i32(len(header) + 4) + header + b"BODY"
    # SaslAuthenticate v0-v1 are not, v2 is: header v2 with its (empty) tagged fields.
    assert proto.request_frame(36, 1, 3, None, b"") == i32(10) + i16(36) + i16(1) + i32(3) + i16(-1)
    assert proto.request_frame(36, 2, 3, None, b"") == i32(11) + i16(36) + i16(2) + i32(3) + i16(-1) + TAGS


def test_which_response_headers_are_flexible() -> None:
    assert not proto.response_header_is_flexible(proto.API_VERSIONS, 3)  # always header v0
    assert not proto.response_header_is_flexible(proto.SASL_HANDSHAKE, 1)
    assert not proto.response_header_is_flexible(proto.SASL_AUTHENTICATE, 1)
    assert proto.response_header_is_flexible(proto.SASL_AUTHENTICATE, 2)
    assert proto.response_header_is_flexible(proto.FIND_COORDINATOR, 4)
    assert proto.response_header_is_flexible(proto.DESCRIBE_SHARE_GROUP_OFFSETS, 0)


def test_sasl_handshake_request_v1() -> None:
    # Mechanism: a classic int16-length string.
    assert proto.sasl_handshake_request("SCRAM-SHA-512") == i16(13) + b"SCRAM-SHA-512"


def test_sasl_handshake_response_lists_the_enabled_mechanisms() -> None:
    # ErrorCode, Mechanisms: an int32-length array of int16-length strings.
    body = i16(0) + i32(2) + str16("PLAIN") + str16("SCRAM-SHA-512")
    assert proto.parse_sasl_handshake_response(body) == proto.SaslHandshakeResult(0, ("PLAIN", "SCRAM-SHA-512"))
    refused = i16(proto.UNSUPPORTED_SASL_MECHANISM) + i32(1) + str16("PLAIN")
    assert proto.parse_sasl_handshake_response(refused) == proto.SaslHandshakeResult(33, ("PLAIN",))
    assert proto.parse_sasl_handshake_response(i16(34) + i32(0)) == proto.SaslHandshakeResult(34, ())
    with pytest.raises(proto.ProtocolError):
        proto.parse_sasl_handshake_response(body + b"\x00")


@pytest.mark.parametrize("version", [0, 1])
def test_sasl_authenticate_request_v0_v1(version: int) -> None:
    # AuthBytes: int32 length, then the bytes.
    assert proto.sasl_authenticate_request(b"n,,n=u,r=abc", version) == i32(12) + b"n,,n=u,r=abc"


def test_sasl_authenticate_request_v2_is_flexible() -> None:
    # AuthBytes as COMPACT_BYTES (varint length + 1), then the request's tags.
    assert proto.sasl_authenticate_request(b"n,,n=u,r=abc", 2) == bytes([13]) + b"n,,n=u,r=abc" + TAGS


def test_sasl_authenticate_response_v0() -> None:
    # ErrorCode, ErrorMessage (nullable int16 string), AuthBytes (int32 length); no SessionLifetimeMs.
    body = i16(0) + str16(None) + i32(3) + b"r=x"
    assert proto.parse_sasl_authenticate_response(body, 0) == proto.SaslAuthenticateResult(0, None, b"r=x", 0)


def test_sasl_authenticate_response_v1_has_the_session_lifetime() -> None:
    body = i16(58) + str16("Authentication failed") + i32(0) + i64(3_600_000)
    assert proto.parse_sasl_authenticate_response(body, 1) == proto.SaslAuthenticateResult(
        58, "Authentication failed", b"", 3_600_000)
    with pytest.raises(proto.ProtocolError):  # v1 bytes read as v0 leave the lifetime over
        proto.parse_sasl_authenticate_response(body, 0)


def test_sasl_authenticate_response_v2_is_flexible() -> None:
    body = i16(0) + cstr(None) + bytes([4]) + b"v=s" + i64(0) + TAGS
    assert proto.parse_sasl_authenticate_response(body, 2) == proto.SaslAuthenticateResult(0, None, b"v=s", 0)


def test_the_auth_bytes_are_not_in_the_repr() -> None:
    assert "secret" not in repr(proto.SaslAuthenticateResult(0, None, b"secret", 0))


def test_sasl_plain_token_is_rfc_4616() -> None:
    # [authzid] NUL authcid NUL passwd, UTF-8; the operator sends no authzid.
    assert proto.sasl_plain_token("lagpilot", "pässword") == b"\x00lagpilot\x00p\xc3\xa4ssword"


@pytest.mark.parametrize("prefix, tls", [(b"\x15\x03\x03\x00", True), (b"\x16\x03\x01\x02", True),
                                         (b"\x00\x00\x00\x10", False), (b"\x15\x00\x00\x00", False)])
def test_a_tls_record_where_a_size_should_be_is_recognized(prefix: bytes, tls: bool) -> None:
    assert proto.looks_like_tls_record(prefix) is tls

"""share_lag without Kafka: the mapping of a coordinator's answer to the LagSample the policy reads, the
refusals, and the client's version negotiation against an in-process fake broker (asyncio, loopback)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping

import pytest

from lagpilot_operator import kafka_lag, share_lag
from lagpilot_operator import kafka_protocol as proto
from lagpilot_operator.observations import LagHistory, LagSample, partition_lag, total_lag

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


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL", "SASL_PLAINTEXT"])
def test_only_plaintext_is_spoken(protocol: str) -> None:
    with pytest.raises(share_lag.ShareLagNeedsPlaintext, match="PLAINTEXT listener") as caught:
        share_lag.require_plaintext({"bootstrap.servers": "k:9093", "security.protocol": protocol})
    assert caught.value.reason == "ShareLagNeedsPlaintext"
    assert not kafka_lag.retire_client_after(caught.value)  # a new AdminClient would not help
    share_lag.require_plaintext({"bootstrap.servers": "k:9092"})
    share_lag.require_plaintext({"bootstrap.servers": "k:9092", "security.protocol": "plaintext"})


def test_bootstrap_addresses() -> None:
    assert share_lag.bootstrap_addresses("k1:9092, k2:19092,[::1]:9092") == [
        ("k1", 9092), ("k2", 19092), ("::1", 9092)]
    with pytest.raises(kafka_lag.LagReadError):
        share_lag.bootstrap_addresses("k1")


# --- the client against a fake broker -------------------------------------------------------------------------


class FakeBroker:
    """Answers ApiVersions with `versions`, FindCoordinator with itself, DescribeShareGroupOffsets with one
    partition (SPSO 10, lag 35) in whatever version was asked; records the (api, version) of each request."""

    def __init__(self, versions: Mapping[int, tuple[int, int]]) -> None:
        self.versions = versions
        self.requests: list[tuple[int, int]] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = struct.unpack(">i", await reader.readexactly(4))[0]
                frame = await reader.readexactly(size)
                api, version, correlation = struct.unpack(">hhi", frame[:8])
                self.requests.append((api, version))
                if api == proto.API_VERSIONS:
                    header = struct.pack(">i", correlation)  # header v0
                    body = (proto.Writer().int16(0).compact_array_length(len(self.versions)).bytes()
                            + b"".join(struct.pack(">hhh", k, lo, hi) + b"\x00"
                                       for k, (lo, hi) in self.versions.items())
                            + struct.pack(">i", 0) + b"\x00")
                elif api == proto.FIND_COORDINATOR:
                    header = struct.pack(">i", correlation) + b"\x00"
                    body = (proto.Writer().int32(0).compact_array_length(1).compact_string("sg").int32(1)
                            .compact_string("127.0.0.1").int32(self.port).int16(0).compact_string(None)
                            .no_tagged_fields().no_tagged_fields().bytes())
                else:
                    header = struct.pack(">i", correlation) + b"\x00"
                    body = (proto.Writer().int32(0).compact_array_length(1).compact_string("sg")
                            .compact_array_length(1).compact_string("orders").bytes() + bytes(16)
                            + proto.Writer().compact_array_length(1).int32(0).bytes()
                            + struct.pack(">qi", 10, 0) + (struct.pack(">q", 35) if version >= 1 else b"")
                            + proto.Writer().int16(0).compact_string(None).no_tagged_fields().no_tagged_fields()
                            .int16(0).compact_string(None).no_tagged_fields().no_tagged_fields().bytes())
                writer.write(struct.pack(">i", len(header) + len(body)) + header + body)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def ask(self) -> tuple[int, proto.ShareGroupOffsets | None]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            return await share_lag.describe_share_group_offsets(f"127.0.0.1:{self.port}", "sg", {"orders": [0]})


def test_the_client_asks_the_highest_version_both_speak() -> None:
    broker = FakeBroker({proto.API_VERSIONS: (0, 4), proto.FIND_COORDINATOR: (0, 6),
                         proto.DESCRIBE_SHARE_GROUP_OFFSETS: (0, 1)})
    version, answer = asyncio.run(broker.ask())
    assert version == 1 and answer is not None and answer.partitions[0].lag == 35
    # ApiVersions v3, FindCoordinator v6 (key type group), then DescribeShareGroupOffsets on the same connection
    assert broker.requests == [(18, 3), (10, 6), (90, 1)]


def test_a_v0_broker_is_read_without_a_lag_field() -> None:
    broker = FakeBroker({proto.API_VERSIONS: (0, 4), proto.FIND_COORDINATOR: (0, 6),
                         proto.DESCRIBE_SHARE_GROUP_OFFSETS: (0, 0)})
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

    port = asyncio.run(closed_port())
    with pytest.raises(kafka_lag.KafkaUnreachable, match=f"127.0.0.1:{port}"):
        asyncio.run(share_lag.describe_share_group_offsets(f"127.0.0.1:{port}", "sg", {"orders": [0]}))

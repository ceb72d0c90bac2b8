"""Reading a share group's lag (KIP-932) from Kafka (I/O, plus the pure mapping to a LagSample).

A share group has no committed offsets: its consumers acquire records, acknowledge them one by one, and
the broker keeps per share-partition a start offset (SPSO, below which every record is done) and the
state of the records in flight above it. Kafka 4.2+ reports the share-partition's lag (KIP-1226) in
DescribeShareGroupOffsets v1: records from the SPSO to the end offset that are not yet acknowledged.

confluent-kafka (librdkafka) has no call for it, so this module asks the group coordinator itself over
a plain TCP connection (asyncio), with the messages of `kafka_protocol`; the topics' partitions and
log-start/end offsets still come from the shared AdminClient (`kafka_lag.read_log_offsets`), so topic
metadata, TLS and SASL for those stay librdkafka's.

Scope: PLAINTEXT listeners only. TLS would be cheap with `ssl` but is untested here; SASL (SCRAM, PLAIN,
OAUTHBEARER handshakes) is out of scope. A cluster reached over SSL or SASL gets the condition reason
`ShareLagNeedsPlaintext` instead of a lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Mapping, Sequence

from confluent_kafka.admin import AdminClient

from lagpilot_operator import kafka_lag
from lagpilot_operator import kafka_protocol as proto
from lagpilot_operator.kafka_lag import KafkaAuthorizationFailed, KafkaUnreachable, LagReadError
from lagpilot_operator.observations import LagSample, PartitionKey, PartitionOffsets

CLIENT_ID = "lagpilot-operator"
CLIENT_SOFTWARE = ("lagpilot", "0.1.0")
MAX_FRAME_BYTES = 64 * 1024 * 1024  # a larger size prefix is a garbled stream, not a response


class ShareLagNeedsPlaintext(LagReadError):
    reason = "ShareLagNeedsPlaintext"


class ShareGroupOffsetsUnsupported(LagReadError):
    reason = "ShareGroupOffsetsUnsupported"


class ShareGroupReadError(LagReadError):
    """The share-group exchange failed (a coordinator error, a garbled answer). The same reason as any Kafka
    error, but its own type: the shared AdminClient had no part in it, so it is not retired for it
    (`kafka_lag.retire_client_after`)."""


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


def require_plaintext(settings: Mapping[str, str]) -> None:
    """Refuse (pure) what this reader cannot speak, before any connection is tried."""
    protocol = settings.get("security.protocol", "PLAINTEXT").upper()
    if protocol != "PLAINTEXT":
        raise ShareLagNeedsPlaintext(
            f"share-group lag needs a PLAINTEXT listener in this version: spec.kafka.security.protocol is "
            f"{protocol}. The operator reads a share group's offsets with its own Kafka protocol client "
            "(confluent-kafka has no call for it), which speaks neither TLS nor SASL yet; point "
            "spec.kafka.bootstrapServers at a PLAINTEXT listener, or use lag.source: prometheus")


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


# --- I/O --------------------------------------------------------------------------------------------------------


class _Connection:
    """One broker connection: requests one at a time (the operator needs no pipelining)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, where: str) -> None:
        self._reader, self._writer, self.where = reader, writer, where
        self._next_id = 0
        self.versions: Mapping[int, tuple[int, int]] = {}

    async def request(self, api_key: int, version: int, body: bytes, *, flexible_header: bool = True) -> bytes:
        self._next_id += 1
        self._writer.write(proto.request_frame(api_key, version, self._next_id, CLIENT_ID, body))
        await self._writer.drain()
        size = struct.unpack(">i", await self._reader.readexactly(4))[0]
        if not 0 < size <= MAX_FRAME_BYTES:
            raise proto.ProtocolError(f"response size {size} from {self.where}")
        frame = await self._reader.readexactly(size)
        return proto.response_body(frame, self._next_id, flexible_header=flexible_header)

    def version(self, api_key: int, name: str) -> int:
        version = proto.pick_version(api_key, self.versions.get(api_key))
        if version is None:
            broker = self.versions.get(api_key)
            raise ShareGroupOffsetsUnsupported(
                f"the broker at {self.where} does not speak {name} in a version this operator knows "
                f"(broker: {broker or 'not at all'}, operator: {proto.SUPPORTED[api_key]}); share-group lag "
                "needs Kafka 4.1+ with share groups enabled")
        return version

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()


async def _connect(host: str, port: int) -> _Connection:
    reader, writer = await asyncio.open_connection(host, port)
    connection = _Connection(reader, writer, f"{host}:{port}")
    try:
        # An ApiVersions response always has response header v0, whatever the request's version.
        body = await connection.request(proto.API_VERSIONS, 3, proto.api_versions_request(*CLIENT_SOFTWARE),
                                        flexible_header=False)
        result = proto.parse_api_versions_response(body)
        if result.error_code != proto.NONE:
            raise ShareGroupReadError(f"ApiVersions at {host}:{port}: {proto.error_name(result.error_code)}")
        connection.versions = result.versions
    except BaseException:
        await connection.close()
        raise
    return connection


async def _connect_any(addresses: Sequence[tuple[str, int]]) -> _Connection:
    failures: list[str] = []
    for host, port in addresses:
        try:
            return await _connect(host, port)
        except (OSError, asyncio.IncompleteReadError) as exc:
            failures.append(f"{host}:{port}: {exc or type(exc).__name__}")
    raise KafkaUnreachable(f"no bootstrap server answered ({'; '.join(failures)}); check bootstrapServers and the "
                           "network path from the operator")


async def describe_share_group_offsets(bootstrap: str, group_id: str, topics: Mapping[str, Sequence[int]],
                                       ) -> tuple[int, proto.ShareGroupOffsets | None]:
    """(version used, the group's offsets or None if it does not exist), from its group coordinator."""
    bootstrap_connection = await _connect_any(bootstrap_addresses(bootstrap))
    coordinator_connection: _Connection | None = None
    try:
        find_version = bootstrap_connection.version(proto.FIND_COORDINATOR, "FindCoordinator")
        body = await bootstrap_connection.request(
            proto.FIND_COORDINATOR, find_version,
            proto.find_coordinator_request(proto.COORDINATOR_KEY_GROUP, [group_id]))
        found = [c for c in proto.parse_find_coordinator_response(body) if c.key == group_id]
        if not found or found[0].error_code != proto.NONE:
            why = proto.error_name(found[0].error_code) if found else "no answer for the group"
            # COORDINATOR_NOT_AVAILABLE and the like pass: the next poll asks again.
            raise ShareGroupReadError(f"finding the coordinator of share group {group_id}: {why}")
        coordinator = found[0]
        if f"{coordinator.host}:{coordinator.port}" == bootstrap_connection.where:
            connection = bootstrap_connection
        else:
            try:
                connection = coordinator_connection = await _connect(coordinator.host, coordinator.port)
            except (OSError, asyncio.IncompleteReadError) as exc:
                raise KafkaUnreachable(f"the coordinator of share group {group_id} at {coordinator.host}:"
                                       f"{coordinator.port} did not answer ({exc}); the operator must reach "
                                       "every broker's advertised listener") from exc
        version = connection.version(proto.DESCRIBE_SHARE_GROUP_OFFSETS, "DescribeShareGroupOffsets")
        body = await connection.request(proto.DESCRIBE_SHARE_GROUP_OFFSETS, version,
                                        proto.describe_share_group_offsets_request(group_id, topics))
        groups = proto.parse_describe_share_group_offsets_response(body, version)
        return version, group_result(groups, group_id)
    finally:
        await bootstrap_connection.close()
        if coordinator_connection is not None:
            await coordinator_connection.close()


async def read_share_lag(admin: AdminClient, settings: Mapping[str, str], group_id: str, topics: list[str],
                         request_timeout: float = 10.0) -> LagSample:
    """One sample of a share group's lag: log offsets from the AdminClient, the group's from its coordinator.

    `request_timeout` bounds each of the two reads (the AdminClient's calls, then the coordinator's)."""
    require_plaintext(settings)
    bootstrap = settings["bootstrap.servers"]
    sampled_at = time.time()
    log_offsets = await asyncio.to_thread(kafka_lag.read_log_offsets, admin, bootstrap, topics, request_timeout)
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(log_offsets):
        by_topic.setdefault(topic, []).append(partition)
    try:
        async with asyncio.timeout(request_timeout):
            _, group = await describe_share_group_offsets(bootstrap, group_id, by_topic)
    except TimeoutError as exc:
        raise KafkaUnreachable(f"reading offsets of share group {group_id}: Kafka at {bootstrap} did not answer "
                               f"within {request_timeout:g} s") from exc
    except (proto.ProtocolError, asyncio.IncompleteReadError, OSError) as exc:
        raise ShareGroupReadError(f"reading offsets of share group {group_id}: {type(exc).__name__}: {exc}") from exc
    return share_sample(sampled_at, log_offsets, group)

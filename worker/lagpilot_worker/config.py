"""The worker's settings (library use builds one directly; the CLI builds it from flags and env)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lagpilot_contract import naming

from .breaker import BreakerConfig
from .ordering import OrderingMode
from .record import Deserializer
from .retry import Classifier, RetryPolicy
from .write_retry import WriteRetryPolicy

# Settings the runtime depends on for its guarantees; user Kafka settings cannot override them.
CONSUMER_FIXED: dict[str, Any] = {
    "enable.auto.commit": False,          # the runtime commits only offsets below unfinished work
    "enable.auto.offset.store": False,
}


class GroupProtocol(StrEnum):
    """How the group assigns partitions (librdkafka's `group.protocol`).

    CLASSIC: the client-side protocol, with the cooperative-sticky assignor (incremental rebalances
    driven by the members). CONSUMER: KIP-848 (Kafka 4.0+): the broker assigns, each member
    reconciles on its own heartbeat and no member waits for the others.
    """

    CLASSIC = "classic"
    CONSUMER = "consumer"


# With KIP-848 these live on the broker (group.consumer.session.timeout.ms, ...); librdkafka refuses
# them with group.protocol=consumer.
CLASSIC_ONLY_SETTINGS = ("partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms",
                         "group.protocol.type")
CONSUMER_DEFAULTS: dict[str, Any] = {
    # A new group starts at the beginning: a work queue should not silently skip its backlog.
    "auto.offset.reset": "earliest",
    "fetch.wait.max.ms": 100,
    # Once the prefetch queue holds queued.min.messages (100k, counted over the whole consumer
    # queue), librdkafka postpones each partition's next fetch by this long. Its default (1 s) lets
    # a fast consumer drain the queue and then sit idle for most of a second; 20 ms keeps fetching
    # ahead of anything below ~5M records/s, and while the queue stays full it only costs a
    # re-check per partition every 20 ms.
    "fetch.queue.backoff.ms": 20,
}


def default_worker_id() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class WorkerConfig:
    """Everything a Worker needs besides the handler.

    kafka_config holds librdkafka settings shared by the consumer and the DLQ producer
    (security.protocol, sasl.*, ssl.*, client.id ...); consumer_config / producer_config add
    settings for one of them only.
    """

    bootstrap_servers: str
    group_id: str
    topics: list[str]
    ordering: OrderingMode = OrderingMode.KEY
    group_protocol: GroupProtocol = GroupProtocol.CLASSIC
    pool_size: int = 8
    max_pool_size: int = 1024
    # The in-flight window: records fetched and not covered by a commit the broker acknowledged.
    # Bounds memory and the records handled again after a crash.
    # None: max(10 x consume batch, 100 x pool size), following resizes.
    max_uncommitted: int | None = None
    max_messages_per_item: int = 4096         # work items are sized by measured handler time, up to this
    consume_batch_size: int = 1000
    commit_interval_seconds: float = 1.0
    # Longest offset map (records finished above the committed offset) put into a commit's
    # metadata: the broker's offset.metadata.max.bytes (default 4096) refuses longer ones. A map
    # that does not fit is left out (those records replay). 0: never write or read a map.
    offset_metadata_max_bytes: int = 4096
    kafka_config: dict[str, Any] = field(default_factory=dict)
    consumer_config: dict[str, Any] = field(default_factory=dict)
    producer_config: dict[str, Any] = field(default_factory=dict)
    # Off by default, as for a KafkaConsumerGroup without spec.deadLetter (docs/dead-letter.md).
    # Share-group mode (KIP-932): records are acquired and acknowledged one by one (share_runtime.py).
    share_group: bool = False
    # Deliveries of one record before it is dead-lettered (share groups): at most the broker's
    # group.share.delivery.count.limit (5 by default), which archives a record silently.
    share_max_deliveries: int = 5
    # Share groups: seconds a fetched batch may run before its records not yet started are released;
    # below the group's share.record.lock.duration.ms (30 s by default), or records are lost to the lock.
    share_batch_seconds: float = 20.0
    dead_letter_enabled: bool = False
    dead_letter_topic: str | None = None        # override; default <group>.dlq (lagpilot_contract.naming)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    # Failed writes to the DLQ/retry tiers: backoff, and after how many failures the partition pauses.
    write_retry: WriteRetryPolicy = field(default_factory=WriteRetryPolicy)
    classifier: Classifier | None = None
    value_deserializer: Deserializer | None = None   # None: the handler gets the raw bytes
    worker_id: str = field(default_factory=default_worker_id)
    http_host: str = "0.0.0.0"
    http_port: int | None = 8080                # None: no HTTP server; 0: any free port
    shutdown_timeout_seconds: float = 30.0
    revoke_timeout_seconds: float = 10.0
    ready_requires_closed_breakers: bool = True

    def __post_init__(self) -> None:
        if not self.topics:
            raise ValueError("at least one topic is required")
        if not 1 <= self.pool_size <= self.max_pool_size:
            raise ValueError(f"pool size must be between 1 and {self.max_pool_size}")
        if self.max_uncommitted is not None and self.max_uncommitted < 1:
            raise ValueError("max_uncommitted must be at least 1")
        if self.offset_metadata_max_bytes < 0:
            raise ValueError("offset_metadata_max_bytes must be 0 (no offset map) or more")
        self.ordering = OrderingMode(self.ordering)
        self.group_protocol = GroupProtocol(self.group_protocol)
        user = {**self.kafka_config, **self.consumer_config}
        if "group.protocol" in user and str(user["group.protocol"]) != self.group_protocol.value:
            raise ValueError(f"group.protocol={user['group.protocol']} in the Kafka settings disagrees with the "
                             f"group protocol {self.group_protocol.value}; set the protocol with --group-protocol")
        if not 1 <= self.share_max_deliveries <= 10:
            raise ValueError("share_max_deliveries must be 1..10 (the broker's delivery count limit is at most 10)")
        if self.share_batch_seconds <= 0:
            raise ValueError("share_batch_seconds must be > 0")
        if self.share_group and self.retry.tier_delays_seconds:
            raise ValueError("a share group retries by redelivery (share_max_deliveries), not with retry tier topics")
        if self.group_protocol is GroupProtocol.CONSUMER:
            classic = sorted(key for key in user if key in CLASSIC_ONLY_SETTINGS)
            if classic:
                raise ValueError(f"{', '.join(classic)}: not used with --group-protocol consumer (KIP-848 moves "
                                 "them to the broker: group.consumer.session.timeout.ms, "
                                 "group.consumer.heartbeat.interval.ms, group.consumer.assignors)")

    @property
    def dlq_topic(self) -> str | None:
        if not self.dead_letter_enabled:
            return None
        return naming.dead_letter_topic(self.group_id, self.dead_letter_topic)

    @property
    def retry_topics(self) -> list[str]:
        return naming.retry_topics(self.group_id, len(self.retry.tier_delays_seconds), self.dead_letter_topic)

    def window(self, pool_size: int) -> int:
        if self.max_uncommitted is not None:
            return self.max_uncommitted
        return max(10 * self.consume_batch_size, 100 * pool_size)

    def consumer_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {**CONSUMER_DEFAULTS, **self.kafka_config, **self.consumer_config}
        settings.update({"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id})
        settings.update(CONSUMER_FIXED)
        if self.group_protocol is GroupProtocol.CONSUMER:
            settings["group.protocol"] = GroupProtocol.CONSUMER.value
        else:
            settings["partition.assignment.strategy"] = "cooperative-sticky"
        return settings

    def share_consumer_settings(self) -> dict[str, Any]:
        """The share consumer's: the cluster and security settings, never the consumer-group ones."""
        settings: dict[str, Any] = {key: value for key, value in {**self.kafka_config, **self.consumer_config}.items()
                                    if key not in CONSUMER_DEFAULTS and key not in CLASSIC_ONLY_SETTINGS
                                    and key != "group.protocol"}
        settings.update({"bootstrap.servers": self.bootstrap_servers, "group.id": self.group_id,
                         "share.acknowledgement.mode": "explicit"})
        return settings

    def producer_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {**self.kafka_config, **self.producer_config}
        settings["bootstrap.servers"] = self.bootstrap_servers
        # Consumer-only keys in the shared settings would make the producer warn on every start.
        for key in list(settings):
            if key == "group.id" or key in CONSUMER_DEFAULTS or key.startswith("group."):
                settings.pop(key)
        return settings

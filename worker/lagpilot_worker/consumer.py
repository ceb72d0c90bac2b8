"""The Kafka consumer as the runtime uses it: a group member with incremental assignment (the classic
protocol's cooperative-sticky assignor, or KIP-848's broker-side assignment: the same incremental
assign and revoke callbacks either way).

Offsets are never auto-committed or auto-stored; the runtime commits explicit offsets (the
lowest unfinished per partition). Every call happens in the poll thread, including the rebalance
callbacks, which librdkafka runs from inside consume()/poll().
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)

RebalanceCallback = Callable[[list[TopicPartition]], None]
CommitErrorCallback = Callable[[KafkaError, list[TopicPartition]], None]
CommitAckCallback = Callable[[list[TopicPartition]], None]

# librdkafka's statistics, every this many ms unless the settings say otherwise: `close` reads the group's join
# state from them (see there). 0 in the settings turns them off, and the wait with them.
STATISTICS_INTERVAL_MS = 500
# The longest `close` waits for the group to be left, polling (a rebalance under way ends within about a
# heartbeat interval once every member has rejoined).
LEAVE_TIMEOUT_SECONDS = 10.0
# librdkafka's join state once the consumer has left the group (statistics `cgrp.join_state`).
LEFT_JOIN_STATE = "init"


class GroupConsumer:
    def __init__(self, settings: dict[str, Any], topics: Sequence[str], *, on_assign: RebalanceCallback,
                 on_revoke: RebalanceCallback, on_lost: RebalanceCallback,
                 on_commit_error: CommitErrorCallback, on_commit_ack: CommitAckCallback) -> None:
        # librdkafka queues commit answers ahead of fetched records (high priority), so any
        # consume()/poll() serves them, also one that returns a single record.
        def committed(err: KafkaError | None, partitions: list[TopicPartition]) -> None:
            if err is not None:
                on_commit_error(err, partitions)
                return
            failed = [tp for tp in partitions if tp.error is not None]
            stored = [tp for tp in partitions if tp.error is None]
            if stored:
                on_commit_ack(stored)
            if failed and failed[0].error is not None:
                on_commit_error(failed[0].error, failed)

        def error(err: KafkaError) -> None:
            if err.fatal():
                log.error("fatal Kafka client error: %s", err)
            else:
                log.warning("Kafka client error: %s", err)

        self._statistics: str | None = None
        """The last statistics librdkafka gave (JSON), parsed only when read."""

        def statistics(text: str) -> None:
            self._statistics = text

        config = dict(settings)
        config["on_commit"] = committed
        config["error_cb"] = error
        config.setdefault("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        self._statistics_on = int(config["statistics.interval.ms"]) > 0
        config["stats_cb"] = statistics
        config.setdefault("logger", logging.getLogger("kafka.consumer"))
        self._consumer = Consumer(config)
        self._consumer.subscribe(
            list(topics),
            on_assign=lambda _c, partitions: on_assign(partitions),
            on_revoke=lambda _c, partitions: on_revoke(partitions),
            on_lost=lambda _c, partitions: on_lost(partitions),
        )

    def fetch(self, max_messages: int, wait: float) -> list[Message]:
        """Up to `max_messages` already fetched records; waits up to `wait` only when there are none.

        consume(n, timeout) would wait for a full batch, adding latency at low rates; poll()
        returns as soon as one record is there, and the next call takes the rest in a batch.
        """
        messages = self._consumer.consume(max(1, max_messages), 0)
        if messages or wait <= 0:
            return messages
        message = self._consumer.poll(wait)
        return [] if message is None else [message]

    def pause(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._consumer.pause(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._consumer.resume(partitions)

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> bool:
        """Commit explicit next-to-read offsets. False when a synchronous commit failed."""
        if not offsets:
            return True
        try:
            if asynchronous:
                self._consumer.commit(offsets=offsets, asynchronous=True)
                return True
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit failed: %s", exc)
            return False
        if result:
            failed = [tp for tp in result if tp.error is not None]
            if failed:
                log.warning("commit failed for %s", [(tp.topic, tp.partition, str(tp.error)) for tp in failed])
                return False
        return True

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition] | None:
        """The group's committed offsets with their metadata (one broker round trip); None on failure."""
        try:
            return list(self._consumer.committed([TopicPartition(tp.topic, tp.partition) for tp in partitions],
                                                 timeout=timeout))
        except KafkaException as exc:
            log.warning("reading the committed offsets failed: %s", exc)
            return None

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.incremental_assign(partitions)

    def incremental_unassign(self, partitions: list[TopicPartition]) -> None:
        self._consumer.incremental_unassign(partitions)

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The high watermark from the last fetch response (no broker round trip)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        except KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    def close(self) -> None:
        """Leave the group (triggers the revoke callback for what is still assigned), then close.

        unsubscribe() first: with the cooperative protocol, librdkafka's close() alone sends no
        LeaveGroup when the member holds no partitions (seen with 2.16: "consumer is terminating,
        skipping rejoin", then straight to term). That is a Pod that joined moments ago and is stopped
        mid-rebalance, as in a rolling update, or one of more replicas than partitions. The coordinator
        then waits `session.timeout.ms` (45 s by default) for the member while the whole group's
        rebalance hangs. An explicit unsubscribe() leaves in every join state but one (below), and
        close() waits for the answer.

        Then it polls until the group is left before it closes. While a rebalance is under way (its
        JoinGroup in flight: a heartbeat told it to rejoin, as every member is told when a Pod joins or
        leaves during a rolling update), librdkafka 2.16 postpones the unsubscribe, and a close in that
        state sends no LeaveGroup ("consumer is terminating, skipping rejoin", then straight to term).
        The coordinator then completes the join with this member in it, may hand it partitions, and the
        group waits `session.timeout.ms` for it (a 45 s stall in the rollout e2e test). Polled, the join
        ends, the postponed unsubscribe runs (revoking what the join gave, which nothing processed) and
        the member leaves. A record such a poll returns is not processed, so no commit passes it.
        """
        try:
            self._consumer.unsubscribe()
        except KafkaException as exc:  # closing anyway; the group notices after the session timeout
            log.warning("leaving the group failed: %s", exc)
        else:
            self._wait_until_left(LEAVE_TIMEOUT_SECONDS)
        self._consumer.close()

    def join_state(self) -> str | None:
        """librdkafka's group join state as of its last statistics (None: none yet, or no group)."""
        if self._statistics is None:
            return None
        group = json.loads(self._statistics).get("cgrp")
        return group.get("join_state") if isinstance(group, dict) else None

    def _wait_until_left(self, timeout: float) -> None:
        if not self._statistics_on:
            return
        self._statistics = None  # only statistics from after the unsubscribe count
        started = time.monotonic()
        while self.join_state() != LEFT_JOIN_STATE:
            if time.monotonic() - started > timeout:
                log.warning("the group was not left within %.0f s; closing anyway (the group notices after its "
                            "session timeout)", timeout)
                return
            self._consumer.poll(0.05)
        waited = time.monotonic() - started
        if waited > 2 * STATISTICS_INTERVAL_MS / 1000:
            log.info("left the group after a rebalance under way ended", extra={"waited_seconds": round(waited, 2)})

"""Which partitions are ours (consumer-group worker): the rebalance callbacks.

librdkafka runs them inside consume() in the poll thread. An assignment creates a fresh
PartitionState per partition and reads the committed offset maps; a revocation stops handing the
partitions out, waits (bounded) for their work in hand, commits them and forgets them; a lost
partition is forgotten without a commit (another member may own it already).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import TopicPartition

from .breaker import PartitionBreaker
from .commits import OffsetCommits
from .config import WorkerConfig
from .consumer import GroupConsumer
from .flow import HeldRecords
from .metrics import WorkerMetrics
from .offset_map import read as read_offset_map
from .partition import PartitionState, PartitionStates
from .rebalance_clock import RebalanceClock, RebalanceReason

log = logging.getLogger("lagpilot_worker")

COMMITTED_READ_TIMEOUT_SECONDS = 10.0   # reading the offset maps at assignment; on timeout: no maps

# Serve results, writes and timers until the condition is False or the deadline (monotonic) passes.
ServeUntil = Callable[[Callable[[], bool], float], None]


class Assignment:
    """The assigned partitions (`states`, shared with every other part) and the rebalance callbacks."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics, states: PartitionStates, held: HeldRecords,
                 commits: OffsetCommits, stopping: threading.Event, *,
                 forget: Callable[[list[PartitionState]], None], serve_until: ServeUntil,
                 in_flight_records: Callable[[list[PartitionState]], int]) -> None:
        self._config = config
        self._metrics = metrics
        self.states = states
        self._held = held
        self._commits = commits
        self._stopping = stopping
        self._forget = forget                    # drops the partitions from every other part
        self._serve_until = serve_until
        self._in_flight_records = in_flight_records
        self._retry_tiers = {topic: tier for tier, topic in enumerate(config.retry_topics, start=1)}
        self.clock = RebalanceClock()
        self.assigned_once = False
        self.consumer: GroupConsumer | None = None

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        self._metrics.rebalances.inc()
        self._metrics.partitions_gained.inc(len(partitions))
        span = self.clock.assigned(time.monotonic())
        if span is not None:
            self._metrics.rebalance_seconds.labels(str(span.reason)).observe(span.seconds)
        self._held.forget(partitions)
        for tp in partitions:
            tier = self._retry_tiers.get(tp.topic, 0)
            self.states[(tp.topic, tp.partition)] = PartitionState(
                tp.topic, tp.partition, tier, PartitionBreaker(self._config.breaker))
        if self._config.offset_metadata_max_bytes:
            self._load_offset_maps(partitions)
        self.consumer.incremental_assign(partitions)
        # librdkafka may keep a partition's pause flag across revoke and re-assignment; a new
        # assignment starts fetching, whatever an earlier one was doing.
        self.consumer.resume(partitions)
        self.assigned_once = True
        rebalance = {"rebalance": str(span.reason), "rebalance_seconds": round(span.seconds, 3)} if span else {}
        log.info("partitions assigned", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions],
                                               "assigned": len(self.states), **rebalance})

    def _load_offset_maps(self, partitions: list[TopicPartition]) -> None:
        """Read the committed offsets' maps: records an earlier owner finished are skipped when fetched.

        Runs before the partitions are fetched from. A failed read or a map that does not decode
        means no map: those records run again (at-least-once either way).
        """
        assert self.consumer is not None
        committed = self.consumer.committed(partitions, COMMITTED_READ_TIMEOUT_SECONDS)
        if committed is None:
            return
        loaded: dict[str, int] = {}
        for tp in committed:
            state = self.states.get((tp.topic, tp.partition))
            if state is None or tp.error is not None or tp.offset < 0 or not tp.metadata:
                continue
            done_map, problem = read_offset_map(tp.metadata, tp.offset)
            if problem is not None:
                self._metrics.offset_map_ignored.inc()
                log.warning("committed metadata is not an offset map; its records run again: %s", problem,
                            extra={**state.log_extra(tp.offset)})
            elif done_map is not None and done_map.starts:
                state.done_map = done_map
                loaded[f"{tp.topic}[{tp.partition}]"] = done_map.count
        if loaded:
            log.info("offset maps read: records finished by an earlier owner are skipped", extra={"records": loaded})

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        if partitions:
            self.clock.revoked(time.monotonic())
            self._metrics.partitions_lost.labels(str(RebalanceReason.REVOKE)).inc(len(partitions))
        self._release(partitions, commit=True)
        self.consumer.incremental_unassign(partitions)

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        log.warning("partitions lost (another member may own them now); nothing is committed for them",
                    extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]})
        self.clock.lost(time.monotonic())
        self._metrics.partitions_lost.labels(str(RebalanceReason.LOST)).inc(len(partitions))
        self._release(partitions, commit=False)
        self.consumer.incremental_unassign(partitions)

    def _release(self, partitions: list[TopicPartition], commit: bool) -> None:
        """Give partitions back: stop handing them out, wait (bounded) for their work, commit, forget."""
        self._held.forget(partitions)
        states = [s for tp in partitions if (s := self.states.pop((tp.topic, tp.partition), None)) is not None]
        if not states:
            return
        self._forget(states)
        stopping = self._stopping.is_set()     # the shutdown already waited and counted
        timeout = self._config.revoke_timeout_seconds if commit and not stopping else 0.0
        deadline = time.monotonic() + timeout
        for state in states:
            # The slots finish the record in hand and start no other of these partitions: the wait
            # below is one handler call, not whole work items, and what never started is no duplicate.
            state.halted = True
        in_flight = 0 if stopping else self._in_flight_records(states)
        self._metrics.revoked_in_flight.inc(in_flight)
        self._serve_until(lambda: any(s.out_segments or s.pending_writes for s in states), deadline)
        abandoned = 0 if stopping else self._in_flight_records(states)
        self._metrics.revoked_abandoned.inc(abandoned)
        refused = 0
        if commit:
            refused = self._commits.commit_final(
                states, "the broker refused the commit of revoked partitions: their uncommitted records run "
                        "again on the next owner")
        unfinished = 0
        for state in states:
            unfinished += state.tracker.in_flight
            state.revoked = True
            state.tracker.revoke()
            self._metrics.forget_partition(state.topic, state.partition)
        log.info("partitions revoked", extra={
            "partitions": [f"{s.topic}[{s.partition}]" for s in states], "committed": commit,
            "unfinished_records": unfinished, "in_flight_records": in_flight, "abandoned_records": abandoned,
            "refused_records": refused,
            "assigned": len(self.states)})

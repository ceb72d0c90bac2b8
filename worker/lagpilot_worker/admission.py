"""Admitting fetched records (consumer-group worker): the first step after the consumer.

Fetched records are tracked in their partition's offsets, skipped when an earlier owner's offset
map says they are done, held back until due when they come from a retry tier topic, and passed
on to the Dispatcher: as direct runs (inline, no lanes) or to the scheduler's lanes.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from confluent_kafka import KafkaError, Message

from lagpilot_contract import headers as h

from .dispatch import Dispatcher
from .flow import FlowControl
from .metrics import WorkerMetrics
from .partition import (
    PartitionState,
    PartitionStates,
    message_error,
    message_offset,
    message_partition,
    topic_partition,
)
from .record import message_headers
from .retry import DueGate, parse_int_header

log = logging.getLogger("lagpilot_worker")


class Admission:
    """Fetched records in, tracked and routed; retry-tier records wait here until they are due."""

    def __init__(self, states: PartitionStates, dispatcher: Dispatcher, flow: FlowControl, metrics: WorkerMetrics,
                 stopping: threading.Event, *, only_topic: str | None) -> None:
        self._states = states
        self._dispatcher = dispatcher
        self._flow = flow                 # read only: which partitions are paused (direct runs skip those)
        self._metrics = metrics
        self._stopping = stopping
        # Subscribed to one topic by name: every record is of that topic, no need to ask each.
        self._only_topic = only_topic
        self.due_gate: DueGate[PartitionState, Message] = DueGate()

    def submit(self, messages: list[Message]) -> None:
        if any(map(message_error, messages)):
            # Errors and end-of-partition events are rare: set them aside, keep the records.
            kept: list[Message] = []
            for message in messages:
                if message.error() is None:
                    kept.append(message)
                else:
                    self._on_consume_error(message)
            messages = kept
            if not messages:
                return
        states = self._states
        topic = self._only_topic
        # Records arrive in runs of one partition, often a whole batch: find the runs in C (map,
        # groupby) and look each partition up once per run.
        groups: list[tuple[PartitionState | None, list[Message]]]
        if topic is None:
            groups = [(states.get(tp), list(run)) for tp, run in itertools.groupby(messages, topic_partition)]
        else:
            partitions = list(map(message_partition, messages))
            if partitions.count(partitions[0]) == len(partitions):
                groups = [(states.get((topic, partitions[0])), messages)]
            else:
                groups = [(states.get((topic, p)), list(run))
                          for p, run in itertools.groupby(messages, message_partition)]
        runs: dict[PartitionState, list[Message]] = {}
        for state, run in groups:
            if state is None:
                continue          # revoked meanwhile: not ours to track
            if state in runs:
                runs[state] += run
            else:
                runs[state] = run
        count = 0
        dispatcher = self._dispatcher
        scheduler = dispatcher.scheduler
        runner = dispatcher.inline
        inline = runner.inline
        stopping = self._stopping.is_set()
        paused = self._flow.paused
        for state, batch in runs.items():
            offsets = list(map(message_offset, batch))
            last = state.tracker.last_added
            if last is not None and offsets[0] <= last:
                # Never expected (we do not seek); tolerate a re-delivery instead of corrupting the tracker.
                keep = [i for i, o in enumerate(offsets) if o > last]
                batch = [batch[i] for i in keep]
                offsets = [offsets[i] for i in keep]
                if not batch:
                    continue
            skipped: list[int] = []
            if state.done_map is not None:
                batch, skipped = self._skip_done(state, batch, offsets)
            # Decided before the run is added: in_flight counts only what was there already.
            direct = bool(batch) and inline and runner.may_run_directly(
                state, blocked=scheduler.is_blocked(state), paused=state in paused, stopping=stopping)
            state.tracker.add_many(offsets)
            count += len(offsets)
            if skipped:
                state.tracker.done_many(skipped)
                if not batch:
                    continue
            if direct:
                dispatcher.add_direct(state, batch)
            elif state.tier:
                self._admit_retry_records(state, batch)
            else:
                dispatcher.enqueue_run(state, batch)
        if count:
            self._metrics.consumed.inc(count)

    def _skip_done(self, state: PartitionState, batch: list[Message],
                   offsets: list[int]) -> tuple[list[Message], list[int]]:
        """Split off the records the committed offset map marks done (an earlier owner finished them).

        Records below the map's base or above its highest offset (an offset reset, retention) are
        not in it and run as usual; once fetching passed the highest offset the map is dropped.
        """
        done_map = state.done_map
        assert done_map is not None
        if offsets[-1] >= done_map.high:
            state.done_map = None
        if offsets[0] > done_map.high or offsets[-1] < done_map.base:
            return batch, []
        kept: list[Message] = []
        skipped: list[int] = []
        for message, offset in zip(batch, offsets, strict=True):
            if offset in done_map:
                skipped.append(offset)
            else:
                kept.append(message)
        if skipped:
            self._metrics.offset_map_skipped.inc(len(skipped))
        return kept, skipped

    def _admit_retry_records(self, state: PartitionState, batch: list[Message]) -> None:
        now_ms = int(time.time() * 1000)
        ready: list[Message] = []
        for message in batch:
            due = parse_int_header(message_headers(message), h.RETRY_DUE)
            if self.due_gate.admit(state, due, message, now_ms):
                ready.append(message)
        self._dispatcher.enqueue(state, ready)

    def _on_consume_error(self, message: Message) -> None:
        err = message.error()
        if err is not None and err.code() == KafkaError._PARTITION_EOF:
            return
        log.warning("consume error: %s", err, extra={"topic": message.topic(), "partition": message.partition()})

    def poll(self) -> None:
        """Pass on the retry-tier records whose due time came."""
        if self.due_gate.next_due_ms() is not None:
            for state, batch in self.due_gate.release(int(time.time() * 1000)):
                if not state.revoked:
                    self._dispatcher.enqueue(state, batch)

    def seconds_until_due(self) -> float | None:
        due = self.due_gate.next_due_ms()
        return None if due is None else max(0.0, due / 1000.0 - time.time())

    def waiting_partitions(self) -> set[PartitionState]:
        """Partitions with a retry-tier record not yet due: paused until it is."""
        return self.due_gate.waiting_partitions()

    def drop(self, state: PartitionState) -> list[Message]:
        return self.due_gate.drop(state)

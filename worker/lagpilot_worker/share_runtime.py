"""The worker in share-group mode (KIP-932, `--share-group`): acquire, run on the pool, acknowledge.

A share group hands records out one by one instead of assigning partitions, so a group may have more
workers than its topic has partitions. There are no offsets to commit: each record is settled with
the broker (share_ack.py decides how). The lifecycle and probes (shell.py), the slots that run the
handler with its retries in place (pool.py, processing.py), live pool resizing (resize.py), the
dead-letter record and its retried write (dlq.py, writes.py) and the metrics are the parts the
consumer-group worker (runtime.py) is made of too; what differs is the consumer and the completion
path (acknowledgements instead of offset commits), which live here. Partitions, lanes, the window
and offset maps are consumer-group matters: a share group has none of them.

The client (confluent-kafka's preview `ShareConsumer`, explicit acknowledgement mode) must have every
record of one poll acknowledged before it polls again, so the loop is batch by batch: poll, run the
batch on the pool, settle each record (a dead-letter write confirmed before its REJECT), commit the
acknowledgements, poll. A slow record holds its batch; the broker's acquisition lock
(`group.share.record.lock.duration.ms`, 30 s by default) bounds how long a handler may take before
the record is delivered to someone else as well.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import AcknowledgeType, KafkaError, Message, ShareConsumer
from prometheus_client import CollectorRegistry

from .config import WorkerConfig
from .dlq import FailureInfo, FailurePublisher
from .ordering import Segment
from .poolsize import PoolSizeSource
from .processing import Job, JobResult
from .record import Handler
from .retry import DeadLetter, SendToRetryTier
from .share_ack import Outcome, Settlement, delivery_tier, settle, share_retry_policy
from .shell import WorkerShell
from .write_retry import WriteRetry
from .writes import RetriedWrites, Send

log = logging.getLogger("lagpilot_worker")

POLL_SECONDS = 0.5
ACK_COMMIT_SECONDS = 0.5


class _Acquired:
    """One acquired record as the slots see it (their PartitionView): its delivery is its retry tier."""

    __slots__ = ("halted", "revoked", "tier")

    def __init__(self, tier: int) -> None:
        self.tier = tier
        self.revoked = False
        self.halted = False


class _DeadLetterWrite:
    """The dead-letter write of one acquired record (a writes.WriteOwner): REJECT once the broker has the
    dead-letter record; RELEASE (another delivery) when the writes keep failing or the worker stops."""

    __slots__ = ("acknowledge", "kind", "message", "metrics_dead_lettered", "stopping", "written_ok")

    def __init__(self, message: Message, kind: str, acknowledge: Callable[[Message, Settlement], None],
                 stopping: Callable[[], bool], on_written: Callable[[], None]) -> None:
        self.message = message
        self.kind = kind
        self.acknowledge = acknowledge
        self.stopping = stopping
        self.metrics_dead_lettered = on_written
        self.written_ok = False

    def abandoned(self) -> bool:
        return False      # the record stays acquired (its lock bounds it): the write decides its fate

    def written(self) -> None:
        self.written_ok = True
        self.metrics_dead_lettered()

    def failed(self, error: str, failures: int, retry: WriteRetry) -> bool:
        log.warning("dead-letter write failed: %s", error, extra={"topic": self.message.topic(),
                                                                  "offset": self.message.offset()})
        if retry.pause_partition or self.stopping():
            log.error("dead-letter writes keep failing: the record is released for another delivery",
                      extra={"topic": self.message.topic(), "offset": self.message.offset(), "failures": failures})
            return False
        return True

    def ended(self) -> None:
        self.acknowledge(self.message, Settlement.DEAD_LETTER if self.written_ok else Settlement.RELEASE)


class ShareWorker(WorkerShell):
    """Consume `config.topics` as a member of share group `config.group_id`; run `handler` for each record."""

    def __init__(self, config: WorkerConfig, handler: Handler, *, pool_size_source: PoolSizeSource | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        if config.retry_topics:
            raise ValueError("a share group retries by redelivery (--share-max-deliveries), not retry topics")
        super().__init__(config, handler, pool_size_source=pool_size_source, registry=registry)
        self._writes = RetriedWrites(config.write_retry, self.metrics)
        self._consumer: ShareConsumer | None = None
        self._dead_letter_writes = 0     # records of the batch whose REJECT waits for their dead-letter write

    def ready(self) -> tuple[bool, dict[str, object]]:
        reasons: list[str] = []
        if not self._started.is_set():
            reasons.append("starting")
        if self._stopping.is_set() or self._stop_requested.is_set():
            reasons.append("stopping")
        alive, _ = self.alive()
        if not alive:
            reasons.append("poll loop stuck")
        return not reasons, {"reasons": reasons, "pool_size": self.pool_size, "share_group": True}

    def alive(self) -> tuple[bool, dict[str, object]]:
        """Liveness: a batch finished recently (a batch may take up to the broker's acquisition lock)."""
        since = time.monotonic() - self._last_loop
        return since < 90.0 or self._finished.is_set(), {"seconds_since_poll": round(since, 3)}

    # -- start and stop ---------------------------------------------------------------------

    def _start(self) -> None:
        config = self.config
        self._start_slots(share_retry_policy(config.retry, config.share_max_deliveries))
        if config.dlq_topic is not None:
            self._publisher = FailurePublisher(
                config.producer_settings(), group_id=config.group_id, worker_id=config.worker_id,
                dead_letter_topic=config.dlq_topic, retry_topics=[])
            self._publisher.load_partition_counts()
        self._pool_source.start(self._on_pool_size)
        self._consumer = ShareConsumer(config.share_consumer_settings())
        self._consumer.set_acknowledgement_commit_callback(self._on_acknowledged)
        self._consumer.subscribe(list(config.topics))
        log.info("worker started", extra={"group": config.group_id, "topics": config.topics, "share_group": True,
                                          "pool_size": config.pool_size, "worker_id": config.worker_id,
                                          "max_deliveries": config.share_max_deliveries,
                                          "http_port": self.http_port})
        self._started.set()

    def _shutdown(self) -> None:
        log.info("stopping", extra={"group": self.config.group_id})

    def _cleanup(self) -> None:
        self._stopping.set()
        if self._consumer is not None:
            try:
                # Commits what is acknowledged and leaves the share group; nothing is left acquired by
                # a finished batch, so the group hands out the rest at once.
                self._consumer.close()
            except Exception:
                log.exception("closing the share consumer failed; its acquired records return after their lock")
            self._consumer = None
        self._stop_slots()
        log.info("stopped", extra={"group": self.config.group_id})

    # -- the loop ---------------------------------------------------------------------------

    def _iterate(self) -> None:
        assert self._consumer is not None
        self._last_loop = time.monotonic()
        self._apply_pool_size()
        records: list[Message] = []
        for message in self._consumer.poll(POLL_SECONDS):
            error = message.error()
            if error is not None:
                log.warning("share consumer error: %s", error, extra={"code": error.code()})
                continue
            records.append(message)
        if self._publisher is not None:
            self._publisher.poll()
        if not records:
            return
        self.metrics.consumed.inc(len(records))
        self._run_batch(records)
        self._consumer.commit_async()

    def _run_batch(self, records: Sequence[Message]) -> None:
        """Run every record of the batch on the pool, acknowledging each as it finishes.

        Acknowledgements are committed every ACK_COMMIT_SECONDS while the batch runs, not only at its
        end: a worker killed mid-batch then has the broker deliver again only what it had in hand and
        what finished in the last moments, not the whole batch. A record to dead-letter is
        acknowledged (REJECT) once its dead-letter write is, so the batch also waits for those.
        """
        assert self._pool is not None and self._consumer is not None
        waiting: dict[int, Message] = {}
        jobs: dict[int, Job] = {}
        for message in records:
            job = Job([Segment(_Acquired(delivery_tier(message.delivery_count())), [message], [])])
            waiting[id(job)] = message
            jobs[id(job)] = job
            self._pool.submit(job)
        next_commit = time.monotonic() + ACK_COMMIT_SECONDS
        # The broker sizes a share fetch (thousands of small records; librdkafka 2.16 has no record
        # limit for it) and each record's lock runs out after share.record.lock.duration.ms: records
        # still queued when the batch's time is up are released unstarted rather than lost to the lock.
        deadline = time.monotonic() + self.config.share_batch_seconds
        cancelled = False
        while waiting or self._dead_letter_writes:
            self._wake.wait(0.05)
            self._wake.clear()
            self._last_loop = now = time.monotonic()
            self._apply_pool_size()
            if self._stop_requested.is_set():
                self._stopping.set()    # slots stop retrying in place
                # Writes waiting for their backoff get one last try now; failing, their records are released.
                self._writes.poll(math.inf)
            if not cancelled and (self._stop_requested.is_set() or now >= deadline):
                cancelled = True
                for job in jobs.values():
                    job.cancelled = True    # a record in a slot finishes; the queued ones are released
                log.info("share batch cut short: records not started are released", extra={
                    "records": len(waiting), "stopping": self._stop_requested.is_set(),
                    "batch_seconds": self.config.share_batch_seconds})
            while self._results:
                result = self._results.popleft()
                if id(result.job) in waiting:
                    self._settle(waiting.pop(id(result.job)), result)
            if self._publisher is not None:
                self._publisher.poll()
            self._writes.poll(time.monotonic())
            if (waiting or self._dead_letter_writes) and time.monotonic() >= next_commit:
                self._consumer.commit_async()
                next_commit = time.monotonic() + ACK_COMMIT_SECONDS

    def _acknowledge(self, message: Message, settlement: Settlement) -> None:
        assert self._consumer is not None
        self._consumer.acknowledge(message, _ACKNOWLEDGE[settlement])

    def _settle(self, message: Message, result: JobResult) -> None:
        """Acknowledge a finished record now, or once its dead-letter write is acknowledged."""
        handled, failures = result.segments[0]
        self.metrics.failed.inc(result.failed_attempts)
        if result.retries_in_place:
            self.metrics.retried.labels("in-place").inc(result.retries_in_place)
        failure = failures[0] if failures else None
        outcome = Outcome(handled=handled > 0,
                          dead_letter=failure is not None and isinstance(failure.action, DeadLetter),
                          retry_later=failure is not None and isinstance(failure.action, SendToRetryTier))
        settlement = settle(outcome)
        if settlement is Settlement.ACCEPT:
            self.metrics.processed.inc()
        elif settlement is Settlement.RELEASE and outcome.handled:
            self.metrics.retried.labels("redelivery").inc()
        if settlement is not Settlement.DEAD_LETTER:
            self._acknowledge(message, settlement)
            return
        assert failure is not None and isinstance(failure.action, DeadLetter)
        if self._publisher is None:
            # No dead-letter topic configured: as in the consumer-group worker, a record given up on is
            # logged and dropped (REJECT), never retried forever.
            log.error("record given up and no dead-letter topic configured: rejected", extra={
                "topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
                "kind": failure.action.kind, "exception": failure.info.exception_class})
            self._acknowledge(message, Settlement.DEAD_LETTER)
            return
        # The broker's delivery count is the record's attempt count in the dead-letter contract.
        self._write_dead_letter(message, failure.info, failure.action.kind, max(1, message.delivery_count() or 1))

    def _write_dead_letter(self, message: Message, info: FailureInfo, kind: str, attempts: int) -> None:
        """Write the dead-letter record, retried with backoff (writes.py); REJECT once it is written,
        RELEASE (another delivery) if the writes keep failing."""
        publisher = self._publisher
        assert publisher is not None
        self._dead_letter_writes += 1

        def send(done: Callable[[KafkaError | None], None]) -> bool:
            while not publisher.send_dead_letter(message, info, kind=kind, attempts=attempts, on_done=done):
                publisher.poll()        # local queue full: make room
            return True

        def acknowledge(message: Message, settlement: Settlement) -> None:
            self._dead_letter_writes -= 1
            self._acknowledge(message, settlement)

        sent: Send = send
        self._writes.write(sent, _DeadLetterWrite(message, kind, acknowledge, self._stop_requested.is_set,
                                                  lambda: self.metrics.dead_lettered.labels(kind).inc()))

    def _on_acknowledged(self, offsets: Any, error: Exception | None) -> None:
        if error is not None:
            # The lock ran out (the record went to another consumer) or the member was fenced: the
            # broker redelivers, at-least-once as ever.
            log.warning("acknowledgement not accepted by the broker: %s", error)


_ACKNOWLEDGE = {
    Settlement.ACCEPT: AcknowledgeType.ACCEPT,
    Settlement.RELEASE: AcknowledgeType.RELEASE,
    Settlement.DEAD_LETTER: AcknowledgeType.REJECT,
}

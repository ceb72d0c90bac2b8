"""The worker in share-group mode (KIP-932, `--share-group`): acquire, run on the pool, acknowledge.

A share group hands records out one by one instead of assigning partitions, so a group may have more
workers than its topic has partitions. There are no offsets to commit: each record is settled with
the broker (share_ack.py decides how). The pool, the handler API, retries in place, the dead-letter
record, the metrics and the probes are the ones of the consumer-group worker (runtime.py); what
differs is the consumer and the completion path, which live here.

The client (confluent-kafka's preview `ShareConsumer`, explicit acknowledgement mode) must have every
record of one poll acknowledged before it polls again, so the loop is batch by batch: poll, run the
batch on the pool, settle each record (a dead-letter write confirmed before its REJECT), commit the
acknowledgements, poll. A slow record holds its batch; the broker's acquisition lock
(`group.share.record.lock.duration.ms`, 30 s by default) bounds how long a handler may take before
the record is delivered to someone else as well.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
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
from .write_retry import next_write_retry

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
    """A dead-letter record being written for one acquired record; REJECT waits for its acknowledgement."""

    __slots__ = ("attempts", "failures", "info", "kind", "message", "state")

    def __init__(self, message: Message, info: FailureInfo, kind: str, attempts: int) -> None:
        self.message = message
        self.info = info
        self.kind = kind
        self.attempts = attempts
        self.failures = 0
        self.state = "pending"       # pending -> written | failed (give the record back)


class ShareWorker(WorkerShell):
    """Consume `config.topics` as a member of share group `config.group_id`; run `handler` for each record."""

    def __init__(self, config: WorkerConfig, handler: Handler, *, pool_size_source: PoolSizeSource | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        if config.retry_topics:
            raise ValueError("a share group retries by redelivery (--share-max-deliveries), not retry topics")
        super().__init__(config, handler, pool_size_source=pool_size_source, registry=registry)
        self._random = random.Random()
        self._consumer: ShareConsumer | None = None

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
        what finished in the last moments, not the whole batch.
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
        while waiting:
            self._wake.wait(0.05)
            self._wake.clear()
            self._last_loop = now = time.monotonic()
            self._apply_pool_size()
            if self._stop_requested.is_set():
                self._stopping.set()    # slots stop retrying in place
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
                    message = waiting.pop(id(result.job))
                    self._consumer.acknowledge(message, _ACKNOWLEDGE[self._settle(message, result)])
            if self._publisher is not None:
                self._publisher.poll()
            if waiting and time.monotonic() >= next_commit:
                self._consumer.commit_async()
                next_commit = time.monotonic() + ACK_COMMIT_SECONDS

    def _settle(self, message: Message, result: JobResult) -> Settlement:
        settlement, write = self._settlement(message, result)
        if write is not None and not self._write_dead_letter(write):
            return Settlement.RELEASE
        return settlement

    def _settlement(self, message: Message, result: JobResult) -> tuple[Settlement, _DeadLetterWrite | None]:
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
            return settlement, None
        assert failure is not None and isinstance(failure.action, DeadLetter)
        if self._publisher is None:
            # No dead-letter topic configured: as in the consumer-group worker, a record given up on is
            # logged and dropped (REJECT), never retried forever.
            log.error("record given up and no dead-letter topic configured: rejected", extra={
                "topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
                "kind": failure.action.kind, "exception": failure.info.exception_class})
            return Settlement.DEAD_LETTER, None
        # The broker's delivery count is the record's attempt count in the dead-letter contract.
        attempts = max(1, message.delivery_count() or 1)
        return settlement, _DeadLetterWrite(message, failure.info, failure.action.kind, attempts)

    def _write_dead_letter(self, write: _DeadLetterWrite) -> bool:
        """Write and wait for the broker's acknowledgement (retrying with backoff); False: give it back."""
        publisher = self._publisher
        assert publisher is not None

        def done(error: KafkaError | None) -> None:
            if error is None:
                write.state = "written"
            else:
                write.failures += 1
                write.state = "failed"
                self.metrics.write_errors.inc()
                log.warning("dead-letter write failed: %s", error, extra={"topic": write.message.topic(),
                                                                          "offset": write.message.offset()})

        while True:
            write.state = "pending"
            while not publisher.send_dead_letter(write.message, write.info, kind=write.kind,
                                                 attempts=write.attempts, on_done=done):
                publisher.poll()        # local queue full: make room
            while write.state == "pending":
                publisher.flush(0.1)
                self._last_loop = time.monotonic()
            if write.state == "written":
                self.metrics.dead_lettered.labels(write.kind).inc()
                return True
            retry = next_write_retry(self.config.write_retry, write.failures, self._random.random())
            if retry.pause_partition or self._stop_requested.is_set():
                log.error("dead-letter writes keep failing: the record is released for another delivery",
                          extra={"topic": write.message.topic(), "offset": write.message.offset(),
                                 "failures": write.failures})
                return False
            self._stop_requested.wait(retry.delay_seconds)

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

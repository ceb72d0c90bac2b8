"""The consumer-group Worker: the poll loop, and the chain of parts it drives.

One poll thread owns every decision; a pool of slots runs the handler. The poll thread never
sleeps and never waits on a handler (except, bounded, while a rebalance takes partitions away),
so the group membership never times out however slow the handler is.

Like the processing strategies of Sentry's arroyo, each part has one job and passes its output to
the next; the loop below calls each in turn once per iteration (submit what arrived, poll what is
due), and joins them at a revocation or shutdown (serve until the work in hand is done, bounded):

    GroupConsumer.fetch ──> Admission.submit ──> Dispatcher.poll ──> slots / InlineRunner
       (consumer.py)         (admission.py)       (dispatch.py)         (pool.py / inline_runner.py)
                                                                              │ results
    OffsetCommits.poll <── trackers <── ResultBook.poll <─────────────────────┘
       (commits.py)                      (results.py) ──> FailureRouter.submit ──> RetriedWrites
                                                            (failures.py)           (writes.py)

Beside the chain: Assignment (assignment.py, the rebalance callbacks), FlowControl and HeldRecords
(flow.py, the window: pauses and room), PoolResizer (resize.py). The share-group worker
(share_runtime.py) reuses the slots, the pool resizing, the lifecycle and the retried writes, and
brings its own consumer and completion path (acknowledgements instead of offset commits).

A sync handler of a few microseconds per record, for which a hand-off to a slot costs more than
the work, runs on the poll thread itself (see inline_runner.py and inline.py).
"""

from __future__ import annotations

import faulthandler
import logging
import time
from collections.abc import Callable

from confluent_kafka import Message
from prometheus_client import CollectorRegistry

from .admission import Admission
from .assignment import Assignment
from .commits import SYNC_COMMIT_BACKOFF_SECONDS, OffsetCommits
from .config import WorkerConfig
from .consumer import GroupConsumer
from .dispatch import Dispatcher
from .dlq import FailurePublisher
from .failures import DeadLetterBreakers, FailureRouter
from .flow import FlowControl, plan_fetch
from .inline import InlinePolicy
from .partition import DirectSegment, PartitionState, PartitionStates
from .poolsize import PoolSizeSource
from .record import Handler
from .results import ResultBook
from .shell import WorkerShell
from .writes import RetriedWrites

log = logging.getLogger("lagpilot_worker")

BUSY_WAIT_SECONDS = 0.005     # longest poll while work is out: results are noticed this fast
IDLE_WAIT_SECONDS = 0.1
GAUGE_INTERVAL_SECONDS = 2.0
STUCK_STOP_SECONDS = 5.0     # a stop still running this long past its deadline is stuck: its stacks are written out

__all__ = ["DirectSegment", "PartitionState", "Worker"]


class Worker(WorkerShell):
    """Consume `config.topics` in group `config.group_id` and run `handler` for every record.

    `handler(record)` may be a function or a coroutine function. run() blocks until stop() is
    called (from another thread or a signal handler) and the graceful shutdown is over.
    """

    def __init__(self, config: WorkerConfig, handler: Handler, *, pool_size_source: PoolSizeSource | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        super().__init__(config, handler, pool_size_source=pool_size_source, registry=registry)
        self._topics = list(dict.fromkeys([*config.topics, *config.retry_topics]))
        only = self._topics[0]
        only_topic = only if len(self._topics) == 1 and not only.startswith("^") else None
        # One dict of assigned partitions, shared by reference: the Assignment fills and empties it.
        self._states: PartitionStates = {}
        self._flow = FlowControl(config)
        self._dispatcher = Dispatcher(config, self.metrics, InlinePolicy(), is_async=self._is_async)
        self._breakers = DeadLetterBreakers(config, self.metrics, self._dispatcher.scheduler, self._dispatcher.submit)
        self._failures = FailureRouter(config, self.metrics, self._breakers,
                                       RetriedWrites(config.write_retry, self.metrics))
        self._book = ResultBook(self._results, self._dispatcher, self._states, self._failures, self.metrics,
                                self._stopping)
        self._dispatcher.book_results = self._book.poll
        self._admission = Admission(self._states, self._dispatcher, self._flow, self.metrics, self._stopping,
                                    only_topic=only_topic)
        self._commits = OffsetCommits(config, self.metrics, self._states, self._flow,
                                      update_pauses=self._update_pauses)
        self._assignment = Assignment(config, self.metrics, self._states, self._flow.held, self._commits,
                                      self._stopping, forget=self._forget, serve_until=self._serve_until,
                                      in_flight_records=self._in_flight_records)
        self._resizer.listeners += [self._flow.resized, self._dispatcher.resized]
        self._next_gauges = 0.0
        self._consumer: GroupConsumer | None = None
        self._consumer_open = False

    # -- public -----------------------------------------------------------------------------

    @property
    def direct_records(self) -> int:
        """Records run inline without lanes (read by tests)."""
        return self._dispatcher.inline.direct_records

    def assignment(self) -> list[tuple[str, int]]:
        return sorted(self._states)

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Readiness: in the group, fetching, and (by default) no open dead-letter breaker."""
        open_breakers = [f"{s.topic}[{s.partition}]" for s in list(self._breakers.open)]
        reasons: list[str] = []
        if not self._started.is_set():
            reasons.append("starting")
        if not self._assignment.assigned_once:
            reasons.append("waiting for a partition assignment")
        if self._stopping.is_set() or self._stop_requested.is_set():
            reasons.append("stopping")
        if open_breakers and self.config.ready_requires_closed_breakers:
            reasons.append("dead-letter circuit breaker open")
        stalled = [f"{s.topic}[{s.partition}]" for s in self._failures.stalled_partitions()]
        if stalled:
            reasons.append("dead-letter/retry topic writes failing")
        alive, _ = self.alive()
        if not alive:
            reasons.append("poll loop stuck")
        return not reasons, {"reasons": reasons, "open_breakers": open_breakers, "failing_writes": stalled,
                             "partitions": len(self._states), "pool_size": self.pool_size}

    def alive(self) -> tuple[bool, dict[str, object]]:
        """Liveness: the poll loop went round recently (a rebalance may hold it for revoke_timeout)."""
        since = time.monotonic() - self._last_loop
        limit = max(60.0, self.config.revoke_timeout_seconds + 30.0)
        return since < limit or self._finished.is_set(), {"seconds_since_poll": round(since, 3)}

    # -- start and stop ---------------------------------------------------------------------

    def _start(self) -> None:
        config = self.config
        processor = self._start_slots(
            config.retry, dead_letter_run_limit=config.breaker.max_consecutive if config.breaker.enabled else None)
        assert self._pool is not None
        self._dispatcher.start(self._pool, processor)
        # Computed when read, from the trackers: exact at any moment (a scrape, or a test that reads
        # it in-process right before killing the worker), not as of the last gauge update.
        self.metrics.uncommitted.set_function(self._window_use)
        if config.dlq_topic is not None or config.retry_topics:
            self._publisher = FailurePublisher(
                config.producer_settings(), group_id=config.group_id, worker_id=config.worker_id,
                dead_letter_topic=config.dlq_topic, retry_topics=config.retry_topics)
            self._publisher.load_partition_counts()
            self._failures.publisher = self._publisher
        self._pool_source.start(self._on_pool_size)
        topics = self._topics
        self._assignment.clock.subscribed(time.monotonic())
        assignment, commits = self._assignment, self._commits
        self._consumer = GroupConsumer(
            config.consumer_settings(), topics, on_assign=assignment.on_assign, on_revoke=assignment.on_revoke,
            on_lost=assignment.on_lost, on_commit_error=commits.on_commit_error, on_commit_ack=commits.on_commit_ack)
        assignment.consumer = commits.consumer = self._consumer
        self._consumer_open = True
        log.info("worker started", extra={"group": config.group_id, "topics": topics,
                                          "ordering": str(config.ordering), "pool_size": config.pool_size,
                                          "group_protocol": str(config.group_protocol),
                                          "worker_id": config.worker_id, "http_port": self.http_port})
        self._started.set()

    def _cleanup(self) -> None:
        self._stopping.set()
        self._dispatcher.close()
        if self._consumer_open:
            # Failed before a graceful shutdown: still leave the group instead of lingering in it.
            for state in self._states.values():
                state.revoked = True
            self._close_consumer()
        self._stop_slots()

    def _shutdown(self) -> None:
        """Stop fetching, let handed-out work finish until the deadline, commit, leave the group."""
        # A stop still running well past its deadline (a broker call that never answers) ends in the
        # kubelet's SIGKILL without a word: every thread's stack, written to stderr first, says where.
        faulthandler.dump_traceback_later(self.config.shutdown_timeout_seconds + STUCK_STOP_SECONDS)
        try:
            self._stop_in_order()
        finally:
            faulthandler.cancel_dump_traceback_later()

    def _stop_in_order(self) -> None:
        config = self.config
        dispatcher = self._dispatcher
        deadline = time.monotonic() + config.shutdown_timeout_seconds
        in_flight = self._in_flight_records(list(self._states.values()))
        log.info("stopping: finishing the records in hand", extra={
            "in_flight_items": len(dispatcher.jobs), "in_flight_records": in_flight,
            "deadline_seconds": config.shutdown_timeout_seconds})
        self._stopping.set()            # slots stop waiting to retry in place
        self.metrics.revoked_in_flight.inc(in_flight)
        dispatcher.cancel_all()         # finish the record in hand, start no other
        self._update_pauses()
        self._serve_until(lambda: bool(dispatcher.jobs or self._failures.pending()), deadline, serve_consumer=True)
        abandoned = dispatcher.records_out()
        abandoned_in_flight = self._in_flight_records(list(self._states.values()))
        self.metrics.revoked_abandoned.inc(abandoned_in_flight)
        dispatcher.cancel_all()
        if self._publisher is not None:
            self._publisher.flush(max(0.0, deadline - time.monotonic()))
            self._failures.poll_producer()
        self._book.poll()
        self._commit_before_leaving(deadline)
        if abandoned:
            log.warning("shutdown deadline reached: abandoned work will be delivered again",
                        extra={"records": abandoned, "abandoned_records": abandoned_in_flight})
        for state in self._states.values():
            state.revoked = True
        self._close_consumer()
        log.info("stopped", extra={"group": config.group_id})

    def _commit_before_leaving(self, deadline: float) -> None:
        """The shutdown's last commit, sent again while the broker refuses it and the deadline allows.

        Other Pods coming and going (a rolling update, a scale-down) rebalance the group while this one
        stops. A commit sent while this member's JoinGroup waits for the others is refused once the join
        completes (ILLEGAL_GENERATION; librdkafka issue #4059, the Java client's advice is the same:
        finish the rebalance, then commit again). Each refusal is the whole window processed again by the
        next owner, so the consumer is served until it holds the new generation and the commit goes
        again. Partitions the rebalance moves away are committed by the revoke callback meanwhile.
        """
        commits = self._commits
        while not commits.commit(list(self._states.values()), asynchronous=False, resend=True):
            retry_at = time.monotonic() + SYNC_COMMIT_BACKOFF_SECONDS
            if retry_at >= deadline:
                commits.report_refused(list(self._states.values()), "the broker refused the final commit at "
                                       "shutdown: its uncommitted records run again on the next owner")
                return
            log.info("final commit refused while the group rebalances: committing again once it has")
            self._serve_until(lambda: True, retry_at, serve_consumer=True)

    def _close_consumer(self) -> None:
        consumer, self._consumer_open = self._consumer, False
        if consumer is None:
            return
        try:
            consumer.close()
        except Exception:
            log.exception("closing the consumer failed; the group will notice after the session timeout")

    # -- the loop ---------------------------------------------------------------------------

    def _iterate(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        now = time.monotonic()
        self._last_loop = now
        self._apply_pool_size()
        flow = self._flow
        held = flow.held
        states = self._states
        plan = plan_fetch(room=flow.room, held=len(held.records), hold_limit=flow.hold_limit,
                          batch=self.config.consume_batch_size,
                          all_paused=bool(states) and len(flow.paused) == len(states),
                          awaiting_answer=bool(flow.awaiting_total))
        messages: list[Message] = held.take(plan.admit_held) if plan.admit_held else []
        if plan.fetch:
            if plan.for_answer:
                # The window is full and a commit answer would free it: keep consuming, which serves the
                # answers that arrived (see consumer.py), and hold what comes aside, unprocessed. Once a
                # batch is held, OffsetCommits commits synchronously.
                wait = 0.0 if self._results else BUSY_WAIT_SECONDS
            elif self._results or self._dispatcher.has_ready_work():
                wait = 0.0
            else:
                wait = self._idle_wait(now)
            mark = held.fetch_began()
            fetched = consumer.fetch(plan.fetch, wait)
            if messages:
                # A rebalance may have run inside consume(): held records of the partitions it moved are not ours.
                messages = held.still_ours(messages, mark)
            if not plan.hold:
                messages += fetched
            elif fetched:
                held.keep(fetched, mark, states)
        elif plan.wait_for_slots and not self._results and not self._commits.needs_answer(
                now, stopping=self._stopping.is_set()):
            # The window is full of unfinished records: leave records in librdkafka's queue and wait
            # for slots to finish.
            self._wake.wait(BUSY_WAIT_SECONDS)
            self._wake.clear()
        if messages:
            self._admission.submit(messages)
        self._serve(now)
        self._dispatcher.poll()
        self._update_pauses()
        self._commits.poll(now, stopping=self._stopping.is_set())
        if now >= self._next_gauges:
            self._update_gauges(now)

    def _serve(self, now: float) -> None:
        """Everything due that does not hand out new work: results, writes, timers. (Each part is asked
        only when it has something: this runs every iteration, a few records apart at times.)"""
        if self._results:
            self._book.poll()
        if self._publisher is not None:
            self._failures.poll(now)
        self._admission.poll()
        if self._breakers.open:
            self._breakers.poll(now)

    def _serve_until(self, busy: Callable[[], bool], deadline: float, serve_consumer: bool = False) -> None:
        """Join: serve results, writes and timers until `busy()` is False or the deadline passes.
        `serve_consumer`: also let the consumer serve its callbacks (everything is paused then)."""
        while busy() and time.monotonic() < deadline:
            self._last_loop = time.monotonic()
            if serve_consumer and self._consumer is not None:
                self._consumer.fetch(1, 0.0)
            self._serve(time.monotonic())
            if busy():
                self._wake.wait(0.01)
                self._wake.clear()

    def _idle_wait(self, now: float) -> float:
        # Writes waiting for their backoff are timers (below), not busy work: a write stalled for
        # hours must not spin the poll loop.
        if self._dispatcher.jobs or (self._publisher is not None and self._publisher.pending):
            return BUSY_WAIT_SECONDS
        wait = min(IDLE_WAIT_SECONDS, max(0.0, self._commits.next_commit - now))
        due = self._admission.seconds_until_due()
        if due is not None:
            wait = min(wait, due)
        if self._breakers.open:
            probe = self._breakers.seconds_until_probe(now)
            if probe is not None:
                wait = min(wait, probe)
        if self._publisher is not None:
            write_at = self._failures.next_attempt_at()
            if write_at is not None:
                wait = min(wait, max(0.0, write_at - now))
        return wait

    def _update_pauses(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        flow = self._flow
        now = time.monotonic()
        stopping = self._stopping.is_set()
        # Paused for reasons other than the window: a retry-tier record not yet due, an open breaker,
        # writes stuck (rare: the sets are looked at only when there is something in them).
        also = self._admission.waiting_partitions()
        if self._breakers.open:
            also.update(self._breakers.paused())
        if self._failures.stalled:
            also.update(self._failures.stalled_partitions())
        desired = flow.desired_pauses(self._states, now, stopping=stopping,
                                      commit_backoff=now < self._commits.sync_commit_after, also=also)
        paused = flow.paused
        if desired == paused:
            return
        consumer.pause([s.kafka_tp for s in desired - paused if not s.revoked])
        consumer.resume([s.kafka_tp for s in paused - desired if not s.revoked])
        flow.paused = desired

    # -- partitions, pool size, gauges ------------------------------------------------------

    def _forget(self, states: list[PartitionState]) -> None:
        """Revoked or lost partitions leave every part: queued and held records, breakers, pauses."""
        for state in states:
            self._dispatcher.scheduler.drop(state)
            self._admission.drop(state)
            state.held.clear()
            self._breakers.open.discard(state)
        self._flow.forget(states)

    def _in_flight_records(self, states: list[PartitionState]) -> int:
        """Records of `states` that may be running now: one per work item out with a segment of them
        (a slot runs one record at a time), plus unacknowledged dead-letter/retry writes."""
        return self._dispatcher.items_with(states) + sum(state.pending_writes for state in states)

    def _in_flight(self) -> float:
        # The poll thread counts too while it runs a work item itself (inline execution).
        return super()._in_flight() + self._dispatcher.inline.running

    def _window_use(self) -> float:
        """Records fetched and not covered by a commit the broker acknowledged (held records are not
        in it: they never started). Called from the metrics thread too: list() copies the dict at once."""
        return float(sum(state.tracker.uncommitted for state in list(self._states.values())))

    def _update_gauges(self, now: float) -> None:
        self._next_gauges = now + GAUGE_INTERVAL_SECONDS
        metrics = self.metrics
        metrics.assigned_partitions.set(len(self._states))
        metrics.paused_partitions.set(len(self._flow.paused))
        if self._consumer is None:
            return
        open_breakers = self._breakers.open
        stalled = self._failures.stalled
        for state in self._states.values():
            # Every assigned partition has a 0/1 series, so "closed" and "never reported" differ.
            partition = str(state.partition)
            metrics.breaker_open.labels(state.topic, partition).set(1 if state in open_breakers else 0)
            metrics.write_stalled.labels(state.topic, partition).set(1 if state in stalled else 0)
            high = self._consumer.high_watermark(state.topic, state.partition)
            position = state.tracker.committable()
            if position is None:
                position = state.tracker.committed
            if high is not None and position is not None:
                metrics.partition_lag.labels(state.topic, str(state.partition)).set(max(0, high - position))

"""When the poll thread runs work items itself: entry and exit thresholds (hysteresis), the budget
per loop iteration, falling back to the slots after an item held the thread, the cool-down and its
doubling, and the inline hand-back of a record that needs a retry in place (run_job, real Messages)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_worker.inline import HandlerCost, InlineGate, InlinePolicy, handler_seconds, runs_directly
from lagpilot_worker.metrics import WorkerMetrics
from lagpilot_worker.ordering import Segment
from lagpilot_worker.processing import Job, JobResult, Processor
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError, RetryPolicy, TransientError
from lagpilot_worker.threadclock import RunQueueClock

POLICY = InlinePolicy(enter_seconds_per_record=10e-6, leave_seconds_per_record=40e-6, budget_seconds=0.005,
                      stall_seconds=0.05, cooldown_seconds=10.0, max_cooldown_seconds=300.0)
FAST = 2e-6


def gate(allowed: bool = True) -> InlineGate:
    return InlineGate(POLICY, allowed=allowed)


@pytest.mark.parametrize(("inline_before", "seconds_per_record", "inline_after"), [
    (False, 0.05, False),          # not measured yet (the runtime starts assuming slow)
    (False, 41e-6, False),
    (False, 20e-6, False),         # between the thresholds: stays on slots ...
    (True, 20e-6, True),           # ... or stays inline (hysteresis)
    (False, 10e-6, True),          # at the entry threshold
    (False, FAST, True),
    (True, 40e-6, True),           # at the exit threshold: still inline
    (True, 41e-6, False),
    (True, 0.01, False),           # the handler became slow (I/O): slots at once
])
def test_thresholds_with_hysteresis(inline_before: bool, seconds_per_record: float, inline_after: bool) -> None:
    g = gate()
    g.inline = inline_before
    assert g.update(seconds_per_record, now=0.0) is inline_after
    assert g.inline is inline_after


def test_never_inline_when_not_allowed() -> None:
    g = gate(allowed=False)           # an async handler runs on its own event loop
    assert not g.update(FAST, 0.0)
    assert not g.update(0.0, 1000.0)


@pytest.mark.parametrize(("seconds_per_record", "records"), [
    (1e-6, 5000), (10e-6, 500), (40e-6, 125), (0.0, 5_000_000_000 // 1000), (0.01, 1)])
def test_budget_per_iteration(seconds_per_record: float, records: int) -> None:
    assert abs(gate().budget_records(seconds_per_record) - records) <= 1     # float division


@pytest.mark.parametrize(("elapsed", "cpu", "waited", "handed_back", "stays"), [
    (0.004, 0.004, False, False, True),     # a normal item
    (0.05, 0.05, False, False, True),       # at the bound
    (0.2, 0.2, False, False, False),        # computed for 200 ms on the poll thread
    (0.2, 0.001, True, False, False),       # slept or waited on I/O for 200 ms
    (0.2, 0.001, False, False, True),       # preempted by the OS for 200 ms: not the handler's doing
    (0.2, None, False, False, False),       # CPU time unknown: wall time counts
    (0.001, 0.001, False, True, False),     # handed a retry in place back to the slots
])
def test_item_that_held_the_poll_thread_ends_inline(elapsed: float, cpu: float | None, waited: bool,
                                                    handed_back: bool, stays: bool) -> None:
    g = gate()
    assert g.update(FAST, 0.0)
    assert g.item_finished(elapsed, 0.0, cpu_seconds=cpu, waited=waited, handed_back=handed_back) is stays
    assert g.inline is stays
    assert g.stalls == (0 if stays else 1)


@pytest.mark.parametrize(("elapsed", "cpu", "waited", "run_queue", "stays"), [
    (0.2, 0.002, True, 0.19, True),      # a short wait (the GIL), then preempted for 190 ms: not the handler
    (0.2, 0.002, True, 0.0, False),      # slept or waited on I/O for 200 ms
    (0.2, 0.002, True, 0.1, False),      # preempted for 100 ms and waited for 100 ms
    (0.2, 0.2, False, 0.0, False),       # computed for 200 ms
    (0.2, 0.002, True, None, False),     # run-queue time unknown: the wall time of a wait counts
])
def test_time_in_the_run_queue_is_not_held_by_the_handler(elapsed: float, cpu: float, waited: bool,
                                                          run_queue: float | None, stays: bool) -> None:
    g = gate()
    assert g.update(FAST, 0.0)
    assert g.item_finished(elapsed, 0.0, cpu_seconds=cpu, waited=waited, run_queue_seconds=run_queue) is stays


@pytest.mark.parametrize(("elapsed", "records", "cpu", "waits", "cost"), [
    # A no-op handler in a slot on a loaded host: 50 µs per record of wall time, 1.5 µs of CPU, and
    # a GIL hand-over every few ms: its cost is its CPU time, so the gate can engage.
    (0.25, 5000, 0.0075, 40, 0.0075),
    (0.25, 5000, 0.0075, 500, 0.0075),   # one wait in ten records: still CPU
    (0.25, 5000, 0.0075, 501, 0.25),     # more: the handler waits (I/O, sleep, a lock), slots overlap that
    (0.1, 100, 0.002, 100, 0.1),         # 1 ms of I/O per record
    (0.004, 1, 0.0001, 1, 0.004),        # a single record that waited
    (0.25, 5000, None, 0, 0.25),         # CPU time unknown: wall time
    (0.001, 10, 0.0012, 0, 0.001),       # clocks of different grain: never more than the wall time
])
def test_handler_cost_is_cpu_time_unless_it_waits_per_record(elapsed: float, records: int, cpu: float | None,
                                                             waits: int, cost: float) -> None:
    assert handler_seconds(POLICY, elapsed, records=records, cpu_seconds=cpu, waits=waits) == cost


def test_handler_cost_is_the_upper_median_of_the_last_items() -> None:
    cost = HandlerCost(POLICY, 0.05)           # assume slow until measured
    assert cost.seconds_per_record == 0.05
    cost.add(FAST)
    assert cost.seconds_per_record == 0.05, "one item must not decide (upper median)"
    cost.add(FAST)
    assert cost.seconds_per_record == FAST
    # Seen on a loaded host: a 20-record item that waited three times for the GIL read 1.4 ms per
    # record amid items of 2 µs. An average moved 20 % towards it stayed above the entry bound for
    # the rest of the test; the median does not move.
    for reading in [FAST, 1.4e-3, FAST, FAST]:
        cost.add(reading)
        assert cost.seconds_per_record == FAST
    cost.add(1e-3)
    assert cost.seconds_per_record == FAST
    cost.add(1e-3)                              # the handler got slower: 3 of the last 5 items are slow
    assert cost.seconds_per_record >= 1e-3
    assert gate().update(cost.seconds_per_record, 0.0) is False


def test_cooldown_after_a_stall_doubles_up_to_the_cap_and_is_forgotten() -> None:
    g = gate()
    now = 0.0
    expected = [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]
    for cooldown in expected:
        assert g.update(FAST, now)
        assert not g.item_finished(0.2, now, cpu_seconds=0.2)
        assert g.seconds_until_allowed(now) == cooldown
        assert not g.update(FAST, now + cooldown - 0.001), "back inline before the cool-down was over"
        now += cooldown
    assert g.stalls == len(expected)
    # Quiet (inline, no stall) for a whole max cool-down after the last one ended: start over at 10 s.
    now += POLICY.max_cooldown_seconds
    assert g.update(FAST, now)
    assert g.stalls == 0
    assert not g.item_finished(0.2, now, cpu_seconds=0.2)
    assert g.seconds_until_allowed(now) == 10.0


def test_slow_measure_after_the_cooldown_keeps_slots() -> None:
    g = gate()
    assert g.update(FAST, 0.0)
    assert not g.item_finished(0.2, 0.0, waited=True, cpu_seconds=0.0)
    assert not g.update(50e-6, 11.0)      # cool-down over, but the smoothed time is above entry
    assert g.update(FAST, 12.0)


@pytest.mark.parametrize("kwargs", [
    {"enter_seconds_per_record": 0.0}, {"enter_seconds_per_record": 5e-5, "leave_seconds_per_record": 4e-5},
    {"budget_seconds": 0.0}, {"stall_seconds": -1.0}, {"cooldown_seconds": 400.0}, {"waits_per_record": -0.1},
    {"cost_items": 0},
])
def test_policy_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        InlinePolicy(**kwargs)


events = st.lists(st.one_of(
    st.tuples(st.just("update"), st.sampled_from([0.0, 1e-6, 9e-6, 10e-6, 11e-6, 39e-6, 41e-6, 1e-3, 0.05])),
    st.tuples(st.just("item"), st.sampled_from([0.001, 0.049, 0.051, 0.2, 5.0])),
    st.tuples(st.just("wait"), st.sampled_from([0.1, 5.0, 9.9, 10.0, 100.0, 400.0])),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(events)
def test_invariants(sequence: list[tuple[str, float]]) -> None:
    g = gate()
    now = 0.0
    blocked_until = 0.0
    for kind, value in sequence:
        if kind == "wait":
            now += value
        elif kind == "update":
            was_inline = g.inline
            inline = g.update(value, now)
            if inline:
                assert value <= POLICY.leave_seconds_per_record
                assert now >= blocked_until, "inline again during a cool-down"
                if not was_inline:
                    assert value <= POLICY.enter_seconds_per_record
        elif g.inline:
            stays = g.item_finished(value, now, cpu_seconds=value)
            assert stays is (value <= POLICY.stall_seconds)
            if not stays:
                blocked_until = now + POLICY.cooldown_seconds
                cooldown = g.seconds_until_allowed(now)
                assert POLICY.cooldown_seconds - 1e-9 <= cooldown <= POLICY.max_cooldown_seconds + 1e-9


# -- run_job on the poll thread ---------------------------------------------------------------


class FakePartition:
    revoked = False
    halted = False
    tier = 0


def message(offset: int) -> Message:
    return Message(topic="orders", partition=0, offset=offset, key=b"k", value=b"v",
                   timestamp=(1, int(time.time() * 1000)))


def run_inline(fail_at: int, error: Exception) -> tuple[JobResult, Job, list[int], float]:
    calls: list[int] = []

    def handler(record: Record) -> None:
        calls.append(record.offset)
        if record.offset == fail_at:
            raise error

    results: deque[JobResult] = deque()
    metrics = WorkerMetrics()
    # A backoff of 5 s: waited out on the poll thread, the test would notice.
    processor = Processor(handler, deserializer=None, classifier=None,
                          policy=RetryPolicy(attempts_in_place=3, backoff_initial_seconds=5.0, jitter=0),
                          processing=metrics.processing, end_to_end=metrics.end_to_end, results=results,
                          wake=threading.Event(), stopping=threading.Event())
    job = Job([Segment(FakePartition(), [message(i) for i in range(5)], []),
               Segment(FakePartition(), [message(10 + i) for i in range(3)], [])], inline=True)
    began = time.monotonic()
    processor.run_job(job)
    [result] = results
    return result, job, calls, time.monotonic() - began


def test_inline_retry_in_place_is_handed_back_without_waiting() -> None:
    result, job, calls, took = run_inline(2, TransientError("timeout"))
    assert took < 1.0, "the poll thread waited out a retry backoff"
    assert job.handed_back
    assert calls == [0, 1, 2]
    # The failing record is not handled: it and everything after it go back to the queue in order
    # (the runtime requeues the unhandled tail of each segment) and a slot runs it from attempt 1.
    assert result.segments == [(2, None), (0, None)]
    assert result.handled == 2 and result.failed_attempts == 1 and result.retries_in_place == 0


def test_inline_failure_without_retry_in_place_is_booked_as_in_a_slot() -> None:
    result, job, calls, _ = run_inline(2, PermanentError("bad"))
    assert not job.handed_back
    assert calls == [0, 1, 2, 3, 4, 10, 11, 12]
    [(handled, failures), second] = result.segments
    assert handled == 5 and second == (3, None)
    assert failures is not None and [f.index for f in failures] == [2]


def run_in_a_slot(handler: Callable[[Record], None], records: int) -> JobResult:
    results: deque[JobResult] = deque()
    metrics = WorkerMetrics()
    processor = Processor(handler, deserializer=None, classifier=None, policy=RetryPolicy(),
                          processing=metrics.processing, end_to_end=metrics.end_to_end, results=results,
                          wake=threading.Event(), stopping=threading.Event())
    job = Job([Segment(FakePartition(), [message(i) for i in range(records)], [])])
    slot = threading.Thread(target=processor.run_job, args=(job,), name="lagpilot-slot-test")
    slot.start()
    slot.join(30)
    [result] = results
    return result


def test_a_fast_handler_beside_a_busy_thread_is_judged_by_its_cpu_time() -> None:
    # Another thread spins on the GIL, as the slots and the poll thread do on a loaded host: the
    # item's wall time grows with every wait for the GIL, its CPU time does not.
    spinning = threading.Event()
    done = threading.Event()

    def spin() -> None:
        spinning.set()
        while not done.is_set():
            pass

    hog = threading.Thread(target=spin, name="gil-hog")
    hog.start()
    spinning.wait(5)
    try:
        records = 20_000
        result = run_in_a_slot(lambda record: None, records)
    finally:
        done.set()
        hog.join(5)
    assert result.handled == records
    assert result.cpu_seconds is not None and result.cpu_seconds <= result.elapsed
    assert result.waits <= records * POLICY.waits_per_record, "GIL hand-overs counted as waits of the handler"
    cost = handler_seconds(POLICY, result.elapsed, records=result.handled, cpu_seconds=result.cpu_seconds,
                           waits=result.waits)
    assert cost == result.cpu_seconds
    assert cost / records <= POLICY.enter_seconds_per_record, f"a no-op costs {cost / records * 1e6:.1f} µs"


def test_a_handler_that_sleeps_per_record_is_judged_by_its_wall_time() -> None:
    records = 20
    result = run_in_a_slot(lambda record: time.sleep(0.002), records)
    assert result.waits >= records
    cost = handler_seconds(POLICY, result.elapsed, records=result.handled, cpu_seconds=result.cpu_seconds,
                           waits=result.waits)
    assert cost == result.elapsed >= records * 0.002
    assert cost / records > POLICY.leave_seconds_per_record


def test_run_queue_clock_reads_the_threads_time_off_cpu() -> None:
    clock = RunQueueClock()
    try:
        first = clock.read()
        assert first is not None and first >= 0.0      # Linux: /proc/thread-self/schedstat
        second = clock.read()
        assert second is not None and second >= first
    finally:
        clock.close()
    assert clock.read() is None


# -- runs_directly: when a fetched run may skip the key lanes ---------------------------------

DIRECT_OK: dict[str, object] = {"inline": True, "tier": 0, "in_flight": 0, "out_segments": 0, "halted": False,
                                "breaker_closed": True, "held": 0, "blocked": False, "paused": False,
                                "stopping": False}


def test_a_run_of_an_idle_partition_runs_directly_while_inline() -> None:
    assert runs_directly(**DIRECT_OK)  # type: ignore[arg-type]


@pytest.mark.parametrize(("field", "value", "why"), [
    ("inline", False, "slots run items concurrently: lanes keep the order"),
    ("tier", 1, "retry-tier records wait for their due time"),
    ("in_flight", 1, "earlier records of the partition are queued, handed out, held or being written"),
    ("out_segments", 1, "a slot holds records of the partition"),
    ("halted", True, "the breaker stopped the partition"),
    ("breaker_closed", False, "an open or probing breaker decides what runs"),
    ("held", 2, "the breaker holds records back"),
    ("blocked", True, "the scheduler hands out nothing of the partition"),
    ("paused", True, "the partition is paused"),
    ("stopping", True, "shutting down: start nothing new"),
])
def test_any_other_state_keeps_the_lanes(field: str, value: object, why: str) -> None:
    assert not runs_directly(**{**DIRECT_OK, field: value}), why  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(inline=st.booleans(), tier=st.integers(0, 3), in_flight=st.integers(0, 5), out_segments=st.integers(0, 3),
       halted=st.booleans(), breaker_closed=st.booleans(), held=st.integers(0, 3), blocked=st.booleans(),
       paused=st.booleans(), stopping=st.booleans())
def test_runs_directly_only_when_every_condition_holds(
        inline: bool, tier: int, in_flight: int, out_segments: int, halted: bool, breaker_closed: bool, held: int,
        blocked: bool, paused: bool, stopping: bool) -> None:
    decided = runs_directly(inline=inline, tier=tier, in_flight=in_flight, out_segments=out_segments, halted=halted,
                            breaker_closed=breaker_closed, held=held, blocked=blocked, paused=paused,
                            stopping=stopping)
    expected = (inline and tier == 0 and in_flight == 0 and out_segments == 0 and not halted and breaker_closed
                and held == 0 and not blocked and not paused and not stopping)
    assert decided == expected

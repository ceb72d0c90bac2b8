"""The pure decisions of the split runtime's parts, and the retried writes both workers share."""

from __future__ import annotations

import math

from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from lagpilot_worker.commits import CommitChoice, WindowCounts, choose_commit
from lagpilot_worker.dispatch import item_size_bounds
from lagpilot_worker.flow import plan_fetch
from lagpilot_worker.metrics import WorkerMetrics
from lagpilot_worker.pool import SlotPool
from lagpilot_worker.resize import PoolResizer
from lagpilot_worker.write_retry import WriteRetry, WriteRetryPolicy
from lagpilot_worker.writes import RetriedWrites

# -- plan_fetch ---------------------------------------------------------------------------------


def test_room_fetches_a_batch_and_admits_it() -> None:
    plan = plan_fetch(room=5000, held=0, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=False)
    assert (plan.admit_held, plan.fetch, plan.hold, plan.for_answer, plan.wait_for_slots) == (0, 1000, False, False,
                                                                                           False)


def test_never_fetches_more_than_the_room() -> None:
    assert plan_fetch(room=7, held=0, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=False).fetch == 7


def test_held_records_go_first_and_the_fetch_takes_the_rest_of_the_room() -> None:
    plan = plan_fetch(room=100, held=30, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=False)
    assert (plan.admit_held, plan.fetch, plan.hold) == (30, 70, False)


def test_held_records_filling_the_room_leave_no_fetch_unless_an_answer_is_awaited() -> None:
    plan = plan_fetch(room=30, held=100, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=False)
    assert (plan.admit_held, plan.fetch, plan.wait_for_slots) == (30, 0, True)
    plan = plan_fetch(room=30, held=100, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=True)
    # 70 still held after the 30 admitted: room for 430 more until the hold limit.
    assert (plan.admit_held, plan.fetch, plan.hold, plan.for_answer) == (30, 430, True, True)


def test_all_paused_still_calls_the_consumer_for_its_callbacks() -> None:
    plan = plan_fetch(room=0, held=0, hold_limit=500, batch=1000, all_paused=True, awaiting_answer=False)
    assert (plan.fetch, plan.hold, plan.for_answer) == (1, True, False)


def test_a_full_window_awaiting_an_answer_holds_up_to_the_limit_then_waits() -> None:
    plan = plan_fetch(room=0, held=200, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=True)
    assert (plan.fetch, plan.hold, plan.for_answer) == (300, True, True)
    plan = plan_fetch(room=0, held=500, hold_limit=500, batch=1000, all_paused=False, awaiting_answer=True)
    assert (plan.fetch, plan.wait_for_slots) == (0, True)


# -- choose_commit --------------------------------------------------------------------------------


def counts(**overrides: object) -> WindowCounts:
    fields: dict[str, object] = {"room": 1000, "window": 1000, "uncommitted": 0, "releasable": 0, "awaiting": 0,
                                 "holding_full": False}
    fields.update(overrides)
    return WindowCounts(**fields)  # type: ignore[arg-type]


def choose(window: WindowCounts, *, now: float = 10.0, next_commit: float = 15.0, last_commit: float = 9.0,
           sync_commit_after: float = 0.0, stopping: bool = False) -> CommitChoice:
    return choose_commit(window, now=now, next_commit=next_commit, last_commit=last_commit,
                         sync_commit_after=sync_commit_after, stopping=stopping)


def test_commits_on_the_interval() -> None:
    assert choose(counts(), now=15.0) is CommitChoice.ON_INTERVAL


def test_commits_sooner_from_half_the_window() -> None:
    assert choose(counts(uncommitted=499, releasable=300)) is CommitChoice.NOT_YET
    assert choose(counts(uncommitted=500, releasable=300)) is CommitChoice.SOONER


def test_a_little_finished_work_waits_for_the_gap_a_quarter_does_not() -> None:
    assert choose(counts(uncommitted=600, releasable=10), last_commit=9.99) is CommitChoice.NOT_YET
    assert choose(counts(uncommitted=600, releasable=10), last_commit=9.0) is CommitChoice.SOONER
    assert choose(counts(uncommitted=600, releasable=250), last_commit=9.99) is CommitChoice.SOONER


def test_a_full_window_with_finished_work_and_no_answer_pending_commits_at_once() -> None:
    assert choose(counts(room=0, uncommitted=100, releasable=1)) is CommitChoice.SOONER


def test_a_full_window_with_a_batch_held_waits_for_the_answer_unless_backing_off_or_stopping() -> None:
    full = counts(room=0, uncommitted=1000, releasable=10, awaiting=500, holding_full=True)
    assert choose(full) is CommitChoice.WAIT_FOR_ANSWER
    assert choose(full, sync_commit_after=11.0) is not CommitChoice.WAIT_FOR_ANSWER
    assert choose(full, stopping=True) is not CommitChoice.WAIT_FOR_ANSWER


# -- item_size_bounds -----------------------------------------------------------------------------


def test_items_hold_5_to_100_ms_of_work_within_the_record_limit() -> None:
    assert item_size_bounds(0.01, 4096) == (10, 1)
    assert item_size_bounds(1e-6, 4096) == (4096, 4096)
    assert item_size_bounds(10.0, 4096) == (1, 1)
    assert item_size_bounds(0.0, 100) == (100, 100)


# -- PoolResizer ----------------------------------------------------------------------------------


class RecordingPool:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def resize(self, size: int) -> None:
        self.sizes.append(size)


def test_the_wish_is_clamped_and_applied_once_in_the_poll_thread() -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    resizer = PoolResizer(4, 16, metrics.pool_size)
    told: list[int] = []
    resizer.listeners.append(told.append)
    pool = RecordingPool()
    slot_pool: SlotPool[object] = pool  # type: ignore[assignment]
    assert not resizer.apply(slot_pool)
    resizer.wish(100)
    assert resizer.size == 4                    # not before the poll thread applies it
    assert resizer.apply(slot_pool) and not resizer.apply(slot_pool)
    resizer.wish(0)
    assert resizer.apply(slot_pool)
    assert (pool.sizes, told, resizer.size) == ([16, 1], [16, 1], 1)
    assert metrics.pool_size._value.get() == 1


# -- RetriedWrites --------------------------------------------------------------------------------


class Owner:
    def __init__(self, give_up_after: int = 1000, abandoned: bool = False) -> None:
        self.events: list[str] = []
        self.give_up_after = give_up_after
        self.is_abandoned = abandoned
        self.retries: list[WriteRetry] = []

    def abandoned(self) -> bool:
        return self.is_abandoned

    def written(self) -> None:
        self.events.append("written")

    def failed(self, error: str, failures: int, retry: WriteRetry) -> bool:
        self.events.append(f"failed {failures}: {error}")
        self.retries.append(retry)
        return failures < self.give_up_after

    def ended(self) -> None:
        self.events.append("ended")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def writer(clock: Clock) -> tuple[RetriedWrites, WorkerMetrics]:
    metrics = WorkerMetrics(CollectorRegistry())
    policy = WriteRetryPolicy(attempts_before_pause=2, backoff_initial_seconds=1.0, backoff_max_seconds=4.0, jitter=0.0)
    return RetriedWrites(policy, metrics, random_unit=lambda: 0.0, clock=clock), metrics


def test_a_write_acknowledged_at_once_is_written_then_ended() -> None:
    writes, _ = writer(Clock())
    owner = Owner()
    writes.write(lambda done: (done(None), True)[1], owner)
    assert owner.events == ["written", "ended"] and writes.waiting == 0


def test_a_failing_write_is_tried_again_after_its_backoff_until_it_goes_through() -> None:
    clock = Clock()
    writes, metrics = writer(clock)
    owner = Owner()
    answers = [KafkaError(KafkaError._MSG_TIMED_OUT), None]
    sends: list[int] = []

    def send(done: object) -> bool:
        sends.append(1)
        if len(sends) == 1:
            return False                        # the producer's queue is full
        done(answers.pop(0))  # type: ignore[operator]
        return True

    writes.write(send, owner)
    assert writes.waiting == 1 and writes.next_attempt_at() == 101.0
    writes.poll(100.5)
    assert len(sends) == 1
    clock.now = 101.0
    writes.poll(101.0)                          # second attempt: delivered with an error
    assert writes.waiting == 1 and writes.next_attempt_at() == 103.0   # backoff doubles
    assert [r.pause_partition for r in owner.retries] == [False, True]
    writes.poll(math.inf)
    assert owner.events[-2:] == ["written", "ended"] and len(sends) == 3
    assert owner.events[0].startswith("failed 1: the producer's queue is full")
    assert metrics.write_errors._value.get() == 2


def test_an_owner_that_gives_up_ends_the_write() -> None:
    writes, _ = writer(Clock())
    owner = Owner(give_up_after=1)
    writes.write(lambda done: False, owner)
    assert owner.events == ["failed 1: the producer's queue is full", "ended"] and writes.waiting == 0


def test_an_abandoned_write_ends_silently_and_a_send_that_raises_counts_as_a_failure() -> None:
    writes, _ = writer(Clock())
    gone = Owner(abandoned=True)
    writes.write(lambda done: False, gone)
    assert gone.events == ["ended"]

    def refuse(done: object) -> bool:
        raise RuntimeError("unknown topic")

    owner = Owner(give_up_after=1)
    writes.write(refuse, owner)
    assert owner.events == ["failed 1: could not queue the write: unknown topic", "ended"]

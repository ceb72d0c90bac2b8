"""The scheduler hands out only what the ordering mode allows, and the window pauses fetching."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_worker.ordering import Backpressure, OrderingMode, Scheduler, WindowLimits, WorkItem

Msg = tuple[int, int, str]          # (partition, offset, key); key "." means null
Sched = Scheduler[int, Msg]


def enqueue(s: Sched, partition: int, keys: str, first_offset: int = 0) -> list[Msg]:
    """One message per character of `keys`; '.' is a null key."""
    batch = [(partition, first_offset + i, k) for i, k in enumerate(keys)]
    s.enqueue(partition, batch, [None if k == "." else k.encode() for k in keys])
    return batch


def flat(items: list[WorkItem[int, Msg]]) -> list[list[tuple[int, int]]]:
    return sorted([[(m[0], m[1]) for seg in item for m in seg.messages] for item in items])


def release_all(s: Sched, items: list[WorkItem[int, Msg]]) -> None:
    for item in items:
        for seg in item:
            for lane in seg.lanes:
                s.release(lane)


def test_partition_mode_hands_out_one_run_per_partition() -> None:
    s: Sched = Scheduler(OrderingMode.PARTITION)
    enqueue(s, 0, "abc")
    enqueue(s, 1, "ab")
    items = s.take(max_items=8, max_messages_per_item=100)
    assert flat(items) == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1)]]
    enqueue(s, 0, "z", first_offset=3)
    assert s.take(8, 100) == []            # partition 0 still has work out
    release_all(s, items)
    assert flat(s.take(8, 100)) == [[(0, 3)]]


def test_key_mode_overlaps_keys_but_not_one_key() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    enqueue(s, 0, "aabba")
    items = s.take(max_items=8, max_messages_per_item=100)
    assert flat(items) == [[(0, 0), (0, 1), (0, 4)], [(0, 2), (0, 3)]]
    enqueue(s, 0, "bc", first_offset=5)
    assert flat(s.take(8, 100)) == [[(0, 6)]]      # c is free, b waits for its run
    b_lane = next(lane for item in items for seg in item for lane in seg.lanes if lane.key == b"b")
    s.release(b_lane)
    assert flat(s.take(8, 100)) == [[(0, 5)]]


def test_key_mode_null_keys_are_unordered() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    enqueue(s, 0, "...")
    items = s.take(8, 100)
    assert len(items) == 3 and all(not seg.lanes for item in items for seg in item)


def test_key_mode_requires_keys() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    with pytest.raises(ValueError, match="one key per message"):
        s.enqueue(0, [(0, 0, "a")])


def test_capacity_packs_lanes_into_balanced_items() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    enqueue(s, 0, "abcdefgh")
    items = s.take(max_items=3, max_messages_per_item=100)
    assert sorted(sum(len(seg.messages) for seg in item) for item in items) == [2, 3, 3]
    assert s.queued == 0


def test_item_size_cap_leaves_rest_queued_in_order() -> None:
    s: Sched = Scheduler(OrderingMode.PARTITION)
    enqueue(s, 0, "abcdef")
    items = s.take(4, 4)
    assert flat(items) == [[(0, 0), (0, 1), (0, 2), (0, 3)]]
    assert s.queued == 2
    release_all(s, items)
    assert flat(s.take(4, 4)) == [[(0, 4), (0, 5)]]


def test_unordered_spreads_over_items_and_partitions() -> None:
    s: Sched = Scheduler(OrderingMode.UNORDERED)
    enqueue(s, 0, "aaaa")
    enqueue(s, 1, "bbbb")
    items = s.take(max_items=4, max_messages_per_item=100)
    assert len(items) == 4 and all(sum(len(seg.messages) for seg in item) == 2 for item in items)
    assert {m[0] for item in items for seg in item for m in seg.messages} == {0, 1}
    assert s.queued == 0


def test_unordered_respects_size_cap() -> None:
    s: Sched = Scheduler(OrderingMode.UNORDERED)
    enqueue(s, 0, "a" * 50)
    items = s.take(max_items=2, max_messages_per_item=10)
    assert [sum(len(seg.messages) for seg in item) for item in items] == [10, 10]
    assert s.queued == 30


def test_block_drop_and_unblock() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    enqueue(s, 0, "ab")
    enqueue(s, 1, "ab.")
    s.block(0)
    assert {seg.partition for item in s.take(8, 100) for seg in item} == {1}
    s.unblock(0)
    assert {seg.partition for item in s.take(8, 100) for seg in item} == {0}
    enqueue(s, 1, "cd.", first_offset=10)
    dropped = s.drop(1)
    assert sorted(m[1] for m in dropped) == [10, 11, 12] and s.queued == 0


@pytest.mark.parametrize("mode", list(OrderingMode))
def test_release_after_drop_is_harmless(mode: OrderingMode) -> None:
    s: Sched = Scheduler(mode)
    enqueue(s, 0, "aab")
    items = s.take(8, 100)
    s.drop(0)
    release_all(s, items)
    assert s.take(8, 100) == [] and s.queued == 0


@settings(max_examples=300, deadline=None)
@given(
    mode=st.sampled_from(list(OrderingMode)),
    batches=st.lists(st.tuples(st.integers(0, 2), st.text(alphabet="abc.", min_size=1, max_size=6)),
                     min_size=1, max_size=25),
    max_items=st.integers(1, 6),
    max_per_item=st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_simulated_run_respects_mode_and_finishes_everything(
    mode: OrderingMode, batches: list[tuple[int, str]], max_items: int, max_per_item: int, seed: int
) -> None:
    """Random interleaving of enqueue/take/run/release: no lane in two places, order holds, nothing lost."""
    rng = random.Random(seed)
    s: Sched = Scheduler(mode)
    next_offset = {0: 0, 1: 0, 2: 0}
    pending = list(batches)
    outstanding: list[WorkItem[int, Msg]] = []     # items handed out; segments run in order
    started: list[Msg] = []
    lanes_out: set[tuple[int, str]] = set()

    def lane_of(m: Msg) -> tuple[int, str] | None:
        if mode is OrderingMode.PARTITION:
            return (m[0], "")
        if mode is OrderingMode.KEY and m[2] != ".":
            return (m[0], m[2])
        return None

    def hand_out(items: list[WorkItem[int, Msg]]) -> None:
        for item in items:
            assert 0 < sum(len(seg.messages) for seg in item) <= max_per_item
            for seg in item:
                assert all(m[0] == seg.partition for m in seg.messages)
                lanes = [lane_of(m) for m in seg.messages]
                if seg.lanes:
                    assert None not in lanes
                    # whole runs, one lane after another
                    runs = [lane for i, lane in enumerate(lanes) if i == 0 or lanes[i - 1] != lane]
                    assert len(runs) == len(set(runs)) == len(seg.lanes), "a segment interleaves lanes"
                else:
                    assert set(lanes) == {None}
                for lane in set(lanes) - {None}:
                    assert lane not in lanes_out, f"lane {lane} handed out twice"
                    lanes_out.add(lane)
            outstanding.append(item)

    while pending or outstanding or s.queued:
        action = rng.random()
        if pending and action < 0.35:
            partition, keys = pending.pop(0)
            enqueue(s, partition, keys, next_offset[partition])
            next_offset[partition] += len(keys)
        elif action < 0.65 or not outstanding:
            items = s.take(max_items - len(outstanding), max_per_item)
            if not items and not outstanding and not pending:
                raise AssertionError("queued messages but nothing can start and nothing is running")
            hand_out(items)
        else:
            item = outstanding.pop(rng.randrange(len(outstanding)))
            for seg in item:
                started.extend(seg.messages)
                for m in seg.messages:
                    lanes_out.discard(lane_of(m))  # type: ignore[arg-type]
                for lane in seg.lanes:
                    s.release(lane)
    assert sorted((m[0], m[1]) for m in started) == sorted(
        (p, o) for p in next_offset for o in range(next_offset[p]))
    last: dict[object, int] = {}
    for m in started:
        lane = lane_of(m)
        if lane is not None:
            assert last.get(lane, -1) < m[1], f"lane {lane} out of order"
            last[lane] = m[1]


LIMITS = WindowLimits(max_uncommitted=100, min_per_partition=10, pressure_fraction=0.75, resume_fraction=0.5,
                      full_grace_seconds=1.0)


@pytest.mark.parametrize(
    ("counts", "paused", "room"),
    [
        ({0: 10, 1: 10}, set(), 80),
        ({0: 70, 1: 0}, set(), 30),        # over its share (50) but no pressure: pausing would only cost
        ({0: 70, 1: 10}, {0}, 20),         # lasting pressure (80 >= 75): the hog stops, the other goes on
        ({0: 40, 1: 40}, set(), 20),       # pressure but nobody over the share: just take less
        ({0: 50, 1: 50}, {0, 1}, 0),       # full for the whole grace period: everything pauses
    ],
)
def test_backpressure_decision(counts: dict[int, int], paused: set[int], room: int) -> None:
    gate: Backpressure[int] = Backpressure(LIMITS)
    first = gate.update(counts, now=0.0)
    assert (first.paused, first.room) == (set(), room)          # a moment of pressure changes nothing
    decision = gate.update(counts, now=LIMITS.full_grace_seconds)
    assert (decision.paused, decision.room) == (paused, room)


def test_hog_resumes_with_hysteresis() -> None:
    gate: Backpressure[int] = Backpressure(LIMITS)
    gate.update({0: 70, 1: 10}, 0.0)
    assert gate.update({0: 70, 1: 10}, 1.0).paused == {0}
    assert gate.update({0: 60, 1: 10}, 1.1).paused == {0}      # still above half its share, window busy
    assert gate.update({0: 30, 1: 10}, 1.2).paused == set()    # window relaxed (<= 50)
    assert gate.update({0: 60, 1: 10}, 1.3).paused == set()    # no lasting pressure: no pause


def test_full_window_pauses_everything_only_after_grace() -> None:
    gate: Backpressure[int] = Backpressure(LIMITS)
    full = {0: 25, 1: 25, 2: 25, 3: 25}      # full, evenly: nobody over its share
    assert gate.update(full, 10.0).paused == set()
    assert gate.update(full, 10.5).room == 0
    assert gate.update(full, 10.99).paused == set()
    assert gate.update(full, 11.0).paused == {0, 1, 2, 3}
    assert gate.update({0: 30, 1: 30, 2: 0, 3: 0}, 11.5).paused == {0, 1, 2, 3}   # 60 > 50: stays paused
    assert gate.update({0: 25, 1: 25, 2: 0, 3: 0}, 12.0).paused == set()          # down to half: resume


def test_brief_fullness_resets_the_grace_timer() -> None:
    gate: Backpressure[int] = Backpressure(LIMITS)
    gate.update({0: 100}, 0.0)
    gate.update({0: 90}, 0.6)
    assert gate.update({0: 100}, 0.9).paused == set()
    assert gate.update({0: 100}, 1.8).paused == set()
    assert gate.update({0: 100}, 2.0).paused == {0}


@given(st.lists(st.dictionaries(st.integers(0, 5), st.integers(0, 200), min_size=1), min_size=1, max_size=20),
       st.integers(10, 400))
def test_backpressure_invariants(rounds: list[dict[int, int]], window: int) -> None:
    limits = WindowLimits(max_uncommitted=window, min_per_partition=8)
    gate: Backpressure[int] = Backpressure(limits)
    for step, counts in enumerate(rounds):
        gate.update(counts, now=float(step))
        decision = gate.update(counts, now=float(step) + limits.full_grace_seconds)
        total = sum(counts.values())
        assert decision.room == max(0, window - total)   # never take beyond the window
        assert decision.paused <= set(counts)
        share = limits.per_partition(len(counts))
        if total >= window * limits.pressure_fraction:
            assert {tp for tp, c in counts.items() if c > share} <= decision.paused
        if total >= window:
            assert decision.paused == set(counts)
        if total <= window * limits.resume_fraction:
            assert decision.paused == set()              # a relaxed window never keeps anything paused


@pytest.mark.parametrize("mode", list(OrderingMode))
def test_requeue_puts_the_unrun_tail_first(mode: OrderingMode) -> None:
    s: Sched = Scheduler(mode)
    enqueue(s, 0, "aaaa")
    items = s.take(1, 3)
    segment = items[0][0]
    assert [m[1] for m in segment.messages] == [0, 1, 2]
    tail = segment.messages[1:]                     # message 0 ran, 1 and 2 did not
    s.requeue(segment, tail, [m[2].encode() for m in tail])
    assert s.queued == 3
    again = s.take(1, 10)
    assert [m[1] for seg in again[0] for m in seg.messages] == [1, 2, 3]


@pytest.mark.parametrize("mode", list(OrderingMode))
def test_min_messages_per_item_limits_the_number_of_items(mode: OrderingMode) -> None:
    s: Sched = Scheduler(mode)
    enqueue(s, 0, "abcdefghij" * 10)
    items = s.take(max_items=8, max_messages_per_item=1000, min_messages_per_item=40)
    sizes = [sum(len(seg.messages) for seg in item) for item in items]
    expected_items = 1 if mode is OrderingMode.PARTITION else 3     # ceil(100 / 40)
    assert len(items) == expected_items and sum(sizes) == 100


def test_key_mode_lanes_of_a_partition_share_a_segment_and_requeue_by_key() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    enqueue(s, 0, "abab")
    enqueue(s, 1, "c")
    [item] = s.take(max_items=1, max_messages_per_item=100)
    by_partition = {seg.partition: seg for seg in item}
    seg0 = by_partition[0]
    assert [m[1] for m in seg0.messages] == [0, 2, 1, 3] and len(seg0.lanes) == 2
    # 'a' finished, 'b' (offsets 1 and 3) did not run: it comes back, 'a' is free again
    s.requeue(seg0, seg0.messages[2:], [b"b", b"b"])
    enqueue(s, 0, "a", first_offset=4)
    again = s.take(max_items=4, max_messages_per_item=100)
    assert flat(again) == [[(0, 1), (0, 3)], [(0, 4)]]


def test_idle_lanes_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from lagpilot_worker import ordering

    monkeypatch.setattr(ordering, "MAX_IDLE_LANES_PER_PARTITION", 5)
    s: Sched = Scheduler(OrderingMode.KEY)
    for offset in range(40):
        enqueue(s, 0, "abcdefghijklmnopqrstuvwxyz"[offset % 26], first_offset=offset)
        release_all(s, s.take(1, 10))
        assert len(s._lanes[0]) <= 6       # the bound, plus the lane just created


# -- hold: a lane taken for a message that ran without one ----------------------------------------

def test_hold_keeps_later_messages_of_the_key_behind_the_held_one() -> None:
    s: Sched = Scheduler(OrderingMode.KEY)
    lane = s.hold(0, b"a")
    assert lane is not None
    enqueue(s, 0, "aab", first_offset=10)
    [item] = s.take(4, 100)
    assert [m for seg in item for m in seg.messages] == [(0, 12, "b")], "key a must wait for the held message"
    s.release(lane)
    [item] = s.take(4, 100)
    assert [m for seg in item for m in seg.messages] == [(0, 10, "a"), (0, 11, "a")]


def test_hold_in_partition_mode_holds_the_partition() -> None:
    s: Sched = Scheduler(OrderingMode.PARTITION)
    lane = s.hold(0, b"a")
    assert lane is not None
    s.enqueue(0, [(0, 5, "x")])
    s.enqueue(1, [(1, 5, "y")])
    assert [m for item in s.take(4, 100) for seg in item for m in seg.messages] == [(1, 5, "y")]
    s.release(lane)
    assert [m for item in s.take(4, 100) for seg in item for m in seg.messages] == [(0, 5, "x")]


@pytest.mark.parametrize(("mode", "key"), [(OrderingMode.UNORDERED, b"a"), (OrderingMode.KEY, None)])
def test_hold_without_an_ordering_promise_holds_nothing(mode: OrderingMode, key: bytes | None) -> None:
    assert Scheduler[int, Msg](mode).hold(0, key) is None

"""The commit's offset map: records finished above the committed offset survive a commit and a read back."""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_worker import offset_map
from lagpilot_worker.offset_map import BITSET, RUNS_U16, RUNS_VARINT, OffsetMapError, decode, encode, read
from lagpilot_worker.offsets import PartitionOffsets


def flags_of(base: int, done: set[int], high: int) -> bytes:
    return bytes(1 if base + i in done else 0 for i in range(high - base + 1))


def decoded_set(text: str, base: int) -> set[int]:
    done_map = decode(text, base)
    assert done_map is not None
    return {o for s, e in zip(done_map.starts, done_map.ends, strict=True) for o in range(s, e)}


@pytest.mark.parametrize(("base", "done"), [
    (0, {1}),
    (5, {7, 8, 9, 12}),
    (1_000_000_007, {1_000_000_008, 1_000_000_100}),
    (3, set(range(4, 3000))),                         # one long run: run-length wins
    (3, {o for o in range(4, 3000) if o % 2}),        # alternating: bitset wins
])
def test_round_trip(base: int, done: set[int]) -> None:
    text = encode(base, flags_of(base, done, max(done)))
    assert text is not None
    assert decoded_set(text, base) == done
    done_map = decode(text, base)
    assert done_map is not None and done_map.high == max(done) and done_map.count == len(done)
    assert base not in done_map and max(done) + 1 not in done_map


def test_smallest_encoding_is_kept() -> None:
    alternating = flags_of(0, {o for o in range(1, 2000) if o % 2}, 1999)
    assert base64.b64decode(encode(0, alternating) or "")[0] == BITSET
    one_run = flags_of(0, set(range(1, 2000)), 1999)
    assert base64.b64decode(encode(0, one_run) or "")[0] == RUNS_VARINT
    # Runs of 16384..65535 take three varint bytes but two fixed ones.
    wide = flags_of(0, set(range(20_000, 40_000)) | set(range(60_000, 80_000)), 79_999)
    assert base64.b64decode(encode(0, wide) or "")[0] == RUNS_U16


def test_size_limit_is_respected_and_overflow_is_none() -> None:
    rng = random.Random(7)
    done = {o for o in range(1, 60_000) if rng.random() < 0.5} | {60_000}
    flags = flags_of(0, done, 60_000)
    assert encode(0, flags, 4096) is None, "a 60k-offset random map cannot fit 4096 bytes"
    for limit in (16, 64, 100, 1000, 4096):
        small = flags_of(0, {o for o in range(1, limit * 2) if rng.random() < 0.5} | {limit * 2}, limit * 2)
        text = encode(0, small, limit)
        if text is not None:
            assert len(text.encode()) <= limit
    assert encode(0, b"\x00\x01", 0) is None
    assert encode(0, b"\x00\x01", 8) is not None and len(encode(0, b"\x00\x01", 8) or "") <= 8


def test_empty_and_invalid_flags() -> None:
    assert encode(4, b"") == ""
    with pytest.raises(ValueError, match="start unfinished"):
        encode(4, b"\x01\x01")
    with pytest.raises(ValueError, match="negative"):
        encode(-1, b"\x00\x01")


@pytest.mark.parametrize("metadata", [
    "not base64!", "AAAA", "////", base64.b64encode(b"\x09\x00\x01\x01").decode(),   # unknown tag
    base64.b64encode(bytes([BITSET, 0, 10, 0xFF])).decode(),                          # bits beyond length
    base64.b64encode(bytes([BITSET, 0, 9, 0x02])).decode(),                           # length mismatch
    base64.b64encode(bytes([BITSET, 0, 2, 0x01])).decode(),                           # starts done
    base64.b64encode(bytes([RUNS_VARINT, 0, 1])).decode(),                            # odd run count
    base64.b64encode(bytes([RUNS_VARINT, 0, 1, 0])).decode(),                         # empty run
    base64.b64encode(bytes([RUNS_VARINT, 0, 0x80])).decode(),                         # truncated varint
    base64.b64encode(bytes([RUNS_U16, 0, 1, 0, 1])).decode(),                         # truncated u16
    base64.b64encode(bytes([RUNS_VARINT]) + b"\xff" * 12).decode(),                   # varint too long
    "é",
])
def test_malformed_metadata_means_no_map(metadata: str) -> None:
    with pytest.raises(OffsetMapError):
        decode(metadata, 0)
    assert read(metadata, 0)[0] is None and read(metadata, 0)[1]


def test_map_is_tied_to_its_committed_offset() -> None:
    text = encode(10, flags_of(10, {12}, 12))
    assert decode(text, 10) is not None
    # The offset was moved (a reset tool that kept the metadata): no map, nothing skipped.
    assert read(text, 11) == (None, "map is for offset 10, the committed offset is 11")
    assert read("", 10) == (None, None) and read(None, 10) == (None, None) and read(text, None) == (None, None)


def test_a_huge_claimed_span_costs_memory_by_runs_not_by_span() -> None:
    text = base64.b64encode(bytes([offset_map.RUNS_U32, 0]) + (1).to_bytes(4, "little")
                            + (2**32 - 1).to_bytes(4, "little")).decode()
    done_map = decode(text, 0)
    assert done_map is not None and done_map.count == 2**32 - 1 and 2**31 in done_map and 0 not in done_map


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=300), st.data())
def test_tracker_map_round_trip_over_random_completion_orders(gaps: list[int], data: st.DataObject) -> None:
    """Whatever order records finish in (with gaps in the offsets), the decoded map is exactly the set
    of finished offsets above the committable one."""
    offsets: list[int] = []
    position = data.draw(st.integers(0, 10**12))
    for gap in gaps:
        position += 1 + (gap if gap > 25 else 0)
        offsets.append(position)
    tracker = PartitionOffsets()
    tracker.add_many(offsets)
    order = data.draw(st.permutations(offsets))
    finished = order[:data.draw(st.integers(0, len(order)))]
    for chunk_start in range(0, len(finished), 7):
        tracker.done_many(finished[chunk_start:chunk_start + 7])
    committable = tracker.committable()
    assert committable is not None
    expected = {o for o in finished if o > committable}
    flags = tracker.done_flags()
    if not expected:
        assert flags is None
        return
    assert flags is not None and flags[0] == committable
    text = encode(flags[0], flags[1], 4096)
    assert text is not None and len(text) <= 4096
    done_map = decode(text, committable)
    assert done_map is not None
    # Every offset the worker saw is marked exactly as it finished; offsets it never saw (gaps)
    # may be marked done, nothing asks for them.
    assert {o for o in offsets if o in done_map} == expected
    assert done_map.high == max(expected)


def test_tracker_needs_commit_when_the_map_grows() -> None:
    tracker = PartitionOffsets()
    tracker.add_many([0, 1, 2, 3])
    tracker.done_many([2])
    assert tracker.needs_commit() and tracker.committable() == 0
    tracker.mark_committed(0)
    assert not tracker.needs_commit()
    tracker.done_many([3])           # the committed offset did not move, the map did
    assert tracker.needs_commit() and tracker.done_flags() == (0, b"\x00\x00\x01\x01")
    assert not tracker.needs_commit(map_changes=False)
    tracker.mark_committed(0)
    assert not tracker.needs_commit()
    tracker.commit_failed(0)
    assert tracker.needs_commit() and tracker.committed is None


# -- an inherited map carried into the next owner's commits ------------------------------------------------


def inherited_map(base: int, done: set[int]) -> offset_map.DoneOffsets:
    text = encode(base, flags_of(base, done, max(done)))
    assert text is not None
    done_map = decode(text, base)
    assert done_map is not None
    return done_map


def committed(flags: tuple[int, bytes] | None, max_bytes: int = offset_map.DEFAULT_MAX_BYTES) -> tuple[int, set[int]]:
    """What a commit with these flags says, read back: its offset and the done offsets its metadata names."""
    assert flags is not None
    text = encode(*flags, max_bytes=max_bytes)
    assert text is not None
    return flags[0], decoded_set(text, flags[0])


def test_an_owner_that_commits_before_fetching_past_the_inherited_map_keeps_it() -> None:
    """Offsets 100..; the earlier owner finished 103-105 and 110-119 above its commit at 100. The new owner
    fetched 100-104 (103, 104 skipped as done), finished 100, and is revoked: its commit at 101 must still
    say 105 and 110-119 are done, or the next owner runs them again."""
    earlier = inherited_map(100, {103, 104, 105, *range(110, 120)})
    tracker = PartitionOffsets()
    tracker.add_many([100, 101, 102, 103, 104])
    tracker.done_many([103, 104, 100])
    committable = tracker.committable()
    assert committable == 101
    carried = offset_map.carry_inherited(tracker.done_flags(), committable, earlier, tracker.last_added)
    assert committed(carried) == (101, {103, 104, 105, *range(110, 120)})
    # Without the carry the commit names only what this owner saw.
    assert committed(tracker.done_flags()) == (101, {103, 104})


def test_nothing_is_carried_below_what_the_owner_fetched_or_once_it_fetched_past_the_map() -> None:
    earlier = inherited_map(100, {101, 102, 108})
    # Fetched through 104, all but 103 done: the earlier owner's 101, 102 are the tracker's to say.
    tracker = PartitionOffsets()
    tracker.add_many([100, 101, 102, 103, 104])
    tracker.done_many([100, 101, 104])
    committable = tracker.committable()
    assert committable == 102
    carried = offset_map.carry_inherited(tracker.done_flags(), committable, earlier, tracker.last_added)
    assert committed(carried) == (102, {104, 108})
    # Past the map's highest offset there is nothing left to carry.
    assert offset_map.carry_inherited(None, 109, earlier, 108) is None
    assert offset_map.carry_inherited(None, 109, None, 108) is None


def test_the_commit_moves_past_inherited_done_records_the_owner_has_not_fetched() -> None:
    """Everything fetched is finished and the next offsets are ones the earlier owner finished: the commit
    moves past them (committed as they are, the first would run again on the next owner: the committed
    offset is unfinished in the map's format)."""
    earlier = inherited_map(100, {101, 102, 105})
    sent = offset_map.past_inherited_done(101, earlier, 100)
    assert sent == 103
    assert committed(offset_map.carry_inherited(None, sent, earlier, 100)) == (103, {105})
    # Only the run right at the offset: 104 is unfinished, so 105 stays in the map.
    assert offset_map.past_inherited_done(103, earlier, 100) == 103
    # Adjacent runs are one run; past the map's last one the offset is the map's end.
    assert offset_map.past_inherited_done(105, inherited_map(100, {105, 106}), 104) == 107
    assert offset_map.carry_inherited(None, 107, inherited_map(100, {105, 106}), 104) is None
    # A map whose runs touch (an empty unfinished run between them) is one run too.
    touching = offset_map.DoneOffsets(100, (101, 103), (103, 104))
    assert offset_map.past_inherited_done(101, touching, 100) == 104
    assert 103 in touching and 104 not in touching and 100 not in touching


def test_the_commit_never_moves_over_what_the_owner_fetched_or_without_a_map() -> None:
    earlier = inherited_map(100, {101, 102})
    # Fetched through 101: offset 101 is the tracker's (in flight or finished by this owner), not the map's.
    assert offset_map.past_inherited_done(101, earlier, 101) == 101
    assert offset_map.past_inherited_done(101, None, 100) == 101
    # Nothing fetched yet (a fresh owner): the map's runs from the committed offset count.
    assert offset_map.past_inherited_done(101, earlier, None) == 103


def test_a_map_claiming_a_huge_span_is_not_carried() -> None:
    huge = offset_map.DoneOffsets(0, (5, offset_map.MAX_CARRIED_SPAN + 10), (6, offset_map.MAX_CARRIED_SPAN + 11))
    assert offset_map.carry_inherited(None, 1, huge, 0) is None


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(min_value=1, max_value=60), min_size=1), st.integers(min_value=0, max_value=40),
       st.data())
def test_carry_covers_exactly_the_owner_s_done_and_the_inherited_done_above_its_fetch(
        earlier_done: set[int], fetched: int, data: st.DataObject) -> None:
    earlier = inherited_map(0, earlier_done)
    offsets = list(range(fetched + 1))
    tracker = PartitionOffsets()
    tracker.add_many(offsets)
    # The new owner skips what the map marks done, and finishes some of the rest.
    own_done = {o for o in offsets if o in earlier} | set(data.draw(st.lists(st.sampled_from(offsets))))
    tracker.done_many(sorted(own_done))
    committable = tracker.committable()
    assert committable is not None
    carried = offset_map.carry_inherited(tracker.done_flags(), committable, earlier, tracker.last_added)
    expected = {o for o in own_done if o > committable} | {o for o in earlier_done if o > max(fetched, committable)}
    if carried is None:
        assert not expected
        return
    assert committed(carried, max_bytes=1 << 20) == (committable, expected)

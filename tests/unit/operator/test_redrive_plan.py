"""The pure half of redrive: snapshot bounds under maxMessages, progress from committed offsets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_operator.kafka.redrive import (
    PartitionBound,
    RedriveProgress,
    RedriveRequest,
    RedriveState,
    advance,
    choose_partition,
    plan_bounds,
    redrive_error,
    redrive_request,
    redriven_count,
    transactional_id,
)
from lagpilot_operator.kafka.topics import TopicAuthorizationError

DLQ = "orders-workers.dlq"


@pytest.mark.parametrize(
    ("starts", "ends", "cap", "expected"),
    [
        ({0: 0, 1: 0}, {0: 10, 1: 4}, None, [(0, 0, 10), (1, 0, 4)]),
        ({0: 0, 1: 0}, {0: 10, 1: 4}, 100, [(0, 0, 10), (1, 0, 4)]),
        # Even share; the small partition gives its unused share to the big one.
        ({0: 0, 1: 0}, {0: 10, 1: 4}, 8, [(0, 0, 4), (1, 0, 4)]),
        ({0: 0, 1: 0}, {0: 10, 1: 2}, 8, [(0, 0, 6), (1, 0, 2)]),
        # Remainder goes to lower partition numbers.
        ({0: 0, 1: 0, 2: 0}, {0: 9, 1: 9, 2: 9}, 7, [(0, 0, 3), (1, 0, 2), (2, 0, 2)]),
        # Starts from the redrive group's committed offsets, not zero.
        ({0: 5, 1: 9}, {0: 10, 1: 9}, None, [(0, 5, 10), (1, 9, 9)]),
        ({0: 0}, {0: 10}, 0, [(0, 0, 0)]),
        # A start beyond the end (cannot happen unless offsets were reset by hand) moves nothing.
        ({0: 12}, {0: 10}, None, [(0, 10, 10)]),
    ],
)
def test_plan_bounds_table(starts: dict[int, int], ends: dict[int, int], cap: int | None,
                           expected: list[tuple[int, int, int]]) -> None:
    assert plan_bounds(starts, ends, cap) == tuple(PartitionBound(*e) for e in expected)


@st.composite
def partition_ranges(draw: st.DrawFn) -> tuple[dict[int, int], dict[int, int]]:
    count = draw(st.integers(1, 12))
    starts = {p: draw(st.integers(0, 1000)) for p in range(count)}
    ends = {p: starts[p] + draw(st.integers(0, 500)) for p in range(count)}
    return starts, ends


@given(partition_ranges(), st.none() | st.integers(0, 3000))
def test_plan_bounds_properties(ranges: tuple[dict[int, int], dict[int, int]], cap: int | None) -> None:
    starts, ends = ranges
    bounds = plan_bounds(starts, ends, cap)
    available = sum(ends[p] - starts[p] for p in ends)
    total = sum(b.size for b in bounds)
    assert total == (available if cap is None else min(cap, available))
    for b in bounds:
        # Every bound is a prefix of what the partition has: oldest records first, none invented.
        assert b.start == starts[b.partition]
        assert starts[b.partition] <= b.end <= ends[b.partition]
    # Fair share: a partition that got fewer records than another got everything it had.
    for small in bounds:
        for big in bounds:
            if big.size > small.size + 1:
                assert small.end == ends[small.partition]


def snapshot(*bounds: tuple[int, int, int]) -> tuple[PartitionBound, ...]:
    return tuple(PartitionBound(*b) for b in bounds)


@pytest.mark.parametrize(
    ("positions", "done"),
    [
        ({}, 0),
        ({0: 0, 1: 10}, 0),
        ({0: 4, 1: 12}, 6),
        ({0: 10, 1: 15}, 15),
        ({0: 99, 1: 99}, 15),  # beyond the snapshot (a later request moved on): capped
    ],
)
def test_redriven_count(positions: dict[int, int], done: int) -> None:
    assert redriven_count(snapshot((0, 0, 10), (1, 10, 15)), positions) == done


def test_advance_reaches_done_exactly_at_the_bounds() -> None:
    start = RedriveProgress("r-1", RedriveState.PENDING, 15, 0, snapshot((0, 0, 10), (1, 10, 15)))
    running = advance(start, {0: 10, 1: 12}, 0, DLQ)
    assert (running.state, running.done) == (RedriveState.RUNNING, 12)
    done = advance(running, {0: 10, 1: 15}, 2, DLQ)
    assert (done.state, done.done, done.skipped) == (RedriveState.DONE, 15, 2)
    assert "15 of 15" in done.message and "passed over 2" in done.message


def test_progress_status_round_trip() -> None:
    progress = RedriveProgress("r-1", RedriveState.RUNNING, 15, 3, snapshot((0, 0, 10), (1, 10, 15)),
                               "3 of 15", 1)
    status = progress.to_status()
    assert status["snapshot"] == [{"partition": 0, "startOffset": 0, "endOffset": 10},
                                  {"partition": 1, "startOffset": 10, "endOffset": 15}]
    assert status["state"] == "Running"
    assert RedriveProgress.from_status(status) == progress
    assert RedriveProgress.from_status(None) is None
    assert RedriveProgress.from_status({}) is None


@pytest.mark.parametrize(
    ("header", "partitions", "chosen"),
    [("2", 4, 2), ("0", 1, 0), ("4", 4, None), ("-1", 4, None), ("x", 4, None), (None, 4, None)],
)
def test_choose_partition(header: str | None, partitions: int, chosen: int | None) -> None:
    assert choose_partition(header, partitions) == chosen


def test_redrive_request_adapter_reads_dicts_and_models() -> None:
    assert redrive_request(None) is None
    assert redrive_request({"requestId": "r-1", "maxMessages": 5}) == RedriveRequest("r-1", 5)
    assert redrive_request({"requestId": "r-2"}) == RedriveRequest("r-2", None)
    assert redrive_request({"maxMessages": 5}) is None
    assert redrive_request(SimpleNamespace(request_id="r-3", max_messages=None)) == RedriveRequest("r-3")


def test_transactional_id_is_stable_per_group_and_dlq() -> None:
    assert transactional_id("g", "g.dlq") == transactional_id("g", "g.dlq")
    assert transactional_id("g", "g.dlq") != transactional_id("h", "g.dlq")
    assert transactional_id("g", "g.dlq") != transactional_id("g", "other.dlq")
    assert transactional_id("g", "g.dlq").startswith("lagpilot-redrive.g.redrive.")


def test_kafka_error_keeps_the_state_and_says_why() -> None:
    denied = TopicAuthorizationError("init transactions for", "lagpilot-redrive.g",
                                     "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                                     "Broker: Transactional Id authorization failed")
    running = RedriveProgress("r-1", RedriveState.RUNNING, 15, 3, snapshot((0, 0, 15)))
    waiting = redrive_error(RedriveRequest("r-1"), running, denied)
    assert (waiting.state, waiting.done, waiting.snapshot) == (running.state, 3, running.snapshot)
    assert "AuthorizationFailed" in waiting.message and "TRANSACTIONAL_ID_AUTHORIZATION_FAILED" in waiting.message
    assert waiting.error is not None
    assert "error" not in waiting.to_status()
    assert advance(waiting, {0: 5}, 0, DLQ).error is None

    # Before any snapshot: Pending without one, so the next call takes it rather than finishing.
    fresh = redrive_error(RedriveRequest("r-2"), running, denied)
    assert (fresh.request_id, fresh.state, fresh.snapshot) == ("r-2", RedriveState.PENDING, ())
    assert not fresh.has_snapshot
    reloaded = RedriveProgress.from_status(fresh.to_status())
    assert reloaded is not None and not reloaded.has_snapshot

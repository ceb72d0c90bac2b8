"""Per-partition lag with offsetResetPolicy, and rates from a rolling history of offset samples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_operator.core.observations import (
    LagHistory,
    LagSample,
    PartitionOffsets,
    consumable_lag,
    lags_by_partition,
    partition_lag,
    partition_name,
    total_lag,
)


def po(partition: int, end: int, committed: int | None, start: int = 0, topic: str = "orders") -> PartitionOffsets:
    return PartitionOffsets(topic, partition, end, committed, start)


@pytest.mark.parametrize(
    ("offsets", "policy", "lag"),
    [
        (po(0, 100, 40), "latest", 60),
        (po(0, 100, 100), "latest", 0),
        (po(0, 100, 120), "latest", 0),            # committed past a stale high watermark: never negative
        (po(0, 100, 10, start=30), "latest", 70),  # below log-start: deleted messages are not lag
        (po(0, 100, None), "latest", 1),           # KEDA: wake a consumer so it can commit
        (po(0, 0, None), "latest", 0),             # ...but an empty partition has nothing to wake for
        (po(0, 50, None, start=50), "latest", 0),  # retention emptied it: same
        (po(0, 100, None, start=30), "earliest", 70),  # whole retained partition (KEDA: 100)
        (po(0, 100, 40), "earliest", 60),
    ],
)
def test_partition_lag(offsets: PartitionOffsets, policy: str, lag: int) -> None:
    assert partition_lag(offsets, policy) == lag  # type: ignore[arg-type]


def test_consumable_lag_ignores_the_wake_up_count() -> None:
    assert consumable_lag(po(0, 100, None), "latest") == 0
    assert consumable_lag(po(0, 100, None), "earliest") == 100
    assert consumable_lag(po(0, 100, 90), "latest") == 10


def test_total_lag_and_names() -> None:
    sample = LagSample(0.0, (po(0, 10, 5), po(1, 7, None)))
    assert total_lag(sample) == 6
    assert total_lag(sample, "earliest") == 12
    assert partition_name(("orders", 3)) == "orders-3"


def test_rates_need_two_samples() -> None:
    history = LagHistory()
    assert history.produce_rate() is None and history.consume_rate() is None and history.latest is None
    history.add(LagSample(0.0, (po(0, 100, 50),)))
    assert history.produce_rate() is None and history.consume_rate() is None


def test_rates_from_offset_deltas_summed_over_partitions() -> None:
    history = LagHistory()
    history.add(LagSample(0.0, (po(0, 100, 50), po(1, 200, 200))))
    history.add(LagSample(10.0, (po(0, 200, 80), po(1, 260, 230))))
    assert history.produce_rate() == pytest.approx(10.0 + 6.0)
    assert history.consume_rate() == pytest.approx(3.0 + 3.0)


def test_window_covers_at_least_the_requested_span() -> None:
    history = LagHistory()
    for t in range(0, 61, 5):  # 10 msg/s until 30 s, then 100 msg/s
        end = 10 * t if t <= 30 else 300 + 100 * (t - 30)
        history.add(LagSample(float(t), (po(0, end, 0),)))
    assert history.produce_rate(15.0) == pytest.approx(100.0)
    assert history.produce_rate(60.0) == pytest.approx((3300 - 0) / 60)
    # Polling jitter: the sample at 45.1 is not old enough for a 15 s window ending at 60, so 40 starts it.
    jittered = LagHistory()
    for at, end in ((40.0, 0), (45.1, 100), (50.0, 1000), (60.0, 2000)):
        jittered.add(LagSample(at, (po(0, end, 0),)))
    assert jittered.produce_rate(15.0) == pytest.approx(2000 / 20)


def test_partition_appearing_counts_from_its_first_pair_and_disappearing_stops_counting() -> None:
    history = LagHistory()
    history.add(LagSample(0.0, (po(0, 0, 0), po(1, 0, 0))))
    history.add(LagSample(10.0, (po(0, 100, 50), po(1, 100, 100), po(2, 1000, 0))))  # p2 new
    history.add(LagSample(20.0, (po(0, 200, 100), po(2, 1500, 100))))                 # p1 gone
    # p0: 10 msg/s produced, 5 consumed; p2: one 10 s pair, 50 produced/s, 10 consumed/s; p1 ignored.
    assert history.produce_rate(60.0) == pytest.approx(10.0 + 50.0)
    assert history.consume_rate(60.0) == pytest.approx(5.0 + 10.0)


def test_uncommitted_and_backwards_offsets_never_give_negative_or_bogus_rates() -> None:
    history = LagHistory()
    history.add(LagSample(0.0, (po(0, 1000, None), po(1, 1000, 500))))
    history.add(LagSample(10.0, (po(0, 1100, 1050), po(1, 1100, 400))))  # p0 first commit, p1 rewound
    assert history.consume_rate() is None  # no usable pair yet
    history.add(LagSample(20.0, (po(0, 50, 1100), po(1, 1200, 600))))  # p0's topic recreated: end went back
    assert history.consume_rate(60.0) == pytest.approx(5.0 + 20.0)
    # p0's produce: pair 1 = 10/s, pair 2 skipped (backwards) -> 100 over 10 s; p1: 10/s over 20 s
    assert history.produce_rate(60.0) == pytest.approx(10.0 + 10.0)


def test_old_or_duplicate_samples_are_ignored() -> None:
    history = LagHistory()
    assert history.add(LagSample(10.0, (po(0, 100, 0),)))
    assert not history.add(LagSample(10.0, (po(0, 999, 0),)))
    assert not history.add(LagSample(5.0, (po(0, 999, 0),)))
    assert len(history) == 1 and history.samples[0].partitions[0].end_offset == 100


def test_pruning_by_window_and_count() -> None:
    history = LagHistory(window_seconds=30.0, max_samples=4)
    for t in range(0, 100, 5):
        history.add(LagSample(float(t), (po(0, t, 0),)))
    assert len(history) == 4
    assert [s.time for s in history] == [80.0, 85.0, 90.0, 95.0]
    sparse = LagHistory(window_seconds=10.0)
    sparse.add(LagSample(0.0, (po(0, 0, 0),)))
    sparse.add(LagSample(100.0, (po(0, 500, 0),)))  # the only other sample: kept, so a rate exists
    assert sparse.produce_rate() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="window_seconds"):
        LagHistory(window_seconds=0)


def test_series_by_partition_follows_the_newest_sample() -> None:
    history = LagHistory()
    history.add(LagSample(0.0, (po(0, 1, 0), po(1, 1, 0))))
    history.add(LagSample(5.0, (po(0, 2, 1),)))
    series = history.series_by_partition()
    assert list(series) == [("orders", 0)]
    assert [t for t, _ in series[("orders", 0)]] == [0.0, 5.0]


offsets_lists = st.lists(
    st.tuples(st.integers(0, 10_000), st.one_of(st.none(), st.integers(0, 10_000))), min_size=1, max_size=4
)


@settings(max_examples=200, deadline=None)
@given(st.lists(offsets_lists, min_size=2, max_size=12), st.floats(1.0, 120.0))
def test_rates_are_never_negative(samples: list[list[tuple[int, int | None]]], window: float) -> None:
    history = LagHistory()
    for index, partitions in enumerate(samples):
        history.add(LagSample(float(index * 5), tuple(po(i, end, c) for i, (end, c) in enumerate(partitions))))
    for rate in (history.produce_rate(window), history.consume_rate(window)):
        assert rate is None or rate >= 0


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 500.0), st.integers(2, 20), st.integers(1, 8))
def test_produce_rate_of_constant_production_is_exact(rate: float, samples: int, partitions: int) -> None:
    history = LagHistory()
    for step in range(samples):
        t = step * 5.0
        history.add(LagSample(t, tuple(po(p, round(rate * t), 0) for p in range(partitions))))
    measured = history.produce_rate(15.0)
    assert measured is not None
    # Offsets are whole messages: rounding costs at most 1 message per partition over the span.
    span = min(15.0, (samples - 1) * 5.0)
    assert measured == pytest.approx(rate * partitions, abs=partitions / span + 1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([5.0, 5.0, 5.0, 1.0, 30.0, 700.0]), offsets_lists), min_size=1, max_size=60),
       st.sampled_from([15.0, 30.0, 60.0]), st.integers(2, 240))
def test_a_history_keeping_only_what_its_windows_read_reads_the_same(
        steps: list[tuple[float, list[tuple[int, int | None]]]], needed: float, max_samples: int) -> None:
    """Dropping the samples before the longest window's start changes no rate and no series of any window
    up to it, whatever the gaps between polls (an outage, a poll late by a minute)."""
    full = LagHistory(max_samples=max_samples)
    trimmed = LagHistory(max_samples=max_samples, needed_seconds=needed)
    time = 0.0
    for gap, partitions in steps:
        time += gap
        sample = LagSample(time, tuple(po(i, end, c) for i, (end, c) in enumerate(partitions)))
        full.add(sample)
        trimmed.add(sample)
        assert trimmed.samples == full.samples[len(full) - len(trimmed):]
        for window in {15.0, 30.0, needed}:
            if window <= needed:
                assert trimmed.produce_rate(window) == full.produce_rate(window)
                assert trimmed.consume_rate(window) == full.consume_rate(window)
        assert trimmed.series_by_partition(since=time - needed) == full.series_by_partition(since=time - needed)
    assert len(trimmed) <= len(full)


def test_a_history_keeping_what_a_minute_reads_holds_a_minute_and_a_poll() -> None:
    history = LagHistory(needed_seconds=60.0)
    for t in range(0, 600, 5):
        history.add(LagSample(float(t), (po(0, t, 0),)))
    assert [s.time for s in history][:2] == [535.0, 540.0] and len(history) == 13
    with pytest.raises(ValueError, match="needed_seconds"):
        LagHistory(needed_seconds=0.0)


# A partition's next offsets: mostly forward, sometimes back (topic recreated, group reset) or uncommitted.
offset_steps = st.tuples(st.one_of(st.integers(0, 50), st.integers(-200, 50)),
                         st.one_of(st.integers(0, 50), st.integers(-200, 50), st.none()))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.lists(st.tuples(st.sampled_from([5.0, 5.0, 2.5, 40.0]), st.lists(offset_steps, min_size=6,
                                                                                               max_size=6)),
                                   min_size=2, max_size=25),
       st.sampled_from([5.0, 15.0, 30.0, 60.0]))
def test_rates_over_partitions_lined_up_by_position_are_the_rates_by_key(
        partitions: int, steps: list[tuple[float, list[tuple[int, int | None]]]], window: float) -> None:
    """The column-wide rates (`_window_rate`) give exactly what the pair-by-pair, key-by-key reading gives."""
    history = LagHistory()
    ends, committed = [1000] * partitions, [900] * partitions
    time = 0.0
    for gap, moves in steps:
        time += gap
        offsets = []
        for p, (end_step, commit_step) in zip(range(partitions), moves, strict=False):
            ends[p] = max(0, ends[p] + end_step)
            committed[p] = max(0, committed[p] + commit_step) if commit_step is not None else committed[p]
            offsets.append(po(p, ends[p], None if commit_step is None else committed[p]))
        history.add(LagSample(time, tuple(offsets)))
        assert history.window(time - window) is not None
        assert history.produce_rate(window) == history._rate_by_key(window, produced=True)
        assert history.consume_rate(window) == history._rate_by_key(window, produced=False)
        for policy in ("latest", "earliest"):
            assert history.latest_lags(policy) == lags_by_partition(offsets, policy)  # type: ignore[arg-type]

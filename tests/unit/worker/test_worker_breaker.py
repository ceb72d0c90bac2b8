"""The DLQ circuit breaker trips on a run or a share of dead letters and probes after a cooldown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_worker.breaker import BreakerConfig, BreakerState, PartitionBreaker


def run(breaker: PartitionBreaker, outcomes: str, now: float = 0.0) -> list[int]:
    """Feed outcomes ('D' dead letter, 'S' success); return the indices of refused dead letters."""
    refused = []
    for index, outcome in enumerate(outcomes):
        if outcome == "S":
            breaker.record_success()
        elif breaker.allow_dead_letter():
            breaker.record_dead_letter(now)
        else:
            breaker.refuse_dead_letter(now)
            refused.append(index)
    return refused


@pytest.mark.parametrize(
    ("config", "outcomes", "first_refused"),
    [
        (BreakerConfig(max_consecutive=5, window=100, max_ratio_percent=100), "DDDDDD", 5),
        (BreakerConfig(max_consecutive=5, window=100, max_ratio_percent=100), "DDDDSDDDDDD", 10),
        # more than 50 % of the last 10: the 6th dead letter within 10 outcomes trips it
        (BreakerConfig(max_consecutive=100, window=10, max_ratio_percent=50), "DSDSDSDSDSDDD", 12),
        (BreakerConfig(max_consecutive=100, window=10, max_ratio_percent=50), "DSDDSDDSDD", 9),
        # ... but old dead letters slide out of the window
        (BreakerConfig(max_consecutive=100, window=4, max_ratio_percent=50), "DDSSDDSSDDSS", None),
        (BreakerConfig(max_consecutive=3, window=10, max_ratio_percent=100), "DDSDDSDDSDDDD", 12),
        (BreakerConfig(max_consecutive=3, window=10, max_ratio_percent=100), "DDSDDSDDS", None),
    ],
)
def test_trips(config: BreakerConfig, outcomes: str, first_refused: int | None) -> None:
    breaker = PartitionBreaker(config)
    refused = run(breaker, outcomes)
    assert (refused[0] if refused else None) == first_refused
    assert reference_first_refusal(config, outcomes) == first_refused
    assert breaker.state is (BreakerState.CLOSED if first_refused is None else BreakerState.OPEN)


def reference_first_refusal(config: BreakerConfig, outcomes: str) -> int | None:
    """Straight from the definition: once the written dead letters trip a rule, refuse the next."""
    written: list[str] = []
    tripped = False
    for index, outcome in enumerate(outcomes):
        if outcome == "D" and tripped:
            return index
        written.append(outcome)
        run_length = len(written) - len("".join(written).rstrip("D"))
        last = written[-config.window:]
        if outcome == "D" and (run_length >= config.max_consecutive
                               or last.count("D") * 100 > config.max_ratio_percent * config.window):
            tripped = True
    return None


@given(st.text(alphabet="DS", max_size=300), st.integers(1, 30), st.integers(1, 50), st.integers(0, 100))
def test_matches_definition(outcomes: str, consecutive: int, window: int, percent: int) -> None:
    config = BreakerConfig(max_consecutive=consecutive, window=window, max_ratio_percent=percent,
                           cooldown_seconds=0)
    breaker = PartitionBreaker(config)
    refused = run(breaker, outcomes)
    expected = reference_first_refusal(config, outcomes)
    assert (refused[0] if refused else None) == expected
    # Once open without cooldown, every later dead letter is refused.
    if expected is not None:
        assert refused == [i for i, o in enumerate(outcomes) if o == "D" and i >= expected]


def test_exactly_max_consecutive_written() -> None:
    breaker = PartitionBreaker(BreakerConfig(max_consecutive=7))
    written = 0
    for _ in range(50):
        if breaker.allow_dead_letter():
            breaker.record_dead_letter(0.0)
            written += 1
    assert written == 7


def test_disabled_never_trips() -> None:
    breaker = PartitionBreaker(BreakerConfig(enabled=False, max_consecutive=1))
    assert run(breaker, "D" * 50) == []
    assert breaker.state is BreakerState.CLOSED


def test_half_open_probe_closes_on_success_and_reopens_on_failure() -> None:
    breaker = PartitionBreaker(BreakerConfig(max_consecutive=2, cooldown_seconds=30))
    run(breaker, "DD", now=100.0)
    assert breaker.state is BreakerState.OPEN and breaker.seconds_until_probe(110.0) == 20.0
    assert not breaker.poll(129.0)
    assert breaker.poll(130.0) and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow_dead_letter()
    breaker.refuse_dead_letter(131.0)                 # probe failed
    assert breaker.state is BreakerState.OPEN and breaker.opened_at == 131.0
    assert breaker.poll(161.0)
    breaker.record_success()                          # probe succeeded
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive == 0 and breaker.dead_in_window == 0
    assert run(breaker, "DD") == [] and breaker.state is BreakerState.OPEN


def test_zero_cooldown_stays_open() -> None:
    breaker = PartitionBreaker(BreakerConfig(max_consecutive=1, cooldown_seconds=0))
    run(breaker, "D")
    assert not breaker.poll(1e9) and breaker.seconds_until_probe(0.0) is None


def test_success_while_open_does_not_close() -> None:
    breaker = PartitionBreaker(BreakerConfig(max_consecutive=1))
    run(breaker, "DS")
    assert breaker.state is BreakerState.OPEN


@pytest.mark.parametrize("bad", [dict(window=0), dict(max_consecutive=0), dict(max_ratio_percent=101),
                                 dict(cooldown_seconds=-1)])
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)  # type: ignore[arg-type]


def test_record_successes_counts_as_many_outcomes() -> None:
    one_by_one = PartitionBreaker(BreakerConfig(window=10, max_ratio_percent=50, max_consecutive=100))
    bulk = PartitionBreaker(BreakerConfig(window=10, max_ratio_percent=50, max_consecutive=100))
    run(one_by_one, "DDDDD" + "S" * 7 + "DDD")
    run(bulk, "DDDDD")
    bulk.record_successes(7)
    bulk.record_successes(0)
    run(bulk, "DDD")
    assert (bulk.dead_in_window, bulk.consecutive, bulk.state) == (
        one_by_one.dead_in_window, one_by_one.consecutive, one_by_one.state)

"""Forgetting a deleted resource's series through prometheus_client's public API only."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest

from lagpilot_operator import operator_metrics as m
from support import metric_samples, metric_value


def series_of(namespace: str, name: str) -> list[str]:
    return sorted(f"{s.name}{sorted(s.labels.items())}" for s in metric_samples(generate_latest(REGISTRY).decode())
                  if s.labels.get("namespace") == namespace and s.labels.get("name") == name)


def test_forget_resource_drops_every_series_of_that_resource_and_only_those() -> None:
    for name in ("gone", "kept"):
        labels = ("ns-forget", name, "orders", "0")
        m.PARTITION_LAG.labels(*labels).set(5)
        m.TIME_LAG.labels(*labels).set(2.5)
        m.VERDICT.labels(*labels, "OK").set(1)
        m.DLQ_MESSAGES.labels("ns-forget", name, "orders.dlq").set(3)
        m.DECISIONS.labels("ns-forget", name, "up").inc()
        m.RECONCILE_ERRORS.labels("ns-forget", name, "lag").inc()
        for gauge in (m.TOTAL_LAG, m.MAX_TIME_LAG, m.PRODUCE_RATE, m.CONSUME_RATE, m.DESIRED_REPLICAS,
                      m.CURRENT_REPLICAS, m.MAX_REPLICAS, m.POOL_SIZE):
            gauge.labels("ns-forget", name).set(1)
    kept_before = series_of("ns-forget", "kept")
    assert len(series_of("ns-forget", "gone")) == len(kept_before) >= 14

    m.forget_resource("ns-forget", "gone")

    assert series_of("ns-forget", "gone") == []
    assert series_of("ns-forget", "kept") == kept_before
    m.forget_resource("ns-forget", "gone")   # twice: nothing left to remove, no error
    m.forget_resource("ns-forget", "kept")
    assert series_of("ns-forget", "kept") == []


def test_rates_follow_the_status_and_disappear_while_unknown() -> None:
    text = lambda: generate_latest(REGISTRY).decode()  # noqa: E731
    m.export_rates("ns-rates", "orders", 12.5, 7.25)
    assert metric_value(text(), "lagpilot_consumergroup_produce_rate", {"name": "orders"}) == 12.5
    assert metric_value(text(), "lagpilot_consumergroup_consume_rate", {"name": "orders"}) == 7.25
    m.export_rates("ns-rates", "orders", None, 3.0)
    assert metric_value(text(), "lagpilot_consumergroup_produce_rate", {"name": "orders"}) is None
    assert metric_value(text(), "lagpilot_consumergroup_consume_rate", {"name": "orders"}) == 3.0
    m.forget_resource("ns-rates", "orders")


def test_partition_series_write_lags_every_poll_and_a_verdict_when_it_changes() -> None:
    from lagpilot_operator.core.verdicts import Verdict

    text = lambda: generate_latest(REGISTRY).decode()  # noqa: E731
    where = {"namespace": "ns-series", "name": "orders", "topic": "t", "partition": "0"}
    series = m.partition_series("ns-series", "orders")
    assert m.partition_series("ns-series", "orders") is series
    series.export([(("t", 0), 7), (("t", 1), 0)], {("t", 0): 4.5}, {("t", 0): Verdict.STALLED})
    assert metric_value(text(), "lagpilot_consumergroup_lag", where) == 7
    assert metric_value(text(), "lagpilot_consumergroup_lag", {**where, "partition": "1"}) == 0
    assert metric_value(text(), "lagpilot_consumergroup_time_lag_seconds", where) == 4.5
    verdicts = lambda: {v.value: metric_value(text(), "lagpilot_consumergroup_partition_verdict",  # noqa: E731
                                              {**where, "verdict": v.value}) for v in Verdict}
    # One series, for the current verdict: no zeros for the others.
    assert verdicts() == {v.value: (1 if v == Verdict.STALLED else None) for v in Verdict}
    series.export([(("t", 0), 9)], {("t", 0): 6.0}, {("t", 0): Verdict.OK})
    assert metric_value(text(), "lagpilot_consumergroup_lag", where) == 9
    assert metric_value(text(), "lagpilot_consumergroup_time_lag_seconds", where) == 6.0
    assert verdicts() == {v.value: (1 if v == Verdict.OK else None) for v in Verdict}

    m.forget_resource("ns-series", "orders")
    assert series_of("ns-series", "orders") == []
    again = m.partition_series("ns-series", "orders")
    assert again is not series   # a resource made again with the same name: its series come back
    again.export([(("t", 0), 2)], {}, {("t", 0): Verdict.OK})
    assert metric_value(text(), "lagpilot_consumergroup_lag", where) == 2
    assert verdicts() == {v.value: (1 if v == Verdict.OK else None) for v in Verdict}
    m.forget_resource("ns-series", "orders")

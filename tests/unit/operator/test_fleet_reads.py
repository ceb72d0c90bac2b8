"""Planning one observation of a cluster for many resources, and mapping the answers back (pure)."""

from __future__ import annotations

from lagpilot_operator.fleet_reads import ClusterReading, TopicsMissing, Watch, batches, plan, sample_for
from lagpilot_operator.observations import LagSample

METADATA = {"orders": [0, 1, 2], "payments": [0, 1], "audit": [0]}


def test_each_partition_is_read_once_however_many_groups_watch_it() -> None:
    watches = [Watch("billing", ("orders", "payments")), Watch("search", ("orders",)), Watch("search", ("orders",))]
    read_plan = plan(watches, METADATA)
    assert read_plan.partitions == (("orders", 0), ("orders", 1), ("orders", 2), ("payments", 0), ("payments", 1))
    assert read_plan.group_partitions == {
        "billing": (("orders", 0), ("orders", 1), ("orders", 2), ("payments", 0), ("payments", 1)),
        "search": (("orders", 0), ("orders", 1), ("orders", 2)),
    }
    assert read_plan.missing_topics == frozenset()


def test_a_group_watched_by_two_resources_is_asked_for_the_union_of_their_topics() -> None:
    read_plan = plan([Watch("g", ("orders",)), Watch("g", ("audit",))], METADATA)
    assert read_plan.group_partitions == {"g": (("audit", 0), ("orders", 0), ("orders", 1), ("orders", 2))}


def test_missing_topics_are_named_and_not_read() -> None:
    read_plan = plan([Watch("g", ("orders", "gone"))], METADATA)
    assert read_plan.missing_topics == frozenset({"gone"})
    assert all(topic == "orders" for topic, _ in read_plan.partitions)


def test_batches_cover_every_item_once_in_bounded_slices() -> None:
    items = list(range(12_001))
    sliced = batches(items, 5000)
    assert [len(b) for b in sliced] == [5000, 5000, 2001]
    assert [i for b in sliced for i in b] == items
    assert batches([], 5000) == []


def reading() -> ClusterReading:
    keys = [("orders", p) for p in range(3)] + [("payments", p) for p in range(2)]
    return ClusterReading(time=100.0, ends=dict.fromkeys(keys, 50), starts=dict.fromkeys(keys, 5),
                          committed={"billing": {("orders", 0): 40, ("orders", 1): -1001, ("payments", 0): 50},
                                     "search": {("orders", 0): 10}},
                          members={"billing": 2, "search": 0})


def test_each_resource_gets_its_own_topics_and_group_offsets() -> None:
    watches = [Watch("billing", ("orders", "payments")), Watch("search", ("orders",))]
    read_plan = plan(watches, METADATA)
    billing = sample_for(watches[0], reading(), read_plan)
    assert isinstance(billing, LagSample)
    assert billing.time == 100.0 and billing.members == 2
    committed = {p.key: p.committed for p in billing.partitions}
    assert committed == {("orders", 0): 40, ("orders", 1): None, ("orders", 2): None, ("payments", 0): 50,
                         ("payments", 1): None}
    assert {p.end_offset for p in billing.partitions} == {50} and {p.start_offset for p in billing.partitions} == {5}
    search = sample_for(watches[1], reading(), read_plan)
    assert isinstance(search, LagSample)
    assert [p.key for p in search.partitions] == [("orders", 0), ("orders", 1), ("orders", 2)]
    assert search.members == 0


def test_a_resource_sharing_a_group_gets_only_the_topics_it_watches() -> None:
    watches = [Watch("billing", ("orders", "payments")), Watch("billing", ("payments",))]
    only_payments = sample_for(watches[1], reading(), plan(watches, METADATA))
    assert isinstance(only_payments, LagSample)
    assert [p.key for p in only_payments.partitions] == [("payments", 0), ("payments", 1)]


def test_errors_fail_only_the_resources_that_need_what_failed() -> None:
    watches = [Watch("billing", ("orders", "payments")), Watch("search", ("orders",)), Watch("x", ("gone",))]
    read_plan = plan(watches, METADATA)
    failed = reading()
    failed.partition_errors[("payments", 1)] = RuntimeError("leader not available")
    failed.group_errors["search"] = RuntimeError("not authorized")
    assert str(sample_for(watches[0], failed, read_plan)) == "leader not available"
    assert str(sample_for(watches[1], failed, read_plan)) == "not authorized"
    assert sample_for(watches[2], failed, read_plan) == TopicsMissing(("gone",))
    assert isinstance(sample_for(Watch("search", ("payments",)), reading(), plan(watches, METADATA)), LagSample)

"""The status's topPartitions: the largest lags, ties in partition order (`reconcile._top_partitions`)."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from lagpilot_operator import reconcile


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from(["a", "b", "orders"]), st.integers(0, 60)),
                       st.one_of(st.integers(0, 3), st.integers(0, 10**6)), max_size=80))
def test_the_top_partitions_are_the_largest_lags_ties_in_partition_order(lags: dict[tuple[str, int], int]) -> None:
    expected = heapq.nsmallest(reconcile.TOP_PARTITIONS, lags.items(), key=lambda item: (-item[1], item[0]))
    assert reconcile._top_partitions(lags) == expected


def test_ties_at_the_cut_go_to_the_first_partitions() -> None:
    lags = {("t", p): 5 for p in range(30)} | {("t", 99): 7}
    assert reconcile._top_partitions(lags) == [(("t", 99), 7)] + [(("t", p), 5) for p in range(9)]

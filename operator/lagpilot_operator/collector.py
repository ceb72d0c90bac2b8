"""How the operator process runs CPython's cyclic garbage collector.

An operator serving a fleet holds hundreds of thousands of long-lived objects (kopf's registries and
per-resource state, the Kubernetes client's models, each resource's lag history and time-lag tables)
and makes tens of thousands of short-lived ones per poll of a large group (a cluster read's answers, a
sample's offsets). At CPython's default thresholds (700, 10, 10) the young generation fills every few
hundred allocations and every hundredth collection is a full one over all of the long-lived objects:
in `bench/reconcile_core_bench.py` about one poll of a 1,000-partition group in eight paid a ~50 ms
full collection. The objects made per poll are nearly all freed by reference counting (the reads hold
no cycles), so collecting less often finds no more garbage, and what lives from start-up on need not
be scanned again at all.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (CPython's default: 700); the older generations keep their
default ratio of 10, so a full collection comes every 1,000,000 net allocations instead of 70,000."""


def tune_collector() -> None:
    """Move what start-up made out of the collector's sight (`gc.freeze`) and collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)

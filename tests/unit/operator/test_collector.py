"""The operator's start-up settings for CPython's garbage collector."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lagpilot_operator.collector import YOUNG_THRESHOLD, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_start_up_objects_are_frozen_and_young_collections_are_rarer(restored_collector: None) -> None:
    long_lived = [object() for _ in range(10)]
    tune_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > len(long_lived)  # everything tracked at start-up, these lists included

"""Live pool resizing, shared by both kinds of worker.

The pool-size source (a ConfigMap watch, code, or a fixed size) reports from its own thread; only
the wish is recorded there. The poll thread applies it between iterations, so the pool, the window
and the item sizing all change at one known point, never under a running decision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Gauge

from .pool import SlotPool

log = logging.getLogger("lagpilot_worker")


class PoolResizer:
    """The latest wished size (any thread) and the size the pool has (poll thread)."""

    def __init__(self, size: int, max_size: int, gauge: Gauge) -> None:
        self.size = size
        self._desired = size
        self._max_size = max_size
        self._gauge = gauge
        # Told the new size after the pool took it (the window and the item sizing follow the pool).
        self.listeners: list[Callable[[int], None]] = []

    def wish(self, size: int) -> None:
        # Called from the pool-size source's thread: only record the wish, the poll thread applies it.
        self._desired = max(1, min(self._max_size, size))

    def apply(self, pool: SlotPool[Any] | None) -> bool:
        """Resize the pool to the latest wish, in the poll thread; True when it changed."""
        desired = self._desired
        if desired == self.size or pool is None:
            return False
        log.info("resizing pool", extra={"from": self.size, "to": desired})
        self.size = desired
        pool.resize(desired)
        self._gauge.set(desired)
        for listener in self.listeners:
            listener(desired)
        return True

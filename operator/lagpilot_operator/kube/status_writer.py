"""One resource's status writes, off its poll loop (I/O).

A poll decides, hands its status here and goes back to wait for its cluster's next read. Before, it waited
for its write: after a lag change every resource on a cluster writes at once, the API server answers the last
of them seconds later, and a resource still waiting for its write when the cluster's next read came missed
that read and waited a whole interval more (1,000 groups: 4-9 s from a burst to a cluster's last decision).
Each write is a task of its own, queued behind the loops that the same read woke: they all decide before the
first of their writes starts.

At most one write per resource is under way; a status handed over meanwhile replaces the one waiting (each
write is the whole status, so only the newest matters). `written`/`written_at` are what the next poll
compares with (`writes.status_write_reason`) and starts from (`writes.stored_status`): the newest status
handed over, as if written. A write that fails puts back the last one the API server took, so the next poll
writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from lagpilot_operator import operator_metrics as metrics
from lagpilot_operator.kube import kube_io

log = logging.getLogger(__name__)

Patch = Callable[[str, str, dict[str, Any]], None]
"""Blocking: (namespace, name, status); runs in a thread."""


@dataclass(frozen=True)
class _Write:
    status: dict[str, Any]
    why: str
    at: float
    holds: Callable[[], bool] | None
    """Sharding on: whether the shard term the status was decided under still holds (checked right before)."""


@dataclass
class StatusWriter:
    """The status writes of one resource: `submit` hands one over and returns at once."""

    namespace: str = ""
    name: str = ""
    patch: Patch | None = None
    """None: `kube_io.patch_status`, looked up at each write."""
    written: dict[str, Any] | None = None
    """The newest status handed over (or, after a failed write, the last one the API server took)."""
    written_at: float | None = None
    _confirmed: tuple[dict[str, Any] | None, float | None] = (None, None)
    _waiting: _Write | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    def submit(self, namespace: str, name: str, status: dict[str, Any], why: str, at: float,
               holds: Callable[[], bool] | None = None) -> None:
        """Write `status` of `namespace`/`name` (`why`: the metric's reason) once the write under way, if any,
        is done."""
        self.namespace, self.name = namespace, name
        self.written, self.written_at = status, at
        self._waiting = _Write(status, why, at, holds)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=f"status of {self.namespace}/{self.name}")

    def busy(self) -> asyncio.Task[None] | None:
        """The task writing, while one is under way or waiting."""
        return self._task if self._task is not None and not self._task.done() else None

    async def settle(self, within: float) -> None:
        """Until the statuses handed over are written or `within` seconds pass (the loop ends: its last status
        is not dropped when the API server answers in time)."""
        task = self.busy()
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), within)

    async def _drain(self) -> None:
        while self._waiting is not None:
            write, self._waiting = self._waiting, None
            if write.holds is not None and not write.holds():
                log.info("%s/%s: status not written: the shard term it was decided under ended", self.namespace,
                         self.name)
                metrics.FENCED_RECONCILES.inc()
                self._put_back(write)
                continue
            try:
                await asyncio.to_thread(self.patch or kube_io.patch_status, self.namespace, self.name, write.status)
            except ApiException as exc:
                self._put_back(write)
                if exc.status == 404:  # deleted meanwhile: its loop is ending
                    log.debug("%s/%s: status not written: the resource is gone", self.namespace, self.name)
                    continue
                self._failed()
            except Exception:  # an API server hiccup: the next poll writes again
                self._put_back(write)
                self._failed()
            else:
                self._confirmed = (write.status, write.at)
                metrics.STATUS_WRITES.labels(write.why).inc()

    def _failed(self) -> None:
        log.exception("writing the status of %s/%s failed; retrying on the next poll", self.namespace, self.name)
        metrics.RECONCILE_ERRORS.labels(self.namespace, self.name, "status").inc()

    def _put_back(self, write: _Write) -> None:
        """A status not written: unless a newer one was handed over meanwhile, the next poll compares with
        (and starts from) the last one the API server took."""
        if self.written is write.status:
            self.written, self.written_at = self._confirmed

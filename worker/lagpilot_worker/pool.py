"""The pool of N concurrent slots: threads for sync handlers, asyncio tasks for async handlers.

Both resize live. Growing starts slots at once; shrinking lets each surplus slot finish the work
item it is running and then stop, so no work is interrupted or handed out twice. Nothing here
touches Kafka: the consumer keeps its partitions, so resizing never causes a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
J_contra = TypeVar("J_contra", contravariant=True)


class SlotPool(Protocol[J_contra]):
    @property
    def size(self) -> int: ...
    def start(self) -> None: ...
    def submit(self, job: J_contra) -> None: ...
    def resize(self, size: int) -> None: ...
    def busy(self) -> int: ...
    def live(self) -> int: ...
    def shutdown(self) -> None: ...


_WAKE = object()   # wakes an idle slot so it re-checks whether it is surplus


class ThreadSlotPool(Generic[J]):
    """Slots are daemon threads taking jobs from one queue.

    Daemon, because a handler stuck past the shutdown deadline must not keep the process alive:
    its record is simply not committed and will be delivered again.
    """

    def __init__(self, run_job: Callable[[J], None], size: int, name: str = "lagpilot-slot") -> None:
        self._run_job = run_job
        self._name = name
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._target = max(1, size)
        self._live = 0
        self._busy: dict[int, bool] = {}
        self._next_id = 0
        self._started = False
        self._closed = False

    @property
    def size(self) -> int:
        return self._target

    def start(self) -> None:
        with self._lock:
            self._started = True
            self._spawn_locked()

    def submit(self, job: J) -> None:
        self._queue.put(job)

    def resize(self, size: int) -> None:
        size = max(1, size)
        with self._lock:
            surplus = self._live - size
            self._target = size
            if self._started and not self._closed:
                self._spawn_locked()
        for _ in range(max(0, surplus)):
            self._queue.put(_WAKE)

    def busy(self) -> int:
        return sum(1 for running in list(self._busy.values()) if running)

    def live(self) -> int:
        return self._live

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            self._target = 0
            live = self._live
        for _ in range(live):
            self._queue.put(_WAKE)

    def _spawn_locked(self) -> None:
        while self._live < self._target:
            self._live += 1
            slot_id = self._next_id
            self._next_id += 1
            thread = threading.Thread(target=self._slot, args=(slot_id,), name=f"{self._name}-{slot_id}",
                                      daemon=True)
            thread.start()

    def _leave_if_surplus(self, slot_id: int) -> bool:
        with self._lock:
            if self._live > self._target:
                self._live -= 1
                self._busy.pop(slot_id, None)
                return True
        return False

    def _slot(self, slot_id: int) -> None:
        busy = self._busy
        busy[slot_id] = False
        while True:
            if self._leave_if_surplus(slot_id):
                return
            job = self._queue.get()
            if job is _WAKE:
                continue
            busy[slot_id] = True
            try:
                self._run_job(job)  # type: ignore[arg-type]
            except BaseException:  # a bug in the runtime, not in the handler: keep the slot alive
                log.exception("slot crashed while running a work item")
            finally:
                busy[slot_id] = False


class AsyncSlotPool(Generic[J]):
    """Slots are asyncio tasks on one event loop, in its own thread."""

    def __init__(self, run_job: Callable[[J], Awaitable[None]], size: int, name: str = "lagpilot-async") -> None:
        self._run_job = run_job
        self._name = name
        self._target = max(1, size)
        self._loop = asyncio.new_event_loop()
        self._queue: asyncio.Queue[object] | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._busy: dict[int, bool] = {}
        self._next_id = 0
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def size(self) -> int:
        return self._target

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_loop, name=self._name, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._queue = asyncio.Queue()
        self._loop.call_soon(self._adjust)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    def submit(self, job: J) -> None:
        assert self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, job)

    def resize(self, size: int) -> None:
        self._target = max(1, size)
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._adjust)

    def busy(self) -> int:
        return sum(1 for running in list(self._busy.values()) if running)

    def live(self) -> int:
        return len(self._tasks)

    def shutdown(self) -> None:
        async def stop() -> None:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            # Let the cancellations run before the loop stops (no "task destroyed" at exit).
            await asyncio.wait(tasks, timeout=2) if tasks else None
            self._loop.stop()

        if self._thread is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop)
            self._thread.join(timeout=5)

    def _adjust(self) -> None:
        assert self._queue is not None
        while len(self._tasks) < self._target:
            slot_id = self._next_id
            self._next_id += 1
            self._tasks[slot_id] = self._loop.create_task(self._slot(slot_id))
        for _ in range(len(self._tasks) - self._target):
            self._queue.put_nowait(_WAKE)

    async def _slot(self, slot_id: int) -> None:
        assert self._queue is not None
        busy = self._busy
        busy[slot_id] = False
        try:
            while True:
                if len(self._tasks) > self._target:
                    return
                job = await self._queue.get()
                if job is _WAKE:
                    continue
                busy[slot_id] = True
                try:
                    await self._run_job(job)  # type: ignore[arg-type]
                except asyncio.CancelledError:
                    raise
                except BaseException:
                    log.exception("slot crashed while running a work item")
                finally:
                    busy[slot_id] = False
        finally:
            self._tasks.pop(slot_id, None)
            busy.pop(slot_id, None)

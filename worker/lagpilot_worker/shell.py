"""What every kind of worker shares around its consume loop.

Start, the loop until stop() is asked for, a graceful end and the cleanup after it; the slots (pool,
Processor) and the pool-size source that resizes them live; the HTTP server with the probes and
/metrics. `runtime.Worker` (consumer groups: partitions and offset commits) and
`share_runtime.ShareWorker` (share groups: acquired records and acknowledgements) fill in the loop.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry

from .config import WorkerConfig
from .dlq import FailurePublisher
from .health import HealthServer
from .metrics import WorkerMetrics
from .pool import AsyncSlotPool, SlotPool, ThreadSlotPool
from .poolsize import FixedPoolSize, PoolSizeSource
from .processing import Job, JobResult, Processor
from .record import Handler
from .resize import PoolResizer
from .retry import RetryPolicy

log = logging.getLogger("lagpilot_worker")


class WorkerShell:
    """The lifecycle, slots, pool size and probes of a worker; subclasses implement the loop."""

    def __init__(self, config: WorkerConfig, handler: Handler, *, pool_size_source: PoolSizeSource | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None))  # noqa: B004 - async callable objects
        self.metrics = WorkerMetrics(registry)
        self._pool_source: PoolSizeSource = pool_size_source or FixedPoolSize(config.pool_size)
        self._resizer = PoolResizer(config.pool_size, config.max_pool_size, self.metrics.pool_size)
        self._stop_requested = threading.Event()
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._finished = threading.Event()
        self._wake = threading.Event()
        self._results: deque[JobResult] = deque()
        self._last_loop = time.monotonic()
        self._http: HealthServer | None = None
        self._publisher: FailurePublisher | None = None
        self._pool: SlotPool[Job] | None = None
        self.error: BaseException | None = None

    # -- public -----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._start()
            while not self._stop_requested.is_set():
                self._iterate()
            self._shutdown()
        except BaseException as exc:
            self.error = exc
            log.exception("worker failed")
            raise
        finally:
            self._cleanup()
            self._finished.set()

    def stop(self) -> None:
        """Ask for a graceful shutdown (safe from any thread and from signal handlers)."""
        self._stop_requested.set()

    def wait_started(self, timeout: float) -> bool:
        """Wait until the HTTP port is open and the consumer has subscribed."""
        return self._started.wait(timeout)

    def wait_finished(self, timeout: float) -> bool:
        return self._finished.wait(timeout)

    @property
    def http_port(self) -> int | None:
        return self._http.port if self._http is not None else None

    @property
    def pool_size(self) -> int:
        return self._resizer.size

    def alive(self) -> tuple[bool, dict[str, object]]:
        raise NotImplementedError

    def ready(self) -> tuple[bool, dict[str, object]]:
        raise NotImplementedError

    # -- the loop, filled in by each kind of worker ------------------------------------------

    def _start(self) -> None:
        raise NotImplementedError

    def _iterate(self) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        """The graceful end once stop() was asked for (before the cleanup)."""

    def _cleanup(self) -> None:
        self._stop_slots()

    # -- slots, probes, pool size -----------------------------------------------------------

    def _start_slots(self, policy: RetryPolicy, dead_letter_run_limit: int | None = None) -> Processor:
        """The HTTP server, then the Processor and the pool that runs it (threads, or an event loop for a
        coroutine handler); the pool-size and in-flight gauges follow them."""
        config = self.config
        if config.http_port is not None:
            self._http = HealthServer(config.http_host, config.http_port, self.metrics.registry,
                                      self.alive, self.ready)
            self._http.start()
        processor = Processor(
            self._handler, deserializer=config.value_deserializer, classifier=config.classifier, policy=policy,
            processing=self.metrics.processing, end_to_end=self.metrics.end_to_end, results=self._results,
            wake=self._wake, stopping=self._stopping, dead_letter_run_limit=dead_letter_run_limit)
        pool: SlotPool[Job]
        if self._is_async:
            pool = AsyncSlotPool(processor.run_job_async, config.pool_size)
        else:
            pool = ThreadSlotPool(processor.run_job, config.pool_size)
        self._pool = pool
        pool.start()
        self.metrics.pool_size.set(config.pool_size)
        self.metrics.in_flight.set_function(self._in_flight)
        return processor

    def _in_flight(self) -> float:
        """Work items running now (the in-flight gauge)."""
        return float(self._pool.busy()) if self._pool is not None else 0.0

    def _stop_slots(self) -> None:
        try:
            self._pool_source.stop()
        except Exception:
            log.exception("stopping the pool-size source failed")
        if self._pool is not None:
            self._pool.shutdown()
        if self._publisher is not None:
            self._publisher.close(timeout=1.0)
        if self._http is not None:
            self._http.stop()

    def _on_pool_size(self, size: int) -> None:
        self._resizer.wish(size)

    def _apply_pool_size(self) -> bool:
        """Resize the pool to the latest wish, in the poll thread; True when it changed."""
        return self._resizer.apply(self._pool)

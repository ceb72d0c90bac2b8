"""Lagpilot worker runtime: run a Kafka message handler in a live-resizable pool of slots.

Library use::

    from lagpilot_worker import Worker, WorkerConfig

    def handle(record):
        ...

    Worker(WorkerConfig(bootstrap_servers="...", group_id="orders", topics=["orders"]), handle).run()

The CLI (`lagpilot-worker --handler mypkg.handlers:handle ...`) is a thin wrapper around this.
"""

from .breaker import BreakerConfig
from .config import WorkerConfig
from .ordering import OrderingMode
from .poolsize import ConfigMapPoolSize, FixedPoolSize, ManualPoolSize, PoolSizeSource
from .record import Record
from .retry import FailureClass, PermanentError, RetryLaterError, RetryPolicy, TransientError
from .runtime import Worker

__all__ = [
    "BreakerConfig",
    "ConfigMapPoolSize",
    "FailureClass",
    "FixedPoolSize",
    "ManualPoolSize",
    "OrderingMode",
    "PermanentError",
    "PoolSizeSource",
    "Record",
    "RetryLaterError",
    "RetryPolicy",
    "TransientError",
    "Worker",
    "WorkerConfig",
]

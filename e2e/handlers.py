"""The end-to-end worker handler: a configurable cost, deliberate failures, and a ledger entry per success.

Workers run it as `lagpilot-worker --handler handlers:handle` (this folder on PYTHONPATH, or the
e2e image's /app). Everything is configured through env, so the scenarios set it in the
KafkaConsumerGroup's template:

* `E2E_PROCESSED_TOPIC` (required): every record handled successfully is written there (key = its
  message id) before the handler returns; the ledger reads that topic to account for every id.
  The write is acknowledged before the handler returns, so a committed source offset always has its
  ledger entry: a SIGKILL can duplicate an entry, never lose one.
* `E2E_CPU_MS` (default 0): before the wait, the handler burns this many milliseconds of its thread's CPU
  time per record in a pure-Python loop (`burn_cpu`), which needs the GIL all along (threads take turns): a CPU-bound
  handler, whose slots in one process share about one core and stop adding throughput once the Pod's
  CPU limit is used. Measured in thread CPU time, not wall time: a throttled or preempted thread still
  spends the same CPU per record, it only takes longer.
* `E2E_COST_MS` (default 10): then the handler waits this long per record, like an I/O call would; the
  wait burns no CPU, so slots scale and the 2-core test machine keeps up.
* `E2E_FAIL_ALWAYS_PERCENT` (default 0): records whose id falls in that share of buckets fail on every
  attempt (they end in the DLQ once in-place retries and retry tiers are used up).
* `E2E_FAIL_ONCE_PERCENT` (default 0): the next share of buckets fails on the first attempt only (the
  in-place retry succeeds).
* `E2E_FAIL_EXCEPTION` (default `transient`): what a failure raises: `transient` (a plain exception,
  the runtime's default class), `retry-later` or `permanent`.

A record's bucket is `crc32(id) % 100` (`failure_bucket`), so a test computes which ids must end
in the DLQ without asking the workers.

`handle_seed` (`handlers:handle_seed`) is bench/seed_bench.py's handler, the seed articles' load: it parses
and validates each record's raw JSON against `SeedOrder` with pydantic (CPU, under the GIL), then waits
`E2E_COST_MS` (the bench sets 2) like an I/O call, then writes the same ledger entry as `handle`. A
record that does not validate is a permanent failure (the generator never makes one).
"""

from __future__ import annotations

import json
import os
import threading
import time
import zlib
from typing import Any

from confluent_kafka import KafkaError, Producer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Submodules, not the package root: the venv's editable install predates lagpilot_worker/__init__.py.
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError, RetryLaterError

PROCESSED_TOPIC_ENV = "E2E_PROCESSED_TOPIC"
DELIVERY_TIMEOUT_SECONDS = 60.0


class InjectedFailure(Exception):
    """A failure the scenario asked for (unknown to the runtime: classified as transient)."""


class InjectedRetryLater(RetryLaterError):
    """A failure the scenario asked for, to be retried from a retry tier."""


class InjectedPermanent(PermanentError):
    """A failure the scenario asked for, to be dead-lettered at once."""


def failure_bucket(message_id: str) -> int:
    """0..99, stable across processes and runs."""
    return zlib.crc32(message_id.encode()) % 100


def fails_always(message_id: str, always_percent: int) -> bool:
    return failure_bucket(message_id) < always_percent


def fails_once(message_id: str, always_percent: int, once_percent: int) -> bool:
    return always_percent <= failure_bucket(message_id) < always_percent + once_percent


def message_id(record: Record) -> str:
    """The load generator's id: the JSON value's `id`, else the record key."""
    value: Any = record.value
    if isinstance(value, (bytes, bytearray)):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if isinstance(value, dict) and "id" in value:
        return str(value["id"])
    if record.key is not None:
        return record.key.decode("utf-8", errors="replace")
    raise PermanentError(f"record {record.topic}-{record.partition}@{record.offset} has no id")


class _Ledger:
    """One idempotent producer per worker process; a poll thread serves delivery reports."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "client.id": f"e2e-ledger-{os.getpid()}",
        })
        self._stop = threading.Event()
        threading.Thread(target=self._serve, name="e2e-ledger-poll", daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    def record(self, key: str, value: bytes) -> None:
        done = threading.Event()
        errors: list[KafkaError] = []

        def on_delivery(error: KafkaError | None, _message: object) -> None:
            if error is not None:
                errors.append(error)
            done.set()

        self.producer.produce(self.topic, key=key.encode(), value=value, on_delivery=on_delivery)
        if not done.wait(DELIVERY_TIMEOUT_SECONDS):
            raise InjectedFailure(f"ledger write for {key} not acknowledged in {DELIVERY_TIMEOUT_SECONDS:.0f}s")
        if errors:
            # Not acknowledged: fail the record so the runtime retries it (at-least-once, never lost).
            raise InjectedFailure(f"ledger write for {key} failed: {errors[0]}")


_ledger: _Ledger | None = None
_ledger_lock = threading.Lock()


def _get_ledger() -> _Ledger:
    global _ledger
    with _ledger_lock:
        if _ledger is None:
            bootstrap = os.environ.get("LAGPILOT_BOOTSTRAP_SERVERS") or os.environ["KAFKA_BOOTSTRAP_SERVERS"]
            _ledger = _Ledger(bootstrap, os.environ[PROCESSED_TOPIC_ENV])
        return _ledger


def _percent(name: str) -> int:
    return max(0, min(100, int(os.environ.get(name, "0"))))


def _raise_injected(message_id: str, attempt: int) -> None:
    kind = os.environ.get("E2E_FAIL_EXCEPTION", "transient")
    text = f"injected failure for {message_id} (attempt {attempt})"
    if kind == "permanent":
        raise InjectedPermanent(text)
    if kind == "retry-later":
        raise InjectedRetryLater(text)
    raise InjectedFailure(text)


def _cost_seconds() -> float:
    return float(os.environ.get("E2E_COST_MS", "10")) / 1000


def _cpu_seconds() -> float:
    return float(os.environ.get("E2E_CPU_MS", "0")) / 1000


def burn_cpu(seconds: float) -> float:
    """Spend `seconds` of this thread's CPU time in pure Python (it needs the GIL throughout); returns the
    thread CPU time spent (at least `seconds`, over by at most one round of the inner loop, a few µs).

    The clock is `time.thread_time`: time this thread ran, so a thread that waits for the GIL, is
    preempted or sits in a throttled cgroup spends no more and no less CPU per record, only more wall time.
    """
    start = time.thread_time()
    end = start + seconds
    acc = 0
    while time.thread_time() < end:
        for _ in range(100):  # Python bytecode between clock reads: no syscall that releases the GIL
            acc = (acc * 31 + 7) & 0xFFFF
    return time.thread_time() - start


def handle(record: Record) -> None:
    ident = message_id(record)
    always, once = _percent("E2E_FAIL_ALWAYS_PERCENT"), _percent("E2E_FAIL_ONCE_PERCENT")
    cpu = _cpu_seconds()
    if cpu > 0:
        burn_cpu(cpu)  # the record's computation: CPU under the GIL
    cost = _cost_seconds()
    if cost > 0:
        time.sleep(cost)  # the record's "work": waiting, as on a database or HTTP call
    if fails_always(ident, always) or (record.attempt == 1 and fails_once(ident, always, once)):
        _raise_injected(ident, record.attempt)
    _write_entry(ident, record)


def _write_entry(ident: str, record: Record) -> None:
    entry = {
        "id": ident,
        "worker": os.environ.get("POD_NAME") or f"pid-{os.getpid()}",
        "attempt": record.attempt,
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "producedMs": record.timestamp_ms,
        "processedMs": int(time.time() * 1000),
    }
    _get_ledger().record(ident, json.dumps(entry, separators=(",", ":")).encode())


# --- the seed articles' load (bench/seed_bench.py) ------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeedAddress(_Strict):
    street: str = Field(min_length=1, max_length=120)
    city: str = Field(min_length=1, max_length=80)
    postcode: str = Field(pattern=r"^[0-9]{5}$")
    country: str = Field(pattern=r"^[A-Z]{2}$")


class SeedCustomer(_Strict):
    id: str = Field(pattern=r"^c-[0-9]{6}$")
    name: str = Field(min_length=1, max_length=80)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    address: SeedAddress


class SeedLine(_Strict):
    sku: str = Field(pattern=r"^SKU-[0-9]{6}$")
    name: str = Field(min_length=1, max_length=80)
    quantity: int = Field(ge=1, le=100)
    unit_price_cents: int = Field(ge=0)


class SeedOrder(_Strict):
    """The seed load's message: an order event of about 1.2 KB as JSON (`notes` pads it to size)."""

    id: str = Field(min_length=1)
    ts: int = Field(ge=0)                       # epoch milliseconds at produce time
    event: str = Field(pattern=r"^order\.(created|paid|shipped)$")
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    customer: SeedCustomer
    lines: list[SeedLine] = Field(min_length=1, max_length=50)
    total_cents: int = Field(ge=0)
    notes: str = Field(max_length=4096)


def handle_seed(record: Record) -> None:
    raw = record.raw_value
    try:
        order = SeedOrder.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise PermanentError(f"record {record.topic}-{record.partition}@{record.offset} is not a SeedOrder: "
                             f"{exc.error_count()} errors") from exc
    cost = _cost_seconds()
    if cost > 0:
        time.sleep(cost)  # the record's I/O: waiting, as on a database or HTTP call
    _write_entry(order.id, record)

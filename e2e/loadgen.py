"""Load generator and ledger for the end-to-end scenarios: produce at a scripted rate, account for every message.

* A *profile* says how many messages per second to produce at each moment of the run: `steps` (a list of
  `(duration_s, rate)`), `burst`, `sine`, `constant`, or any function of t (`FunctionProfile`).
* `LoadGenerator` produces to a topic following the profile. Pacing is a token bucket against the monotonic
  clock: at elapsed time t the run may have sent `∫₀ᵗ rate` messages, so sleeps that oversleep never add up
  to drift (sleep-per-message would). A producer that falls behind catches up at most
  `max_backlog_seconds` worth of messages; older tokens expire and are reported as `dropped`.
* Every message has a unique id: value `{"id": "<run>-<seq>", "ts": <epoch ms>}` (JSON), key from a
  configurable key space (`key-<n>`), so the ids can be accounted for after processing.
* `Ledger` reads a "processed" topic (the e2e handler writes one record per processed message, key = id,
  see e2e/handlers.py) or any topic whose values carry the ids, counts how often each id was seen, and
  `account()` says which produced ids are missing and how many duplicates there were.

CLI (prints one JSON object):
    python -m e2e.loadgen --bootstrap 127.0.0.1:19092 --topic orders --profile burst:rate=200,seconds=30
    python -m e2e.loadgen ledger --bootstrap ... --topic orders.processed --ids-file ids.txt --timeout 60

Profile specs: `steps:10@50,20@200,10@0` (seconds@rate, ...), `burst:rate=500,seconds=20[,before=0,after=0,base=0]`,
`sine:low=50,high=400,period=60,seconds=180`, `constant:rate=100,seconds=10`.
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import math
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition

# --- profiles (pure) ------------------------------------------------------------------------------------


class Profile:
    """A produce rate over time: `rate(t)` msg/s for 0 <= t < duration, and the planned count over an interval."""

    duration: float
    description: str

    def rate(self, t: float) -> float:
        raise NotImplementedError

    def cumulative(self, t: float) -> float:
        """Messages planned in [0, t] (the integral of the rate)."""
        raise NotImplementedError

    def expected(self, start: float, end: float) -> float:
        return self.cumulative(end) - self.cumulative(start)

    def due_at(self, count: float, after: float = 0.0, before: float | None = None) -> float:
        """The earliest t with cumulative(t) >= count: when the plan has the count-th message due.

        `after` and `before` narrow the search when the caller knows them (the previous message's due
        time, now): a numeric integral then costs about a dozen evaluations per message, not thirty.
        """
        low, high = after, self.duration if before is None else min(before, self.duration)
        if self.cumulative(high) < count:
            return high
        while high - low > 1e-7:  # bisection to a tenth of a microsecond
            middle = (low + high) / 2
            if self.cumulative(middle) >= count:
                high = middle
            else:
                low = middle
        return high

    @property
    def total(self) -> int:
        return math.floor(self.cumulative(self.duration) + 1e-9)


@dataclass(frozen=True)
class Steps(Profile):
    """Piecewise-constant rates: `segments` is a sequence of (duration_s, rate)."""

    segments: tuple[tuple[float, float], ...]
    description: str = ""

    def __post_init__(self) -> None:
        if any(d < 0 or r < 0 for d, r in self.segments):
            raise ValueError(f"durations and rates must be >= 0: {self.segments}")
        if not self.description:
            object.__setattr__(self, "description",
                               "steps:" + ",".join(f"{_num(d)}@{_num(r)}" for d, r in self.segments))

    @property
    def duration(self) -> float:  # type: ignore[override]
        return float(sum(d for d, _ in self.segments))

    def rate(self, t: float) -> float:
        start = 0.0
        for seconds, rate in self.segments:
            if start <= t < start + seconds:
                return rate
            start += seconds
        return 0.0

    def cumulative(self, t: float) -> float:
        total, start = 0.0, 0.0
        for seconds, rate in self.segments:
            if t <= start:
                break
            total += rate * (min(t, start + seconds) - start)
            start += seconds
        return total

    def due_at(self, count: float, after: float = 0.0, before: float | None = None) -> float:
        total, start = 0.0, 0.0
        for seconds, rate in self.segments:
            if rate > 0 and total + rate * seconds >= count:
                return start + max(0.0, count - total) / rate
            total += rate * seconds
            start += seconds
        return start


@dataclass(frozen=True)
class FunctionProfile(Profile):
    """Any rate function of t (seconds since start). The integral is numeric unless `integral` is given."""

    function: Callable[[float], float]
    duration: float
    description: str = "function"
    integral: Callable[[float], float] | None = None
    resolution: float = 0.01  # seconds per trapezoid step of the numeric integral

    def rate(self, t: float) -> float:
        return max(0.0, self.function(t)) if 0 <= t < self.duration else 0.0

    def cumulative(self, t: float) -> float:
        t = min(max(t, 0.0), self.duration)
        if self.integral is not None:
            return self.integral(t) - self.integral(0.0)
        steps = max(1, math.ceil(t / self.resolution))
        width = t / steps
        values = [max(0.0, self.function(i * width)) for i in range(steps + 1)]  # not rate(): 0 at t = duration
        return width * (sum(values) - (values[0] + values[-1]) / 2)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def steps(segments: Iterable[tuple[float, float]]) -> Steps:
    return Steps(tuple((float(d), float(r)) for d, r in segments))


def constant(rate: float, seconds: float) -> Steps:
    return Steps(((float(seconds), float(rate)),), f"constant:rate={_num(rate)},seconds={_num(seconds)}")


def burst(rate: float, seconds: float, *, before: float = 0.0, after: float = 0.0, base: float = 0.0) -> Steps:
    """`base` msg/s for `before` s, `rate` msg/s for `seconds` s, `base` again for `after` s."""
    segments = tuple((float(d), float(r)) for d, r in ((before, base), (seconds, rate), (after, base)) if d > 0)
    return Steps(segments, f"burst:rate={_num(rate)},seconds={_num(seconds)},before={_num(before)},"
                           f"after={_num(after)},base={_num(base)}")


def sine(low: float, high: float, period: float, seconds: float) -> FunctionProfile:
    """Rate oscillating between `low` and `high` (starting at the mean, rising), one cycle per `period` s."""
    if not 0 <= low <= high or period <= 0:
        raise ValueError("sine needs 0 <= low <= high and period > 0")
    mean, amplitude, omega = (low + high) / 2, (high - low) / 2, 2 * math.pi / period
    return FunctionProfile(
        function=lambda t: mean + amplitude * math.sin(omega * t),
        duration=float(seconds),
        description=f"sine:low={_num(low)},high={_num(high)},period={_num(period)},seconds={_num(seconds)}",
        integral=lambda t: mean * t - amplitude / omega * math.cos(omega * t),
    )


def parse_profile(spec: str) -> Profile:
    """`kind:args`, see the module docstring."""
    kind, _, rest = spec.partition(":")
    if kind not in ("steps", "burst", "sine", "constant"):
        raise ValueError(f"unknown profile kind {kind!r} in {spec!r} (steps, burst, sine, constant)")
    try:
        if kind == "steps":
            parts = [p.split("@") for p in rest.split(",") if p.strip()]
            if not parts or any(len(p) != 2 for p in parts):
                raise ValueError("expected steps:<seconds>@<rate>,...")
            return steps((float(d), float(r)) for d, r in parts)
        args = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in rest.split(",") if item.strip())}
        profile: Profile
        if kind == "burst":
            profile = burst(args.pop("rate"), args.pop("seconds"), before=args.pop("before", 0.0),
                            after=args.pop("after", 0.0), base=args.pop("base", 0.0))
        elif kind == "sine":
            profile = sine(args.pop("low"), args.pop("high"), args.pop("period"), args.pop("seconds"))
        else:
            profile = constant(args.pop("rate"), args.pop("seconds"))
        if args:
            raise ValueError(f"unknown arguments {sorted(args)}")
        return profile
    except (KeyError, ValueError) as exc:
        raise ValueError(f"bad profile {spec!r}: {exc!s}") from exc


# --- pacing (pure, clock passed in) ---------------------------------------------------------------------


class TokenBucket:
    """How many messages may be sent by elapsed time t: planned(t) - issued, capped to a recent window.

    The plan is the profile's integral, so the schedule is exact however long each sleep lasted. When the
    producer falls behind by more than `max_backlog_seconds` of planned messages, the older tokens expire
    (counted in `dropped`) instead of turning into an unplanned burst.
    """

    def __init__(self, profile: Profile, max_backlog_seconds: float = 1.0) -> None:
        self.profile = profile
        self.max_backlog_seconds = max_backlog_seconds
        self.issued = 0
        self.dropped = 0.0

    def available(self, elapsed: float) -> int:
        elapsed = min(elapsed, self.profile.duration)
        owed = self.profile.cumulative(elapsed) - self.dropped - self.issued
        # +1: the fraction of a message carried from the previous tick is not backlog.
        cap = self.profile.expected(max(0.0, elapsed - self.max_backlog_seconds), elapsed) + 1.0
        if owed > cap:
            self.dropped += owed - cap
            owed = cap
        return max(0, math.floor(owed + 1e-9))

    def take(self, count: int) -> None:
        self.issued += count

    def seconds_until_next(self, elapsed: float) -> float:
        """A sleep that wakes about when the next token is due (bounded, so rate changes are noticed)."""
        rate = self.profile.rate(elapsed)
        if rate <= 0:
            return 0.02
        owed = self.profile.cumulative(min(elapsed, self.profile.duration)) - self.dropped - self.issued
        return min(0.02, max(0.0005, (1.0 - (owed - math.floor(owed))) / rate))


class RunQueueWaits:
    """How long the producing thread waited for a CPU it was ready to use, between then and now.

    On a shared host the thread can be ready to send yet not running: the scheduler gave both cores to
    other processes. That wait is the host's, not the pacing's, so lateness is split into the two. Samples
    of the thread's cumulative run-queue wait are taken at each wake of the loop; a message due at `d` is
    charged the wait since the last sample at or before `d` (an upper bound by at most one loop period,
    which is at most 20 ms).
    """

    def __init__(self, horizon_s: float) -> None:
        self.horizon_s = horizon_s
        self._at: list[float] = []
        self._waited: list[float] = []

    def sample(self, elapsed: float, waited_s: float) -> None:
        self._at.append(elapsed)
        self._waited.append(waited_s)
        # Messages are at most `horizon_s` behind (older tokens expire), so older samples are never asked for.
        drop = bisect.bisect_left(self._at, elapsed - self.horizon_s - 0.1)
        if drop > 64:
            del self._at[:drop], self._waited[:drop]

    def since(self, due: float) -> float:
        """Run-queue wait from the last sample at or before `due` to the latest sample."""
        if not self._at:
            return 0.0
        index = max(0, bisect.bisect_right(self._at, due) - 1)
        return self._waited[-1] - self._waited[index]


def thread_run_queue_wait_s() -> float:
    """This thread's cumulative time runnable but not running (Linux schedstat); 0.0 where unavailable."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


# --- producing ------------------------------------------------------------------------------------------


class _CollectionPauses:
    """The longest garbage collection seen through `gc.callbacks` (any thread's)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started: float | None = None

    def on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.longest = max(self.longest, time.perf_counter() - self._started)
            self._started = None


@dataclass
class LoadResult:
    topic: str
    profile: str
    planned: int                     # the profile's total
    ids: list[str]                   # acknowledged by the broker, in acknowledgement order
    failed: list[str]                # not acknowledged (delivery error or still queued at the end)
    per_second: list[int]            # messages handed to the producer in each second of the run
    lateness_s: list[float]          # per message: when it was handed to the producer minus when the plan had it due
    host_wait_s: list[float]         # per message: of its lateness, the time the thread was runnable but got no CPU
    due_s: list[float]               # per message: when the plan had it due (seconds into the run)
    dropped: int                     # tokens expired because the producer fell behind
    started_at: float                # epoch seconds of the first planned message
    duration_s: float                # wall time of the produce loop (without the final flush)
    gc_pause_max_s: float = 0.0      # the longest garbage collection in this process during the produce loop

    @property
    def produced(self) -> int:
        return len(self.ids)

    @property
    def pacing_lateness_s(self) -> list[float]:
        """Per message, the lateness left once the host's CPU starvation is taken out: the pacing's own."""
        return [max(0.0, late - waited) for late, waited in zip(self.lateness_s, self.host_wait_s, strict=True)]

    def lateness_summary(self) -> dict[str, float]:
        """How closely the run kept to its plan: send lateness (median, 99th percentile, extremes), the same
        without the host's CPU starvation (`pacing_*`), and the longest starvation a message saw."""
        if not self.lateness_s:
            return {}
        summary = _quantiles(self.lateness_s)
        summary.update({f"pacing_{name}": value for name, value in _quantiles(self.pacing_lateness_s).items()})
        summary["host_wait_max"] = round(max(self.host_wait_s), 4)
        summary["gc_pause_max"] = round(self.gc_pause_max_s, 4)
        return summary

    def summary(self, include_ids: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "topic": self.topic, "profile": self.profile, "planned": self.planned, "produced": self.produced,
            "failed": len(self.failed), "dropped": self.dropped, "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "mean_rate": round(self.produced / self.duration_s, 2) if self.duration_s > 0 else 0.0,
            "per_second": self.per_second, "lateness_s": self.lateness_summary(),
        }
        if include_ids:
            body["ids"] = self.ids
            body["failed_ids"] = self.failed
        return body


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)
    return {"min": round(ordered[0], 4), "p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 4)}


class LoadGenerator:
    """Produce `profile` to `topic`. `run()` blocks; `start()` runs it in a thread and `join()` returns the result."""

    def __init__(self, bootstrap: str, topic: str, profile: Profile | str, *, key_space: int = 64,
                 seed: int | None = None, id_prefix: str | None = None, max_backlog_seconds: float = 1.0,
                 producer_config: Mapping[str, Any] | None = None, flush_timeout: float = 60.0) -> None:
        self.topic = topic
        self.profile = parse_profile(profile) if isinstance(profile, str) else profile
        self.key_space = key_space
        self.id_prefix = id_prefix or uuid.uuid4().hex[:10]
        self.max_backlog_seconds = max_backlog_seconds
        self.flush_timeout = flush_timeout
        self._random = random.Random(seed)
        self._config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,    # broker-side retries never duplicate: duplicates come from processing
            "linger.ms": 5,
            "client.id": f"e2e-loadgen-{self.id_prefix}",
            **(producer_config or {}),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._sent = 0
        self._lock = threading.Lock()

    @property
    def sent(self) -> int:
        """Messages handed to the producer so far (for a scenario watching a background run)."""
        with self._lock:
            return self._sent

    def start(self) -> LoadGenerator:
        def target() -> None:
            try:
                self._result = self.run()
            except BaseException as exc:  # handed to join()
                self._error = exc

        self._thread = threading.Thread(target=target, name=f"loadgen-{self.topic}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the run early; what was sent so far is flushed and reported."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> LoadResult:
        if self._thread is None:
            raise RuntimeError("not started")
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"load generator for {self.topic} still running after {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def message_id(self, seq: int) -> str:
        return f"{self.id_prefix}-{seq:09d}"

    def run(self) -> LoadResult:
        producer = Producer(self._config)
        bucket = TokenBucket(self.profile, self.max_backlog_seconds)
        acked: list[str] = []
        failed: list[str] = []
        per_second = [0] * max(1, math.ceil(self.profile.duration))
        lateness: list[float] = []
        host_wait: list[float] = []
        due_times: list[float] = []
        waits = RunQueueWaits(self.max_backlog_seconds)

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            ident = _id_from_value(message.value())
            (failed if error is not None else acked).append(ident or "?")

        # The process's heap as it is now (a test worker's, after many tests) is left out of the collections
        # during the run: a full collection of it holds the GIL, and with it this thread, for tens to hundreds
        # of milliseconds on a busy host. Their longest pause is reported.
        pauses = _CollectionPauses()
        gc.freeze()
        gc.callbacks.append(pauses.on_collection)
        try:
            started_at, seq, duration = self._paced_loop(producer, bucket, on_delivery, per_second, lateness,
                                                         host_wait, due_times, waits)
        finally:
            gc.callbacks.remove(pauses.on_collection)
            gc.unfreeze()
        remaining = producer.flush(self.flush_timeout)
        if remaining:
            # Still queued after the flush timeout: never acknowledged, so the scenario must not expect them.
            acked_set = set(acked) | set(failed)
            failed.extend(i for i in (self.message_id(n) for n in range(seq)) if i not in acked_set)
        return LoadResult(topic=self.topic, profile=self.profile.description, planned=self.profile.total, ids=acked,
                          failed=failed, per_second=per_second, lateness_s=lateness, host_wait_s=host_wait,
                          due_s=due_times, dropped=math.floor(bucket.dropped),
                          started_at=started_at, duration_s=duration, gc_pause_max_s=pauses.longest)

    def _paced_loop(self, producer: Producer, bucket: TokenBucket,
                    on_delivery: Callable[[KafkaError | None, Message], None], per_second: list[int],
                    lateness: list[float], host_wait: list[float], due_times: list[float],
                    waits: RunQueueWaits) -> tuple[float, int, float]:
        """Produce on the profile's schedule until it ends or the run is stopped: (epoch start, messages
        handed to the producer, seconds)."""
        seq = 0
        last_due = 0.0
        started_at = time.time()
        start = time.monotonic()
        while not self._stop.is_set():
            elapsed = time.monotonic() - start
            waits.sample(elapsed, thread_run_queue_wait_s())
            finished = elapsed >= self.profile.duration
            due = bucket.available(elapsed)
            second = min(int(elapsed), len(per_second) - 1)
            for _ in range(due):
                # The token this message spends: the plan's (issued + dropped + 1)-th, the same count
                # `available` compares against, so a message is never late before it was due.
                due_at = self.profile.due_at(bucket.issued + bucket.dropped + 1, after=last_due, before=elapsed)
                last_due = due_at
                if not self._produce(producer, seq, on_delivery):
                    break
                lateness.append(elapsed - due_at)
                host_wait.append(waits.since(due_at))
                due_times.append(due_at)
                seq += 1
                bucket.take(1)
                per_second[second] += 1
                with self._lock:
                    self._sent += 1
            producer.poll(0)
            if finished:
                break
            self._stop.wait(bucket.seconds_until_next(time.monotonic() - start))
        return started_at, seq, time.monotonic() - start

    def _produce(self, producer: Producer, seq: int, on_delivery: Callable[[KafkaError | None, Message], None],
                 ) -> bool:
        ident = self.message_id(seq)
        value = json.dumps({"id": ident, "ts": int(time.time() * 1000)}, separators=(",", ":")).encode()
        key = f"key-{self._random.randrange(self.key_space)}".encode() if self.key_space > 0 else None
        while True:
            try:
                producer.produce(self.topic, key=key, value=value, on_delivery=on_delivery)
                return True
            except BufferError:  # local queue full: serve deliveries, then retry the same message
                producer.poll(0.05)
                if self._stop.is_set():
                    return False


def _id_from_value(value: bytes | None) -> str | None:
    if not value:
        return None
    try:
        body = json.loads(value)
    except ValueError:
        return None
    return str(body["id"]) if isinstance(body, dict) and "id" in body else None


# --- accounting -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accounting:
    """Produced ids against processed ids: what is missing, what was processed more than once."""

    expected: int
    processed: int                       # distinct expected ids seen at least once
    missing: tuple[str, ...]             # expected, never seen (sorted)
    duplicates: int                      # extra deliveries: sum over ids of (times seen - 1)
    duplicated_ids: int                  # ids seen more than once
    unexpected: tuple[str, ...]          # seen but not expected (another run's ids, or a bug)

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self, sample: int = 10) -> dict[str, Any]:
        return {"expected": self.expected, "processed": self.processed, "missing": len(self.missing),
                "missing_sample": list(self.missing[:sample]), "duplicates": self.duplicates,
                "duplicated_ids": self.duplicated_ids, "unexpected": len(self.unexpected),
                "unexpected_sample": list(self.unexpected[:sample])}


def account(expected: Iterable[str], seen: Mapping[str, int]) -> Accounting:
    wanted = set(expected)
    missing = tuple(sorted(i for i in wanted if seen.get(i, 0) == 0))
    return Accounting(
        expected=len(wanted),
        processed=len(wanted) - len(missing),
        missing=missing,
        duplicates=sum(count - 1 for count in seen.values() if count > 1),
        duplicated_ids=sum(1 for count in seen.values() if count > 1),
        unexpected=tuple(sorted(i for i, count in seen.items() if count > 0 and i not in wanted)),
    )


def ledger_id(key: bytes | None, value: bytes | None) -> str | None:
    """The id of a ledger record: the value's JSON `id` (handler entries and load messages), else the key."""
    ident = _id_from_value(value)
    if ident is not None:
        return ident
    return key.decode("utf-8", errors="replace") if key else None


@dataclass
class Ledger:
    """Reads `topic` from the beginning (all partitions, no consumer group) and counts each id it sees.

    Use as a context manager or `start()`/`stop()`; `wait_for(ids, timeout)` blocks until every id was
    seen (woken by each new record, not by polling) and returns the accounting either way.
    """

    bootstrap: str
    topic: str
    id_of: Callable[[bytes | None, bytes | None], str | None] = ledger_id
    partition_timeout: float = 30.0
    _counts: Counter[str] = field(default_factory=Counter)
    _records: int = 0
    _unreadable: int = 0
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _error: BaseException | None = None

    def __enter__(self) -> Ledger:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def start(self) -> Ledger:
        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            "group.id": f"e2e-ledger-{uuid.uuid4().hex[:8]}",   # required by librdkafka; never joined (assign)
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })
        try:
            partitions = self._partitions(consumer)
        except BaseException:
            consumer.close()
            raise
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread = threading.Thread(target=self._read, args=(consumer,), name=f"ledger-{self.topic}",
                                        daemon=True)
        self._thread.start()
        return self

    def _partitions(self, consumer: Consumer) -> list[int]:
        deadline = time.monotonic() + self.partition_timeout
        while True:
            metadata = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if metadata is not None and metadata.error is None and metadata.partitions:
                return sorted(metadata.partitions)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"topic {self.topic} has no partitions after {self.partition_timeout:.0f}s")
            self._stop.wait(0.2)  # the topic is being created: metadata is eventually consistent

    def _read(self, consumer: Consumer) -> None:
        try:
            while not self._stop.is_set():
                messages = consumer.consume(num_messages=1000, timeout=0.2)
                if not messages:
                    continue
                with self._changed:
                    for message in messages:
                        if message.error() is not None:
                            continue
                        self._records += 1
                        ident = self.id_of(message.key(), message.value())
                        if ident is None:
                            self._unreadable += 1
                        else:
                            self._counts[ident] += 1
                    self._changed.notify_all()
        except BaseException as exc:
            self._error = exc
            with self._changed:
                self._changed.notify_all()
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def counts(self) -> dict[str, int]:
        with self._changed:
            return dict(self._counts)

    @property
    def records(self) -> int:
        with self._changed:
            return self._records

    @property
    def unreadable(self) -> int:
        """Records without an id (neither a JSON `id` nor a key)."""
        with self._changed:
            return self._unreadable

    def account(self, expected: Iterable[str]) -> Accounting:
        return account(expected, self.counts)

    def wait_for(self, expected: Iterable[str], timeout: float) -> Accounting:
        """Block until every expected id was seen or `timeout` passed; the accounting says which."""
        wanted = set(expected)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self._error is not None:
                    raise RuntimeError(f"ledger reader for {self.topic} failed") from self._error
                if all(self._counts.get(i, 0) > 0 for i in wanted):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
        return self.account(wanted)


# --- CLI ------------------------------------------------------------------------------------------------


def _produce_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.loadgen", description="produce at a scripted rate")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--profile", required=True, help="steps:10@50,20@200 | burst:rate=,seconds=[,before=,"
                                                         "after=,base=] | sine:low=,high=,period=,seconds= | "
                                                         "constant:rate=,seconds=")
    parser.add_argument("--key-space", type=int, default=64, help="distinct keys (0: no key)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the key choice")
    parser.add_argument("--id-prefix", default=None)
    parser.add_argument("--ids-out", type=Path, default=None, help="write the acknowledged ids, one per line")
    parser.add_argument("--print-ids", action="store_true", help="include every id in the JSON")
    args = parser.parse_args(argv)
    try:
        profile = parse_profile(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    result = LoadGenerator(args.bootstrap, args.topic, profile, key_space=args.key_space, seed=args.seed,
                           id_prefix=args.id_prefix).run()
    if args.ids_out is not None:
        args.ids_out.write_text("".join(f"{i}\n" for i in result.ids))
    print(json.dumps(result.summary(include_ids=args.print_ids)))
    return 0 if not result.failed else 1


def _ledger_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.loadgen ledger",
                                     description="account for produced ids in a processed topic")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True, help="the processed (ledger) topic")
    parser.add_argument("--ids-file", type=Path, required=True, help="expected ids, one per line (--ids-out)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for every id")
    args = parser.parse_args(argv)
    expected = [line.strip() for line in args.ids_file.read_text().splitlines() if line.strip()]
    with Ledger(args.bootstrap, args.topic) as ledger:
        accounting = ledger.wait_for(expected, args.timeout)
    print(json.dumps(accounting.summary()))
    return 0 if accounting.complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "ledger":
        return _ledger_main(args[1:])
    return _produce_main(args[1:] if args and args[0] == "produce" else args)


if __name__ == "__main__":
    sys.exit(main())

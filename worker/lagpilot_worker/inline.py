"""Whether the poll thread runs the next work items itself instead of handing them to a slot (pure).

For a sync handler of a few microseconds per record the hand-off costs more than the work: the
slot thread and the poll thread take turns on one GIL, and the hand-off adds 0.3-0.6 µs per record
to a handler that costs about as much. Slots add no parallelism then, so the poll thread may as
well run the items itself, through the same `Processor.run_job`.

Running on the poll thread is only safe while items are short, so the gate

* engages only below `enter_seconds_per_record` (the handler's cost per record, the upper median
  over the last `cost_items` items: one item inflated by a wait that was not the handler's, for
  the GIL or a preempted lock holder, must not decide) and leaves above
  `leave_seconds_per_record` (hysteresis: the measurement is noisy);
* caps the work the poll thread takes per loop iteration (`budget_seconds` of estimated work);
* leaves at once when an inline item held the poll thread longer than `stall_seconds` (a handler
  that is usually fast but sometimes blocks), and then stays on slots for a cool-down that
  doubles with every stall (up to `max_cooldown_seconds`); the count of stalls is forgotten once
  the last cool-down has been over for `max_cooldown_seconds`.

The handler's cost of an item (`handler_seconds`) is its thread's CPU time, unless the thread
waited (voluntary context switches: I/O, sleep, a contended lock) more than `waits_per_record`
times per record (one in ten): then it is the wall time, because slots would overlap those waits.
Wall time alone misjudges a loaded host: on 2 busy cores a thread runs a fraction of the time,
and a no-op handler that costs 1-2 µs of CPU read 10-100 µs per record of wall time in the slots,
so the gate never engaged. Waiting for the GIL is a voluntary switch too, but a thread waits for
it at most once per switch interval (5 ms, thousands of fast records), not once per record.

"Held" is the item's wall time less the time the OS kept the poll thread off a CPU although it
could have run (run-queue time, from schedstat) and, if the thread waited on nothing during it,
at most its CPU time: on a busy host the OS may preempt the poll thread for tens of milliseconds
in the middle of a 1 ms item, also right after a short wait for the GIL, and that is not the
handler's doing (the poll loop would have been held just the same without inline execution).
A wait for the GIL held by another thread that the OS preempted is not the handler's doing
either, but nothing tells it apart from a blocking call: on a heavily loaded host it costs a
cool-down on the slots.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from statistics import median_high


@dataclass(frozen=True)
class InlinePolicy:
    # Measured per record in a slot, including the slot's own bookkeeping (~0.7 µs) and its waits
    # for the GIL: a no-op handler reads 1.5-5 µs there, depending on the load. Below 10 µs the
    # work is a few µs at most and the hand-off (0.3-0.6 µs per record, more under load) is a
    # large share of it; above, the saving is small and the chance grows that the handler is
    # I/O that slots would overlap. Inline the measure is free of GIL waits, so 40 µs means the
    # handler really got slower.
    enter_seconds_per_record: float = 10e-6
    leave_seconds_per_record: float = 40e-6
    budget_seconds: float = 0.005        # estimated handler time run inline per loop iteration
    # An inline item estimated at <= budget that took this long blocked somewhere. 10 x the budget:
    # scheduler noise on a loaded host must not trip it, and 50 ms of poll loop held is harmless
    # (librdkafka fetches and heartbeats on its own threads).
    stall_seconds: float = 0.05
    # Waits per record above which an item's cost is its wall time (the handler waits on I/O, a
    # sleep, a lock), not its CPU time. GIL hand-overs come once per 5 ms switch interval.
    waits_per_record: float = 0.1
    cost_items: int = 5
    cooldown_seconds: float = 10.0
    max_cooldown_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.enter_seconds_per_record <= self.leave_seconds_per_record:
            raise ValueError("need 0 < enter_seconds_per_record <= leave_seconds_per_record")
        if self.budget_seconds <= 0 or self.stall_seconds <= 0:
            raise ValueError("budget_seconds and stall_seconds must be positive")
        if self.waits_per_record < 0 or self.cost_items < 1:
            raise ValueError("need waits_per_record >= 0 and cost_items >= 1")
        if not 0 <= self.cooldown_seconds <= self.max_cooldown_seconds:
            raise ValueError("need 0 <= cooldown_seconds <= max_cooldown_seconds")


def handler_seconds(policy: InlinePolicy, elapsed: float, *, records: int, cpu_seconds: float | None,
                    waits: int) -> float:
    """The handler's cost of an item of `records` records (pure): CPU time unless it waited per record.

    `elapsed`: the item's wall time; `cpu_seconds`: its thread's CPU time meanwhile (None:
    unknown, then the wall time counts); `waits`: voluntary context switches meanwhile.
    """
    if cpu_seconds is None or waits > records * policy.waits_per_record:
        return elapsed
    return min(elapsed, cpu_seconds)


class HandlerCost:
    """The handler's cost per record for the gate: the upper median over the last few items (pure).

    Starts from `initial` (assume slow until measured); a single item, however slow, moves it
    only once it is the majority's reading.
    """

    def __init__(self, policy: InlinePolicy, initial: float) -> None:
        self._items: deque[float] = deque([initial], maxlen=policy.cost_items)

    def add(self, seconds_per_record: float) -> None:
        self._items.append(seconds_per_record)

    @property
    def seconds_per_record(self) -> float:
        return median_high(self._items)


class InlineGate:
    """Slots or the poll thread, decided once per loop iteration; keeps the hysteresis state."""

    def __init__(self, policy: InlinePolicy, *, allowed: bool) -> None:
        self.policy = policy
        self.allowed = allowed       # sync handlers only: an async handler runs on its event loop
        self.inline = False
        self.stalls = 0              # stalls since the count was last forgotten
        self._slots_until = 0.0      # no inline execution before this (monotonic seconds)

    def update(self, seconds_per_record: float, now: float) -> bool:
        """Decide for this iteration from the smoothed handler cost per record; True: run inline."""
        policy = self.policy
        if not self.allowed:
            return False
        if self.stalls and now - self._slots_until >= policy.max_cooldown_seconds:
            self.stalls = 0
        if self.inline:
            if seconds_per_record > policy.leave_seconds_per_record:
                self.inline = False
        elif seconds_per_record <= policy.enter_seconds_per_record and now >= self._slots_until:
            self.inline = True
        return self.inline

    def budget_records(self, seconds_per_record: float) -> int:
        """Records the poll thread may take in this iteration (at least one)."""
        return max(1, int(self.policy.budget_seconds / max(seconds_per_record, 1e-9)))

    def item_finished(self, elapsed: float, now: float, *, cpu_seconds: float | None = None, waited: bool = True,
                      run_queue_seconds: float | None = None, handed_back: bool = False) -> bool:
        """Book an inline item; False when it held the poll thread too long: use the slots.

        `elapsed`: its wall time; `cpu_seconds`: the poll thread's CPU time during it (None:
        unknown); `waited`: the thread waited on something meanwhile (else it was only preempted);
        `run_queue_seconds`: the time the OS kept it off a CPU while it could run (None: unknown).
        `handed_back`: the item stopped early to let a slot run the rest (a retry in place waits,
        and waiting is not for the poll thread); like a stall, it ends inline execution for a while.
        """
        held = elapsed if run_queue_seconds is None else max(0.0, elapsed - run_queue_seconds)
        if not waited and cpu_seconds is not None:
            held = min(held, cpu_seconds)
        if held <= self.policy.stall_seconds and not handed_back:
            return True
        self.stalls += 1
        policy = self.policy
        cooldown = min(policy.max_cooldown_seconds, policy.cooldown_seconds * 2.0 ** min(self.stalls - 1, 32))
        self._slots_until = now + cooldown
        self.inline = False
        return False

    def seconds_until_allowed(self, now: float) -> float:
        return max(0.0, self._slots_until - now)


def runs_directly(*, inline: bool, tier: int, in_flight: int, out_segments: int, halted: bool,
                  breaker_closed: bool, held: int, blocked: bool, paused: bool, stopping: bool) -> bool:
    """Whether a freshly fetched run of a partition may skip the scheduler's lanes (pure).

    While the poll thread runs records itself, one after another in offset order, per-key and
    per-partition order hold without lanes, provided nothing else of the partition is anywhere:
    `in_flight` (records fetched and not finished, counted before this run is added) is 0 only
    when nothing is queued, handed out, held back by the breaker or waiting for a DLQ/retry write.
    Retry tiers (due times), an open or probing breaker, a pause and a shutdown keep the full path.
    """
    return (inline and tier == 0 and in_flight == 0 and out_segments == 0 and not halted and breaker_closed
            and held == 0 and not blocked and not paused and not stopping)

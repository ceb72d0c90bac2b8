"""The dead-letter circuit breaker of one partition (pure, no I/O).

After a bad deploy every message fails, and a worker that dead-letters failures would empty the
topic into the DLQ at full speed. The breaker counts the outcomes of a partition's messages
(handled, or dead-lettered) and trips when

* more than `max_ratio_percent` % of the last `window` outcomes were dead-lettered
  (the count, not a ratio of what was seen so far: 501 of the last 1,000 with the defaults), or
* `max_consecutive` outcomes in a row were dead-lettered.

The dead letter that trips it is written; the next one is not. While open, the worker writes
nothing more to the DLQ for that partition, hands out none of its messages, stops fetching it
and commits nothing past the first message it refused to dead-letter; lag grows and the
`lagpilot_worker_breaker_open` metric and /readyz say why. After `cooldown_seconds` the breaker
is half-open: the refused messages run once more; one success closes it (counts reset), a
failure that would be dead-lettered opens it again. `cooldown_seconds = 0` keeps it open until
the worker restarts. Retry-tier hand-offs are not outcomes: they are neither counted nor blocked.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class BreakerConfig:
    enabled: bool = True
    window: int = 1000
    max_ratio_percent: int = 50
    max_consecutive: int = 100
    cooldown_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.max_consecutive < 1:
            raise ValueError("breaker window and max_consecutive must be at least 1")
        if not 0 <= self.max_ratio_percent <= 100:
            raise ValueError("breaker max_ratio_percent must be between 0 and 100")
        if self.cooldown_seconds < 0:
            raise ValueError("breaker cooldown_seconds must be >= 0")

    @property
    def max_dead_in_window(self) -> int:
        """The most dead letters within `window` outcomes that do not trip the breaker."""
        return self.window * self.max_ratio_percent // 100


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class PartitionBreaker:
    __slots__ = ("_dead_seqs", "_seq", "config", "consecutive", "opened_at", "reason", "state")

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.opened_at: float | None = None
        self.reason = ""
        self._seq = 0                         # outcomes recorded so far
        self._dead_seqs: deque[int] = deque()  # sequence numbers of dead letters in the window

    def record_success(self) -> None:
        self._seq += 1
        self.consecutive = 0
        if self.state is BreakerState.HALF_OPEN:
            self._close()

    def record_successes(self, count: int) -> None:
        if count <= 0:
            return
        self._seq += count
        self.consecutive = 0
        if self.state is BreakerState.HALF_OPEN:
            self._close()

    def allow_dead_letter(self) -> bool:
        return not self.config.enabled or self.state is BreakerState.CLOSED

    def record_dead_letter(self, now: float) -> bool:
        """Count a dead letter that is being written. True when this one trips the breaker."""
        self._seq += 1
        self.consecutive += 1
        dead = self._dead_seqs
        dead.append(self._seq)
        window_start = self._seq - self.config.window
        while dead and dead[0] <= window_start:
            dead.popleft()
        if not self.config.enabled or self.state is not BreakerState.CLOSED:
            return False
        if self.consecutive >= self.config.max_consecutive:
            self._open(now, f"{self.consecutive} dead letters in a row (limit {self.config.max_consecutive})")
            return True
        if len(dead) > self.config.max_dead_in_window:
            self._open(now, f"{len(dead)} of the last {min(self._seq, self.config.window)} messages "
                            f"dead-lettered (limit {self.config.max_ratio_percent}% of {self.config.window})")
            return True
        return False

    def refuse_dead_letter(self, now: float) -> None:
        """A message needed the DLQ while not closed: it is held; a half-open probe failed."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self.opened_at = now

    def poll(self, now: float) -> bool:
        """Move from open to half-open once the cooldown is over. True on that transition."""
        if (self.state is BreakerState.OPEN and self.config.cooldown_seconds > 0
                and self.opened_at is not None and now - self.opened_at >= self.config.cooldown_seconds):
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def seconds_until_probe(self, now: float) -> float | None:
        if self.state is not BreakerState.OPEN or self.config.cooldown_seconds <= 0 or self.opened_at is None:
            return None
        return max(0.0, self.opened_at + self.config.cooldown_seconds - now)

    @property
    def dead_in_window(self) -> int:
        return len(self._dead_seqs)

    @property
    def is_closed(self) -> bool:
        return self.state is BreakerState.CLOSED

    def _open(self, now: float, reason: str) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.reason = reason

    def _close(self) -> None:
        self.state = BreakerState.CLOSED
        self.opened_at = None
        self.reason = ""
        self.consecutive = 0
        self._dead_seqs.clear()

"""How a failed write of a failed record (to the dead-letter or a retry tier topic) is retried (pure).

The source offset of such a record is finished only once the write is acknowledged, so a write
that keeps failing (the topic is missing, an ACL denies it, the cluster is out of disk) holds the
partition's commits back. Retrying for ever in silence would hide that: after a bounded number of
failed attempts the partition is paused, /readyz says why and a gauge says which partition. The
write is still retried (at the longest backoff), so the partition resumes on its own once the
cause is fixed; nothing is lost and nothing is committed past the record meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WriteRetryPolicy:
    """Backoff of failed DLQ/retry-tier writes, and after how many failures the partition stops."""

    attempts_before_pause: int = 5
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2                       # delays are shortened by up to this fraction

    def __post_init__(self) -> None:
        if self.attempts_before_pause < 1:
            raise ValueError("attempts_before_pause must be at least 1")
        if not 0 < self.backoff_initial_seconds <= self.backoff_max_seconds:
            raise ValueError("need 0 < backoff_initial_seconds <= backoff_max_seconds")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


@dataclass(frozen=True)
class WriteRetry:
    delay_seconds: float
    pause_partition: bool                     # the bound is reached: pause, report, keep probing


def next_write_retry(policy: WriteRetryPolicy, failed_attempts: int, random_unit: float) -> WriteRetry:
    """What to do after the `failed_attempts`-th failure (1-based) of one write; random_unit in [0, 1)."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts is 1-based")
    exponent = min(failed_attempts - 1, 64)   # multiplier**exponent would overflow long before it matters
    base = min(policy.backoff_max_seconds, policy.backoff_initial_seconds * policy.backoff_multiplier ** exponent)
    return WriteRetry(delay_seconds=base * (1.0 - policy.jitter * random_unit),
                      pause_partition=failed_attempts >= policy.attempts_before_pause)

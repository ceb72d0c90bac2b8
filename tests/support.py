"""Helpers shared by the test suites: waiting on a condition with a deadline, unique names."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    The systems under test (Kafka, the API server, Prometheus) expose state, not events we can
    subscribe to from every test, so we observe their state until it changes, with a deadline and
    a message that says what did not happen.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def unique_name(prefix: str) -> str:
    """A name unique to this test run, legal as a Kafka topic, a group id and a DNS-1123 label."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}".lower()


def release_finalizers(stack: Any, namespace: str) -> None:
    """Drop the operator's finalizer from a test namespace's KafkaConsumerGroups.

    Tests stop their operator before the namespace goes; without an operator the finalizer would hold
    the namespace in Terminating forever (in a real cluster the operator is there to release it).
    """
    found = stack.kubectl("get", "kafkaconsumergroups.lagpilot.io", "-n", namespace, "-o", "name", check=False)
    for resource in found.stdout.split() if found.returncode == 0 else []:
        stack.kubectl("patch", resource, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                      check=False)

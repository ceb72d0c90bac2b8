"""Fixtures for the dead-letter tests: a consumer group whose DLQ/retry topics are cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient

REDRIVE_SUFFIX = ".redrive"


@pytest.fixture
def admin_config(kafka_bootstrap: str) -> dict[str, str]:
    return {"bootstrap.servers": kafka_bootstrap}


@pytest.fixture
def group_id(unique_name: Callable[[str], str], kafka_bootstrap: str) -> Iterator[str]:
    """A fresh group id; every topic named after it (`<group>.dlq`, `.retry.n`, ...) and its
    redrive group are deleted after the test."""
    group = unique_name("dlgrp")
    yield group
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    leftovers = [t for t in admin.list_topics(timeout=10).topics if t.startswith(group)]
    if leftovers:
        for future in admin.delete_topics(leftovers, operation_timeout=30).values():
            try:
                future.result(timeout=60)
            except Exception as exc:
                print(f"cleanup: {exc}")
    for future in admin.delete_consumer_groups([group + REDRIVE_SUFFIX]).values():
        try:
            future.result(timeout=30)
        except Exception as exc:  # the group exists only in redrive tests
            print(f"cleanup: redrive group: {exc}")

"""Redrive on the real broker: exactly the snapshot goes back, once, in order, also across a
SIGKILL in the middle of a transaction."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)
from dead_letter_support import produce_dead_letters

from lagpilot_contract.naming import dead_letter_topic
from lagpilot_operator.kafka.dead_letter import reconcile_dead_letter
from lagpilot_operator.kafka.redrive import (
    RedriveProgress,
    RedriveRequest,
    RedriveState,
    run_redrive_step,
    run_redrive_to_completion,
    transactional_id,
)
from support import TopicRecord as Record
from support import read_all, wait_for

pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("redrive_child.py")
PARTITIONS = 3


@pytest.fixture
def topics(admin_config: dict[str, str], group_id: str,
           create_topic: Callable[..., str]) -> tuple[str, str]:
    """(source topic, DLQ) with the same partition count; the DLQ created by the operator code."""
    source = create_topic("src", partitions=PARTITIONS)
    outcome = reconcile_dead_letter(admin_config, group_id, [source], {"enabled": True}, time.time())
    assert outcome.condition.status == "True", outcome.condition
    return source, dead_letter_topic(group_id)


def assert_exact_redrive(records: list[Record], expected_ids: range) -> None:
    """Each id exactly once, on its original partition, in DLQ order, with only its own headers."""
    ids = [int(r.value or b"-1") for r in records]
    assert sorted(ids) == list(expected_ids), f"duplicates or gaps: {sorted(ids)}"
    per_partition: dict[int, list[int]] = defaultdict(list)
    for record, record_id in zip(records, ids, strict=True):
        assert record.partition == record_id % PARTITIONS
        assert record.key == f"k{record_id % 5}".encode()
        assert record.headers == [("trace-id", f"t-{record_id}".encode())]  # lagpilot.* stripped
        per_partition[record.partition].append(record_id)
    for partition, in_order in per_partition.items():
        assert in_order == sorted(in_order), f"partition {partition} out of order: {in_order}"


@pytest.mark.slow
def test_redrive_moves_exactly_the_snapshot_in_order(admin_config: dict[str, str], kafka_bootstrap: str,
                                                     group_id: str, topics: tuple[str, str]) -> None:
    source, dlq = topics
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(60), PARTITIONS)

    request = RedriveRequest("r-1", None)
    progress = run_redrive_step(admin_config, group_id, dlq, request, None, max_batch=15)
    assert progress is not None
    assert (progress.state, progress.total, progress.done) == (RedriveState.PENDING, 60, 0)
    assert read_all(kafka_bootstrap, source) == []  # the snapshot step moves nothing

    # Records dead-lettered after the request are not part of it.
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(60, 70), PARTITIONS)

    status = progress.to_status()
    seen_done = []
    while status["state"] not in ("Done", "Failed"):
        # Through the status dict each time, as the operator loop does.
        stepped = run_redrive_step(admin_config, group_id, dlq, {"requestId": "r-1"}, status, max_batch=15)
        assert stepped is not None
        status = stepped.to_status()
        seen_done.append(status["done"])
    assert status["state"] == "Done"
    assert (status["total"], status["done"]) == (60, 60)
    assert seen_done == sorted(seen_done) and len(seen_done) >= 60 // 15

    assert_exact_redrive(read_all(kafka_bootstrap, source), range(60))
    assert len(read_all(kafka_bootstrap, dlq)) == 70  # nothing deleted from the DLQ

    # Done stays done; a new request takes exactly what came after.
    again = run_redrive_step(admin_config, group_id, dlq, request, status, max_batch=15)
    assert again == RedriveProgress.from_status(status)
    second = run_redrive_to_completion(admin_config, group_id, dlq, RedriveRequest("r-2"), status)
    assert (second.state, second.total, second.done) == (RedriveState.DONE, 10, 10)
    assert_exact_redrive(read_all(kafka_bootstrap, source), range(70))


def test_redrive_stops_at_max_messages(admin_config: dict[str, str], kafka_bootstrap: str, group_id: str,
                                       topics: tuple[str, str]) -> None:
    source, dlq = topics
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(30), PARTITIONS)
    final = run_redrive_to_completion(admin_config, group_id, dlq, RedriveRequest("r-1", 12), max_batch=5)
    assert (final.state, final.total, final.done) == (RedriveState.DONE, 12, 12)
    moved = read_all(kafka_bootstrap, source)
    # 4 per DLQ partition, oldest first: ids 0..11 (record i sits in partition i % 3).
    assert_exact_redrive(moved, range(12))


def test_redrive_fails_on_a_missing_original_topic_after_moving_what_came_before(
        admin_config: dict[str, str], kafka_bootstrap: str, group_id: str, topics: tuple[str, str]) -> None:
    source, dlq = topics
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(0, 6), PARTITIONS)
    produce_dead_letters(kafka_bootstrap, dlq, f"{group_id}-gone", group_id, range(6, 7), PARTITIONS)
    final = run_redrive_to_completion(admin_config, group_id, dlq, RedriveRequest("r-1"), max_batch=50)
    assert final.state is RedriveState.FAILED
    assert f"{group_id}-gone" in final.message and "does not exist" in final.message
    # Partition 0 held ids 0, 3, 6: the two before the bad record went; partitions 1 and 2 too.
    assert_exact_redrive(read_all(kafka_bootstrap, source), range(6))
    assert final.done == 6


class Child:
    """A redrive_child.py process whose output lines are collected by a reader thread."""

    def __init__(self, args: list[str]) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen([sys.executable, str(CHILD), *args], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def line_starting(self, prefix: str) -> str | None:
        return next((line for line in self.lines if line.startswith(prefix)), None)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)


def killed_inside_transaction(child: Child) -> tuple[int, int]:
    """Wait until the child hangs inside a transaction; (records committed before it, records
    produced including the open transaction), from the child's own output."""
    hanging = wait_for(lambda: child.line_starting("IN-TRANSACTION"), 60, f"child in a transaction: {child.lines}")
    in_flight = int(hanging.split()[1].split("/")[0])
    progress = [line for line in child.lines if line.startswith("PROGRESS")]
    committed = int(progress[-1].split()[2].split("/")[0])
    return committed, in_flight


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        if child.process.poll() is None:
            child.kill()


@pytest.mark.slow
def test_redrive_killed_mid_transaction_resumes_without_duplicates(
        kafka_bootstrap: str, group_id: str, topics: tuple[str, str], tmp_path: Path,
        children: list[Child]) -> None:
    source, dlq = topics
    total = 200
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(total), PARTITIONS)
    status_file = tmp_path / "status.json"
    base = ["--bootstrap", kafka_bootstrap, "--group", group_id, "--dlq", dlq, "--request", "r-1",
            "--status-file", str(status_file), "--batch", "10"]

    # 1st process: killed inside its 4th transaction (about 30 records committed, 10 in flight;
    # the child prints the exact counts, a step may end early on its time budget).
    first = Child([*base, "--hang-at-batch", "4"])
    children.append(first)
    committed_1, in_flight_1 = killed_inside_transaction(first)
    assert 0 < committed_1 < in_flight_1 < total
    # Records dead-lettered after the request are outside the snapshot the status file holds.
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(total, total + 15), PARTITIONS)
    first.kill()

    assert len(read_all(kafka_bootstrap, source, "read_committed")) == committed_1
    # The killed transaction really had records on the broker: only isolation hides them.
    assert len(read_all(kafka_bootstrap, source, "read_uncommitted")) == in_flight_1
    assert json.loads(status_file.read_text())["done"] == committed_1

    # 2nd process resumes from the status file; killed again inside its 3rd transaction.
    second = Child([*base, "--hang-at-batch", "3"])
    children.append(second)
    committed_2, in_flight_2 = killed_inside_transaction(second)
    second.kill()
    assert committed_1 < committed_2 < in_flight_2 < total
    assert len(read_all(kafka_bootstrap, source, "read_committed")) == committed_2

    # 3rd process resumes from a status whose every write after the snapshot was lost (done=0):
    # Kafka's committed offsets, not status, decide where it continues.
    stale = json.loads(status_file.read_text())
    stale.update(state="Pending", done=0)
    status_file.write_text(json.dumps(stale))
    third = Child(base)
    children.append(third)
    wait_for(lambda: third.process.poll() is not None, 120, f"third child to finish: {third.lines}")
    finished = third.line_starting("FINISHED")
    assert third.process.returncode == 0 and finished, "\n".join(third.lines[-25:])
    final = json.loads(finished.removeprefix("FINISHED "))
    assert (final["state"], final["total"], final["done"]) == ("Done", total, total)

    assert_exact_redrive(read_all(kafka_bootstrap, source, "read_committed"), range(total))
    # The aborted transactions left their records in the log, marked aborted: proof both kills
    # landed inside a transaction, and that only read_committed readers get exactly-once.
    aborted = (in_flight_1 - committed_1) + (in_flight_2 - committed_2)
    assert len(read_all(kafka_bootstrap, source, "read_uncommitted")) == total + aborted
    assert len(read_all(kafka_bootstrap, dlq)) == total + 15


@pytest.fixture
def transactions_denied(kafka_admin: AdminClient, group_id: str, stack: Any) -> Iterator[dict[str, str]]:
    """SASL client config for a user denied every transactional id of this group's redrive."""
    principal = f"User:{stack.kafka_sasl_username}"
    prefix = transactional_id(group_id, dead_letter_topic(group_id)).rsplit(".", 1)[0]
    binding = AclBinding(ResourceType.TRANSACTIONAL_ID, prefix, ResourcePatternType.PREFIXED, principal, "*",
                         AclOperation.ALL, AclPermissionType.DENY)
    for future in kafka_admin.create_acls([binding]).values():
        future.result(timeout=30)
    yield {
        "bootstrap.servers": stack.kafka_sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": stack.kafka_sasl_username,
        "sasl.password": stack.kafka_sasl_password,
    }
    acl_filter = AclBindingFilter(ResourceType.TRANSACTIONAL_ID, prefix, ResourcePatternType.PREFIXED, principal,
                                  "*", AclOperation.ALL, AclPermissionType.DENY)
    for future in kafka_admin.delete_acls([acl_filter]).values():
        future.result(timeout=30)


def test_redrive_authorization_failure_is_reported_and_moves_nothing(
        kafka_bootstrap: str, group_id: str, topics: tuple[str, str],
        transactions_denied: dict[str, str]) -> None:
    source, dlq = topics
    produce_dead_letters(kafka_bootstrap, dlq, source, group_id, range(5), PARTITIONS)
    pending = run_redrive_step(transactions_denied, group_id, dlq, RedriveRequest("r-1"), None)
    assert pending is not None and pending.state is RedriveState.PENDING and pending.total == 5

    refused = run_redrive_step(transactions_denied, group_id, dlq, RedriveRequest("r-1"), pending.to_status())
    assert refused is not None
    assert (refused.state, refused.done, refused.snapshot) == (RedriveState.PENDING, 0, pending.snapshot)
    assert refused.error is not None
    assert "AuthorizationFailed" in refused.message
    assert "TRANSACTIONAL_ID_AUTHORIZATION_FAILED" in refused.message
    assert read_all(kafka_bootstrap, source, "read_uncommitted") == []

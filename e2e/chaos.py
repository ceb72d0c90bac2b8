"""What the chaos scenarios (e2e/test_chaos.py) read from a run: the operator's decisions while a fault
was in force, the group's progress in that window, how long a worker took from SIGTERM to its last
commit, and where a moved partition was picked up again. Pure functions over what the harness recorded
(status snapshots, ledger entries, worker log lines), so they are unit-tested without a cluster.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DECISION_FIELDS = ("desiredReplicas", "poolSize", "totalLag", "lastDecision")


def decision_timeline(snapshots: Iterable[Any], since: float, until: float, origin: float) -> list[str]:
    """One line per operator decision (status change of replicas, pool or reason) in [since, until].

    `snapshots` are the harness's StatusSnapshot (time, status); the line says when, relative to `origin`.
    """
    lines: list[str] = []
    previous: tuple[Any, ...] | None = None
    for snapshot in snapshots:
        status: Mapping[str, Any] = snapshot.status
        key = (status.get("desiredReplicas"), status.get("poolSize"), status.get("lastDecision"))
        if key == previous:
            continue
        previous = key
        if since <= snapshot.time <= until:
            lines.append(f"+{snapshot.time - origin:5.1f}s replicas={status.get('desiredReplicas')} "
                         f"pool={status.get('poolSize')} lag={status.get('totalLag')}: {status.get('lastDecision')}")
    return lines


def processed_between(entries: Iterable[Mapping[str, Any]], since: float, until: float,
                      workers: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> int:
    """Ledger entries written in [since, until] (epoch seconds), by `workers` if given, not by `exclude`."""
    low, high = since * 1000, until * 1000
    return sum(1 for e in entries
               if low <= float(e.get("processedMs") or 0) <= high
               and (workers is None or e.get("worker") in workers) and e.get("worker") not in exclude)


def progress_slices(entries: Sequence[Mapping[str, Any]], since: float, until: float, slice_seconds: float,
                    workers: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> list[int]:
    """Entries per slice of [since, until] (slices of about `slice_seconds`, all of the same length, so no
    sliver at the end reads as a stall): a zero is a slice in which the group processed nothing."""
    count = max(1, round((until - since) / slice_seconds))
    width = (until - since) / count
    return [processed_between(entries, since + i * width, since + (i + 1) * width, workers, exclude)
            for i in range(count)]


def last_processed(entries: Iterable[Mapping[str, Any]]) -> float:
    """When the last ledger entry was written (epoch seconds): after it the group had nothing left to do."""
    return max((float(e.get("processedMs") or 0) for e in entries), default=0.0) / 1000


def repeated_runs(entries: Iterable[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """The runs of every record run more than once, each record's in the order they ran."""
    by_id: dict[str, list[Mapping[str, Any]]] = {}
    for entry in entries:
        by_id.setdefault(str(entry.get("id")), []).append(entry)
    return [sorted(runs, key=lambda e: float(e.get("processedMs") or 0)) for runs in by_id.values() if len(runs) > 1]


def duplicates_by_first_worker(entries: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Runs beyond the first of each id, charged to the worker that ran it first: whose hand-over (a stop,
    a revocation, a crash) left it uncommitted."""
    charged: dict[str, int] = {}
    for runs in repeated_runs(entries):
        worker = str(runs[0].get("worker"))
        charged[worker] = charged.get(worker, 0) + len(runs) - 1
    return dict(sorted(charged.items()))


def duplicate_runs(entries: Iterable[Mapping[str, Any]], limit: int = 10) -> list[str]:
    """Each record run more than once: partition@offset and every run's worker and time (UTC), for a failure
    message: which hand-over left it uncovered is read from the workers' logs around those times."""
    found: list[str] = []
    for runs in repeated_runs(entries):
        where = f"p{runs[0].get('partition')}@{runs[0].get('offset')}"
        found.append(where + ": " + " -> ".join(
            f"{r.get('worker')} {time.strftime('%H:%M:%S', time.gmtime(float(r.get('processedMs') or 0) / 1000))}"
            f".{int(float(r.get('processedMs') or 0)) % 1000:03d}" for r in runs))
    return sorted(found)[:limit]


def partitions_of(entries: Iterable[Mapping[str, Any]], worker: str, since: float, until: float) -> set[int]:
    """Partitions `worker` wrote entries for in [since, until]: what it held then."""
    low, high = since * 1000, until * 1000
    return {int(e["partition"]) for e in entries
            if e.get("worker") == worker and low <= float(e.get("processedMs") or 0) <= high}


def takeover_seconds(entries: Iterable[Mapping[str, Any]], partitions: set[int], victim: str,
                     since: float) -> dict[int, float]:
    """Per partition, seconds from `since` to the first entry another worker wrote for it (failover)."""
    first: dict[int, float] = {}
    for entry in entries:
        partition = int(entry.get("partition", -1))
        at = float(entry.get("processedMs") or 0) / 1000
        if partition in partitions and entry.get("worker") != victim and at >= since:
            first[partition] = min(first.get(partition, at), at)
    return {p: round(t - since, 1) for p, t in sorted(first.items())}


# --- worker logs -------------------------------------------------------------------------------------------


def log_time(text: str) -> float:
    """The worker's JSON log `time` (UTC, `2026-12-04T23:25:44.123Z`) as epoch seconds."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + (float(f"0.{fraction}") if fraction else 0.0)


def log_records(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The JSON lines of a worker's output (librdkafka's own lines and anything else are skipped)."""
    out: list[dict[str, Any]] = []
    for line in lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


@dataclass(frozen=True)
class Shutdown:
    """One graceful stop of a worker, from its own log lines."""

    stopping: float                 # SIGTERM handled: "stopping: finishing the records in hand"
    stopped: float | None           # after the final commit and leaving the group: "stopped"
    in_flight: int                  # records handed out when it started stopping
    abandoned: int                  # records it gave up at the deadline (delivered again elsewhere)

    @property
    def seconds(self) -> float | None:
        return None if self.stopped is None else self.stopped - self.stopping


def shutdowns(records: Iterable[Mapping[str, Any]]) -> list[Shutdown]:
    """Every stop in a worker's log (one per container start that was stopped), in order."""
    found: list[Shutdown] = []
    current: dict[str, Any] | None = None
    for record in records:
        message = str(record.get("message", ""))
        if message.startswith("stopping: finishing the records in hand"):
            if current is not None:
                found.append(Shutdown(current["stopping"], None, current["in_flight"], current["abandoned"]))
            current = {"stopping": log_time(str(record["time"])),
                       "in_flight": int(record.get("in_flight_records") or 0), "abandoned": 0}
        elif current is not None and message.startswith("shutdown deadline reached"):
            current["abandoned"] = int(record.get("abandoned_records") or record.get("records") or 0)
        elif current is not None and message == "stopped":
            found.append(Shutdown(current["stopping"], log_time(str(record["time"])), current["in_flight"],
                                  current["abandoned"]))
            current = None
    if current is not None:
        found.append(Shutdown(current["stopping"], None, current["in_flight"], current["abandoned"]))
    return found


def replays_reported(records: Iterable[Mapping[str, Any]]) -> int:
    """What a worker said would run again elsewhere (docs/worker.md, Rebalances and Shutdown): per
    "partitions revoked" line the records still running when the revoke bound ran out and those of a
    final commit the broker refused, plus what a shutdown abandoned at its deadline."""
    total = 0
    for record in records:
        message = str(record.get("message", ""))
        if message == "partitions revoked":
            total += int(record.get("abandoned_records") or 0) + int(record.get("refused_records") or 0)
        elif message.startswith("the broker refused the final commit at shutdown"):
            total += int(record.get("refused_records") or 0)
        elif message.startswith("shutdown deadline reached"):
            total += int(record.get("abandoned_records") or record.get("records") or 0)
    return total


def commit_trouble(records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How often a worker's commits failed and its partitions were lost, from its warnings."""
    counts = {"async_commit_failed": 0, "commit_failed": 0, "partitions_lost": 0}
    for record in records:
        message = str(record.get("message", ""))
        if message.startswith("asynchronous commit failed"):
            counts["async_commit_failed"] += 1
        elif message.startswith("commit failed"):
            counts["commit_failed"] += 1
        elif message.startswith("partitions lost"):
            counts["partitions_lost"] += 1
    return counts


def copied_log(out_dir: Path, namespace: str, pod: str) -> Path:
    """Where the PodRecorder copies what a Pod's containers wrote: <out_dir>/<namespace>_<pod>.log."""
    return out_dir / f"{namespace}_{pod}.log"


def raw_tail(out_dir: Path, namespace: str, pod: str, lines: int) -> list[str]:
    """The last lines a Pod's containers wrote, as copied, whether log records or not."""
    path = copied_log(out_dir, namespace, pod)
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else ["(no output copied)"]


def worker_log(out_dir: Path, namespace: str, pod: str) -> list[dict[str, Any]]:
    """The JSON records a Pod's containers wrote, as the PodRecorder copied them."""
    path = copied_log(out_dir, namespace, pod)
    return log_records(path.read_text(errors="replace").splitlines()) if path.exists() else []

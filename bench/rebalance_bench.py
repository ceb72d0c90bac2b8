"""Scaling a group 4 → 8 → 4 workers under steady load: classic cooperative-sticky vs KIP-848 consumer protocol.

For each protocol, against the local broker (env KAFKA_BOOTSTRAP_SERVERS): a 16-partition topic gets a
steady produce rate (e2e/loadgen.py); 4 `lagpilot-worker` processes consume it (a handler that waits a few
milliseconds per record and logs when it finished each one); once they are steady 4 more start, and once
those own their share 4 of the 8 stop gracefully (SIGTERM). The two protocols run one after the other
in the same invocation, with the same load and handler.

Per change (scale-up, scale-down), measured from the workers' own JSON logs and the handler's output:
- `unowned_partition_seconds`: summed over partitions, the time from a partition's revocation by its old
  owner to its assignment to the new one (the work on it stops meanwhile); and `max_unowned_seconds`;
- `change_seconds`: from the command (start or SIGTERM) to the last assignment of that change;
- `processed_in_window` / `expected_in_window`: records finished in the 20 s after the command, against
  the produce rate over those 20 s (the backlog is small before the change, so the steady rate is the
  reference);
- `p99_latency_ms` in that window and `p99_latency_ms_steady` in the 20 s before the change (end-to-end:
  record timestamp to the handler's finish).

Progress goes to stdout as JSON lines; the last line is one JSON object with both protocols side by side.
The workers here are processes on this machine, not Pods: this compares the group protocols, where Pod
start-up time would only add the same constant to both.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/rebalance_bench.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]  # noqa: E402
from e2e.loadgen import LoadGenerator, constant  # noqa: E402

from worker_bench import create_topic, delete_topics, emit, stack_bootstrap  # noqa: E402

PARTITIONS = 16
WINDOW_SECONDS = 20.0

# Each finished record: "<finished at> <produced at>" (epoch seconds), one line, to BENCH_PROCESSED_FILE.
HANDLER = '''
import os, threading, time
_out = open(os.environ["BENCH_PROCESSED_FILE"], "a", buffering=1)
_lock = threading.Lock()
_cost = float(os.environ["BENCH_COST_SECONDS"])

def handle(record):
    time.sleep(_cost)
    with _lock:
        _out.write(f"{time.time():.4f} {record.timestamp_ms / 1000:.4f}\\n")
'''

_PARTITION = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]$")


# --- analysis (pure) --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ownership:
    """One log line of a worker that changed what it owns: at `time`, `partitions` were revoked or assigned."""

    time: float
    worker: str
    kind: str            # "revoked" | "assigned"
    partitions: tuple[int, ...]


def unowned_spans(events: Iterable[Ownership], since: float) -> dict[int, float]:
    """For each partition revoked at or after `since`: seconds until some worker was assigned it."""
    revoked_at: dict[int, float] = {}
    spans: dict[int, float] = {}
    for event in sorted(events, key=lambda e: (e.time, e.kind != "revoked")):
        if event.time < since:
            continue
        for partition in event.partitions:
            if event.kind == "revoked":
                revoked_at.setdefault(partition, event.time)
            elif partition in revoked_at:
                spans[partition] = spans.get(partition, 0.0) + event.time - revoked_at.pop(partition)
    return spans


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def window_stats(finished: list[tuple[float, float]], start: float, end: float) -> tuple[int, float | None]:
    """Records finished in [start, end) and their p99 end-to-end latency in ms."""
    latencies = [(done - produced) * 1000 for done, produced in finished if start <= done < end]
    p99 = quantile(latencies, 0.99)
    return len(latencies), None if p99 is None else round(p99, 1)


# --- workers ------------------------------------------------------------------------------------------------


def worker_env(work_dir: Path, processed: Path, cost_seconds: float, **extra: str) -> dict[str, str]:
    """The environment of a `lagpilot-worker` process running HANDLER (written to work_dir/benchhandler.py)."""
    (work_dir / "benchhandler.py").write_text(HANDLER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work_dir), env.get("PYTHONPATH", "")]))
    env.update(BENCH_PROCESSED_FILE=str(processed), BENCH_COST_SECONDS=str(cost_seconds), **extra)
    for name in [n for n in env if n.startswith("LAGPILOT_KAFKA_") and n.endswith("_PORT")]:
        env.pop(name)  # hack/stack.py port overrides would read as librdkafka settings
    return env


@dataclass
class WorkerProcess:
    name: str
    log_path: Path
    process: subprocess.Popen[bytes]

    def entries(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return found

    def ownership(self) -> list[Ownership]:
        changes = []
        for entry in self.entries():
            kind = {"partitions revoked": "revoked", "partitions assigned": "assigned"}.get(str(entry.get("message")))
            if kind is None:
                continue
            parts = tuple(int(m["partition"]) for p in entry.get("partitions", []) if (m := _PARTITION.match(p)))
            stamp = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00")).timestamp()
            changes.append(Ownership(stamp, self.name, kind, parts))
        return changes

    def assigned(self) -> int | None:
        lines = [e for e in self.entries() if e.get("message") in ("partitions assigned", "partitions revoked")]
        return int(lines[-1]["assigned"]) if lines else None


@dataclass
class Group:
    bootstrap: str
    topic: str
    protocol: str
    work_dir: Path
    pool: int
    cost_seconds: float
    group_id: str = field(default_factory=lambda: f"bench-rb-{uuid.uuid4().hex[:8]}")
    workers: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str) -> WorkerProcess:
        env = worker_env(self.work_dir, self.work_dir / f"{self.protocol}-processed.txt", self.cost_seconds,
                         LAGPILOT_GROUP_PROTOCOL=self.protocol)
        log_path = self.work_dir / f"{self.protocol}-{name}.log"
        args = ["--handler", "benchhandler:handle", "--bootstrap-servers", self.bootstrap, "--group",
                self.group_id, "--topic", self.topic, "--pool-size", str(self.pool), "--http-host", "127.0.0.1",
                "--http-port", "0", "--worker-id", name, "--shutdown-timeout", "20", "--commit-interval", "0.5"]
        with log_path.open("ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "lagpilot_worker.cli", *args], cwd=self.work_dir,
                                       env=env, stdout=log, stderr=subprocess.STDOUT)
        worker = WorkerProcess(name, log_path, process)
        self.workers.append(worker)
        return worker

    def running(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process.poll() is None]

    def finished(self) -> list[tuple[float, float]]:
        path = self.work_dir / f"{self.protocol}-processed.txt"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                rows.append((float(parts[0]), float(parts[1])))
        return rows

    def ownership(self) -> list[Ownership]:
        return [o for w in self.workers for o in w.ownership()]

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait(30)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


def balanced(group: Group, members: int) -> bool:
    running = group.running()
    share = PARTITIONS // members
    return len(running) == members and all(w.assigned() == share for w in running)


def measure_change(group: Group, started: float, settle_before: float) -> dict[str, Any]:
    spans = unowned_spans(group.ownership(), started)
    assigned_after = [o.time for o in group.ownership() if o.kind == "assigned" and o.time >= started and o.partitions]
    finished = group.finished()
    done, p99 = window_stats(finished, started, started + WINDOW_SECONDS)
    _, p99_steady = window_stats(finished, settle_before, started)
    return {
        "unowned_partition_seconds": round(sum(spans.values()), 3),
        "max_unowned_seconds": round(max(spans.values(), default=0.0), 3),
        "partitions_moved": len(spans),
        "change_seconds": round(max(assigned_after, default=started) - started, 3),
        "processed_in_window": done,
        "p99_latency_ms": p99,
        "p99_latency_ms_steady": p99_steady,
    }


def run_protocol(bootstrap: str, admin: AdminClient, protocol: str, rate: float, pool: int, cost: float,
                 steady_seconds: float) -> dict[str, Any]:
    topic = create_topic(admin, PARTITIONS)
    with tempfile.TemporaryDirectory(prefix=f"rebalance-bench-{protocol}-") as tmp:
        work_dir = Path(tmp)
        group = Group(bootstrap, topic, protocol, work_dir, pool, cost)
        total = 4 * steady_seconds + 4 * WINDOW_SECONDS + 120  # the load outlasts every phase
        load = LoadGenerator(bootstrap, topic, constant(rate, total), key_space=256, seed=11)
        try:
            for n in range(4):
                group.start(f"w{n}")
            wait_until(lambda: balanced(group, 4), 120, "4 workers with 4 partitions each")
            load.start()
            time.sleep(steady_seconds)  # a steady baseline before the change (a measured window, not a wait)

            up_at = time.time()
            for n in range(4, 8):
                group.start(f"w{n}")
            wait_until(lambda: balanced(group, 8), 120, "8 workers with 2 partitions each")
            time.sleep(max(0.0, up_at + WINDOW_SECONDS - time.time()))
            scale_up = measure_change(group, up_at, up_at - steady_seconds)
            emit(protocol=protocol, change="4->8", **scale_up)
            time.sleep(steady_seconds)

            down_at = time.time()
            leaving = group.running()[4:]
            for worker in leaving:
                worker.process.send_signal(signal.SIGTERM)
            wait_until(lambda: all(w.process.poll() is not None for w in leaving) and balanced(group, 4), 120,
                       "4 workers with 4 partitions each again")
            time.sleep(max(0.0, down_at + WINDOW_SECONDS - time.time()))
            scale_down = measure_change(group, down_at, down_at - steady_seconds)
            emit(protocol=protocol, change="8->4", **scale_down)
        finally:
            load.stop()
            load.join(120)
            group.stop_all()
            delete_topics(admin, [topic])
        expected = round(rate * WINDOW_SECONDS)
        return {"8": scale_up | {"expected_in_window": expected},
                "4": scale_down | {"expected_in_window": expected}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="records per second produced")
    parser.add_argument("--pool", type=int, default=4, help="slots per worker")
    parser.add_argument("--cost-ms", type=float, default=5.0, help="handler time per record")
    parser.add_argument("--steady-seconds", type=float, default=15.0)
    parser.add_argument("--protocols", default="classic,consumer")
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or stack_bootstrap()
    if not bootstrap:
        print("KAFKA_BOOTSTRAP_SERVERS is not set and no local stack is running", file=sys.stderr)
        return 2
    admin = AdminClient({"bootstrap.servers": bootstrap})
    results: dict[str, Any] = {}
    for protocol in args.protocols.split(","):
        results[protocol] = run_protocol(bootstrap, admin, protocol, args.rate, args.pool, args.cost_ms / 1000,
                                         args.steady_seconds)
    emit(benchmark="rebalance 4->8->4", rate=args.rate, pool=args.pool, cost_ms=args.cost_ms,
         partitions=PARTITIONS, window_seconds=WINDOW_SECONDS,
         results={p: {"scale_up_4_to_8": r["8"], "scale_down_8_to_4": r["4"]} for p, r in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

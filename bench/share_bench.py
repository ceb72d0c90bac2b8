"""Throughput by number of workers on a 2-partition topic: a share group (KIP-932) against a consumer group.

A consumer group gives each partition to one member, so a 2-partition topic is worked by 2 workers at
most, however many run. A share group hands records out one by one: every worker gets work. For N in
1, 2, 4, 8 `lagpilot-worker` processes (pool 4, a handler that waits 20 ms a record, so about 200
records/s a worker), on a backlog large enough for the whole window, each kind of group in turn:
records finished per second over a 10 s window after a 5 s warm-up (from the handler's output).

Progress goes to stdout as JSON lines; the last line is one JSON object with both tables.
The broker needs share groups (Kafka 4.2+; the local stack runs 4.4).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/share_bench.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests")]

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]  # noqa: E402

from rebalance_bench import worker_env  # noqa: E402
from support import configure_share_group  # noqa: E402
from worker_bench import create_topic, delete_topics, emit, stack_bootstrap  # noqa: E402

PARTITIONS = 2


def fill(bootstrap: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for i in range(count):
        producer.produce(topic, key=str(i % 64).encode(), value=str(i).encode())
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("could not produce the backlog")


def finished_per_second(path: Path, start: float, end: float) -> float:
    if not path.exists():
        return 0.0
    done = sum(1 for line in path.read_text().splitlines() if line and start <= float(line.split()[0]) < end)
    return done / (end - start)


def measure(bootstrap: str, admin: AdminClient, kind: str, workers: int, backlog: int, pool: int, cost: float,
            warmup: float, window: float) -> float:
    topic = create_topic(admin, PARTITIONS)
    group = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix=f"share-bench-{kind}-") as tmp:
        work = Path(tmp)
        processed = work / "processed.txt"
        try:
            fill(bootstrap, topic, backlog)
            if kind == "share":
                configure_share_group(bootstrap, group)
            env = worker_env(work, processed, cost)
            mode = ["--share-group"] if kind == "share" else ["--group-protocol", "consumer"]
            for n in range(workers):
                args = ["--handler", "benchhandler:handle", "--bootstrap-servers", bootstrap, "--group", group,
                        "--topic", topic, "--pool-size", str(pool), "--http-port", "-1", "--worker-id", f"w{n}",
                        "--ordering", "unordered", *mode]
                with (work / f"w{n}.log").open("ab") as log:
                    processes.append(subprocess.Popen([sys.executable, "-m", "lagpilot_worker.cli", *args], cwd=work,
                                                      env=env, stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 90
            while not processed.exists() or not processed.read_text():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{kind} x{workers}: nothing processed in 90 s")
                time.sleep(0.2)
            first = time.time()
            time.sleep(warmup + window)   # the measured window itself: the rate is read from timestamps
            return finished_per_second(processed, first + warmup, first + warmup + window)
        finally:
            for process in processes:
                process.kill()
                process.wait(30)
            delete_topics(admin, [topic])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--cost-ms", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args(argv)
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or stack_bootstrap()
    if not bootstrap:
        print("KAFKA_BOOTSTRAP_SERVERS is not set and no local stack is running", file=sys.stderr)
        return 2
    admin = AdminClient({"bootstrap.servers": bootstrap})
    counts = [int(n) for n in args.workers.split(",")]
    per_worker = args.pool / (args.cost_ms / 1000)
    table: dict[str, dict[str, float]] = {"share": {}, "consumer": {}}
    for workers in counts:
        backlog = int(per_worker * workers * (args.warmup + args.window + 30)) + 1000
        for kind in ("share", "consumer"):
            rate = measure(bootstrap, admin, kind, workers, backlog, args.pool, args.cost_ms / 1000, args.warmup,
                           args.window)
            table[kind][str(workers)] = round(rate, 1)
            emit(kind=kind, workers=workers, records_per_second=round(rate, 1))
    result: dict[str, Any] = {"benchmark": "throughput by workers, 2 partitions", "pool": args.pool,
                              "cost_ms": args.cost_ms, "nominal_per_worker": per_worker,
                              "share_group": table["share"], "consumer_group": table["consumer"]}
    emit(**result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

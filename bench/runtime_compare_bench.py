"""Two versions of the worker runtime side by side: records/s and CPU time per record, no-op handler.

Each version (a git commit: by default c47d1fb, the last one-class runtime.py, against HEAD) is
installed from a `git archive` of its commit into its own virtual environment under a temporary
directory (`pip install` with that commit's requirements.lock), so neither sees the other's code
nor this checkout's. One topic is produced once; then the versions read all of it in turns,
baseline, candidate, baseline, candidate, ..., each run a fresh process with a fresh consumer
group, so both see the same broker and the same machine load.

A run measures from its first processed record (group join is not throughput) to the last:
records/s over that window, and the process's CPU time (every thread: the poll thread, the slots,
librdkafka's) divided by the records in it. The summary gives each run and the medians, and the
candidate/baseline ratios of the medians and of each pair.

Two modes, both by default (`--modes`): `broker` reads the topic from the local broker; `offline`
replaces the runtime's GroupConsumer with an in-memory stand-in (OfflineConsumer below) that hands
out records built beforehand, so only the runtime's own Python work is measured, without the
broker's and librdkafka's share of the CPU and of the noise (on a shared 2-core host single broker
runs of the same version vary by 10-20%).

Progress goes to stdout as JSON lines; the last line is the summary object.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/runtime_compare_bench.py
    ... --baseline c47d1fb --candidate HEAD --runs 5 --messages 1000000 --modes broker,offline

The same file is the child that runs one version (`--child`, started with that version's
interpreter and -I, so only its installed lagpilot_worker is importable).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "c47d1fb"    # runtime.py as one ~1,200-line class, before it was split into parts


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# -- child: one run of one version -------------------------------------------------------------


class OfflineConsumer:
    """A stand-in for lagpilot_worker.consumer.GroupConsumer with no broker behind it (`--offline`).

    It hands out records built beforehand, a run of one partition per fetch as librdkafka does, never
    of a paused partition; it answers asynchronous commits in the next fetch (as librdkafka serves
    them inside consume()) and synchronous ones at once. What is measured is then the runtime's own
    Python work per record, without the broker's or librdkafka's share and their noise.
    """

    def __init__(self, settings: dict[str, Any], topics: Any, *, on_assign: Any, on_revoke: Any, on_lost: Any,
                 on_commit_error: Any, on_commit_ack: Any) -> None:
        self._on_assign = on_assign
        self._on_commit_ack = on_commit_ack
        self._queues = OFFLINE_RECORDS
        self._next = [0] * len(self._queues)
        self._turn = 0
        self._paused: set[int] = set()
        self._answers: list[Any] = []
        self._assigned = False
        self._batch_limit = OFFLINE_BATCH_LIMIT[0] or None

    def fetch(self, max_messages: int, wait: float) -> list[Any]:
        from confluent_kafka import TopicPartition

        if not self._assigned:
            self._assigned = True
            self._on_assign([TopicPartition(OFFLINE_TOPIC, p) for p in range(len(self._queues))])
        if self._answers:
            answers, self._answers = self._answers, []
            for offsets in answers:
                self._on_commit_ack(offsets)
        for _ in range(len(self._queues)):
            partition = self._turn
            self._turn = (self._turn + 1) % len(self._queues)
            queue, start = self._queues[partition], self._next[partition]
            if partition in self._paused or start >= len(queue):
                continue
            take = max(1, max_messages) if self._batch_limit is None else min(max(1, max_messages), self._batch_limit)
            end = min(len(queue), start + take)
            self._next[partition] = end
            return queue[start:end]
        if wait > 0:
            time.sleep(min(wait, 0.01))
        return []

    def pause(self, partitions: list[Any]) -> None:
        self._paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[Any]) -> None:
        self._paused.difference_update(tp.partition for tp in partitions)

    def commit(self, offsets: list[Any], asynchronous: bool) -> bool:
        if asynchronous:
            self._answers.append(offsets)
        return True

    def committed(self, partitions: list[Any], timeout: float) -> None:
        return None

    def incremental_assign(self, partitions: list[Any]) -> None:
        pass

    def incremental_unassign(self, partitions: list[Any]) -> None:
        pass

    def high_watermark(self, topic: str, partition: int) -> int | None:
        return None

    def close(self) -> None:
        pass


OFFLINE_TOPIC = "offline"
OFFLINE_RECORDS: list[list[Any]] = []
OFFLINE_BATCH_LIMIT = [0]     # records per fetch at most (0: as many as asked); set from --offline-batch


def build_offline_records(messages: int, partitions: int, keys: int, value_bytes: int) -> None:
    """The records the OfflineConsumer hands out, built before the measurement (shared keys and value)."""
    from confluent_kafka import Message

    value = b"x" * value_bytes
    key_bytes = [f"k{i}".encode() for i in range(keys)]
    per_partition = -(-messages // partitions)
    OFFLINE_RECORDS[:] = [
        [Message(topic=OFFLINE_TOPIC, partition=p, offset=o, key=key_bytes[(o * partitions + p) % keys], value=value,
                 timestamp=(1, int(time.time() * 1000)))
         for o in range(per_partition)]
        for p in range(partitions)]


def child(args: argparse.Namespace) -> int:
    import logging

    import lagpilot_worker
    from lagpilot_worker.config import WorkerConfig
    from lagpilot_worker.ordering import OrderingMode
    from lagpilot_worker.runtime import Worker

    logging.basicConfig(level=logging.WARNING)

    def noop(record: object) -> None:
        pass

    topic = args.topic
    if args.offline:
        import lagpilot_worker.runtime

        build_offline_records(args.messages, args.partitions, 1000, args.value_bytes)
        OFFLINE_BATCH_LIMIT[0] = args.offline_batch
        lagpilot_worker.runtime.GroupConsumer = OfflineConsumer  # type: ignore[misc,assignment]
        topic = OFFLINE_TOPIC
    config = WorkerConfig(bootstrap_servers=args.bootstrap, group_id=f"bench-cmp-{uuid.uuid4().hex[:8]}",
                          topics=[topic], ordering=OrderingMode(args.ordering), pool_size=args.pool,
                          http_port=None, dead_letter_enabled=False)
    worker = Worker(config, noop)
    thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
    thread.start()
    marks: dict[str, float] = {}
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            if worker.error is not None:
                raise RuntimeError(f"worker failed: {worker.error}")
            value = float(worker.metrics.processed._value.get())
            now = time.perf_counter()
            if value > 0 and "t0" not in marks:
                marks.update(t0=now, c0=value, cpu0=time.process_time())
            if value >= args.messages:
                marks.update(t1=now, c1=value, cpu1=time.process_time())
                break
            time.sleep(0.01)
    finally:
        worker.stop()
        thread.join(60)
    if "t1" not in marks:
        print(json.dumps({"error": "timed out", "processed": float(worker.metrics.processed._value.get())}))
        return 1
    records = marks["c1"] - marks["c0"]
    seconds = marks["t1"] - marks["t0"]
    cpu = marks["cpu1"] - marks["cpu0"]
    print(json.dumps({
        "records": records, "seconds": seconds, "cpu_seconds": cpu,
        "records_per_s": records / seconds, "cpu_us_per_record": cpu / records * 1e6,
        "module": lagpilot_worker.__file__,
        # The split runtime has a dispatch module; the one-class runtime does not (a check of what ran).
        "split_runtime": (Path(lagpilot_worker.__file__).parent / "dispatch.py").exists(),
    }), flush=True)
    return 0


# -- parent: install both versions, produce, alternate runs ------------------------------------


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.strip()


def install(commit: str, into: Path, extras: str = "") -> Path:
    """A venv with `commit`'s package (and its locked dependencies) installed from a git archive of it;
    `extras` (e.g. "operator") names the package's optional dependencies to install too."""
    source = into / "src"
    source.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    venv = into / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-c", str(source / "requirements.lock"), f"{source}[{extras}]" if extras else str(source)],
                   check=True)
    return python


def one_run(python: Path, args: argparse.Namespace, topic: str | None) -> dict[str, Any]:
    command = [str(python), "-I", str(Path(__file__).resolve()), "--child", "--bootstrap", args.bootstrap,
               "--messages", str(args.messages), "--pool", str(args.pool), "--ordering", args.ordering,
               "--timeout", str(args.run_timeout), "--partitions", str(args.partitions),
               "--value-bytes", str(args.value_bytes), "--offline-batch", str(args.offline_batch)]
    command += ["--offline"] if topic is None else ["--topic", topic]
    # From a neutral directory: -I keeps this checkout off sys.path, the cwd must not put it back.
    done = subprocess.run(command, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                          timeout=args.run_timeout + 90)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"run failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each version's runs and medians, and the candidate/baseline ratios (of the medians, and per pair)."""
    base, cand = summarize(runs["baseline"]), summarize(runs["candidate"])
    return {"baseline": base, "candidate": cand, "candidate_vs_baseline": {
        "records_per_s_ratio": round(cand["median_records_per_s"] / base["median_records_per_s"], 3),
        "cpu_per_record_ratio": round(cand["median_cpu_us_per_record"] / base["median_cpu_us_per_record"], 3),
        "paired_records_per_s_ratios": [round(c["records_per_s"] / b["records_per_s"], 3)
                                        for b, c in zip(runs["baseline"], runs["candidate"], strict=True)],
        "paired_cpu_per_record_ratios": [round(c["cpu_us_per_record"] / b["cpu_us_per_record"], 3)
                                         for b, c in zip(runs["baseline"], runs["candidate"], strict=True)],
    }}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["records_per_s"] for r in runs]
    cpus = [r["cpu_us_per_record"] for r in runs]
    return {"records_per_s": [round(v) for v in rates], "cpu_us_per_record": [round(v, 3) for v in cpus],
            "median_records_per_s": round(statistics.median(rates)),
            "median_cpu_us_per_record": round(statistics.median(cpus), 3)}


def parent(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(REPO / "bench")]
    from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

    from worker_bench import create_topic, delete_topics, produce

    bootstrap = args.bootstrap or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("KAFKA_BOOTSTRAP_SERVERS is not set (source .stack/env)", file=sys.stderr)
        return 2
    args.bootstrap = bootstrap
    versions = {"baseline": git("rev-parse", args.baseline), "candidate": git("rev-parse", args.candidate)}
    work = Path(tempfile.mkdtemp(prefix="lagpilot-runtime-compare-"))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic: str | None = None
    result: dict[str, Any] = {"bench": "runtime_compare", "machine_cpus": os.cpu_count(),
                              "load_avg_start": os.getloadavg(), "commits": versions}
    try:
        pythons: dict[str, Path] = {}
        for label, commit in versions.items():
            started = time.monotonic()
            pythons[label] = install(commit, work / label)
            emit(phase="install", version=label, commit=commit, seconds=round(time.monotonic() - started, 1))
        for mode in args.modes.split(","):
            source: str | None = None      # offline: the child's OfflineConsumer, no topic
            if mode == "broker":
                topic = source = create_topic(admin, args.partitions)
                rate = produce(bootstrap, topic, args.messages, 1000, args.value_bytes, "none")
                emit(phase="produce", topic=topic, messages=args.messages, msgs_per_s=round(rate))
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in versions}
            for index in range(args.runs):
                for label in versions:          # baseline, candidate, baseline, candidate, ...
                    run = one_run(pythons[label], args, source)
                    emit(phase="run", mode=mode, run=index, version=label, records_per_s=round(run["records_per_s"]),
                         cpu_us_per_record=round(run["cpu_us_per_record"], 3), records=run["records"],
                         seconds=round(run["seconds"], 3),
                         cpu_seconds=round(run["cpu_seconds"], 3), split_runtime=run["split_runtime"])
                    runs[label].append(run)
            result[mode] = compare(runs)
        result["setup"] = {"messages": args.messages, "partitions": args.partitions, "value_bytes": args.value_bytes,
                           "offline_batch": args.offline_batch or None,
                           "pool": args.pool, "ordering": args.ordering, "handler": "no-op (sync)",
                           "runs_each": args.runs, "order": "baseline, candidate, alternating",
                           "modes": {"broker": "the local broker, librdkafka and all",
                                     "offline": "records built in memory, no broker: the runtime's own Python work"}}
        result["load_avg_end"] = os.getloadavg()
    finally:
        if topic is not None:
            delete_topics(admin, [topic])
        if args.keep:
            emit(phase="kept", dir=str(work))
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="commit of the version to compare against")
    parser.add_argument("--candidate", default="HEAD", help="commit of the version under test")
    parser.add_argument("--runs", type=int, default=5, help="runs of each version (alternating)")
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="records per run (a run of 200,000 lasts about half a second here: too noisy)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--pool", type=int, default=8)
    parser.add_argument("--ordering", default="key", choices=["key", "partition", "unordered"])
    parser.add_argument("--run-timeout", type=float, default=240.0, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep the temporary venvs (their path is printed)")
    parser.add_argument("--bootstrap", default=None, help="default: KAFKA_BOOTSTRAP_SERVERS")
    parser.add_argument("--modes", default="broker,offline",
                        help="broker: read a topic of the local broker; offline: records built in memory, no broker "
                             "(the runtime's own work, far less noise); both by default")
    parser.add_argument("--offline-batch", type=int, default=0,
                        help="offline: at most this many records per fetch (0: as many as asked). Small fetches "
                             "make the loop go round per few records: its per-iteration cost shows")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=240.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if not set(args.modes.split(",")) <= {"broker", "offline"}:
        parser.error("--modes takes broker and/or offline")
    return child(args) if args.child else parent(args)


if __name__ == "__main__":
    sys.exit(main())

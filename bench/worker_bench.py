"""Worker runtime benchmark against the local broker (env KAFKA_BOOTSTRAP_SERVERS).

(a)/(b) no-op handler: one topic is produced once; a bare confluent-kafka consume() loop and the
Lagpilot runtime with a no-op handler each read all of it with a fresh consumer group. Runs are
interleaved raw, runtime, raw, runtime ... so both see the same machine load, and the reported
`noop_ratio_vs_raw` is the median of the per-pair ratios. The bare loop uses the runtime's own
consumer settings (librdkafka's fetch tuning matters more than anything Python does here).

(c) I/O-bound handler: a 4-partition topic, a handler that waits 10 ms per record, key ordering
with many keys; steady-state throughput (after a warm-up) per pool size.

Progress goes to stdout as JSON lines; the last line is one JSON object with at least
`noop_ratio_vs_raw` and `io_bound_msgs_per_s` (pool size -> msg/s).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 .venv/bin/python bench/worker_bench.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.record import Record
from lagpilot_worker.runtime import Worker


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def create_topic(admin: AdminClient, partitions: int) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topic = admin.list_topics(name, timeout=10).topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions:
            return name
        time.sleep(0.1)
    raise RuntimeError(f"topic {name} did not appear")


def produce(bootstrap: str, topic: str, count: int, keys: int, value_bytes: int, compression: str) -> float:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000,
                         "compression.type": compression, "enable.idempotence": True})
    pad = "x" * max(0, value_bytes - 40)
    started = time.perf_counter()
    for i in range(count):
        value = json.dumps({"id": i, "ts": time.time(), "pad": pad}).encode()
        while True:
            try:
                producer.produce(topic, value, key=f"k{i % keys}".encode())
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(120)
    return count / (time.perf_counter() - started)


def stack_bootstrap() -> str | None:
    """The local stack's Kafka (`source .stack/env`), or None after saying how to get it."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        print("KAFKA_BOOTSTRAP_SERVERS is not set (source .stack/env)", file=sys.stderr)
    return bootstrap or None


def delete_topics(admin: AdminClient, topics: list[str]) -> None:
    """The bench's own topics, gone again; a topic already gone is fine."""
    if not topics:
        return
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=60)


def group() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


def raw_settings(bootstrap: str, topic: str) -> dict[str, Any]:
    """The runtime's own consumer settings (fetch tuning included, taken from lagpilot_worker.config
    so they cannot drift): the ratio then measures the runtime's overhead, not a configuration gap."""
    return WorkerConfig(bootstrap_servers=bootstrap, group_id=group(), topics=[topic],
                        http_port=None).consumer_settings()


def raw_consume(bootstrap: str, topic: str, count: int, batch: int) -> float:
    """The speed limit: a bare consume() loop touching each record (error(), value()), nothing else."""
    consumer = Consumer(raw_settings(bootstrap, topic))
    consumer.subscribe([topic])
    seen = 0
    started: float | None = None
    while seen < count:
        messages = consumer.consume(batch, 1.0)
        if messages and started is None:
            started = time.perf_counter()   # from the first record: group join is not throughput
        for message in messages:
            if message.error() is None:
                message.value()
                seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return count / elapsed


def run_worker(config: WorkerConfig, handler: Callable[[Record], object],
               until: Callable[[Worker, float], bool]) -> Worker:
    worker = Worker(config, handler)
    thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
    thread.start()
    try:
        while not until(worker, time.perf_counter()):
            if worker.error is not None:
                raise RuntimeError(f"worker failed: {worker.error}")
            time.sleep(0.01)
    finally:
        worker.stop()
        thread.join(60)
    return worker


def processed(worker: Worker) -> float:
    return float(worker.metrics.processed._value.get())


def runtime_noop(bootstrap: str, topic: str, count: int, pool: int, ordering: OrderingMode) -> float:
    def noop(record: Record) -> None:
        pass

    marks: dict[str, float] = {}

    def done(worker: Worker, now: float) -> bool:
        value = processed(worker)
        if value > 0 and "start" not in marks:
            marks["start"], marks["start_count"] = now, value
        if value >= count:
            marks["end"] = now
            return True
        return False

    config = WorkerConfig(bootstrap_servers=bootstrap, group_id=group(), topics=[topic], ordering=ordering,
                          pool_size=pool, http_port=None, dead_letter_enabled=False)
    run_worker(config, noop, done)
    return (count - marks["start_count"]) / (marks["end"] - marks["start"])


def steady_window(bootstrap: str, topic: str, pool: int, handler: Callable[[Record], Any], warmup: float,
                  window: float) -> dict[str, float]:
    """Run a key-ordered worker; from `warmup` s after its first record, measure `window` s of it:
    messages, wall seconds and this process's CPU seconds over that window."""
    marks: dict[str, float] = {}

    def done(worker: Worker, now: float) -> bool:
        value = processed(worker)
        if value > 0 and "first" not in marks:
            marks["first"] = now
        if "first" in marks and "t0" not in marks and now - marks["first"] >= warmup:
            marks["t0"], marks["c0"], marks["cpu0"] = now, value, time.process_time()
        if "t0" in marks and now - marks["t0"] >= window:
            marks["t1"], marks["c1"], marks["cpu1"] = now, value, time.process_time()
            return True
        return False

    config = WorkerConfig(bootstrap_servers=bootstrap, group_id=group(), topics=[topic],
                          ordering=OrderingMode.KEY, pool_size=pool, http_port=None, dead_letter_enabled=False)
    run_worker(config, handler, done)
    return {"messages": marks["c1"] - marks["c0"], "wall": marks["t1"] - marks["t0"],
            "cpu": marks["cpu1"] - marks["cpu0"]}


def runtime_io_bound(bootstrap: str, topic: str, pool: int, warmup: float, measure: float) -> dict[str, float]:
    def wait_10ms(record: Record) -> None:
        time.sleep(0.01)

    window = steady_window(bootstrap, topic, pool, wait_10ms, warmup, measure)
    rate = window["messages"] / window["wall"]
    return {"msgs_per_s": rate, "ideal_msgs_per_s": pool * 100.0, "of_ideal": rate / (pool * 100.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noop-messages", type=int, default=400_000)
    parser.add_argument("--pairs", type=int, default=3, help="raw/runtime pairs for the no-op ratio")
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--compression", default="none", help="producer compression.type of the topics")
    parser.add_argument("--second-compression", default="lz4",
                        help="also measure the no-op ratio on a topic compressed like this ('' to skip): with "
                             "compressed batches the raw loop is bound by Python, not by the broker")
    parser.add_argument("--second-pairs", type=int, default=2)
    parser.add_argument("--noop-pool", type=int, default=8)
    parser.add_argument("--noop-ordering", default="key", choices=[m.value for m in OrderingMode])
    parser.add_argument("--pools", default="1,8,32,128")
    parser.add_argument("--io-warmup", type=float, default=2.0)
    parser.add_argument("--io-measure", type=float, default=6.0)
    args = parser.parse_args()
    bootstrap = stack_bootstrap()
    if bootstrap is None:
        return 2
    logging.basicConfig(level=logging.WARNING)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created: list[str] = []
    result: dict[str, Any] = {"bench": "worker", "machine_cpus": os.cpu_count(), "load_avg_start": os.getloadavg()}
    try:
        ordering = OrderingMode(args.noop_ordering)
        variants = [("", args.compression, args.pairs)]
        if args.second_compression and args.second_pairs > 0:
            variants.append((f"_{args.second_compression}", args.second_compression, args.second_pairs))
        for suffix, compression, pairs in variants:
            topic = create_topic(admin, 4)
            created.append(topic)
            rate = produce(bootstrap, topic, args.noop_messages, 1000, args.value_bytes, compression)
            emit(phase="produce", topic=topic, messages=args.noop_messages, compression=compression,
                 msgs_per_s=round(rate))
            ratios: list[float] = []
            raws: list[float] = []
            runtimes: list[float] = []
            for pair in range(pairs):
                raw = raw_consume(bootstrap, topic, args.noop_messages, 1000)
                emit(phase="noop", compression=compression, pair=pair, kind="raw_consume_loop",
                     msgs_per_s=round(raw))
                ours = runtime_noop(bootstrap, topic, args.noop_messages, args.noop_pool, ordering)
                emit(phase="noop", compression=compression, pair=pair, kind="runtime", ordering=ordering.value,
                     pool=args.noop_pool, msgs_per_s=round(ours), ratio=round(ours / raw, 3))
                raws.append(raw)
                runtimes.append(ours)
                ratios.append(ours / raw)
            result[f"noop_ratio_vs_raw{suffix}"] = round(statistics.median(ratios), 3)
            result[f"noop_ratios{suffix}"] = [round(r, 3) for r in ratios]
            result[f"noop_raw_msgs_per_s{suffix}"] = round(statistics.median(raws))
            result[f"noop_runtime_msgs_per_s{suffix}"] = round(statistics.median(runtimes))
            fetch_settings = {k: v for k, v in raw_settings(bootstrap, topic).items()
                              if k.startswith(("fetch.", "queued."))}
            result[f"noop_setup{suffix}"] = {"messages": args.noop_messages, "partitions": 4,
                                             "value_bytes": args.value_bytes, "compression": compression,
                                             "ordering": ordering.value, "pool": args.noop_pool,
                                             "consumer_fetch_settings": fetch_settings}

        pools = [int(p) for p in args.pools.split(",") if p.strip()]
        io_topic = create_topic(admin, 4)
        created.append(io_topic)
        # Enough records for the largest pool to run warm-up + measurement at 100 msg/s per slot.
        io_messages = int(max(pools) * 100 * (args.io_warmup + args.io_measure) * 1.3) + 1000
        produce(bootstrap, io_topic, io_messages, 10_000, args.value_bytes, args.compression)
        emit(phase="produce", topic=io_topic, messages=io_messages)
        io: dict[str, int] = {}
        io_detail: dict[str, dict[str, float]] = {}
        for pool in pools:
            measured = runtime_io_bound(bootstrap, io_topic, pool, args.io_warmup, args.io_measure)
            io[str(pool)] = round(measured["msgs_per_s"])
            io_detail[str(pool)] = {k: round(v, 3) for k, v in measured.items()}
            # The goal (issue 4): at least 0.8 x slots x 100 msg/s, up to 32 slots.
            emit(phase="io_bound", pool=pool, **io_detail[str(pool)],
                 meets_goal=measured["of_ideal"] >= 0.8 if pool <= 32 else None)
        result.update(
            io_bound_msgs_per_s=io,
            io_bound_of_ideal={str(p): io_detail[str(p)]["of_ideal"] for p in pools},
            io_bound_goal="at least 0.8 x slots x 100 msg/s up to 32 slots",
            io_bound_meets_goal=all(io_detail[str(p)]["of_ideal"] >= 0.8 for p in pools if p <= 32),
            io_bound_setup={"partitions": 4, "handler": "time.sleep(0.01)", "ordering": "key",
                            "keys": 10_000, "warmup_s": args.io_warmup, "measure_s": args.io_measure},
        )
        result["load_avg_end"] = os.getloadavg()
    finally:
        delete_topics(admin, created)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

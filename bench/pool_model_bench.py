"""The simulator's CPU model against the real worker: one worker process, pools 1..64, two handlers.

`lagpilot simulate --cost cpu=...,io=...` predicts a pod's throughput as
min(pool / (cpu + io), pod_cpu / cpu) (`simulate.pod_throughput`). This measures the real thing in ONE
worker process (one "pod") on the local broker:

* a CPU-bound handler: a pure-Python loop that burns `--cpu-ms` of its thread's CPU time (holds the GIL);
* an I/O-bound handler: `time.sleep(--io-ms)` (releases the GIL);

at each pool size, steady-state msg/s over `--measure` seconds after `--warmup`, plus the process CPU
seconds per message and the cores it used. The runtime's own CPU per message (a no-op handler) is
measured first and added to the handler's CPU in the prediction; the pod's CPU limit is one core (the
GIL). Progress as JSON lines; the last line is one JSON object.

    source .stack/env && .venv/bin/python bench/pool_model_bench.py
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from confluent_kafka.admin import AdminClient  # type: ignore[attr-defined]

from lagpilot_operator.core.simulate import WorldModel, pod_throughput, saturating_pool
from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.ordering import OrderingMode
from lagpilot_worker.record import Record
from worker_bench import (
    create_topic,
    delete_topics,
    emit,
    group,
    processed,
    produce,
    run_worker,
    stack_bootstrap,
    steady_window,
)


def burn_cpu(seconds: float) -> Callable[[Record], None]:
    def handler(record: Record) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:  # pure Python: holds the GIL the whole time
            pass

    return handler


def wait_io(seconds: float) -> Callable[[Record], None]:
    def handler(record: Record) -> None:
        time.sleep(seconds)

    return handler


def measure(bootstrap: str, topic: str, pool: int, handler: Callable[[Record], None], warmup: float,
            window: float) -> dict[str, float]:
    steady = steady_window(bootstrap, topic, pool, handler, warmup, window)
    messages, wall, cpu = steady["messages"], steady["wall"], steady["cpu"]
    return {"msgs_per_s": messages / wall, "cpu_ms_per_msg": 1000 * cpu / max(messages, 1.0), "cores": cpu / wall}


def runtime_cpu_per_message(bootstrap: str, topic: str, count: int) -> float:
    """The runtime's own CPU seconds per message: a no-op handler reads the whole topic (pool 8)."""
    marks: dict[str, float] = {}

    def done(worker: Any, now: float) -> bool:
        value = processed(worker)
        if value > 0 and "c0" not in marks:
            marks["c0"], marks["cpu0"] = value, time.process_time()
        if value >= count:
            marks["c1"], marks["cpu1"] = value, time.process_time()
            return True
        return False

    config = WorkerConfig(bootstrap_servers=bootstrap, group_id=group(), topics=[topic],
                          ordering=OrderingMode.KEY, pool_size=8, http_port=None, dead_letter_enabled=False)
    run_worker(config, lambda record: None, done)
    return (marks["cpu1"] - marks["cpu0"]) / max(marks["c1"] - marks["c0"], 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", default="1,2,4,8,16,32,64")
    parser.add_argument("--cpu-ms", type=float, default=2.0, help="CPU per message of the CPU-bound handler")
    parser.add_argument("--io-ms", type=float, default=20.0, help="wait per message of the I/O-bound handler")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--measure", type=float, default=3.0)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--partitions", type=int, default=8)
    args = parser.parse_args()
    bootstrap = stack_bootstrap()
    if bootstrap is None:
        return 2
    logging.basicConfig(level=logging.WARNING)
    pools = [int(p) for p in args.pools.split(",") if p.strip()]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = create_topic(admin, args.partitions)
    result: dict[str, Any] = {"bench": "pool_model", "machine_cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                              "setup": {"partitions": args.partitions, "ordering": "key", "keys": 10_000,
                                        "warmup_s": args.warmup, "measure_s": args.measure, "pod_cpu": 1.0}}
    try:
        produce(bootstrap, topic, args.messages, 10_000, 100, "none")
        overhead = runtime_cpu_per_message(bootstrap, topic, args.messages)
        emit(phase="noop", pool=8, cpu_ms_per_msg=round(overhead * 1000, 3))
        result["runtime_cpu_ms_per_msg"] = round(overhead * 1000, 3)
        handlers = {
            "cpu": (burn_cpu(args.cpu_ms / 1000), args.cpu_ms / 1000, 0.0),
            "io": (wait_io(args.io_ms / 1000), 0.0, args.io_ms / 1000),
        }
        rows = []
        for kind, (handler, cpu, wait) in handlers.items():
            # The model: the handler's CPU plus the runtime's own, one core, the rest is waiting.
            model = WorldModel(message_cost_seconds=cpu + overhead + wait, cpu_seconds=cpu + overhead, pod_cpu=1.0)
            result[f"{kind}_saturating_pool"] = round(saturating_pool(model), 1)
            for pool in pools:
                got = measure(bootstrap, topic, pool, handler, args.warmup, args.measure)
                predicted = pod_throughput(model, pool)
                # The same model with the cores this process actually got (the machine is shared and
                # loaded: a "pod" here does not always get its one core).
                at_cores = pod_throughput(replace(model, pod_cpu=max(got["cores"], 0.01)), pool)
                row = {"handler": kind, "pool": pool, "measured_msgs_per_s": round(got["msgs_per_s"]),
                       "model_msgs_per_s": round(predicted),
                       "measured_over_model": round(got["msgs_per_s"] / predicted, 2),
                       "model_at_measured_cores": round(at_cores),
                       "cpu_ms_per_msg": round(got["cpu_ms_per_msg"], 3), "cores": round(got["cores"], 2)}
                emit(phase="pool", **row)
                rows.append(row)
        result["rows"] = rows
        result["load_avg_end"] = os.getloadavg()
    finally:
        delete_topics(admin, [topic])
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU of one probe of a cluster's log ends (`cluster_observer.probe_log_ends`), and of one full read
(`read_cluster`) of the same partitions for the same groups, side by side.

Makes `--topics` topics of `--partitions` partitions each on the local broker (one group per topic, its
offsets committed at 0), then calls each `--iterations` times and reports the process CPU per call
(`time.process_time`: every thread, confluent-kafka's and librdkafka's included) and its wall time. The
fleet bench's clusters have 333-334 topics of 10 partitions: the defaults. The topics are deleted at the end.

    source .stack/env && .venv/bin/python bench/probe_bench.py [--topics 334 --partitions 10 --iterations 10]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from lagpilot_operator.kafka import kafka_lag
from lagpilot_operator.kafka.cluster_observer import probe_log_ends, read_cluster
from lagpilot_operator.kafka.cluster_reads import LogStarts, TopicLayout


def measured(call: Callable[[], Any], iterations: int) -> dict[str, float]:
    call()  # the first call builds what later calls reuse (requests, layout)
    cpu, wall = time.process_time(), time.monotonic()
    for _ in range(iterations):
        call()
    return {"cpu_ms": round(1000 * (time.process_time() - cpu) / iterations, 1),
            "wall_ms": round(1000 * (time.monotonic() - wall) / iterations, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=334)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    prefix = f"probe-bench-{uuid.uuid4().hex[:6]}"
    topics = [f"{prefix}-{index}" for index in range(args.topics)]
    for future in admin.create_topics([NewTopic(t, args.partitions, 1) for t in topics]).values():
        future.result(60)
    try:
        wanted = {f"{topic}-g": frozenset({topic}) for topic in topics}
        for group, (topic,) in wanted.items():
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
            consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(args.partitions)], asynchronous=False)
            consumer.close()
        layout, starts, requests = TopicLayout(), LogStarts(), kafka_lag.OffsetRequests()
        read = measured(lambda: read_cluster(admin, bootstrap, wanted, requests=requests, starts=starts,
                                             layout=layout), args.iterations)
        probe = measured(lambda: probe_log_ends(admin, bootstrap, wanted, layout, requests, 10.0), args.iterations)
        print(json.dumps({"bench": "probe", "topics": args.topics, "partitions": args.topics * args.partitions,
                          "groups": len(wanted), "iterations": args.iterations, "probe": probe, "read": read,
                          "basis": "process CPU per call (all threads) after one warm-up call; read = a paced read "
                                   "of every group (metadata and log starts as its refresh periods allow)"}))
    finally:
        for future in admin.delete_topics(topics).values():
            future.result(60)


if __name__ == "__main__":
    main()

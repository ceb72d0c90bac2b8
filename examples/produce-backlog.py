"""Create a topic (if needed) and put a backlog of messages on it: the walkthrough's traffic.

    python examples/produce-backlog.py --bootstrap 127.0.0.1:19092 --topic orders --partitions 6 --messages 3000
"""

from __future__ import annotations

import argparse
import json

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--messages", type=int, default=3000)
    args = parser.parse_args()
    admin = AdminClient({"bootstrap.servers": args.bootstrap})
    try:
        admin.create_topics([NewTopic(args.topic, args.partitions, 1)])[args.topic].result(timeout=30)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 10, "enable.idempotence": True})
    for i in range(args.messages):
        producer.produce(args.topic, key=str(i % 100).encode(), value=json.dumps({"id": i}).encode())
        producer.poll(0)
    if producer.flush(60) != 0:
        raise SystemExit("some messages were not acknowledged within 60 s")
    print(f"produced {args.messages} messages to {args.topic}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`lagpilot-worker --handler mypkg.handlers:handle ...`: run a handler as a Lagpilot worker.

Every flag has an environment variable (shown in --help), so a Deployment can configure the
worker with env only. Kafka client settings use librdkafka's names:
`--kafka-config security.protocol=SASL_SSL`, env `LAGPILOT_KAFKA_SASL_PASSWORD=...`
(prefix LAGPILOT_KAFKA_, the rest lower-cased with `_` read as `.`), or a value read from a
mounted file with `--kafka-config-file sasl.password=/etc/kafka/password`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from lagpilot_contract import pool as pool_contract
from lagpilot_contract import worker_env as env_contract

from .breaker import BreakerConfig
from .config import GroupProtocol, WorkerConfig, default_worker_id
from .logs import configure_json_logging
from .ordering import OrderingMode
from .poolsize import ConfigMapPoolSize, FixedPoolSize, PoolSizeSource
from .record import Deserializer
from .retry import Classifier, RetryPolicy
from .runtime import Worker
from .share_runtime import ShareWorker
from .write_retry import WriteRetryPolicy

KAFKA_ENV_PREFIX = env_contract.KAFKA_ENV_PREFIX


def import_object(path: str) -> Any:
    """`package.module:attribute` (the attribute may be dotted)."""
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"expected module:attribute, got {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _json_value(raw: bytes | None) -> Any:
    return None if raw is None else json.loads(raw)


def _text_value(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")


VALUE_FORMATS: dict[str, Deserializer | None] = {"bytes": None, "json": _json_value, "text": _text_value}


def value_deserializer(name: str) -> Deserializer | None:
    if name in VALUE_FORMATS:
        return VALUE_FORMATS[name]
    found: Deserializer = import_object(name)
    return found


def parse_assignments(items: Sequence[str], what: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} expects KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value
    return parsed


def kafka_settings(config_items: Sequence[str], file_items: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """librdkafka settings from env (lowest precedence), then files, then --kafka-config."""
    settings: dict[str, str] = {}
    for name, value in env.items():
        setting = env_contract.kafka_setting_from_env(name)
        if setting is not None:
            settings[setting] = value
    for key, path in parse_assignments(file_items, "--kafka-config-file").items():
        settings[key] = Path(path).read_text().rstrip("\r\n")
    settings.update(parse_assignments(config_items, "--kafka-config"))
    return settings


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def dead_letter_enabled(flag: bool | None, env: Mapping[str, str], dlq_topic: str | None) -> bool:
    """--dead-letter / --no-dead-letter, else LAGPILOT_DEAD_LETTER, else whether a DLQ topic is named.

    Off by default, like a KafkaConsumerGroup without spec.deadLetter: a DLQ nobody created would
    not exist, and every record that failed for good would stall on its write.
    """
    if flag is not None:
        return flag
    return _env_bool(env, env_contract.ENV_DEAD_LETTER, dlq_topic is not None)


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: Any = None) -> Any:
        return env.get(name, default)

    p = argparse.ArgumentParser(prog="lagpilot-worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--handler", default=e("LAGPILOT_HANDLER"), required="LAGPILOT_HANDLER" not in env,
                   help="module:function called with each Record (sync or async) [LAGPILOT_HANDLER]")
    p.add_argument(env_contract.FLAG_BOOTSTRAP_SERVERS,
                   default=e(env_contract.ENV_BOOTSTRAP_SERVERS, e(env_contract.ENV_BOOTSTRAP_SERVERS_FALLBACK)),
                   help="[LAGPILOT_BOOTSTRAP_SERVERS or KAFKA_BOOTSTRAP_SERVERS]")
    p.add_argument(env_contract.FLAG_GROUP_ID, default=e(env_contract.ENV_GROUP_ID),
                   help="consumer group id [LAGPILOT_GROUP_ID]")
    p.add_argument(env_contract.FLAG_TOPIC, action="append", default=None,
                   help="source topic; repeat or comma-separate [LAGPILOT_TOPICS]")
    p.add_argument("--ordering", choices=[m.value for m in OrderingMode], default=e("LAGPILOT_ORDERING", "key"),
                   help="partition | key | unordered (default key) [LAGPILOT_ORDERING]")
    p.add_argument("--group-protocol", choices=[m.value for m in GroupProtocol],
                   default=e("LAGPILOT_GROUP_PROTOCOL", "classic"),
                   help="classic (cooperative-sticky) | consumer (KIP-848, Kafka 4.0+) (default classic) "
                        "[LAGPILOT_GROUP_PROTOCOL]")
    p.add_argument(env_contract.FLAG_SHARE_GROUP, action="store_true",
                   default=_env_bool(env, env_contract.ENV_SHARE_GROUP, False),
                   help="consume as a member of share group --group (KIP-932, Kafka 4.2+): records are acquired "
                        "and acknowledged one by one, more workers than partitions all get work "
                        "[LAGPILOT_SHARE_GROUP]")
    p.add_argument("--share-max-deliveries", type=int, default=int(e("LAGPILOT_SHARE_MAX_DELIVERIES", 5)),
                   help="share groups: deliveries of a failing record before it is dead-lettered, at most the "
                        "broker's group.share.delivery.count.limit (default 5) [LAGPILOT_SHARE_MAX_DELIVERIES]")
    p.add_argument("--share-batch-seconds", type=float, default=float(e("LAGPILOT_SHARE_BATCH_SECONDS", 20)),
                   help="share groups: seconds a fetched batch may run before its records not yet started are "
                        "released; keep below the group's share.record.lock.duration.ms [LAGPILOT_SHARE_BATCH_SECONDS]")
    p.add_argument("--pool-size", type=int, default=int(e(pool_contract.ENV_POOL_SIZE, 8)),
                   help=f"concurrent slots, standalone or until the ConfigMap is read [{pool_contract.ENV_POOL_SIZE}]")
    p.add_argument("--max-pool-size", type=int, default=int(e("LAGPILOT_MAX_POOL_SIZE", 1024)),
                   help="upper bound on any requested size [LAGPILOT_MAX_POOL_SIZE]")
    p.add_argument("--pool-configmap", default=e(pool_contract.ENV_POOL_CONFIGMAP),
                   help=f"watch this ConfigMap's poolSize (operator contract) [{pool_contract.ENV_POOL_CONFIGMAP}]")
    p.add_argument("--namespace", default=e(pool_contract.ENV_NAMESPACE),
                   help=f"namespace of the ConfigMap [{pool_contract.ENV_NAMESPACE}]")
    p.add_argument("--max-uncommitted", type=int, default=e("LAGPILOT_MAX_UNCOMMITTED"),
                   help="in-flight window: records fetched and not covered by a commit the broker acknowledged; "
                        "default max(10000, 100 x pool) "
                        "[LAGPILOT_MAX_UNCOMMITTED]")
    p.add_argument(env_contract.FLAG_COMMIT_INTERVAL, type=float,
                   default=float(e(env_contract.ENV_COMMIT_INTERVAL, 1.0)),
                   help=f"seconds between commits [{env_contract.ENV_COMMIT_INTERVAL}]")
    p.add_argument("--offset-metadata-max-bytes", type=int,
                   default=int(e("LAGPILOT_OFFSET_METADATA_MAX_BYTES", 4096)),
                   help="longest offset map in a commit's metadata: the broker's offset.metadata.max.bytes; "
                        "0 = no map [LAGPILOT_OFFSET_METADATA_MAX_BYTES]")
    p.add_argument("--value-deserializer", default=e("LAGPILOT_VALUE_DESERIALIZER", "bytes"),
                   help="bytes | text | json | module:function; a record it cannot decode goes to the DLQ "
                        "[LAGPILOT_VALUE_DESERIALIZER]")
    p.add_argument("--classifier", default=e("LAGPILOT_CLASSIFIER"),
                   help="module:function(exception) -> FailureClass | None [LAGPILOT_CLASSIFIER]")
    p.add_argument("--dlq-topic", default=e(env_contract.ENV_DLQ_TOPIC) or None,
                   help="dead-letter topic; default <group>.dlq [LAGPILOT_DLQ_TOPIC]")
    dead_letter = p.add_mutually_exclusive_group()
    dead_letter.add_argument("--dead-letter", dest="dead_letter", action="store_true", default=None,
                             help="write records that failed for good to the DLQ [LAGPILOT_DEAD_LETTER=true]; "
                                  "default: on only when a DLQ topic is named (--dlq-topic)")
    dead_letter.add_argument("--no-dead-letter", dest="dead_letter", action="store_false",
                             help="log and skip records that failed for good [LAGPILOT_DEAD_LETTER=false]")
    p.add_argument("--retry-delays", default=e(env_contract.ENV_RETRY_DELAYS, ""),
                   help="seconds per retry tier topic, e.g. 10,60 (empty: none) [LAGPILOT_RETRY_DELAYS]")
    p.add_argument("--retry-attempts", type=int, default=int(e("LAGPILOT_RETRY_ATTEMPTS", 3)),
                   help="handler calls in place for transient failures [LAGPILOT_RETRY_ATTEMPTS]")
    p.add_argument("--retry-backoff", type=float, default=float(e("LAGPILOT_RETRY_BACKOFF_SECONDS", 0.2)),
                   help="first backoff in seconds, doubled per retry [LAGPILOT_RETRY_BACKOFF_SECONDS]")
    p.add_argument("--retry-backoff-max", type=float, default=float(e("LAGPILOT_RETRY_BACKOFF_MAX_SECONDS", 10.0)),
                   help="backoff cap in seconds [LAGPILOT_RETRY_BACKOFF_MAX_SECONDS]")
    p.add_argument("--dead-letter-write-attempts", type=int,
                   default=int(e("LAGPILOT_DEAD_LETTER_WRITE_ATTEMPTS", WriteRetryPolicy.attempts_before_pause)),
                   help="failed writes to the DLQ/a retry topic before the partition pauses (the write keeps "
                        "being retried) [LAGPILOT_DEAD_LETTER_WRITE_ATTEMPTS]")
    p.add_argument("--no-breaker", action="store_true", default=not _env_bool(env, "LAGPILOT_BREAKER", True),
                   help="disable the dead-letter circuit breaker (LAGPILOT_BREAKER=false)")
    p.add_argument("--breaker-window", type=int, default=int(e("LAGPILOT_BREAKER_WINDOW", 1000)),
                   help="outcomes the ratio rule looks at [LAGPILOT_BREAKER_WINDOW]")
    p.add_argument("--breaker-max-percent", type=int, default=int(e("LAGPILOT_BREAKER_MAX_PERCENT", 50)),
                   help="trip above this %% of dead letters in the window [LAGPILOT_BREAKER_MAX_PERCENT]")
    p.add_argument("--breaker-max-consecutive", type=int, default=int(e("LAGPILOT_BREAKER_MAX_CONSECUTIVE", 100)),
                   help="trip after this many dead letters in a row [LAGPILOT_BREAKER_MAX_CONSECUTIVE]")
    p.add_argument("--breaker-cooldown", type=float, default=float(e("LAGPILOT_BREAKER_COOLDOWN_SECONDS", 60)),
                   help="seconds before retrying held records; 0 = until restart [LAGPILOT_BREAKER_COOLDOWN_SECONDS]")
    p.add_argument("--ready-ignores-breaker", action="store_true",
                   default=_env_bool(env, "LAGPILOT_READY_IGNORES_BREAKER", False),
                   help="stay ready while a breaker is open [LAGPILOT_READY_IGNORES_BREAKER]")
    p.add_argument("--kafka-config", action="append", default=[], metavar="KEY=VALUE",
                   help="librdkafka setting for consumer and producer, repeatable (env LAGPILOT_KAFKA_<NAME>)")
    p.add_argument("--kafka-config-file", action="append", default=[], metavar="KEY=PATH",
                   help="librdkafka setting whose value is read from a file (mounted Secret), repeatable")
    p.add_argument("--http-host", default=e("LAGPILOT_HTTP_HOST", "0.0.0.0"),
                   help="bind address of /healthz, /readyz, /metrics [LAGPILOT_HTTP_HOST]")
    p.add_argument("--http-port", type=int, default=int(e("LAGPILOT_HTTP_PORT", 8080)),
                   help="port (0: any free port, -1: no HTTP server) [LAGPILOT_HTTP_PORT]")
    p.add_argument("--shutdown-timeout", type=float, default=float(e("LAGPILOT_SHUTDOWN_TIMEOUT_SECONDS", 30)),
                   help="seconds to finish work in flight on SIGTERM [LAGPILOT_SHUTDOWN_TIMEOUT_SECONDS]")
    p.add_argument("--revoke-timeout", type=float, default=float(e("LAGPILOT_REVOKE_TIMEOUT_SECONDS", 10)),
                   help="seconds to finish a revoked partition's work [LAGPILOT_REVOKE_TIMEOUT_SECONDS]")
    p.add_argument("--worker-id", default=e("LAGPILOT_WORKER_ID") or default_worker_id(),
                   help="id in DLQ headers; default POD_NAME or host:pid [LAGPILOT_WORKER_ID]")
    p.add_argument("--log-level", default=e("LAGPILOT_LOG_LEVEL", "info"), help="[LAGPILOT_LOG_LEVEL]")
    return p


def build(argv: Sequence[str] | None, env: Mapping[str, str]) -> tuple[WorkerConfig, Callable[..., Any],
                                                                      PoolSizeSource, str]:
    parser = build_parser(env)
    args = parser.parse_args(argv)
    topics = env_contract.split_topics(args.topic if args.topic else env.get(env_contract.ENV_TOPICS, ""))
    if not args.bootstrap_servers:
        parser.error("--bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS) is required")
    if not args.group:
        parser.error("--group (or LAGPILOT_GROUP_ID) is required")
    if not topics:
        parser.error("--topic (or LAGPILOT_TOPICS) is required")
    # Like other app runners: modules next to where the worker is started are importable.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    handler = import_object(args.handler)
    classifier: Classifier | None = import_object(args.classifier) if args.classifier else None
    delays = tuple(float(d) for d in args.retry_delays.split(",") if d.strip())
    try:
        config = _config(args, topics, classifier, delays, env)
    except ValueError as exc:
        parser.error(str(exc))
    source: PoolSizeSource
    if args.pool_configmap:
        if not args.namespace:
            parser.error("--pool-configmap needs --namespace (or LAGPILOT_NAMESPACE)")
        source = ConfigMapPoolSize(args.pool_configmap, args.namespace)
    else:
        source = FixedPoolSize(args.pool_size)
    return config, handler, source, args.log_level


def _config(args: argparse.Namespace, topics: list[str], classifier: Classifier | None,
            delays: tuple[float, ...], env: Mapping[str, str]) -> WorkerConfig:
    """The WorkerConfig the flags describe; ValueError names a combination that cannot work."""
    return WorkerConfig(
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group,
        topics=topics,
        ordering=OrderingMode(args.ordering),
        group_protocol=GroupProtocol(args.group_protocol),
        share_group=args.share_group,
        share_max_deliveries=args.share_max_deliveries,
        share_batch_seconds=args.share_batch_seconds,
        pool_size=args.pool_size,
        max_pool_size=args.max_pool_size,
        max_uncommitted=int(args.max_uncommitted) if args.max_uncommitted else None,
        commit_interval_seconds=args.commit_interval,
        offset_metadata_max_bytes=args.offset_metadata_max_bytes,
        kafka_config=kafka_settings(args.kafka_config, args.kafka_config_file, env),
        dead_letter_enabled=dead_letter_enabled(args.dead_letter, env, args.dlq_topic),
        dead_letter_topic=args.dlq_topic,
        retry=RetryPolicy(attempts_in_place=args.retry_attempts, backoff_initial_seconds=args.retry_backoff,
                          backoff_max_seconds=args.retry_backoff_max, tier_delays_seconds=delays),
        write_retry=WriteRetryPolicy(attempts_before_pause=args.dead_letter_write_attempts),
        breaker=BreakerConfig(enabled=not args.no_breaker, window=args.breaker_window,
                              max_ratio_percent=args.breaker_max_percent,
                              max_consecutive=args.breaker_max_consecutive,
                              cooldown_seconds=args.breaker_cooldown),
        classifier=classifier,
        value_deserializer=value_deserializer(args.value_deserializer),
        worker_id=args.worker_id,
        http_host=args.http_host,
        http_port=None if args.http_port < 0 else args.http_port,
        shutdown_timeout_seconds=args.shutdown_timeout,
        revoke_timeout_seconds=args.revoke_timeout,
        ready_requires_closed_breakers=not args.ready_ignores_breaker,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config, handler, source, log_level = build(argv, os.environ)
    configure_json_logging(log_level)
    worker: Worker | ShareWorker = (ShareWorker if config.share_group else Worker)(
        config, handler, pool_size_source=source)
    signals_seen = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            os._exit(128 + signum)   # asked twice: the operator wants it gone now
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


"""Share-group mode (KIP-932) on the real broker: more workers than partitions all get work, failures settle
as RELEASE (a later delivery) or a dead-letter record then REJECT, and a killed worker's records come back."""

from __future__ import annotations

import signal
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_worker_pool_resize import ConcurrencyProbe
from worker_testkit import CliWorker, Topics, cli_env, http_get, metric, produce, read_topic, running_share_worker

from lagpilot_contract import headers as h
from lagpilot_contract import naming
from lagpilot_worker.config import WorkerConfig
from lagpilot_worker.poolsize import ManualPoolSize
from lagpilot_worker.record import Record
from lagpilot_worker.retry import PermanentError, RetryLaterError, RetryPolicy, TransientError
from support import configure_share_group, short_session, wait_for

PARTITIONS = 2


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[Topics]:
    made = Topics(kafka_bootstrap)
    yield made
    made.delete_all()


def config(bootstrap: str, group: str, topic: str, **changes: object) -> WorkerConfig:
    values: dict[str, object] = {"bootstrap_servers": bootstrap, "group_id": group, "topics": [topic],
                                 "share_group": True, "pool_size": 2, "http_port": None,
                                 "dead_letter_enabled": True, "retry": RetryPolicy(attempts_in_place=2,
                                                                                   backoff_initial_seconds=0.01)}
    values.update(changes)
    return WorkerConfig(**values)  # type: ignore[arg-type]


def test_three_share_workers_on_two_partitions_settle_every_record(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        topics: Topics) -> None:
    topic = create_topic("share", partitions=PARTITIONS)
    group = configure_share_group(kafka_bootstrap, unique_name("sg"))
    dlq = topics.create(naming.dead_letter_topic(group), partitions=PARTITIONS)
    done: Counter[str] = Counter()
    by_worker: Counter[str] = Counter()
    deliveries: dict[str, list[int]] = {}
    lock = threading.Lock()

    def handler_for(name: str) -> Callable[[Record], None]:
        def handle(record: Record) -> None:
            ident = int(record.value.decode())
            with lock:
                deliveries.setdefault(str(ident), []).append(record.retry_tier)
            if ident % 50 == 0:
                raise PermanentError(f"{ident} is invalid")
            if ident % 37 == 0 and record.retry_tier == 0:
                raise RetryLaterError(f"{ident}: dependency down, deliver it again later")
            if ident % 41 == 0:
                raise TransientError(f"{ident} fails on every call")
            time.sleep(0.01)
            with lock:
                done[str(ident)] += 1
                by_worker[name] += 1
        return handle

    ids: list[str] = []
    with running_share_worker(config(kafka_bootstrap, group, topic, share_max_deliveries=3), handler_for("a")), \
            running_share_worker(config(kafka_bootstrap, group, topic, share_max_deliveries=3), handler_for("b")), \
            running_share_worker(config(kafka_bootstrap, group, topic, share_max_deliveries=3), handler_for("c")):
        # A trickle, not one backlog (a fetch acquires whatever is there): at least 600 records, and on
        # until each of the three workers got some (bounded: 2,000).
        while len(ids) < 600 or (len(by_worker) < 3 and len(ids) < 2000):
            batch = [str(i) for i in range(len(ids) + 1, len(ids) + 51)]
            produce(kafka_bootstrap, topic, [(f"k{int(i) % 13}".encode(), i.encode()) for i in batch])
            ids += batch
            time.sleep(0.2)
        permanent = [i for i in ids if int(i) % 50 == 0]
        exhausted = [i for i in ids if int(i) % 41 == 0 and int(i) % 50 != 0]
        succeed = [i for i in ids if i not in permanent and i not in exhausted]
        wait_for(lambda: all(done[i] for i in succeed), 90, "every record that can succeed")
        wait_for(lambda: len(read_topic(kafka_bootstrap, dlq)) >= len(permanent) + len(exhausted), 60,
                 "the dead-letter records")
    print(f"records per worker: {dict(by_worker)}")
    assert set(done) == set(succeed) and set(done.values()) == {1}, "a record succeeded twice or not at all"
    assert len(by_worker) == 3 and min(by_worker.values()) > 0, f"not every worker got work: {by_worker}"
    # Retry-later: released, and delivered a second time (the handler sees the redelivery as tier 1).
    later = [i for i in succeed if int(i) % 37 == 0]
    assert later and all(deliveries[i] == [0, 1] for i in later), {i: deliveries[i] for i in later}
    # Transient on every call: retried in place, released, until the third delivery; then dead-lettered.
    assert all(deliveries[i] == [0, 0, 1, 1, 2, 2] for i in exhausted), {i: deliveries[i] for i in exhausted}
    letters = {r.value.decode(): r for r in read_topic(kafka_bootstrap, dlq)}
    assert set(letters) == set(permanent) | set(exhausted), "a dead-letter record missing or unexpected"
    for ident in permanent:
        record = letters[ident]
        assert record.header(h.FAILURE_KIND) == h.FAILURE_PERMANENT and record.header(h.ATTEMPTS) == "1"
        assert record.header(h.ORIGINAL_TOPIC) == topic and record.header(h.CONSUMER_GROUP) == group
        assert int(record.header(h.ORIGINAL_PARTITION) or -1) in range(PARTITIONS)
        assert record.header(h.EXCEPTION_CLASS) == "lagpilot_worker.retry.PermanentError"
    for ident in exhausted:  # the broker's delivery count is the attempt count of the contract
        assert letters[ident].header(h.FAILURE_KIND) == h.FAILURE_RETRIES_EXHAUSTED
        assert letters[ident].header(h.ATTEMPTS) == "3"


HANDLER = textwrap.dedent('''
    import os, time
    _out = open(os.environ["TEST_PROCESSED_FILE"], "a", buffering=1)
    _started = open(os.environ["TEST_STARTED_FILE"], "a", buffering=1)
    _name = os.environ["TEST_WORKER_NAME"]

    def handle(record):
        _started.write(f"{record.value.decode()} {_name} {record.retry_tier}\\n")
        time.sleep(float(os.environ["TEST_SECONDS_PER_RECORD"]))
        _out.write(f"{record.value.decode()} {_name} {record.retry_tier}\\n")
''')


def lines(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [(p[0], p[1], int(p[2])) for line in path.read_text().splitlines() if len(p := line.split()) == 3]


@pytest.mark.slow
def test_a_killed_share_worker_s_records_are_delivered_again(
        kafka_bootstrap: str, create_topic: Callable[..., str], unique_name: Callable[[str], str],
        tmp_path: Path) -> None:
    topic = create_topic("share-kill", partitions=PARTITIONS)
    # The shortest acquisition lock the broker allows by default: a killed member's records return then.
    group = configure_share_group(kafka_bootstrap, unique_name("sg"), **{"share.record.lock.duration.ms": "15000"})
    # The broker drops the killed member after a 10 s session (not 45 s), and the other member is then
    # assigned the partitions it held.
    short_session(kafka_bootstrap, group, "share")
    (tmp_path / "sharehandler.py").write_text(HANDLER)
    processed, started = tmp_path / "processed.txt", tmp_path / "started.txt"
    ids = [str(i) for i in range(200)]
    produce(kafka_bootstrap, topic, [(None, i.encode()) for i in ids])

    def worker(name: str, seconds: str) -> CliWorker:
        env = cli_env(tmp_path)
        env.update(TEST_PROCESSED_FILE=str(processed), TEST_STARTED_FILE=str(started), TEST_WORKER_NAME=name,
                   TEST_SECONDS_PER_RECORD=seconds)
        args = ["--handler", "sharehandler:handle", "--bootstrap-servers", kafka_bootstrap, "--group", group,
                "--topic", topic, "--share-group", "--pool-size", "4", "--http-host", "127.0.0.1",
                "--http-port", "0", "--worker-id", name]
        return CliWorker(args, env, tmp_path, tmp_path / f"{name}.log")

    slow = worker("slow", "0.5").start()
    try:
        wait_for(lambda: len({i for i, n, _ in lines(started) if n == "slow"}) >= 4, 60, "slow running records")
        slow.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        slow.process.wait(30)  # type: ignore[union-attr]
        in_hand = {i for i, n, _ in lines(started) if n == "slow"} - {i for i, n, _ in lines(processed)}
        assert in_hand, "the kill found nothing in hand"
        fast = worker("fast", "0.001").start()
        try:
            wait_for(lambda: {i for i, _, _ in lines(processed)} >= set(ids), 90, "every record processed")
        finally:
            assert fast.terminate() == 0
    finally:
        slow.stop_if_running()
    fast_tiers = {i: tier for i, n, tier in lines(processed) if n == "fast"}
    # Every record the killed worker had in hand came back to the other one as a second delivery (the
    # broker counted the lost one); so did those it had acquired and not started.
    assert all(fast_tiers.get(i) == 1 for i in in_hand), (in_hand, {i: fast_tiers.get(i) for i in in_hand})
    # Finished records are acknowledged as they finish (committed every 0.5 s), not at the end of the batch:
    # only those finished in the killed worker's last half second may run twice (4 slots x 0.5 s a record).
    twice = [i for i, n in Counter(i for i, _, _ in lines(processed)).items() if n > 1]
    print(f"killed with {len(in_hand)} records in hand; the other worker ran {len(fast_tiers)}, "
          f"{sum(1 for t in fast_tiers.values() if t)} of them redelivered; finished twice: {len(twice)}")
    assert len(twice) <= 8, f"{len(twice)} records finished twice: {twice}"


def test_a_share_worker_s_pool_resizes_live(kafka_bootstrap: str, create_topic: Callable[..., str],
                                           unique_name: Callable[[str], str]) -> None:
    topic = create_topic("share-resize", partitions=PARTITIONS)
    group = configure_share_group(kafka_bootstrap, unique_name("sg"))
    produce(kafka_bootstrap, topic, [(None, b"x") for _ in range(20_000)])
    probe = ConcurrencyProbe()
    source = ManualPoolSize(2)
    with running_share_worker(config(kafka_bootstrap, group, topic, pool_size=8, http_port=0, http_host="127.0.0.1",
                                     dead_letter_enabled=False), probe, pool_size_source=source) as worker:
        port = worker.http_port
        assert port is not None
        wait_for(lambda: http_get(port, "/readyz")[0] == 200 and probe.handled > 50, 30, "ready, records flowing")
        assert http_get(port, "/healthz")[0] == 200
        assert metric(port, "lagpilot_worker_pool_size") == 2 and probe.peak_over(1.0) == 2
        source.set(16)
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 16, 5, "pool size 16 in /metrics")
        wait_for(lambda: probe.peak_over(0.5) == 16, 10, "16 handlers running at once")
        source.set(4)
        wait_for(lambda: metric(port, "lagpilot_worker_pool_size") == 4, 5, "pool size 4 in /metrics")
        wait_for(lambda: probe.peak_over(0.5) == 4, 10, "at most (and at least) 4 running at once")
        assert probe.peak_over(1.0) == 4
        assert (metric(port, "lagpilot_worker_messages_processed_total") or 0) >= probe.handled - 16

"""Helpers shared by the test suites: waiting on a condition with a deadline, unique names, a share group's
broker-side configs."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from lagpilot_operator.kube import models

T = TypeVar("T")


class FakeClock:
    """A monotonic clock that only `sleep` (and a test, through `now`) moves forward; the sleeps are kept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


# A predicate slower than this does real work each call (a kubectl process costs ~80 ms of CPU, an API or
# Kafka round trip some milliseconds): it is polled less often the longer the wait lasts.
COSTLY_PREDICATE_SECONDS = 0.02


def load_script(name: str, path: Path) -> ModuleType:
    """A script that is not a package module (bench/*.py, hack/*.py) imported for its tests. It is put in
    sys.modules under `name` because dataclasses look their module up there."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2,
             max_interval: float = 1.0) -> T:
    """Poll `predicate` until it returns a truthy value, and return that value.

    The systems under test (Kafka, the API server, Prometheus) expose state, not events we can
    subscribe to from every test, so we observe their state until it changes, with a deadline and
    a message that says what did not happen.

    A cheap predicate (reading what a watch keeps in memory) is polled every `interval`. A costly one
    (over COSTLY_PREDICATE_SECONDS a call) backs off by half each time, up to `max_interval`: the suite
    runs many waits at once on 2 cores, and kubectl polled every 0.2 s by every waiting test was about a
    fifth of all CPU of a run (1,100 kubectl processes in 4.5 minutes). A long wait ends at most
    `max_interval` after its condition holds.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    pause = interval
    while True:
        began = time.monotonic()
        last = predicate()
        if last:
            return last
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what} (last value: {last!r})")
        if now - began > COSTLY_PREDICATE_SECONDS:
            pause = min(max_interval, pause * 1.5)
        time.sleep(min(pause, deadline - now))


def parse_env_lines(text: str) -> dict[str, str]:
    """`export KEY=value` lines: the stack's env file, and what `hack/stack.py up` prints."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("export ") and "=" in line:
            key, _, value = line.removeprefix("export ").partition("=")
            values[key] = value
    return values


def unique_name(prefix: str) -> str:
    """A name unique to this test run, legal as a Kafka topic, a group id and a DNS-1123 label.

    LAGPILOT_TEST_NAME_PREFIX (e.g. `me-`) goes in front of every name, so runs sharing one stack can
    tell (and clean up) their own namespaces, topics and groups."""
    return f"{os.environ.get('LAGPILOT_TEST_NAME_PREFIX', '')}{prefix}-{uuid.uuid4().hex[:8]}".lower()


def release_finalizers(stack: Any, namespace: str) -> None:
    """Drop the operator's finalizer from a test namespace's KafkaConsumerGroups.

    Tests stop their operator before the namespace goes; without an operator the finalizer would hold
    the namespace in Terminating forever (in a real cluster the operator is there to release it).
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    groups = client.CustomObjectsApi(stack.api())
    try:
        found = groups.list_namespaced_custom_object(models.GROUP, models.VERSION, namespace, models.PLURAL)["items"]
    except ApiException:
        return  # no such namespace (any more), or the CRD is not installed: nothing holds it
    for resource in found:
        if resource["metadata"].get("finalizers"):
            try:
                groups.patch_namespaced_custom_object(models.GROUP, models.VERSION, namespace, models.PLURAL,
                                                      resource["metadata"]["name"],
                                                      {"metadata": {"finalizers": None}})
            except ApiException as exc:
                if exc.status != 404:
                    raise


def api_client(kubeconfig: str) -> Any:
    """A Kubernetes API client for `kubeconfig`, with room for a test's parallel calls (watches, polls)."""
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    kube_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = 16
    return client.ApiClient(configuration)


def kcg_status(stack: Any, namespace: str, name: str) -> dict[str, Any]:
    """A KafkaConsumerGroup's status, read in process (tests poll it: see Stack.api)."""
    from kubernetes import client

    body = client.CustomObjectsApi(stack.api()).get_namespaced_custom_object(models.GROUP, models.VERSION, namespace,
                                                                      models.PLURAL, name)
    return dict(body.get("status") or {})


def deployment_replicas(stack: Any, namespace: str, name: str) -> int:
    """A Deployment's spec.replicas (0 when unset), read in process (tests poll it: see Stack.api)."""
    from kubernetes import client

    return int(client.AppsV1Api(stack.api()).read_namespaced_deployment(name, namespace).spec.replicas or 0)


def wait_for_group_coordinator(bootstrap: str, timeout: float = 120) -> None:
    """A fresh broker creates __consumer_offsets (50 partitions) on the first group request; wait until a
    group commits.

    Until then every consumer group and the operator's offset and DLQ reads wait on the coordinator: on a
    broker started moments ago, with every test starting at once, that took longer than a test's first
    reconcile may (a cold run's first DLQ checks timed out while warm runs passed).
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = unique_name("warm-up")
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)], operation_timeout=30)[topic].result(timeout=60)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("warm-up")})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
                break
            except KafkaException as exc:  # the coordinator is not there yet: retry until the deadline
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"the group coordinator of {bootstrap} never answered: {exc}") from exc
                time.sleep(0.5)
    finally:
        consumer.close()
        admin.delete_topics([topic], operation_timeout=30)


def metric_samples(text: str) -> list[Any]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's own parser
    (`.name`, `.labels`, `.value`; counters as `<name>_total`, histograms as `_bucket`/`_sum`/`_count`)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of the first sample called `name` whose labels include `labels`; None when there is none."""
    for sample in metric_samples(text):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
            return float(sample.value)
    return None


def exposed_metric_names(families: Iterable[Any]) -> set[str]:
    """The series names metric families expose (prometheus_client Metric objects, from a registry's
    collect() or from the text parser): a counter as `<name>_total`, a histogram as `_bucket`, `_count`,
    `_sum`, anything else by its name; plus the names of the samples present."""
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_count", "_sum")}
        else:
            names.add(family.name)
        names |= {sample.name for sample in family.samples}
    return names


# --- PromQL: which metric names the dashboard and the alert rules select ---------------------------

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
                "offset", "bool", "atan2", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label names, functions and keywords excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals, including label values
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = match.group(0)
        if text[match.end():].lstrip().startswith("(") or token.lower() in PROMQL_WORDS:
            continue
        names.add(token)
    return names




def dashboard_expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            elif key in {"query", "definition"} and isinstance(value, str) and value.startswith("label_values("):
                # label_values(<selector>, <label>): only the selector names a metric.
                yield value.removeprefix("label_values(").rsplit(",", 1)[0]
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def read_all(bootstrap: str, topic: str, isolation: str = "read_committed", timeout: float = 30) -> list[TopicRecord]:
    """Every readable record of `topic` (up to the end each partition has now), per partition in order.

    `read_committed` (the default) leaves out what aborted or still-open transactions wrote, as a
    consumer of a transactional producer (the redrive, the dead-letter writer) would see it.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from confluent_kafka.admin import AdminClient

    partitions = len(AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
                     .topics[topic].partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": "false",
                         "enable.partition.eof": "true", "isolation.level": isolation,
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[TopicRecord] = []
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            records.append(TopicRecord(message.partition(), message.offset(), message.key(), message.value(),
                                       list(message.headers() or [])))
    finally:
        consumer.close()
    return records


# The real node runs only images the stack built, and the apiserver refuses other Pods (hack/stack.py,
# LOCAL_IMAGE_POLICY) unless they select no node: then they stay Pending, which is all a test that
# only counts replicas needs, and nothing is ever pulled.
NO_NODE_SELECTOR = {"lagpilot.io/no-node": "true"}


def pending_deployment(name: str, replicas: int, image: str = "registry.invalid/worker:1") -> dict[str, Any]:
    """A Deployment whose Pods never run (they select no node): a scale target to count replicas of."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"nodeSelector": NO_NODE_SELECTOR,
                                           "containers": [{"name": "worker", "image": image}]}}}}


def set_group_configs(bootstrap: str, group: str, settings: dict[str, str]) -> str:
    """Set a group's broker-side group configs and return the group id. Works before the group exists."""
    resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET) for name, value in settings.items()])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    return group


def configure_share_group(bootstrap: str, group: str, **settings: str) -> str:
    """Set a share group's broker-side group configs (its consumers can set none) and return the group id.

    `share.auto.offset.reset` is `earliest` unless `settings` says otherwise: at the broker's default
    (`latest`) a share-partition starts at the log end when a member first fetches from it, so records
    produced before then are never delivered. Works before the group exists (before any member joins).
    """
    return set_group_configs(bootstrap, group, {"share.auto.offset.reset": "earliest", **settings})


SHORT_SESSION_MS = 10_000
"""The session of a group whose test kills a member: the broker then drops the dead member (and hands its
partitions on) after 10 s, not after the 45 s default, which only the test's length would notice. The stack's
broker allows sessions down to 6 s for either protocol (hack/stack.py)."""


def short_session(bootstrap: str, group: str, protocol: str) -> dict[str, str]:
    """Give `group` a session of SHORT_SESSION_MS and return the worker environment that goes with it.

    Classic protocol: the member asks for it (`session.timeout.ms`, from the worker's environment). The
    consumer protocol (KIP-848) and share groups: the broker decides, from the group's configs, set here
    before any member joins; heartbeats every 2 s, as 5 s (the default) would leave two to a session."""
    if protocol == "classic":
        return {"LAGPILOT_KAFKA_SESSION_TIMEOUT_MS": str(SHORT_SESSION_MS)}
    if protocol not in ("consumer", "share"):
        raise ValueError(f"no group protocol {protocol!r}: classic, consumer or share")
    set_group_configs(bootstrap, group, {f"{protocol}.session.timeout.ms": str(SHORT_SESSION_MS),
                                         f"{protocol}.heartbeat.interval.ms": "2000"})
    return {}


SERVER_PORTS_FROM = 20000
"""Ports for the servers tests start are drawn from here up to the kernel's ephemeral range (the stack's
own fixed ports are below it, 12379-19682)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, for a server a test is about to start, from below the ephemeral range.

    bind(0) hands out a port of the kernel's ephemeral range, where every outgoing connection takes its
    source port too: between that check and the server's own bind, a Kafka or API client's connection
    could take it (an operator's metrics port, "Address already in use": kopf then retried its start-up
    60 s later, after the test had given up). Below the range only servers bind; the random draw keeps
    tests running side by side apart."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.randrange(SERVER_PORTS_FROM, max(ephemeral_low, SERVER_PORTS_FROM + 1000))
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in {SERVER_PORTS_FROM}-{ephemeral_low} after 200 draws")

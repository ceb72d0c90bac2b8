"""One read of the real broker per poll for every resource on it: five groups on two topics are sampled with
one metadata call (later reads keep its partitions), one ListOffsets call per offset kind, one OffsetFetch
per group and one DescribeGroups (counted by `lagpilot_kafka_admin_requests_total`), and each resource's
sample equals what a read of its own (`kafka_lag.read_lag`) gives on the same data. The real operator,
with the five resources polling every 2 s, reads the cluster's metadata far less often than it
reconciles. A topic deleted while read is missing by the read after the next."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from operator_testkit import FAST, OperatorProcess, apply_kcg, create_deployment, status_of
from prometheus_client import REGISTRY

from lagpilot_operator.core.observations import LagSample, partition_lag
from lagpilot_operator.kafka import cluster_observer, kafka_lag
from lagpilot_operator.kafka.cluster_reads import TopicLayout, Want
from support import metric_samples, wait_for

pytestmark = pytest.mark.integration

REQUESTS = ("metadata", "list_offsets", "offset_fetch", "describe_groups")


def requests_made(cluster: str) -> dict[str, float]:
    """This process's admin calls to `cluster`, per kind."""
    return {request: REGISTRY.get_sample_value("lagpilot_kafka_admin_requests_total",
                                               {"cluster": cluster, "request": request}) or 0.0
            for request in REQUESTS}


def five_groups_on_two_topics(bootstrap: str, create_topic: Any, unique_name: Any) -> dict[str, Want]:
    """Two topics with records; five groups, each committed somewhere else (one never committed), two of
    them on both topics."""
    orders, payments = create_topic("obs-orders", partitions=3), create_topic("obs-payments", partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for topic, partitions in ((orders, 3), (payments, 2)):
        for partition in range(partitions):
            for i in range(20 + 5 * partition):
                producer.produce(topic, value=f"{i}".encode(), partition=partition)
    assert producer.flush(30) == 0
    wants = {f"r{i}": Want(unique_name(f"obs-g{i}"), topics)
             for i, topics in enumerate([(orders,), (orders, payments), (payments,), (payments, orders), (orders,)])}
    for index, want in enumerate(wants.values()):
        if index == 4:
            continue  # never committed: no offsets, lag by offsetResetPolicy
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": want.group_id, "enable.auto.commit": False})
        offsets = [TopicPartition(topic, p, 3 * index + p) for topic in want.topics
                   for p in range(3 if topic == orders else 2)]
        consumer.commit(offsets=offsets, asynchronous=False)
        consumer.close()
    return wants


def test_five_groups_on_one_cluster_are_read_once_and_each_gets_its_own_read(
        stack: Any, create_topic: Any, unique_name: Any) -> None:
    bootstrap = stack.kafka_bootstrap
    wants = five_groups_on_two_topics(bootstrap, create_topic, unique_name)
    pool = kafka_lag.AdminClientPool()
    observers = cluster_observer.ClusterObservers(pool)
    settings = {"bootstrap.servers": bootstrap}

    async def poll() -> list[LagSample]:
        return await asyncio.gather(*(observers.sample(settings, ("ns", name), want, 2.0)
                                      for name, want in wants.items()))

    before = requests_made(bootstrap)
    asyncio.run(poll())  # connections and coordinators found
    assert requests_made(bootstrap)["metadata"] - before["metadata"] == 1  # one read for the five
    time.sleep(1.1)      # older than half the 2 s interval: the next poll reads again
    before = requests_made(bootstrap)
    together = asyncio.run(poll())
    after = requests_made(bootstrap)
    made = {request: after[request] - before[request] for request in REQUESTS}
    # No metadata call (the first read's partitions serve for LAGPILOT_METADATA_REFRESH_SECONDS), one
    # ListOffsets call per offset kind (latest; earliest for the never-committed group's partitions),
    # one OffsetFetch per group (confluent-kafka takes one group per call), one DescribeGroups for all.
    assert made == {"metadata": 0, "list_offsets": 2, "offset_fetch": 5, "describe_groups": 1}, made

    admin = AdminClient({"bootstrap.servers": bootstrap})
    before = requests_made(bootstrap)
    alone = [kafka_lag.read_lag(admin, bootstrap, want.group_id, list(want.topics)) for want in wants.values()]
    after = requests_made(bootstrap)
    per_resource = {request: after[request] - before[request] for request in REQUESTS}
    assert per_resource == {"metadata": 5, "list_offsets": 10, "offset_fetch": 5, "describe_groups": 5}
    print(f"admin calls per poll of 5 groups: per resource {sum(per_resource.values()):.0f} {per_resource}, "
          f"per cluster {sum(made.values()):.0f} {made}")
    for shared, own in zip(together, alone, strict=True):
        assert replace(shared, time=0.0) == replace(own, time=0.0)  # nothing produced or committed meanwhile
        for policy in ("latest", "earliest"):
            assert [partition_lag(p, policy) for p in shared.partitions] == \
                [partition_lag(p, policy) for p in own.partitions]
    assert [p.committed for p in together[4].partitions] == [None] * 3


def test_a_missing_topic_fails_only_the_resource_that_names_it(
        stack: Any, create_topic: Any, unique_name: Any) -> None:
    bootstrap = stack.kafka_bootstrap
    topic = create_topic("obs-present", partitions=1)
    observers = cluster_observer.ClusterObservers(kafka_lag.AdminClientPool())
    settings = {"bootstrap.servers": bootstrap}
    fine, broken = Want(unique_name("obs-fine"), (topic,)), Want(unique_name("obs-broken"), (unique_name("gone"),))

    async def poll() -> list[LagSample | BaseException]:
        return await asyncio.gather(observers.sample(settings, ("ns", "fine"), fine, 2.0),
                                    observers.sample(settings, ("ns", "broken"), broken, 2.0),
                                    return_exceptions=True)

    sample, error = asyncio.run(poll())
    assert isinstance(sample, LagSample) and len(sample.partitions) == 1
    assert isinstance(error, kafka_lag.TopicMissing) and broken.topics[0] in str(error)


def test_a_topic_deleted_while_read_is_missing_by_the_read_after_the_next(
        stack: Any, create_topic: Any, unique_name: Any) -> None:
    """The partitions are kept between metadata calls (`TopicLayout`); the read whose offsets fail for the
    deleted topic makes the next one ask for the metadata again, which finds the topic gone."""
    bootstrap = stack.kafka_bootstrap
    kept, doomed = create_topic("obs-kept", partitions=1), create_topic("obs-doomed", partitions=2)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = {unique_name("obs-g"): frozenset({kept, doomed})}
    layout = TopicLayout(refresh_seconds=3600)

    def read() -> Any:
        return cluster_observer.read_cluster(admin, bootstrap, wanted, layout=layout)

    first = read()
    assert first.topic_errors == {} and set(first.partitions) == {kept, doomed}
    admin.delete_topics([doomed], operation_timeout=30)[doomed].result(timeout=30)
    wait_for(lambda: doomed not in admin.list_topics(timeout=10).topics, timeout=30, what="the topic deleted")
    metadata = requests_made(bootstrap)["metadata"]
    failed = read()  # the kept partitions: its offsets fail for the deleted topic
    assert requests_made(bootstrap)["metadata"] == metadata
    assert set(failed.topic_errors) == {doomed} and (kept, 0) in failed.log_offsets
    gone = read()
    assert requests_made(bootstrap)["metadata"] == metadata + 1
    assert isinstance(gone.topic_errors[doomed], kafka_lag.TopicMissing) and (kept, 0) in gone.log_offsets


def operator_metrics(process: OperatorProcess) -> list[Any]:
    return metric_samples(process.metrics_text())


def counts(process: OperatorProcess, bootstrap: str) -> tuple[float, float]:
    """(metadata calls to the cluster, reconciles) of the operator so far."""
    samples = operator_metrics(process)
    metadata = sum(s.value for s in samples if s.name == "lagpilot_kafka_admin_requests_total"
                   and s.labels.get("cluster") == bootstrap and s.labels.get("request") == "metadata")
    reconciles = sum(s.value for s in samples if s.name == "lagpilot_reconcile_duration_seconds_count")
    return metadata, reconciles


@pytest.mark.slow
def test_the_operator_reads_a_cluster_once_for_the_resources_polling_together(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    bootstrap = stack.kafka_bootstrap
    wants = five_groups_on_two_topics(bootstrap, create_topic, unique_name)
    for name, want in wants.items():
        create_deployment(stack, namespace, name, 1)
        apply_kcg(stack, namespace, name, {
            "kafka": {"bootstrapServers": bootstrap}, "groupId": want.group_id, "topics": list(want.topics),
            "scaleTargetRef": {"name": name}, "replicas": {"min": 1, "max": 1}, **FAST})
    admin = AdminClient({"bootstrap.servers": bootstrap})
    # The spec's default offsetResetPolicy, earliest: the never-committed group's lag is the retained log.
    expected = {name: sum(partition_lag(p, "earliest") for p in kafka_lag.read_lag(admin, bootstrap, want.group_id,
                                                                       list(want.topics)).partitions)
                for name, want in wants.items()}
    seen: list[dict[str, Any]] = []

    def as_read_alone() -> bool:
        seen[:] = [{name: status_of(stack, namespace, name).get("totalLag") for name in wants}]
        return seen[0] == expected

    try:
        wait_for(as_read_alone, 60, "every resource reporting the lag a read of its own gives")
    except AssertionError:
        raise AssertionError(f"reported {seen}, read alone {expected}") from None
    metadata_before, reconciles_before = counts(operator, bootstrap)
    time.sleep(12)
    metadata_after, reconciles_after = counts(operator, bootstrap)
    metadata, reconciles = metadata_after - metadata_before, reconciles_after - reconciles_before
    print(f"operator: {reconciles:.0f} reconciles of 5 resources read the cluster's metadata {metadata:.0f} times")
    # Read per resource, every reconcile is a metadata call. Read per cluster, a read serves every
    # resource polling within half an interval of it: a few reads per 2 s interval at most, for five.
    assert reconciles >= 20 and metadata <= reconciles / 2, (metadata, reconciles)


def early_polls_and_lag(process: OperatorProcess, bootstrap: str, name: str) -> tuple[float, float, float | None]:
    """(polls brought forward on the cluster, reconciles, the resource's lag as its decision used it)."""
    samples = operator_metrics(process)
    early = sum(s.value for s in samples if s.name == "lagpilot_early_polls_total"
                and s.labels.get("cluster") == bootstrap)
    reconciles = sum(s.value for s in samples if s.name == "lagpilot_reconcile_duration_seconds_count")
    lag = next((s.value for s in samples if s.name == "lagpilot_consumergroup_total_lag"
                and s.labels.get("name") == name), None)
    return early, reconciles, lag


@pytest.mark.slow
def test_a_burst_right_after_a_paced_read_reaches_the_decision_on_a_probe_before_the_next(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    """The real operator as it runs by default, one resource polling every 5 s on a quiet topic: records
    produced right after a poll are in its decision after a probe of the log ends (2.5 s later) shows them,
    which brings its poll forward (`lagpilot_early_polls_total`) on a read of its group, not at the paced
    read after it."""
    bootstrap = stack.kafka_bootstrap
    topic, group = create_topic("obs-burst", partitions=2), unique_name("obs-burst-g")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, p, 0) for p in range(2)], asynchronous=False)
    consumer.close()
    create_deployment(stack, namespace, "burst", 1)
    apply_kcg(stack, namespace, "burst", {
        "kafka": {"bootstrapServers": bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": "burst"}, "replicas": {"min": 1, "max": 1}, **FAST,
        "lag": {"pollIntervalSeconds": 5}})
    wait_for(lambda: status_of(stack, namespace, "burst").get("totalLag") == 0, 60, "the first poll's status")
    # Two polls with lag 0: the second is a paced one, and the resource has its early-poll bar (2 records).
    wait_for(lambda: (state := early_polls_and_lag(operator, bootstrap, "burst"))[2] == 0 and state[1] >= 2, 60,
             "two polls of the quiet topic")
    early_before, reconciles, _ = early_polls_and_lag(operator, bootstrap, "burst")
    wait_for(lambda: early_polls_and_lag(operator, bootstrap, "burst")[1] > reconciles, 10, "the next paced poll",
             interval=0.05, max_interval=0.05)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for partition in range(2):
        for i in range(20):
            producer.produce(topic, value=f"{i}".encode(), partition=partition)
    assert producer.flush(10) == 0
    early, _, _ = wait_for(lambda: (state := early_polls_and_lag(operator, bootstrap, "burst"))[2] == 40 and state,
                           10, "the burst in the decision")
    assert early == early_before + 1, (early_before, early)

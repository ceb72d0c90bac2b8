"""One slow cluster must not stall the other resources.

A read from an unreachable cluster blocks its thread for the whole Kafka timeout (10 s). The operator
runs every blocking call in threads; if those threads are a small shared pool (asyncio's default:
cpu count + 4, i.e. 6 on a 2-core machine), a handful of resources pointing at dead clusters
occupies all of them and every healthy resource waits in the queue behind them.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from operator_testkit import (
    FAST,
    OperatorProcess,
    apply_kcg,
    backlog,
    create_deployment,
    free_port,
    replicas_of,
    status_of,
)

from support import wait_for

pytestmark = pytest.mark.integration

DEAD_CLUSTERS = 16


@pytest.mark.slow
def test_resources_on_dead_clusters_do_not_delay_a_healthy_one(
        stack: Any, namespace: str, operator: OperatorProcess, create_topic: Any, unique_name: Any) -> None:
    for index in range(DEAD_CLUSTERS):
        create_deployment(stack, namespace, f"dead-{index}", 1)
        apply_kcg(stack, namespace, f"dead-{index}", {
            "kafka": {"bootstrapServers": f"127.0.0.1:{free_port()}"}, "groupId": unique_name("g"),
            "topics": ["t"], "scaleTargetRef": {"name": f"dead-{index}"}, **FAST})
    wait_for(lambda: all(status_of(stack, namespace, f"dead-{i}").get("consecutiveLagFailures", 0) >= 2
                         for i in range(DEAD_CLUSTERS)), 120, "every dead-cluster resource failing its reads")

    topic, group = create_topic("op-isolated", partitions=4), unique_name("g")
    backlog(stack.kafka_bootstrap, topic, group, partitions=4, per_partition=50)
    create_deployment(stack, namespace, "healthy", 1)
    started = time.monotonic()
    apply_kcg(stack, namespace, "healthy", {
        "kafka": {"bootstrapServers": stack.kafka_bootstrap}, "groupId": group, "topics": [topic],
        "scaleTargetRef": {"name": "healthy"}, "replicas": {"min": 1, "max": 10},
        "pool": {"min": 1, "max": 1, "initial": 1}, **FAST})
    wait_for(lambda: replicas_of(stack, namespace, "healthy") == 4, 60, "the healthy resource to scale up")
    reaction = time.monotonic() - started
    # One poll interval (2 s) plus a few seconds, as for a lone resource; a queue behind the dead
    # clusters' 10 s reads shows up as tens of seconds here.
    assert reaction < 2 + 6, f"the healthy resource took {reaction:.1f}s to scale behind {DEAD_CLUSTERS} dead clusters"

"""The watched view of Deployments and pool ConfigMaps (`watch_cache`): what an entry keeps, how this
process's own writes sit over the watch, and when a read goes to the API server instead."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kopf._core.engines.indexing import Index

from lagpilot_contract import pool as pool_contract
from lagpilot_operator.kube import models, shards, watch_cache, worker_config
from lagpilot_operator.kube.kube_io import templated_deployment
from lagpilot_operator.kube.watch_cache import DeploymentEntry, PoolEntry, View
from lagpilot_operator.kube.writes import deployment_patch

TOKEN_OLD, TOKEN_NEW = shards.fencing_token(4, 3, 100), shards.fencing_token(4, 3, 101)
"""Two terms of shard 3 of 4."""

CONTAINER: dict[str, Any] = {
    "name": "worker", "image": "registry.invalid/w:1", "imagePullPolicy": "IfNotPresent",
    "args": ["--group=orders", "--topic", "orders"],
    "env": [{"name": "LAGPILOT_BOOTSTRAP_SERVERS", "value": "kafka:9092"},
            {"name": "LAGPILOT_GROUP_ID", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "g"}}},
            {"name": "LAGPILOT_COMMIT_INTERVAL_SECONDS", "value": "7"}],
    "resources": {"requests": {"cpu": "100m"}}, "terminationMessagePath": "/dev/termination-log",
}


def deployment(replicas: int = 2, ready: int = 1, version: str = "10", token: str | None = None,
               labels: dict[str, str] | None = None, containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A Deployment as the API server sends it, defaults included."""
    annotations = {"deployment.kubernetes.io/revision": "1", **({shards.FENCING_ANNOTATION: token} if token else {})}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "w", "namespace": "ns", "resourceVersion": version, "uid": "u1", "generation": 3,
                     "labels": labels or {"app": "w"}, "annotations": annotations,
                     "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "w"}}, "progressDeadlineSeconds": 600,
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                 "template": {"metadata": {"labels": {"app": "w"}},
                              "spec": {"containers": containers or [copy.deepcopy(CONTAINER)],
                                       "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"}}},
        "status": {"replicas": replicas, "readyReplicas": ready, "observedGeneration": 3},
    }


MANAGED = {"app": "w", pool_contract.LABEL_MANAGED_BY: pool_contract.MANAGED_BY_VALUE,
           pool_contract.LABEL_CONSUMER_GROUP: "w"}


def test_a_deployment_entry_holds_what_the_reconcile_reads() -> None:
    entry = watch_cache.deployment_entry(deployment(replicas=3, ready=2, version="42", token=TOKEN_OLD))
    target = entry.target
    assert (target.name, target.spec_replicas, target.ready_replicas) == ("w", 3, 2)
    assert (target.resource_version, target.fencing_token) == ("42", TOKEN_OLD)
    assert entry.compared is None  # not the operator's: no template is compared with it


def test_no_ready_replicas_and_no_replicas_read_as_zero() -> None:
    body = deployment()
    del body["status"]["readyReplicas"]
    del body["spec"]["replicas"]
    target = watch_cache.deployment_entry(body).target
    assert (target.spec_replicas, target.ready_replicas, target.fencing_token) == (0, 0, None)


def test_an_unmanaged_deployment_keeps_only_what_worker_config_reads() -> None:
    (kept,) = watch_cache.deployment_entry(deployment()).target.containers
    assert set(kept) == {"name", "env", "args"}
    assert kept["env"][1] == {"name": "LAGPILOT_GROUP_ID",
                              "valueFrom": {"configMapKeyRef": {"name": "c", "key": "g"}}}


@pytest.mark.parametrize("container", [
    CONTAINER,
    {"name": "a", "command": ["lagpilot-worker", "--bootstrap-servers=k:9092", "--share-group"],
     "env": [{"name": "LAGPILOT_TOPICS", "value": "x,y"}, {"name": "LAGPILOT_GROUP_ID", "value": "$(G)"}]},
    {"name": "b", "image": "i", "env": [{"name": "LAGPILOT_GROUP_ID", "value": "other"},
                                        {"name": "LAGPILOT_SHARE_GROUP", "value": "yes"}]},
    {"name": "c", "image": "i"},
])
def test_the_worker_config_check_reads_a_kept_container_as_the_whole_one(container: dict[str, Any]) -> None:
    spec = models.KafkaConsumerGroupSpec.from_k8s({
        "kafka": {"bootstrapServers": "kafka:9092"}, "groupId": "orders", "topics": ["orders"],
        "scaleTargetRef": {"name": "w"}, "replicas": {"min": 1, "max": 4}})
    kept = watch_cache.deployment_entry(deployment(containers=[copy.deepcopy(container)])).target.containers
    assert worker_config.mismatch_condition(spec, "ns/w", kept) == \
        worker_config.mismatch_condition(spec, "ns/w", [container])
    assert worker_config.declared_commit_interval(kept) == worker_config.declared_commit_interval([container])


def test_a_managed_deployment_keeps_what_a_template_is_compared_with() -> None:
    kcg = {"metadata": {"name": "w", "namespace": "ns", "uid": "kcg-uid"}}
    template = models.DeploymentTemplate.model_validate(
        {"metadata": {"labels": {"app": "w"}},
         "spec": {"selector": {"matchLabels": {"app": "w"}},
                  "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [CONTAINER]}}}})
    env = [{"name": "LAGPILOT_GROUP_ID", "value": "orders"}]
    desired = templated_deployment(kcg, template, 2, env)
    live = deployment(replicas=5, labels=MANAGED, containers=copy.deepcopy(desired["spec"]["template"]["spec"]
                                                                        ["containers"]))
    entry = watch_cache.deployment_entry(live)
    assert entry.compared is not None and "replicas" not in entry.compared["spec"]
    assert deployment_patch(desired, entry.compared) is None
    assert deployment_patch(desired, entry.compared) == deployment_patch(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "registry.invalid/w:2"  # someone edited it
    edited = watch_cache.deployment_entry(live)
    assert edited.compared is not None
    assert deployment_patch(desired, edited.compared) == deployment_patch(desired, live) is not None
    del live["metadata"]["labels"][pool_contract.LABEL_MANAGED_BY]
    assert watch_cache.deployment_entry(live).compared is None  # not recognisably ours: a GET compares it
    assert watch_cache.deployment_entry(live, keep_template=True).compared is not None


def test_entries_of_two_versions_differ_for_kopf() -> None:
    """kopf replaces an index value only when `!=` the stored one: a new version, token or container
    must count as a change even where `TargetScale` equality leaves it out."""
    first = watch_cache.deployment_entry(deployment(version="10"))
    assert first != watch_cache.deployment_entry(deployment(version="11"))
    assert first != watch_cache.deployment_entry(deployment(version="10", token=TOKEN_NEW))


def test_a_pool_entry() -> None:
    body = {"metadata": {"name": "w-lagpilot-pool", "resourceVersion": "7"}, "data": {"poolSize": "4"}}
    assert watch_cache.pool_entry(body) == PoolEntry(4, "7")
    assert watch_cache.pool_entry({"metadata": {}, "data": {"poolSize": "x"}}) == PoolEntry(None, "")


def entry(version: str, replicas: int = 2) -> DeploymentEntry:
    return watch_cache.deployment_entry(deployment(replicas=replicas, version=version))


KEY = ("ns", "w")


def view_over(index: dict[tuple[str, str], list[DeploymentEntry]]) -> View[DeploymentEntry]:
    view: View[DeploymentEntry] = View(watch_cache.deployment_version)
    view.attach(index)
    return view


def test_an_unattached_view_or_a_missing_entry_asks_the_api_server() -> None:
    view: View[DeploymentEntry] = View(watch_cache.deployment_version)
    assert view.get(KEY) is None and not view.attached
    view.attach({})
    assert view.get(KEY) is None and view.attached


def test_the_watched_entry_is_read() -> None:
    watched = entry("10")
    assert view_over({KEY: [watched]}).get(KEY) is watched


def test_two_objects_under_one_name_ask_the_api_server() -> None:
    assert view_over({KEY: [entry("10"), entry("12")]}).get(KEY) is None


def test_an_own_write_shows_until_the_watch_moves_past_it() -> None:
    index = {KEY: [entry("10", replicas=2)]}
    view = view_over(index)
    written = entry("11", replicas=3)
    view.wrote(KEY, written)
    assert view.get(KEY) is written  # the watch still shows version 10
    index[KEY] = [entry("11", replicas=3)]  # the watch delivers the write
    assert view.get(KEY) is index[KEY][0]
    index[KEY] = [entry("10", replicas=2)]  # (a watch never goes back; if it did, it is what it shows)
    assert view.get(KEY) is index[KEY][0]


def test_a_later_change_by_someone_else_wins_over_an_own_write() -> None:
    index = {KEY: [entry("10", replicas=2)]}
    view = view_over(index)
    view.wrote(KEY, entry("11", replicas=3))
    index[KEY] = [entry("12", replicas=6)]  # kubectl scale after the write: the watch shows both in order
    got = view.get(KEY)
    assert got is not None and got.target.spec_replicas == 6


def test_a_write_without_a_watched_entry_is_not_kept() -> None:
    """The next read asks the API server, which has the write."""
    index: dict[tuple[str, str], list[DeploymentEntry]] = {}
    view = view_over(index)
    view.wrote(KEY, entry("11"))
    assert view.get(KEY) is None
    index[KEY] = [entry("9")]  # a watch that lists late shows an older version: not mistaken for the write
    got = view.get(KEY)
    assert got is not None and got.target.resource_version == "9"


def test_a_write_that_found_the_object_gone_asks_the_api_server_until_the_watch_moves() -> None:
    index = {KEY: [entry("10")]}  # a relisted watch keeps what was deleted during its gap
    view = view_over(index)
    view.wrote(KEY, None)
    assert view.get(KEY) is None
    index[KEY] = [entry("20")]  # re-created
    got = view.get(KEY)
    assert got is not None and got.target.resource_version == "20"


def test_forget_drops_an_own_write() -> None:
    index = {KEY: [entry("10", replicas=2)]}
    view = view_over(index)
    view.wrote(KEY, entry("11", replicas=3))
    view.forget(KEY)
    assert view.get(KEY) is index[KEY][0]


def test_scaled_keeps_the_rest_of_the_entry() -> None:
    before = watch_cache.deployment_entry(deployment(replicas=2, ready=2, version="10", token=TOKEN_OLD,
                                                     labels=MANAGED))
    after = watch_cache.scaled(before, 5, "11")
    assert (after.target.spec_replicas, after.target.resource_version) == (5, "11")
    assert (after.target.ready_replicas, after.target.fencing_token, after.compared) == \
        (2, TOKEN_OLD, before.compared)


def test_the_view_reads_a_kopf_index() -> None:
    index: Index[tuple[str, str], DeploymentEntry] = Index()
    view = view_over({})
    view.attach(index)
    assert view.get(KEY) is None
    watched = entry("10")
    index._replace(("ns", "w", "u1"), {KEY: watched})
    assert view.get(KEY) is watched
    index._replace(("ns", "w", "u2"), {KEY: entry("30")})  # re-created before the old one's deletion shows
    assert view.get(KEY) is None
    index._discard(("ns", "w", "u1"))
    got = view.get(KEY)
    assert got is not None and got.target.resource_version == "30"


@pytest.mark.parametrize(("read_at", "now", "due"), [
    (None, 1000.0, True), (1000.0, 1000.0, False), (1000.0, 1299.0, False), (1000.0, 1300.0, True),
    (1000.0, 900.0, True),  # the clock went back: read
])
def test_a_get_every_verify_seconds(read_at: float | None, now: float, due: bool) -> None:
    assert watch_cache.verify_due(read_at, now, verify_seconds=300.0) is due


def target(replicas: int = 2, token: str | None = TOKEN_OLD) -> watch_cache.TargetScale:
    return watch_cache.TargetScale("w", replicas, replicas, fencing_token=token, resource_version="12")


@pytest.mark.parametrize(("read_replicas", "fresh", "after"), [
    (2, target(), "retry"),  # only the version moved (a status update): same decision, newer version
    (2, target(token=None), "retry"),
    (2, target(token=TOKEN_NEW), "fenced"),  # another replica's newer term wrote it
    (None, target(token=TOKEN_NEW), "fenced"),
    (2, target(replicas=4), "refuse"),  # someone scaled it: the decision started from stale replicas
    (None, target(replicas=4), "retry"),  # a stamp sets no replicas
    (2, None, "refuse"),  # deleted
])
def test_after_a_conflict(read_replicas: int | None, fresh: watch_cache.TargetScale | None, after: str) -> None:
    assert watch_cache.after_conflict(TOKEN_OLD, read_replicas, fresh) == after


def test_a_pool_size_is_published_only_where_the_configmap_seen_holds_it() -> None:
    seen = watch_cache.PoolEntry(pool_size=4, resource_version="7")
    assert watch_cache.pool_published(seen, 4)
    assert not watch_cache.pool_published(seen, 8)
    assert not watch_cache.pool_published(None, 4)  # not seen: the write (or a GET first) decides
    assert not watch_cache.pool_published(watch_cache.PoolEntry(pool_size=None, resource_version="7"), 4)

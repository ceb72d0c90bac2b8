"""The Helm charts against the real local control plane: lint, render, install, uninstall, schema errors,
and kopf peering run exactly as the chart's command runs it, under the chart's ServiceAccount.

Also here because they need the stack's binaries: `promtool` on the alert rules, and every dashboard
expression parsed by the stack's real Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from support import free_port, unique_name, wait_for

if TYPE_CHECKING:
    from conftest import Stack

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lagpilot"
WORKER_CHART = REPO / "charts" / "lagpilot-worker"
WORKER_EXAMPLE = WORKER_CHART / "ci" / "example-values.yaml"
KUBE_VERSION = "1.34.4"

pytestmark = pytest.mark.integration


# --- helpers -------------------------------------------------------------------------------------


def render(stack: Stack, chart: Path, *args: str, release: str = "lp", namespace: str = "ops") -> list[dict[str, Any]]:
    out = stack.helm("template", release, str(chart), "-n", namespace, "--kube-version", KUBE_VERSION, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = only(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def exists(stack: Stack, *args: str) -> bool:
    return stack.kubectl("get", *args, check=False).returncode == 0


def kubectl_json(stack: Stack, *args: str) -> dict[str, Any]:
    return dict(json.loads(stack.kubectl("get", *args, "-o", "json").stdout))


# These installs check what the chart creates, not a running operator (tests/integration of the node run
# it): its Pods select no node, so the default image (from a registry) is never pulled.
PENDING = ("--set-string", "nodeSelector.lagpilot\\.io/no-node=true")


@pytest.fixture
def helm_release(stack: Stack) -> Iterator[Callable[..., str]]:
    """install(chart, namespace, *args) -> release name; every release is uninstalled afterwards
    (ClusterRoles and ClusterKopfPeerings are cluster-scoped and outlive the test namespace)."""
    installed: list[tuple[str, str]] = []

    def install(chart: Path, namespace: str, *args: str) -> str:
        release = unique_name("lp")
        installed.append((release, namespace))
        stack.helm("install", release, str(chart), "-n", namespace, *PENDING, *args)
        return release

    yield install
    for release, namespace in installed:
        stack.helm("uninstall", release, "-n", namespace, "--ignore-not-found", check=False)


@pytest.fixture
def extra_namespaces(stack: Stack) -> Iterator[Callable[[], str]]:
    created: list[str] = []

    def create() -> str:
        name = unique_name("t")
        stack.kubectl("create", "namespace", name)
        created.append(name)
        return name

    yield create
    for name in created:
        stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --- lint and render -----------------------------------------------------------------------------


def lint_is_clean(result: subprocess.CompletedProcess[str]) -> bool:
    return (result.returncode == 0 and "0 chart(s) failed" in result.stdout
            and "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout)


@pytest.mark.parametrize("extra", [[], ["--set", "rbac.scope=namespaced", "--set", "watchNamespaces={a,b}"],
                                   ["--set", "peering.enabled=false", "--set", "metrics.serviceMonitor.enabled=true"],
                                   ["--set", "shards=3", "--set", "peering.enabled=false"]],
                         ids=["defaults", "namespaced", "standalone-servicemonitor", "shards"])
def test_helm_lint_operator_chart_is_clean(stack: Stack, extra: list[str]) -> None:
    result = stack.helm("lint", "--strict", str(CHART), *extra, check=False)
    assert lint_is_clean(result), result.stdout + result.stderr


def test_helm_lint_worker_chart_is_clean_with_the_example_values(stack: Stack) -> None:
    result = stack.helm("lint", "--strict", str(WORKER_CHART), "-f", str(WORKER_EXAMPLE), check=False)
    assert lint_is_clean(result), result.stdout + result.stderr


def test_worker_chart_demands_what_it_cannot_guess(stack: Stack) -> None:
    """No silent placeholder: handler, brokers, group and topics must be given."""
    result = stack.helm("lint", str(WORKER_CHART), check=False)
    assert result.returncode != 0
    for path in ("/handler", "/kafka/bootstrapServers", "/groupId", "/topics"):
        assert f"at '{path}'" in result.stdout, result.stdout


def test_cluster_scope_renders_clusterrole_and_all_namespaces(stack: Stack) -> None:
    docs = render(stack, CHART, release="lp", namespace="ops")
    (role,) = only(docs, "ClusterRole")
    (binding,) = only(docs, "ClusterRoleBinding")
    assert not only(docs, "Role") and not only(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "ops-lp-lagpilot"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lp-lagpilot", "namespace": "ops"}]
    (peering,) = only(docs, "ClusterKopfPeering")
    script = operator_container(docs)["args"][0]
    assert "--all-namespaces" in script and "--namespace=" not in script
    assert f"--peering={peering['metadata']['name']}" in script and '--priority="$priority"' in script
    assert "--module=lagpilot_operator.handlers" in script
    assert "--liveness=http://0.0.0.0:8081/healthz" in script


def test_namespaced_scope_renders_a_role_per_namespace(stack: Stack) -> None:
    docs = render(stack, CHART, "--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a,team-b}")
    roles = {doc["metadata"]["namespace"]: doc for doc in only(docs, "Role")}
    bindings = {doc["metadata"]["namespace"]: doc for doc in only(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"team-a", "team-b"}
    for binding in bindings.values():
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lp-lagpilot", "namespace": "ops"}]
    (cluster_role,) = only(docs, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"customresourcedefinitions", "namespaces"}  # nothing namespaced cluster-wide
    assert {doc["metadata"]["namespace"] for doc in only(docs, "KopfPeering")} == {"team-a", "team-b"}
    assert not only(docs, "ClusterKopfPeering")
    script = operator_container(docs)["args"][0]
    assert "--namespace=team-a" in script and "--namespace=team-b" in script
    assert "--all-namespaces" not in script


def test_namespaced_scope_defaults_to_the_release_namespace(stack: Stack) -> None:
    docs = render(stack, CHART, "--set", "rbac.scope=namespaced", namespace="solo")
    assert [doc["metadata"]["namespace"] for doc in only(docs, "Role")] == ["solo"]
    assert "--namespace=solo" in operator_container(docs)["args"][0]


def test_operator_pod_is_hardened(stack: Stack) -> None:
    docs = render(stack, CHART)
    (deployment,) = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(docs)
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 10001
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # The startup probe covers the peering wait and kopf's start, so liveness cannot restart a starting replica.
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "health"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 2 * values["peering"]["announceSeconds"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    env = {item["name"]: item for item in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["LAGPILOT_METRICS_PORT"]["value"] == "8080"
    (service,) = only(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # Discovered by a plain Prometheus (kubernetes_sd_configs) without the Prometheus Operator.
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert not only(docs, "ServiceMonitor")  # off by default


def test_servicemonitor_renders_when_enabled(stack: Stack) -> None:
    docs = render(stack, CHART, "--set", "metrics.serviceMonitor.enabled=true")
    (monitor,) = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (service,) = only(docs, "Service")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_standalone_mode_uses_recreate_and_refuses_several_replicas(stack: Stack) -> None:
    docs = render(stack, CHART, "--set", "peering.enabled=false")
    (deployment,) = only(docs, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in operator_container(docs)["args"][0]
    assert not only(docs, "ClusterKopfPeering")
    result = stack.helm("template", "lp", str(CHART), "--kube-version", KUBE_VERSION,
                        "--set", "peering.enabled=false", "--set", "replicaCount=2", check=False)
    assert result.returncode != 0 and "at '/replicaCount': maximum: got 2, want 1" in result.stderr


def test_shards_run_one_replica_per_shard_each_acting_under_its_leases(stack: Stack) -> None:
    docs = render(stack, CHART, "--set", "shards=4", "--set", "peering.enabled=false", "--set", "replicaCount=1",
                  "--set", "rbac.scope=namespaced", "--set", "watchNamespaces={team-a}", namespace="ops")
    (deployment,) = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 4
    # Fencing makes an old and a new replica safe together: a rolling update, not Recreate.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    container = operator_container(docs)
    assert "--standalone" in container["args"][0] and "--peering" not in container["args"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["LAGPILOT_SHARDS"]["value"] == "4"
    assert (env["LAGPILOT_SHARD_LEASE_SECONDS"]["value"], env["LAGPILOT_SHARD_RENEW_SECONDS"]["value"]) == ("5", "1")
    assert env["LAGPILOT_SHARD_LEASE_PREFIX"]["value"] == "lp-lagpilot"
    # The replica's identity is its pod name, the Leases' namespace its own (the downward API).
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    lease_roles = [role for role in only(docs, "Role")
                   if any("coordination.k8s.io" in rule["apiGroups"] for rule in role["rules"])]
    assert [(role["metadata"]["namespace"], role["rules"]) for role in lease_roles] == [
        ("ops", [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                  "verbs": ["list", "create", "update", "delete"]}])]
    (binding,) = [b for b in only(docs, "RoleBinding") if b["roleRef"]["name"] == lease_roles[0]["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == "ops"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "lp-lagpilot", "namespace": "ops"}]
    assert not only(docs, "KopfPeering")


def test_one_shard_renders_no_lease_rules_and_no_shard_env(stack: Stack) -> None:
    docs = render(stack, CHART)
    env = {item["name"] for item in operator_container(docs)["env"]}
    assert not {name for name in env if name.startswith("LAGPILOT_SHARD")}
    assert not [rule for doc in docs if doc["kind"] in {"Role", "ClusterRole"}
                for rule in doc["rules"] if "coordination.k8s.io" in rule["apiGroups"]]


@pytest.mark.parametrize(("values", "message"), [
    (["--set", "shards=3"], "at '/peering/enabled': value must be false"),
    (["--set", "shards=3", "--set", "peering.enabled=false", "--set", "shardLease.durationSeconds=2"],
     "shardLease.durationSeconds=2 must exceed twice shardLease.renewSeconds=1"),
    (["--set", "shards=0"], "at '/shards': minimum: got 0, want 1"),
], ids=["with-peering", "lease-too-short", "zero"])
def test_shards_refuse_values_that_cannot_work(stack: Stack, values: list[str], message: str) -> None:
    result = stack.helm("template", "lp", str(CHART), "--kube-version", KUBE_VERSION, *values, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_operator_script_gives_each_pod_its_own_negative_priority(stack: Stack, tmp_path: Path) -> None:
    """Run the chart's shell command with a `kopf` that prints its arguments: equal priorities
    would freeze every replica, so different pod names must get different priorities."""
    fake = tmp_path / "kopf"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    script = operator_container(render(stack, CHART, "--set", "replicaCount=3",
                                       "--set", "peering.announceSeconds=0"))["args"][0]
    priorities: dict[str, int] = {}
    for pod in ("lp-lagpilot-5d8f9c7b6-x2x9k", "lp-lagpilot-5d8f9c7b6-q7n4m", "lp-lagpilot-77b4c9d5f-2kzt8"):
        env = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin", "POD_ID": pod}
        out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        args = out.splitlines()
        (priority_arg,) = [arg for arg in args if arg.startswith("--priority=")]
        priorities[pod] = int(priority_arg.removeprefix("--priority="))
        assert args[0] == "run" and "--all-namespaces" in args
    assert len(set(priorities.values())) == 3
    # Below kopf's default (0) and --dev (666): a developer's `kopf run --dev` outranks the cluster.
    assert all(-1_000_000_000 <= p <= -1 for p in priorities.values())
    again = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True,
                           env={"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin",
                                "POD_ID": "lp-lagpilot-5d8f9c7b6-x2x9k"}).stdout
    assert f"--priority={priorities['lp-lagpilot-5d8f9c7b6-x2x9k']}" in again.splitlines()


def test_a_restarted_operator_container_ranks_below_every_fresh_replica(stack: Stack, tmp_path: Path) -> None:
    """The kubelet restarts a killed leader in the same pod (same peer identity): it must come back
    below the standby replicas, so one of them takes over at once and a crash-looping replica does
    not win the leadership back after every restart."""
    fake = tmp_path / "kopf"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    (deployment,) = only(render(stack, CHART, "--set", "replicaCount=2", "--set", "peering.announceSeconds=0"),
                         "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["LAGPILOT_RESTART_MARKER"].startswith("/tmp/")  # the emptyDir: outlives a container only
    script = container["args"][0]

    def priority(pod: str, marker: Path) -> int:
        out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True,
                             env={"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin", "POD_ID": pod,
                                  "LAGPILOT_RESTART_MARKER": str(marker)}).stdout
        (arg,) = [a for a in out.splitlines() if a.startswith("--priority=")]
        return int(arg.removeprefix("--priority="))

    pods = [f"lp-lagpilot-5d8f9c7b6-{suffix}" for suffix in ("x2x9k", "q7n4m", "b8r2z", "zz1aa")]
    fresh = {pod: priority(pod, tmp_path / f"{pod}.marker") for pod in pods}
    restarted = {pod: priority(pod, tmp_path / f"{pod}.marker") for pod in pods}  # the marker is there now
    assert max(restarted.values()) < min(fresh.values())
    assert len(set(restarted.values())) == len(pods)  # restarted replicas never tie either
    assert all(p >= -2_000_000_000 for p in restarted.values())


def test_fresh_replicas_announce_themselves_in_the_peering_before_they_run(stack: Stack, tmp_path: Path) -> None:
    """Replicas starting together must see each other before either acts: a fresh container waits for the
    peering object to exist (lagpilot peering-wait --exists: kopf freeze announces nothing without it, and
    Helm creates it after the Deployment), writes its peering entry (kopf freeze, same identity and
    priority as its kopf run) and waits until the peering shows every replica (lagpilot peering-wait, at
    most announceSeconds); a restarted container and a single replica do not wait."""
    calls = tmp_path / "calls"
    for command in ("kopf", "lagpilot"):
        fake = tmp_path / command
        fake.write_text(f'#!/bin/sh\necho "{command} $*" >> {calls}\n')
        fake.chmod(0o755)
    marker = tmp_path / "marker"
    env = {"PATH": f"{tmp_path}{os.pathsep}/usr/bin:/bin", "POD_ID": "lp-lagpilot-5d8f9c7b6-x2x9k",
           "LAGPILOT_RESTART_MARKER": str(marker)}
    script = operator_container(render(stack, CHART, "--set", "replicaCount=2",
                                       "--set", "peering.announceSeconds=7"))["args"][0]
    subprocess.run(["/bin/sh", "-c", script], env=env, check=True, timeout=30)
    (present, freeze, wait, run) = [line.split() for line in calls.read_text().splitlines()]
    assert present[:2] == ["lagpilot", "peering-wait"] and "--exists" in present and "--timeout=7" in present
    assert freeze[:2] == ["kopf", "freeze"] and wait[:2] == ["lagpilot", "peering-wait"] and run[:2] == ["kopf", "run"]
    assert "--id=lp-lagpilot-5d8f9c7b6-x2x9k" in freeze and "--lifetime=60" in freeze
    assert "--expect=2" in wait and "--timeout=7" in wait
    for flag in ("--peering=", "--priority=", "--namespace=", "--all-namespaces"):
        assert [a for a in freeze if a.startswith(flag)] == [a for a in run if a.startswith(flag)], flag
    for flag in ("--peering=", "--namespace=", "--all-namespaces"):
        assert [a for a in wait if a.startswith(flag)] == [a for a in run if a.startswith(flag)], flag
        assert [a for a in present if a.startswith(flag)] == [a for a in run if a.startswith(flag)], flag

    calls.unlink()
    subprocess.run(["/bin/sh", "-c", script], env=env, check=True, timeout=30)  # restarted: the marker is there
    assert [line.split()[1] for line in calls.read_text().splitlines()] == ["run"]
    calls.unlink()
    namespaced = operator_container(render(stack, CHART, "--set", "replicaCount=2", "--set", "rbac.scope=namespaced",
                                           "--set", "watchNamespaces={a,b}"))["args"][0]
    subprocess.run(["/bin/sh", "-c", namespaced], env={**env, "LAGPILOT_RESTART_MARKER": str(tmp_path / "ns")},
                   check=True, timeout=30)
    (present, _, wait, run) = [line.split() for line in calls.read_text().splitlines()]
    assert [a for a in wait if a.startswith("--namespace=")] == ["--namespace=a", "--namespace=b"]
    assert [a for a in present if a.startswith("--namespace=")] == ["--namespace=a", "--namespace=b"]
    assert "--timeout=60" in wait  # the default
    calls.unlink()
    single = operator_container(render(stack, CHART, "--set", "peering.announceSeconds=1"))["args"][0]
    subprocess.run(["/bin/sh", "-c", single], env={**env, "LAGPILOT_RESTART_MARKER": str(tmp_path / "new")},
                   check=True, timeout=30)
    assert [line.split()[1] for line in calls.read_text().splitlines()] == ["run"]


def test_worker_chart_renders_the_pool_contract(stack: Stack) -> None:
    docs = render(stack, WORKER_CHART, "-f", str(WORKER_EXAMPLE), release="orders", namespace="shop")
    (deployment,) = only(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the operator owns replicas; helm upgrade must not reset them"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    (kcg,) = only(docs, "KafkaConsumerGroup")
    assert env["LAGPILOT_POOL_CONFIGMAP"]["value"] == f"{kcg['metadata']['name']}-lagpilot-pool"
    assert env["LAGPILOT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["LAGPILOT_POOL_SIZE"]["value"] == "8"
    assert env["LAGPILOT_RETRY_DELAYS"]["value"] == "10,60"
    assert kcg["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert kcg["spec"]["groupId"] == "orders-workers" and kcg["spec"]["topics"] == ["orders"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["runAsNonRoot"] is True
    (role,) = only(docs, "Role")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]


def resolve_env(env: list[dict[str, Any]], field_values: dict[str, str]) -> dict[str, str]:
    """A container's env as the kubelet would fill it in (literal values and downward API fields)."""
    resolved = {}
    for item in env:
        if "value" in item:
            resolved[item["name"]] = item["value"]
        else:
            resolved[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return resolved


def test_worker_chart_speaks_the_worker_cli(stack: Stack) -> None:
    """The rendered command, args and env are parsed by the real `lagpilot-worker` CLI."""
    from lagpilot_worker.cli import build
    from lagpilot_worker.ordering import OrderingMode
    from lagpilot_worker.poolsize import ConfigMapPoolSize

    docs = render(stack, WORKER_CHART, "-f", str(WORKER_EXAMPLE), "--set", "handler=json:dumps",
                  release="orders", namespace="shop")
    (deployment,) = only(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    # dumb-init as PID 1 in front of the worker (docker/worker.Dockerfile), installed with the worker extra.
    assert container["command"] == ["dumb-init", "--", "lagpilot-worker"] and "lagpilot-worker" in scripts
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["worker"]
    assert any(requirement.startswith("dumb-init") for requirement in extra)
    env = resolve_env(container["env"], {"metadata.namespace": "shop", "metadata.name": "orders-7c9-abcde"})
    config, handler, pool_source, _ = build(container["args"], env)
    assert handler is json.dumps
    assert config.bootstrap_servers == "kafka-0.kafka:9092,kafka-1.kafka:9092"
    assert (config.group_id, config.topics, config.ordering) == ("orders-workers", ["orders"], OrderingMode.KEY)
    assert config.http_port == container["ports"][0]["containerPort"] == 8080
    assert config.pool_size == 8 and config.worker_id == "orders-7c9-abcde"
    assert config.retry.tier_delays_seconds == (10.0, 60.0) and config.dead_letter_enabled
    assert isinstance(pool_source, ConfigMapPoolSize)
    (kcg,) = only(docs, "KafkaConsumerGroup")
    assert (pool_source.name, pool_source.namespace) == (f"{kcg['metadata']['name']}-lagpilot-pool", "shop")


def test_worker_chart_consumer_group_matches_the_models(stack: Stack) -> None:
    """The KafkaConsumerGroup the worker chart renders is valid for the operator's own models."""
    from lagpilot_operator.kube.models import KafkaConsumerGroupSpec

    docs = render(stack, WORKER_CHART, "-f", str(WORKER_EXAMPLE), release="orders", namespace="shop")
    (kcg,) = only(docs, "KafkaConsumerGroup")
    spec = KafkaConsumerGroupSpec.model_validate(kcg["spec"])
    assert spec.scale_target_ref is not None and spec.template is None and spec.dead_letter is not None
    assert [tier.delay_seconds for tier in spec.dead_letter.retry_tiers] == [10, 60]


def test_worker_chart_standalone_has_no_configmap_watch(stack: Stack) -> None:
    docs = render(stack, WORKER_CHART, "-f", str(WORKER_EXAMPLE), "--set", "consumerGroup.create=false",
                  "--set", "poolSize=4")
    (deployment,) = only(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert "LAGPILOT_POOL_CONFIGMAP" not in env and env["LAGPILOT_POOL_SIZE"]["value"] == "4"
    assert pod["automountServiceAccountToken"] is False
    assert deployment["spec"]["replicas"] == 1
    assert not only(docs, "KafkaConsumerGroup")


# --- install / uninstall on the real API server --------------------------------------------------

CRD_NAMES = ("kafkaconsumergroups.lagpilot.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")


def crd_established(stack: Stack, name: str) -> bool:
    result = stack.kubectl("get", "crd", name, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


def test_install_cluster_scope_creates_everything_and_uninstall_removes_it(
        stack: Stack, namespace: str, helm_release: Callable[..., str]) -> None:
    release = helm_release(CHART, namespace)
    fullname = f"{release}-lagpilot"
    cluster_name = f"{namespace}-{fullname}"
    for name in CRD_NAMES:
        wait_for(lambda n=name: crd_established(stack, n), 30, f"CRD {name} established")  # type: ignore[misc]
    deployment = kubectl_json(stack, "deployment", fullname, "-n", namespace)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == fullname
    role = kubectl_json(stack, "clusterrole", cluster_name)
    assert any("kafkaconsumergroups" in rule["resources"] for rule in role["rules"])
    binding = kubectl_json(stack, "clusterrolebinding", cluster_name)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fullname, "namespace": namespace}]
    assert exists(stack, "serviceaccount", fullname, "-n", namespace)
    assert exists(stack, "service", f"{fullname}-metrics", "-n", namespace)
    assert exists(stack, "clusterkopfpeering", cluster_name)

    # The ReplicaSet controller creates the pod: the hardened pod spec passes admission. It stays
    # Pending (it selects no node).
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    pods = wait_for(lambda: kubectl_json(stack, "pods", "-n", namespace, "-l", selector)["items"], 60,
                    "the operator pod to be created")
    assert pods[0]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    stack.helm("uninstall", release, "-n", namespace)
    for kind, name, ns in [("deployment", fullname, namespace), ("serviceaccount", fullname, namespace),
                           ("service", f"{fullname}-metrics", namespace), ("clusterrole", cluster_name, None),
                           ("clusterrolebinding", cluster_name, None), ("clusterkopfpeering", cluster_name, None)]:
        args = (kind, name, *(("-n", ns) if ns else ()))
        wait_for(lambda a=args: not exists(stack, *a), 30, f"{kind}/{name} removed by helm uninstall")  # type: ignore[misc]
    # Helm never deletes what it installed from crds/ (that would delete every KafkaConsumerGroup);
    # docs/install.md says how to remove them on purpose.
    assert all(crd_established(stack, name) for name in CRD_NAMES)


def test_install_namespaced_scope_creates_roles_in_watched_namespaces(
        stack: Stack, namespace: str, helm_release: Callable[..., str],
        extra_namespaces: Callable[[], str]) -> None:
    team_a, team_b = extra_namespaces(), extra_namespaces()
    release = helm_release(CHART, namespace, "--set", "rbac.scope=namespaced",
                           "--set", f"watchNamespaces={{{team_a},{team_b}}}")
    fullname = f"{release}-lagpilot"
    for ns in (team_a, team_b):
        assert exists(stack, "role", fullname, "-n", ns)
        assert exists(stack, "rolebinding", fullname, "-n", ns)
        assert exists(stack, "kopfpeering", fullname, "-n", ns)
    assert not exists(stack, "role", fullname, "-n", namespace)
    assert exists(stack, "clusterrole", f"{namespace}-{fullname}-discovery")
    script = kubectl_json(stack, "deployment", fullname, "-n", namespace)["spec"]["template"]["spec"][
        "containers"][0]["args"][0]
    assert f"--namespace={team_a}" in script and f"--namespace={team_b}" in script

    stack.helm("uninstall", release, "-n", namespace)
    for ns in (team_a, team_b):
        wait_for(lambda n=ns: not exists(stack, "role", fullname, "-n", n), 30, f"Role in {ns} removed")  # type: ignore[misc]
        wait_for(lambda n=ns: not exists(stack, "kopfpeering", fullname, "-n", n), 30, f"KopfPeering in {ns} removed")  # type: ignore[misc]
    wait_for(lambda: not exists(stack, "clusterrole", f"{namespace}-{fullname}-discovery"), 30,
             "discovery ClusterRole removed")


@pytest.mark.parametrize(("value", "message"), [
    ("replicaCount=-1", "at '/replicaCount': minimum: got -1, want 0"),
    ("rbac.scope=galaxy", "at '/rbac/scope': value must be one of 'cluster', 'namespaced'"),
    ("watchNamespaces={team-*}", "at '/watchNamespaces/0'"),
    ("logFormat=xml", "at '/logFormat': value must be one of 'plain', 'full', 'json'"),
    ("metrics.port=70000", "at '/metrics/port': maximum: got 70,000, want 65,535"),
])
def test_install_with_a_bad_value_fails_with_the_schema_message(
        stack: Stack, namespace: str, value: str, message: str) -> None:
    release = unique_name("lp")
    result = stack.helm("install", release, str(CHART), "-n", namespace, "--set", value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert release not in stack.helm("list", "-n", namespace, "-q").stdout
    assert not exists(stack, "deployment", f"{release}-lagpilot", "-n", namespace)


def test_worker_chart_installs_with_its_consumer_group(
        stack: Stack, namespace: str, helm_release: Callable[..., str]) -> None:
    # The KafkaConsumerGroup CRD comes with the operator chart; install that first.
    helm_release(CHART, namespace, "--set", "rbac.scope=namespaced")
    wait_for(lambda: crd_established(stack, "kafkaconsumergroups.lagpilot.io"), 30, "KafkaConsumerGroup CRD")
    release = helm_release(WORKER_CHART, namespace, "-f", str(WORKER_EXAMPLE),
                           "--set", f"kafka.bootstrapServers={stack.kafka_bootstrap}")
    fullname = f"{release}-lagpilot-worker"
    kcg = kubectl_json(stack, "kafkaconsumergroup", fullname, "-n", namespace)
    assert kcg["spec"]["scaleTargetRef"]["name"] == fullname
    assert kcg["spec"]["pool"] == {"min": 1, "max": 64, "initial": 8}
    deployment = kubectl_json(stack, "deployment", fullname, "-n", namespace)
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LAGPILOT_POOL_CONFIGMAP"]["value"] == f"{fullname}-lagpilot-pool"
    stack.helm("uninstall", release, "-n", namespace)
    wait_for(lambda: not exists(stack, "kafkaconsumergroup", fullname, "-n", namespace), 30, "KCG removed")
    wait_for(lambda: not exists(stack, "deployment", fullname, "-n", namespace), 30, "worker removed")


# --- kopf peering, run as the chart runs it, with the chart's ServiceAccount ---------------------

STUB_HANDLERS = '''
import os
import kopf

@kopf.on.event("configmaps", labels={"lagpilot-chart-test": "%(label)s"})
def seen(name, **_):
    print(f"handled {name} by {os.environ['POD_ID']}", flush=True)

# Watching the real resource proves the RBAC covers kopf's list/watch of it.
@kopf.on.event("lagpilot.io", "kafkaconsumergroups", labels={"lagpilot-chart-test": "%(label)s"})
def kcg(**_):
    pass
'''


def service_account_kubeconfig(stack: Stack, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount, via a short-lived token."""
    token = stack.kubectl("create", "token", account, "-n", namespace, "--duration=20m").stdout.strip()
    admin = yaml.safe_load(Path(stack.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": account}}],
        "current-context": "sa",
    }))
    return path


class OperatorProcess:
    """One operator replica: the chart's command run locally, as pod `pod_id`."""

    def __init__(self, script: str, pod_id: str, env: dict[str, str], log: Path) -> None:
        self.pod_id = pod_id
        self.log = log
        self._out = log.open("w")
        self.process = subprocess.Popen(["/bin/sh", "-c", script], env={**env, "POD_ID": pod_id},
                                        stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `exec` in the script: this reaches kopf
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()
        return int(self.process.returncode)


def create_labelled_configmap(stack: Stack, name: str, namespace: str, label: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": {"lagpilot-chart-test": label}}}
    stack.kubectl("create", "-f", "-", input_text=json.dumps(manifest))


def peering_status(stack: Stack, kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    args = (kind, name, *(("-n", namespace) if namespace else ()))
    return dict(kubectl_json(stack, *args).get("status") or {})


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_two_replicas_elect_one_leader_and_fail_over(
        stack: Stack, namespace: str, helm_release: Callable[..., str],
        extra_namespaces: Callable[[], str], tmp_path: Path, scope: str) -> None:
    watched = namespace if scope == "cluster" else extra_namespaces()
    release = helm_release(CHART, namespace, "--set", "replicaCount=2", "--set", f"rbac.scope={scope}",
                           *(["--set", f"watchNamespaces={{{watched}}}"] if scope == "namespaced" else []))
    fullname = f"{release}-lagpilot"
    deployment = kubectl_json(stack, "deployment", fullname, "-n", namespace)
    script = deployment["spec"]["template"]["spec"]["containers"][0]["args"][0]

    # Same command as the pod runs; only the handler module and the liveness address differ
    # (tests bind 127.0.0.1 on free ports, and the real handlers would start their own servers).
    label = unique_name("peer")
    stub_dir = tmp_path / "stub"
    stub_dir.mkdir()
    (stub_dir / "lagpilot_chart_stub.py").write_text(STUB_HANDLERS % {"label": label})
    assert "--module=lagpilot_operator.handlers" in script
    script = script.replace("--module=lagpilot_operator.handlers", "--module=lagpilot_chart_stub")
    script = re.sub(r"--liveness=http://0\.0\.0\.0:\d+/", "--liveness=http://127.0.0.1:LIVENESS_PORT/", script)
    kubeconfig = service_account_kubeconfig(stack, namespace, fullname, tmp_path / "sa.kubeconfig")
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path),
           "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(stub_dir), "PYTHONUNBUFFERED": "1"}
    if scope == "cluster":
        peering_kind, peering_ns = "clusterkopfpeering", None
        peering_name = f"{namespace}-{fullname}"
    else:
        peering_kind, peering_ns, peering_name = "kopfpeering", watched, fullname

    replicas: list[OperatorProcess] = []
    try:
        for pod_id in (f"{fullname}-6b7c9d-aaaaa", f"{fullname}-6b7c9d-bbbbb"):
            replicas.append(OperatorProcess(script.replace("LIVENESS_PORT", str(free_port())), pod_id, env,
                                            tmp_path / f"{pod_id}.log"))
        def both_peers() -> dict[str, Any] | None:
            status = peering_status(stack, peering_kind, peering_name, peering_ns)
            return status if len(status) == 2 else None

        status = wait_for(both_peers, 60, "both replicas in the peering status")
        priorities = {pod: int(info["priority"]) for pod, info in status.items()}
        assert len(set(priorities.values())) == 2, f"equal priorities freeze kopf: {priorities}"
        leader, follower = sorted(replicas, key=lambda r: priorities[r.pod_id], reverse=True)
        wait_for(lambda: "Resuming operations" in leader.output(), 60, "the leader to start working")

        # Only the leader handles an object.
        create_labelled_configmap(stack, "first", watched, label)
        wait_for(lambda: f"handled first by {leader.pod_id}" in leader.output(), 60, "the leader to handle it")
        assert "handled first" not in follower.output(), "the paused replica acted too"

        # The leader leaves (a rolling update or a node drain): the follower takes over at once.
        assert leader.stop() == 0, leader.output()
        wait_for(lambda: "Resuming operations" in follower.output(), 60, "the follower to take over")
        create_labelled_configmap(stack, "second", watched, label)
        wait_for(lambda: f"handled second by {follower.pod_id}" in follower.output(), 60,
                 "the follower to handle new objects")
    finally:
        for replica in replicas:
            replica.stop()
    for replica in replicas:
        # The chart's RBAC is enough for everything kopf did (discovery, peering, watches).
        assert not re.search(r"forbidden|not enough permissions", replica.output(), re.IGNORECASE), \
            replica.output()


# --- alert rules and dashboard against the stack's promtool and Prometheus -----------------------

RULES_DIR = REPO / "deploy" / "prometheus"


def test_promtool_check_rules(stack: Stack) -> None:
    result = subprocess.run([str(stack.bin_dir / "promtool"), "check", "rules", "lagpilot-rules.yaml"],
                            cwd=RULES_DIR, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_promtool_rule_unit_tests(stack: Stack) -> None:
    """The alerts fire on the situations they are named after, and stay quiet otherwise."""
    result = subprocess.run([str(stack.bin_dir / "promtool"), "test", "rules", "lagpilot-rules.test.yaml"],
                            cwd=RULES_DIR, capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads((REPO / "deploy" / "grafana" / "lagpilot-dashboard.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition", "")
        if definition.startswith("label_values("):
            queries.append(definition.removeprefix("label_values(").rsplit(",", 1)[0])
    return queries


def test_every_dashboard_query_parses_in_prometheus(stack: Stack) -> None:
    # Grafana substitutes its variables before sending; do the same with "match all" values.
    substitutions = {"$__rate_interval": "1m", "$namespace": ".*", "$name": ".*"}
    for query in dashboard_queries():
        for variable, value in substitutions.items():
            query = query.replace(variable, value)
        url = f"{stack.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (local stack URL)
                body = json.load(response)
        except urllib.error.HTTPError as error:
            body = json.load(error)
        assert body["status"] == "success", f"{query!r}: {body.get('error')}"

"""The chart's RBAC, judged by the real API server's authorizer (what `kubectl auth can-i --as=<sa>` asks).

For each scope: every API call the operator makes is allowed, a list of calls it has no business
making is refused, and the complete rule list the server reports for the ServiceAccount is exactly
the expected one (so "nothing more" covers calls nobody thought to list here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from support import unique_name

if TYPE_CHECKING:
    from conftest import Stack

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lagpilot"
WORKER_CHART = REPO / "charts" / "lagpilot-worker"

pytestmark = pytest.mark.integration

KCG = "kafkaconsumergroups.lagpilot.io"
DEPLOYMENTS = "deployments.apps"
CRDS = "customresourcedefinitions.apiextensions.k8s.io"


@dataclass(frozen=True)
class Call:
    verb: str
    resource: str  # resource[.group][/name]
    subresource: str = ""
    cluster: bool = False  # a cluster-scoped resource (no namespace flag)
    all_namespaces: bool = False

    def __str__(self) -> str:
        sub = f"/{self.subresource}" if self.subresource else ""
        where = " -A" if self.all_namespaces else ""
        return f"{self.verb} {self.resource}{sub}{where}"


def can_i(stack: Stack, subject: str, call: Call, namespace: str) -> bool:
    """The question `kubectl auth can-i <verb> <resource> --as=<subject>` asks: a SelfSubjectAccessReview
    sent as `subject` (impersonated: for a ServiceAccount's name the apiserver adds its groups, as for
    kubectl), on the test's kept API connection. A kubectl process per question cost ~80 ms of CPU and
    its discovery requests; these tests ask about 350 questions."""
    from kubernetes import client

    base, _, name = call.resource.partition("/")
    resource, _, group = base.partition(".")  # resource[.group], as kubectl reads a qualified name
    attributes = client.V1ResourceAttributes(
        verb=call.verb, group=group, resource=resource, subresource=call.subresource or None, name=name or None,
        namespace=None if call.cluster or call.all_namespaces else namespace)
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attributes))
    answer = client.AuthorizationV1Api(stack.api()).create_self_subject_access_review(
        review, _headers={"Impersonate-User": subject})
    return bool(answer.status.allowed)


def answers(stack: Stack, subject: str, calls: list[Call], namespace: str) -> dict[Call, bool]:
    # Each check is one short API round trip; a few in parallel keep the suite quick.
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda c: can_i(stack, subject, c, namespace), calls)
        return dict(zip(calls, results, strict=True))


def assert_allowed(stack: Stack, subject: str, calls: list[Call], namespace: str) -> None:
    refused = [str(c) for c, ok in answers(stack, subject, calls, namespace).items() if not ok]
    assert not refused, f"{subject} in {namespace} is refused calls it needs: {refused}"


def assert_refused(stack: Stack, subject: str, calls: list[Call], namespace: str) -> None:
    allowed = [str(c) for c, ok in answers(stack, subject, calls, namespace).items() if ok]
    assert not allowed, f"{subject} in {namespace} may make calls it does not need: {allowed}"


Rules = dict[tuple[str, tuple[str, ...]], frozenset[str]]


def listed_rules(stack: Stack, subject: str, namespace: str) -> Rules:
    """`kubectl auth can-i --list`: every resource rule the authorizer grants, merged per resource,
    without the self-review rules every authenticated user has."""
    out = stack.kubectl("auth", "can-i", "--list", f"--as={subject}", "-n", namespace).stdout
    rules: dict[tuple[str, tuple[str, ...]], set[str]] = {}
    for line in out.splitlines()[1:]:
        match = re.match(r"^(\S+)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line)
        if not match:
            continue  # non-resource URL rows start with blanks
        resource, _, names, verbs = match.groups()
        if resource.startswith("selfsubject"):
            continue
        key = (resource, tuple(sorted(names.split())))
        rules.setdefault(key, set()).update(verbs.split())
    return {key: frozenset(verbs) for key, verbs in rules.items()}


# --- what the operator does ----------------------------------------------------------------------

NAMESPACED_CALLS = [
    *(Call(v, KCG) for v in ("get", "list", "watch", "patch", "update")),
    *(Call(v, KCG, "status") for v in ("get", "patch", "update")),
    *(Call(v, DEPLOYMENTS) for v in ("get", "list", "watch", "create", "patch", "update")),
    *(Call(v, DEPLOYMENTS, "scale") for v in ("get", "patch", "update")),
    *(Call(v, "configmaps") for v in ("get", "list", "watch", "create", "patch", "update")),
    Call("get", "secrets"),
    *(Call(v, "events") for v in ("create", "patch")),
    *(Call(v, "events.events.k8s.io") for v in ("create", "patch")),
]
CLUSTER_CALLS = [
    *(Call(v, CRDS, cluster=True) for v in ("get", "list", "watch")),
    *(Call(v, "namespaces", cluster=True) for v in ("list", "watch")),
]


def peering_calls(scope: str, peering: str) -> list[Call]:
    if scope == "cluster":
        return [Call("list", "clusterkopfpeerings.kopf.dev", cluster=True),
                Call("watch", "clusterkopfpeerings.kopf.dev", cluster=True),
                Call("get", f"clusterkopfpeerings.kopf.dev/{peering}", cluster=True),
                Call("patch", f"clusterkopfpeerings.kopf.dev/{peering}", cluster=True)]
    return [Call("list", "kopfpeerings.kopf.dev"), Call("watch", "kopfpeerings.kopf.dev"),
            Call("get", f"kopfpeerings.kopf.dev/{peering}"), Call("patch", f"kopfpeerings.kopf.dev/{peering}")]


# Calls Lagpilot never makes: secrets beyond reading one by name, RBAC, nodes, pods, deletes
# (owner references clean up), CRD changes, webhooks, impersonation, tokens, other peerings.
NEVER_CALLS = [
    *(Call(v, "secrets") for v in ("list", "watch", "create", "update", "patch", "delete")),
    Call("list", "secrets", all_namespaces=True),
    Call("create", "clusterroles.rbac.authorization.k8s.io", cluster=True),
    Call("bind", "clusterroles.rbac.authorization.k8s.io", cluster=True),
    Call("escalate", "roles.rbac.authorization.k8s.io"),
    Call("create", "rolebindings.rbac.authorization.k8s.io"),
    Call("create", "clusterrolebindings.rbac.authorization.k8s.io", cluster=True),
    Call("patch", "nodes", cluster=True),
    Call("delete", "nodes", cluster=True),
    Call("create", "namespaces", cluster=True),
    Call("delete", "namespaces", cluster=True),
    Call("get", "pods"),
    Call("create", "pods"),
    Call("create", "pods", "exec"),
    Call("delete", DEPLOYMENTS),
    Call("deletecollection", DEPLOYMENTS),
    Call("patch", "statefulsets.apps"),
    Call("patch", "daemonsets.apps"),
    Call("create", KCG),
    Call("delete", KCG),
    Call("delete", "configmaps"),
    Call("deletecollection", "configmaps"),
    Call("delete", "events"),
    Call("create", CRDS, cluster=True),
    Call("update", CRDS, cluster=True),
    Call("patch", CRDS, cluster=True),
    Call("delete", CRDS, cluster=True),
    Call("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", cluster=True),
    Call("create", "validatingwebhookconfigurations.admissionregistration.k8s.io", cluster=True),
    Call("impersonate", "users", cluster=True),
    Call("impersonate", "serviceaccounts"),
    Call("create", "serviceaccounts", "token"),
    Call("patch", "clusterkopfpeerings.kopf.dev/someone-else", cluster=True),
    Call("patch", "kopfpeerings.kopf.dev/someone-else"),
    Call("create", "clusterkopfpeerings.kopf.dev", cluster=True),
    Call("delete", "kopfpeerings.kopf.dev"),
]

WORKLOAD_RULES: Rules = {
    ("kafkaconsumergroups.lagpilot.io", ()): frozenset({"get", "list", "watch", "patch", "update"}),
    ("kafkaconsumergroups.lagpilot.io/status", ()): frozenset({"get", "patch", "update"}),
    ("deployments.apps", ()): frozenset({"get", "list", "watch", "create", "patch", "update"}),
    ("deployments.apps/scale", ()): frozenset({"get", "patch", "update"}),
    ("configmaps", ()): frozenset({"get", "list", "watch", "create", "patch", "update"}),
    ("secrets", ()): frozenset({"get"}),
    ("events", ()): frozenset({"create", "patch"}),
    ("events.events.k8s.io", ()): frozenset({"create", "patch"}),
}
DISCOVERY_RULES: Rules = {
    ("customresourcedefinitions.apiextensions.k8s.io", ()): frozenset({"get", "list", "watch"}),
    ("namespaces", ()): frozenset({"list", "watch"}),
}


def peering_rules(resource: str, peering: str) -> Rules:
    return {(resource, ()): frozenset({"list", "watch"}), (resource, (peering,)): frozenset({"get", "patch"})}


@dataclass(frozen=True)
class Installed:
    subject: str
    peering: str
    watched: list[str]
    elsewhere: str  # a namespace the operator must not touch (namespaced scope)
    release_namespace: str


@pytest.fixture
def install_operator(stack: Stack, namespace: str) -> Iterator[Callable[[str], Installed]]:
    releases: list[str] = []
    extra: list[str] = []

    def new_namespace() -> str:
        name = unique_name("t")
        stack.kubectl("create", "namespace", name)
        extra.append(name)
        return name

    def install(scope: str, *values: str) -> Installed:
        release = unique_name("lp")
        releases.append(release)
        watched = [new_namespace(), new_namespace()]
        # Its Pod selects no node: these tests ask the apiserver what the ServiceAccount may do.
        args = ["--set", f"rbac.scope={scope}", "--set-string", "nodeSelector.lagpilot\\.io/no-node=true"]
        if scope == "namespaced":
            args += ["--set", f"watchNamespaces={{{','.join(watched)}}}"]
        stack.helm("install", release, str(CHART), "-n", namespace, *args, *values)
        fullname = f"{release}-lagpilot"
        peering = f"{namespace}-{fullname}" if scope == "cluster" else fullname
        return Installed(subject=f"system:serviceaccount:{namespace}:{fullname}", peering=peering,
                         watched=watched, elsewhere=new_namespace(), release_namespace=namespace)

    yield install
    for release in releases:
        stack.helm("uninstall", release, "-n", namespace, "--ignore-not-found", check=False)
    for name in extra:
        stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_cluster_scope_allows_every_operator_call_in_any_namespace(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("cluster")
    for ns in (*op.watched, op.elsewhere, "default"):
        assert_allowed(stack, op.subject, NAMESPACED_CALLS, ns)
    assert_allowed(stack, op.subject, [*CLUSTER_CALLS, *peering_calls("cluster", op.peering)], "default")


def test_cluster_scope_refuses_what_the_operator_does_not_need(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("cluster")
    assert_refused(stack, op.subject, NEVER_CALLS, op.elsewhere)
    assert_refused(stack, op.subject, [Call("list", "kopfpeerings.kopf.dev")], op.elsewhere)


def test_cluster_scope_grants_exactly_the_expected_rules(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("cluster")
    expected = {**WORKLOAD_RULES, **DISCOVERY_RULES, **peering_rules("clusterkopfpeerings.kopf.dev", op.peering)}
    assert listed_rules(stack, op.subject, op.elsewhere) == expected


def test_namespaced_scope_allows_every_operator_call_in_watched_namespaces_only(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("namespaced")
    for ns in op.watched:
        assert_allowed(stack, op.subject, [*NAMESPACED_CALLS, *peering_calls("namespaced", op.peering)], ns)
    assert_allowed(stack, op.subject, CLUSTER_CALLS, op.watched[0])
    # Outside its namespaces it can do nothing namespaced, and nothing namespaced cluster-wide.
    assert_refused(stack, op.subject, [*NAMESPACED_CALLS, *peering_calls("namespaced", op.peering)], op.elsewhere)
    cluster_wide = [Call(verb, resource, all_namespaces=True)
                    for verb in ("list", "watch") for resource in (KCG, DEPLOYMENTS, "configmaps")]
    cluster_wide += [Call("get", "secrets", all_namespaces=True),
                     Call("list", "clusterkopfpeerings.kopf.dev", cluster=True)]
    assert_refused(stack, op.subject, cluster_wide, op.watched[0])


def test_namespaced_scope_refuses_what_the_operator_does_not_need(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("namespaced")
    assert_refused(stack, op.subject, NEVER_CALLS, op.watched[0])


def test_namespaced_scope_grants_exactly_the_expected_rules(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("namespaced")
    peering = peering_rules("kopfpeerings.kopf.dev", op.peering)
    assert listed_rules(stack, op.subject, op.watched[1]) == {**WORKLOAD_RULES, **DISCOVERY_RULES, **peering}
    assert listed_rules(stack, op.subject, op.elsewhere) == DISCOVERY_RULES


LEASES = "leases.coordination.k8s.io"
SHARD_LEASE_CALLS = [Call(v, LEASES) for v in ("list", "create", "update", "delete")]
SHARDED = ("--set", "shards=3", "--set", "peering.enabled=false")


def test_shards_may_keep_leases_in_the_release_namespace_only(
        stack: Stack, install_operator: Callable[[str], Installed]) -> None:
    op = install_operator("namespaced", *SHARDED)
    assert_allowed(stack, op.subject, SHARD_LEASE_CALLS, op.release_namespace)
    # The keeper lists and replaces whole Leases; it never gets, watches or patches one.
    assert_refused(stack, op.subject, [Call(v, LEASES) for v in ("get", "watch", "patch", "deletecollection")],
                   op.release_namespace)
    for ns in (*op.watched, op.elsewhere):
        assert_refused(stack, op.subject, SHARD_LEASE_CALLS, ns)
    assert_refused(stack, op.subject, [Call("list", LEASES, all_namespaces=True)], op.release_namespace)
    assert listed_rules(stack, op.subject, op.release_namespace) == {
        **DISCOVERY_RULES, (LEASES, ()): frozenset({"list", "create", "update", "delete"})}
    # Sharding turns kopf peering off: the watched namespaces get the workload rules and nothing else.
    assert listed_rules(stack, op.subject, op.watched[0]) == {**WORKLOAD_RULES, **DISCOVERY_RULES}


def test_worker_service_account_may_only_watch_configmaps_in_its_namespace(stack: Stack, namespace: str) -> None:
    release = unique_name("wk")
    stack.helm("install", release, str(WORKER_CHART), "-n", namespace,
               "-f", str(WORKER_CHART / "ci" / "example-values.yaml"),
               "--set", "consumerGroup.create=false", "--set", "poolConfigMap=orders-lagpilot-pool")
    try:
        subject = f"system:serviceaccount:{namespace}:{release}-lagpilot-worker"
        assert_allowed(stack, subject, [Call(v, "configmaps") for v in ("get", "list", "watch")], namespace)
        assert_refused(stack, subject, [
            *(Call(v, "configmaps") for v in ("create", "update", "patch", "delete")),
            Call("list", "configmaps", all_namespaces=True),
            Call("get", "secrets"), Call("list", "secrets"),
            Call("get", KCG), Call("patch", DEPLOYMENTS, "scale"), Call("create", "events"),
        ], namespace)
        assert_refused(stack, subject, [Call("get", "configmaps"), Call("watch", "configmaps")], "default")
        assert listed_rules(stack, subject, namespace) == {("configmaps", ()): frozenset({"get", "list", "watch"})}
    finally:
        stack.helm("uninstall", release, "-n", namespace, check=False)

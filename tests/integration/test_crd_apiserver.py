"""The generated CRD on the real kube-apiserver: it installs (client- and server-side apply), accepts every
valid example with the models' defaults, rejects every invalid example with its rule's message, keeps
every status field the operator writes, and `kubectl get kcg` shows the printer columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from lagpilot_operator.kube import crdgen, models
from lagpilot_operator.kube.conditions import conditions_to_k8s, set_condition
from lagpilot_operator.kube.models import KafkaConsumerGroupSpec, KafkaConsumerGroupStatus
from support import unique_name, wait_for

if TYPE_CHECKING:
    from conftest import Stack

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "examples"
VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))

pytestmark = pytest.mark.integration


def kcg_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == models.KIND]


def expected_message(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be `# expect: <message>`"
    return first.removeprefix("# expect: ")


def established(stack: Stack) -> bool:
    result = stack.kubectl("get", "crd", models.CRD_NAME, "-o", "json", check=False)
    if result.returncode != 0:
        return False
    conditions = json.loads(result.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def crd_installed(stack: Stack) -> Stack:
    """crds/ applied the way the README says (client-side, then server-side), and established."""
    stack.kubectl("apply", "-f", str(CRDS))
    stack.kubectl("apply", "--server-side", "-f", str(CRDS))
    wait_for(lambda: established(stack), 60, f"CRD {models.CRD_NAME} Established")
    return stack


@pytest.fixture(scope="module")
def rejection_namespace(crd_installed: Stack) -> Iterator[str]:
    """One namespace for all rejected objects: nothing is ever created in it."""
    name = unique_name("crd-invalid")
    crd_installed.kubectl("create", "namespace", name)
    yield name
    crd_installed.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_crds_apply_client_side_and_server_side(crd_installed: Stack) -> None:
    client_side = crd_installed.kubectl("apply", "-f", str(CRDS))
    assert f"customresourcedefinition.apiextensions.k8s.io/{models.CRD_NAME}" in client_side.stdout
    server_side = crd_installed.kubectl("apply", "--server-side", "-f", str(CRDS))
    assert "serverside-applied" in server_side.stdout
    # What the API server stores is what the models generate (no field dropped or rewritten).
    stored = json.loads(crd_installed.kubectl("get", "crd", models.CRD_NAME, "-o", "json").stdout)
    (version,) = stored["spec"]["versions"]
    (generated,) = crdgen.render_crd()["spec"]["versions"]
    assert version["schema"] == generated["schema"]
    assert version["additionalPrinterColumns"] == generated["additionalPrinterColumns"]
    assert stored["spec"]["names"] == crdgen.render_crd()["spec"]["names"]


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_example_is_accepted_with_the_models_defaults(crd_installed: Stack, namespace: str,
                                                            path: Path) -> None:
    crd_installed.kubectl("apply", "-n", namespace, "-f", str(path))
    for document in kcg_documents(path):
        name = document["metadata"]["name"]
        stored = json.loads(crd_installed.kubectl("get", "kcg", name, "-n", namespace, "-o", "json").stdout)
        # The API server's defaulting and pydantic's defaults produce the same spec.
        assert stored["spec"] == KafkaConsumerGroupSpec.from_k8s(document["spec"]).to_k8s()
        assert KafkaConsumerGroupSpec.from_k8s(stored["spec"]) == KafkaConsumerGroupSpec.from_k8s(document["spec"])


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_rejected_with_its_message(crd_installed: Stack, rejection_namespace: str,
                                                      path: Path) -> None:
    result = crd_installed.kubectl("apply", "-n", rejection_namespace, "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    assert expected_message(path) in result.stderr, result.stderr
    (document,) = kcg_documents(path)
    missing = crd_installed.kubectl("get", "kcg", document["metadata"]["name"], "-n", rejection_namespace,
                                    check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr


def full_status(generation: int) -> KafkaConsumerGroupStatus:
    conditions = set_condition([], "Ready", "True", "Scaled", "lag is read and the target follows it", generation,
                               1_795_000_000.0)
    conditions = set_condition(conditions, "KafkaReachable", "True", "Connected", "3 brokers", generation,
                               1_795_000_000.0)
    conditions = set_condition(conditions, "Paused", "False", "NotPaused", "scaling is active", generation,
                               1_795_000_000.0)
    return KafkaConsumerGroupStatus.from_k8s({
        "observedGeneration": generation, "totalLag": 1234, "partitions": 12,
        "topPartitions": [{"topic": "orders", "partition": 4, "lag": 900, "timeLagSeconds": 12.5,
                           "verdict": "LAGGING"}],
        "produceRatePerSecond": 120.5, "consumeRatePerSecond": 80.25, "maxTimeLagSeconds": 12.5,
        "meanTimeLagSeconds": 3.25, "desiredReplicas": 4, "currentReplicas": 3, "poolSize": 16,
        "lastScaleTime": "2026-11-21T10:00:00Z", "lastDecision": "scale up 2→4: drain 1234 msgs in 60s",
        "consecutiveLagFailures": 0,
        "deadLetter": {"topics": [{"name": "orders-workers.dlq", "role": "dlq", "exists": True, "partitions": 3,
                                   "messages": 7, "oldestTime": "2026-11-21T09:00:00Z",
                                   "newestTime": "2026-11-21T09:59:00Z"}]},
        "redrive": {"requestId": "r-1", "state": "Running", "total": 7, "done": 3, "skipped": 1,
                    "message": "3 of 7", "snapshot": [{"partition": 0, "startOffset": 0, "endOffset": 7}]},
        "policyMemory": {"recommendations": [[1795000000.5, 32]], "lastLag": 1234, "slotRate": 4.1},
        "conditions": conditions_to_k8s(conditions),
    })


def test_status_keeps_every_field_and_kubectl_get_shows_the_columns(crd_installed: Stack, namespace: str) -> None:
    crd_installed.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "minimal.yaml"))
    (document,) = kcg_documents(EXAMPLES / "minimal.yaml")
    name = document["metadata"]["name"]
    stored = json.loads(crd_installed.kubectl("get", "kcg", name, "-n", namespace, "-o", "json").stdout)
    status = full_status(stored["metadata"]["generation"]).to_k8s()
    crd_installed.kubectl("patch", "kcg", name, "-n", namespace, "--subresource=status", "--type=merge",
                          "-p", json.dumps({"status": status}))

    # Nothing the operator writes is pruned by the schema.
    after = json.loads(crd_installed.kubectl("get", "kcg", name, "-n", namespace, "-o", "json").stdout)
    assert after["status"] == status
    assert after["metadata"]["generation"] == stored["metadata"]["generation"]  # status is not spec

    table = crd_installed.kubectl("get", "kcg", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "LAG", "TIMELAG", "REPLICAS", "DESIRED", "POOL", "READY", "PAUSED", "AGE"]
    assert table[1].split()[:8] == [name, "1234", "12.5", "3", "4", "16", "True", "False"]
    wide = crd_installed.kubectl("get", "kcg", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[8:10] == ["REASON", "GROUP"] and wide[1].split()[8:10] == ["Scaled", "orders-workers"]
    # The category and the full resource name reach the same object.
    assert name in crd_installed.kubectl("get", "lagpilot", "-n", namespace).stdout
    assert name in crd_installed.kubectl("get", f"{models.PLURAL}.{models.GROUP}", "-n", namespace).stdout


def test_status_cannot_be_set_through_the_main_resource(crd_installed: Stack, namespace: str) -> None:
    (document,) = kcg_documents(EXAMPLES / "minimal.yaml")
    document["status"] = {"totalLag": 99}
    crd_installed.kubectl("create", "-n", namespace, "-f", "-", input_text=json.dumps(document))
    stored = json.loads(crd_installed.kubectl("get", "kcg", document["metadata"]["name"], "-n", namespace,
                                              "-o", "json").stdout)
    assert "status" not in stored or "totalLag" not in stored["status"]


def test_bad_status_is_rejected(crd_installed: Stack, namespace: str) -> None:
    crd_installed.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "minimal.yaml"))
    bad = {"status": {"conditions": [{"type": "Ready", "status": "Maybe", "reason": "Scaled", "message": "",
                                      "lastTransitionTime": "2026-11-21T10:00:00Z"}]}}
    result = crd_installed.kubectl("patch", "kcg", "orders", "-n", namespace, "--subresource=status",
                                   "--type=merge", "-p", json.dumps(bad), check=False)
    assert result.returncode != 0 and 'Unsupported value: "Maybe"' in result.stderr


def test_kubectl_explain_shows_the_model_descriptions(crd_installed: Stack) -> None:
    def explained() -> str | None:
        result = crd_installed.kubectl("explain", "kcg.spec.kafka.security", check=False)
        return result.stdout if result.returncode == 0 else None

    # The OpenAPI document of a fresh CRD is published a moment after it is established.
    text = wait_for(explained, 60, "kubectl explain kcg.spec.kafka.security")
    description = models.KafkaConnection.model_fields["security"].description
    assert description and description in " ".join(text.split())
    sasl = crd_installed.kubectl("explain", "kcg.spec.kafka.security.sasl").stdout
    assert "passwordSecretRef" in sasl and "password\t" not in sasl

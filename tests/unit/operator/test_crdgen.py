"""The generated CRD: committed files equal the generation, the schema is structural, defaults agree."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from lagpilot_operator.kube import crdgen, models
from lagpilot_operator.kube.models import KafkaConsumerGroupSpec

REPO = Path(__file__).resolve().parents[3]
COMMITTED_CRD = REPO / crdgen.CRD_PATH
COMMITTED_REFERENCE = REPO / crdgen.REFERENCE_PATH
VALID_EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.render_crd()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    root: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return root


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}{{}}")


# --- drift -------------------------------------------------------------------------------------------------


def test_committed_crd_is_what_the_models_generate() -> None:
    assert COMMITTED_CRD.read_text() == crdgen.crd_yaml(), "regenerate with `make crds` (lagpilot crds --write)"


def test_committed_reference_is_what_the_models_generate() -> None:
    assert COMMITTED_REFERENCE.read_text() == crdgen.reference_markdown(), "regenerate with `make crds`"


def test_committed_crd_parses_to_the_rendered_object() -> None:
    assert yaml.safe_load(COMMITTED_CRD.read_text()) == crdgen.render_crd()


def test_check_passes_on_the_committed_files_and_fails_with_a_diff(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", str(COMMITTED_CRD)]) == 0
    assert crdgen.main(["--check", str(COMMITTED_REFERENCE)]) == 0
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.crd_yaml().replace("maximum: 300", "maximum: 600"))
    assert crdgen.main(["--check", str(stale)]) == 1
    err = capsys.readouterr().err
    assert "differs from what the models generate" in err and "lagpilot crds --write" in err
    assert "-                    maximum: 600" in err and "+                    maximum: 300" in err
    assert crdgen.main(["--check", str(tmp_path / "missing.yaml")]) == 1
    assert "missing" in capsys.readouterr().err


def test_write_then_check_in_a_fresh_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert crdgen.main(["--check"]) == 1  # nothing there yet
    assert crdgen.main(["--write"]) == 0
    assert (tmp_path / crdgen.CRD_PATH).read_text() == crdgen.crd_yaml()
    assert (tmp_path / crdgen.REFERENCE_PATH).read_text() == crdgen.reference_markdown()
    assert crdgen.main(["--check"]) == 0
    (tmp_path / crdgen.REFERENCE_PATH).write_text("stale\n")
    assert crdgen.main(["--check"]) == 1
    assert crdgen.main(["--reference", "--write"]) == 0
    assert crdgen.main(["--check"]) == 0
    capsys.readouterr()
    assert crdgen.main([]) == 0
    assert capsys.readouterr().out == crdgen.crd_yaml()
    assert crdgen.main(["--reference"]) == 0
    assert capsys.readouterr().out == crdgen.reference_markdown()


def test_cli_dispatches_to_crdgen(capsys: pytest.CaptureFixture[str]) -> None:
    from lagpilot_operator import cli

    assert cli.main(["crds"]) == 0
    assert capsys.readouterr().out == crdgen.crd_yaml()


# --- the CRD object ----------------------------------------------------------------------------------------


def test_names_version_and_subresources(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "kafkaconsumergroups.lagpilot.io"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("lagpilot.io", "Namespaced")
    assert spec["names"] == {"kind": "KafkaConsumerGroup", "listKind": "KafkaConsumerGroupList",
                             "plural": "kafkaconsumergroups", "singular": "kafkaconsumergroup",
                             "shortNames": ["kcg"], "categories": ["lagpilot"]}
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    # Status subresource only: replicas are the operator's decision, `kubectl scale` has nothing to set.
    assert version["subresources"] == {"status": {}}


def test_printer_columns(crd: dict[str, Any]) -> None:
    (version,) = crd["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    expected = {"Lag": ".status.totalLag", "TimeLag": ".status.maxTimeLagSeconds",
                "Replicas": ".status.currentReplicas", "Desired": ".status.desiredReplicas",
                "Pool": ".status.poolSize", "Ready": '.status.conditions[?(@.type=="Ready")].status',
                "Paused": '.status.conditions[?(@.type=="Paused")].status',
                "Age": ".metadata.creationTimestamp"}
    for name, path in expected.items():
        assert columns[name]["jsonPath"] == path and "priority" not in columns[name]
    assert columns["TimeLag"]["type"] == "number" and "seconds" in columns["TimeLag"]["description"]
    assert columns["Age"]["type"] == "date"
    # Every column points at a field the schema has (a typo would show an empty column forever).
    status = crdgen.openapi_schema()["properties"]["status"]["properties"]
    for column in columns.values():
        head = column["jsonPath"].split(".")[1:3]
        if head[0] == "status":
            assert head[1].split("[")[0] in status, column


# --- structural schema ---------------------------------------------------------------------------------------


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in nodes(schema):
        assert "type" in node, f"{path}: no type"
        assert not {"$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "title", "const", "uniqueItems",
                    "definitions"} & set(node), f"{path}: {sorted(node)}"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties", {}) not in (True, False), path
        if node["type"] == "object" and path not in ("", ".metadata"):
            free_form = node.get("x-kubernetes-preserve-unknown-fields") is True
            assert "properties" in node or "additionalProperties" in node or free_form, f"{path}: untyped object"
        if node["type"] == "array":
            assert "items" in node, path
    assert "$ref" not in yaml.safe_dump(schema)


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    # Descriptions are what `kubectl explain` and the reference show.
    for section in ("spec", "status"):
        for path, node in nodes(schema["properties"][section], section):
            if not path.endswith("[]") and not path.endswith("{}"):
                assert node.get("description"), f"{path}: no description"


def test_no_floats_in_spec(schema: dict[str, Any]) -> None:
    for path, node in nodes(schema["properties"]["spec"], "spec"):
        assert node["type"] != "number", f"{path} is a float"


def test_literals_become_enums_and_optionals_drop_null(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["policy"]["properties"]["mode"]["enum"] == ["drainTime", "lagThreshold"]
    assert spec["lag"]["properties"]["source"]["enum"] == ["kafka", "prometheus"]
    assert spec["scaleTargetRef"]["properties"]["kind"]["enum"] == ["Deployment"]
    sasl = spec["kafka"]["properties"]["security"]["properties"]["sasl"]
    assert sasl["properties"]["mechanism"]["enum"] == ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
    drain = spec["policy"]["properties"]["drainTime"]["properties"]["targetTimeLagSeconds"]
    assert drain == {"description": drain["description"], "type": "integer", "minimum": 1, "maximum": 86400}
    assert sorted(schema["properties"]["spec"]["required"]) == ["groupId", "kafka", "topics"]


def test_secrets_only_by_reference(schema: dict[str, Any]) -> None:
    security = schema["properties"]["spec"]["properties"]["kafka"]["properties"]["security"]
    for path, node in nodes(security, "security"):
        if node["type"] == "string":
            # Every string below security is an enum or a name/key of a Secret reference.
            assert "enum" in node or path.split(".")[-2].endswith("SecretRef"), path
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path


def test_template_keeps_a_whole_deployment(schema: dict[str, Any]) -> None:
    template = schema["properties"]["spec"]["properties"]["template"]
    assert template["required"] == ["spec"]
    for part in ("metadata", "spec"):
        assert template["properties"][part]["x-kubernetes-preserve-unknown-fields"] is True
        assert template["properties"][part]["type"] == "object"


def test_list_types(schema: dict[str, Any]) -> None:
    spec, status = schema["properties"]["spec"]["properties"], schema["properties"]["status"]["properties"]
    assert spec["topics"]["x-kubernetes-list-type"] == "set"
    assert (spec["topics"]["minItems"], spec["topics"]["maxItems"]) == (1, 100)
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map" and conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert {"type", "status", "reason", "lastTransitionTime"} <= set(item["required"])
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert status["policyMemory"]["x-kubernetes-preserve-unknown-fields"] is True


def test_cel_rules_are_the_models_rules(schema: dict[str, Any]) -> None:
    in_crd = [(path, rule["rule"], rule["message"]) for path, node in nodes(schema)
              for rule in node.get("x-kubernetes-validations", [])]
    topic_rule = (models.TOPIC_NOT_DOTS.cel, models.TOPIC_NOT_DOTS.message)
    # The topic-name rule sits on every field that takes a topic name; every other rule once.
    assert sorted(path for path, *rule in in_crd if tuple(rule) == topic_rule) == [
        ".spec.deadLetter.topic", ".spec.topics[]"]
    others = [tuple(rule) for _, *rule in in_crd if tuple(rule) != topic_rule]
    assert sorted([*others, topic_rule]) == sorted((rule.cel, rule.message) for rule in models.all_cel_rules())
    spec = schema["properties"]["spec"]
    assert models.EXACTLY_ONE_TARGET.message in [r["message"] for r in spec["x-kubernetes-validations"]]
    replicas = spec["properties"]["replicas"]["x-kubernetes-validations"]
    assert replicas == [{"rule": "self.min <= self.max", "message": models.REPLICAS_ORDER.message}]


def test_unions_and_sets_are_refused() -> None:
    class Union(BaseModel):
        value: int | str

    class Unique(BaseModel):
        values: set[str]

    for model in (Union, Unique):
        with pytest.raises(crdgen.SchemaConversionError):
            crdgen.structural_schema(model)


# --- defaults: what the API server fills in equals what pydantic fills in ------------------------------------


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: an absent field with a default gets a copy of it,
    then defaulting recurses into objects and array items."""
    if node.get("type") == "object" and isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    if node.get("type") == "array" and isinstance(value, list):
        value = [apply_defaults(node["items"], item) for item in value]
    return value


@pytest.mark.parametrize("path", VALID_EXAMPLES, ids=lambda p: p.name)
def test_schema_defaults_equal_model_defaults(schema: dict[str, Any], path: Path) -> None:
    spec_schema = schema["properties"]["spec"]
    for document in yaml.safe_load_all(path.read_text()):
        if document and document["kind"] == models.KIND:
            defaulted = apply_defaults(spec_schema, copy.deepcopy(document["spec"]))
            assert defaulted == KafkaConsumerGroupSpec.from_k8s(document["spec"]).to_k8s()


def test_every_default_is_valid_and_complete(schema: dict[str, Any]) -> None:
    # The API server validates a default as is (without nested defaults), so object defaults are whole objects.
    for path, node in nodes(schema["properties"]["spec"], "spec"):
        default = node.get("default")
        if isinstance(default, dict) and node.get("properties"):
            assert set(default) == {name for name, child in node["properties"].items()
                                    if "default" in child or name in node.get("required", [])}, path


# --- the reference -----------------------------------------------------------------------------------------------


def test_reference_lists_every_spec_field_and_rule(schema: dict[str, Any]) -> None:
    reference = crdgen.reference_markdown()
    for path, _ in nodes(schema["properties"]["spec"], "spec"):
        if path != "spec" and not path.endswith("{}"):
            assert f"| `{path.removesuffix('[]')}` |" in reference, path
    for rule in models.all_cel_rules():
        assert rule.message in reference
    assert "| `spec.lag.pollIntervalSeconds` | `integer` |  | `5` | 1..300 |" in reference
    assert ("| `spec.topics` | `[]string` | yes |  | items 1..100; unique; each: length 1..249, "
            "pattern `^[a-zA-Z0-9._-]+$` |") in reference
    assert "| `spec.replicas` | `object` |  | its fields' defaults |  |" in reference


def test_reference_escapes_table_pipes() -> None:
    for line in crdgen.reference_markdown().splitlines():
        if line.startswith("| `"):
            cells = line.replace("\\|", "").strip("|").split("|")
            assert len(cells) in (3, 4, 6), line


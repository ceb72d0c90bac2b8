"""Generate the KafkaConsumerGroup CRD and its field reference from `lagpilot_operator.kube.models`.

`lagpilot crds` prints the CRD YAML; `--write` writes crds/ and docs/crd-reference.md; `--check`
exits 1 when a committed file differs; `--reference` selects the Markdown field reference.

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema: every node typed,
no `$ref`, no `anyOf` unions, no `title`, `additionalProperties` only as a value schema, free-form
objects marked `x-kubernetes-preserve-unknown-fields`. `structural_schema` does that conversion and
refuses anything it cannot express, so a model change that would produce a non-structural schema
fails here and not at `kubectl apply`.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from lagpilot_operator.kube import models

CRD_PATH = Path("crds") / f"{models.CRD_NAME}.yaml"
REFERENCE_PATH = Path("docs") / "crd-reference.md"
HEADER = (
    "# Generated from operator/lagpilot_operator/kube/models.py by `lagpilot crds --write` (make crds).\n"
    "# Do not edit: change the models and regenerate; a test fails when this file and the models differ.\n"
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Lag", "type": "integer", "jsonPath": ".status.totalLag",
     "description": "Offset lag (messages behind) used by the last decision."},
    {"name": "TimeLag", "type": "number", "jsonPath": ".status.maxTimeLagSeconds",
     "description": "Largest estimated time lag over the partitions, in seconds behind the producers."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.currentReplicas",
     "description": "Replicas the worker Deployment has."},
    {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas",
     "description": "Replicas the last decision asked for."},
    {"name": "Pool", "type": "integer", "jsonPath": ".status.poolSize",
     "description": "Concurrent messages per worker pod (pool size)."},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "Whether lag is read and the target is scaled (condition Ready)."},
    {"name": "Paused", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Paused")].status',
     "description": "Whether scaling is paused (spec.paused or the lagpilot.io/paused annotations)."},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
     "priority": 1, "description": "Reason of the Ready condition."},
    {"name": "Group", "type": "string", "jsonPath": ".spec.groupId", "priority": 1,
     "description": "Kafka consumer group id."},
    {"name": "GroupType", "type": "string", "jsonPath": ".spec.groupType", "priority": 1,
     "description": "consumer or share (KIP-932 share group)."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# Keys a structural schema may carry (anything else from pydantic is a conversion gap: fail loudly).
_ALLOWED_KEYS = {
    "type", "description", "default", "enum", "format", "pattern", "minimum", "maximum", "minLength", "maxLength",
    "minItems", "maxItems", "maxProperties", "items", "properties", "required", "additionalProperties",
    "nullable", "x-kubernetes-validations", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
}
# Output order of a node's keys: what a person reads first, then the shape, then the extensions.
_KEY_ORDER = ["description", "type", "format", "default", "enum", "minimum", "maximum", "minLength", "maxLength",
              "pattern", "minItems", "maxItems", "maxProperties", "nullable", "required", "properties", "items",
              "additionalProperties", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type",
              "x-kubernetes-list-map-keys", "x-kubernetes-validations"]


class SchemaConversionError(ValueError):
    """The models use a construct a structural schema cannot express."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema as a structural OpenAPI v3 schema (see the module docstring)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions, model.__name__)


def _convert(node: dict[str, Any], definitions: dict[str, Any], path: str) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        # Keys beside the $ref (the field's description, default, ...) win over the definition's.
        node = {**definitions[name], **node}
    if "anyOf" in node:
        options = [option for option in node.pop("anyOf") if option != {"type": "null"}]
        if len(options) != 1:
            raise SchemaConversionError(f"{path}: unions other than Optional[X] are not structural")
        if node.get("default", ...) is None:
            del node["default"]  # null default = absent; the API server drops nulls of non-nullable fields
        return _convert({**options[0], **node}, definitions, path)
    if "$ref" in node or "anyOf" in node:  # a definition that is itself a reference
        return _convert(node, definitions, path)

    node.pop("title", None)
    if node.get("default", ...) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]  # extra="forbid": pruning and strict field validation do this job
    elif node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.pop("uniqueItems", False):
        raise SchemaConversionError(f"{path}: uniqueItems is not allowed; use x-kubernetes-list-type: set")

    if "properties" in node:
        node["properties"] = {name: _convert(child, definitions, f"{path}.{name}")
                              for name, child in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = _convert(node["items"], definitions, f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(node["additionalProperties"], definitions, f"{path}{{}}")

    if "type" not in node:
        raise SchemaConversionError(f"{path}: every node of a structural schema needs a type")
    unknown = set(node) - _ALLOWED_KEYS
    if unknown:
        raise SchemaConversionError(f"{path}: keys {sorted(unknown)} have no structural equivalent")
    if "properties" in node and "additionalProperties" in node:
        raise SchemaConversionError(f"{path}: properties and additionalProperties are mutually exclusive")
    return _ordered(node)


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    return {key: node[key] for key in sorted(node, key=_KEY_ORDER.index)}


def openapi_schema() -> dict[str, Any]:
    """The `openAPIV3Schema` of the served version."""
    return {
        "description": "KafkaConsumerGroup scales the workers of one Kafka consumer group on its lag: replicas "
                       "of a Deployment and the in-pod pool size. See docs/crd-reference.md.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"description": "APIVersion defines the versioned schema of this representation of "
                                          "an object.", "type": "string"},
            "kind": {"description": "Kind is a string value representing the REST resource this object "
                                    "represents.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": structural_schema(models.KafkaConsumerGroupSpec),
            "status": structural_schema(models.KafkaConsumerGroupStatus),
        },
    }


def render_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": models.CRD_NAME,
            "labels": {"app.kubernetes.io/name": "lagpilot", "app.kubernetes.io/part-of": "lagpilot"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": models.SINGULAR,
                "shortNames": list(models.SHORT_NAMES),
                "categories": list(models.CATEGORIES),
            },
            "versions": [{
                "name": models.VERSION,
                "served": True,
                "storage": True,
                # No scale subresource: replicas are the operator's decision (see docs/design.md).
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style; long strings stay on one line so diffs of a description show one line."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def crd_yaml() -> str:
    body = yaml.dump(render_crd(), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1_000_000,
                     allow_unicode=True)
    return HEADER + body


# --- the Markdown field reference ----------------------------------------------------------------------------


def _type_name(node: dict[str, Any]) -> str:
    kind = node.get("type", "")
    if kind == "array":
        return "[]" + _type_name(node.get("items", {}))
    if kind == "object":
        if node.get("x-kubernetes-preserve-unknown-fields"):
            return "object (free-form)"
        if isinstance(node.get("additionalProperties"), dict):
            return f"map[string]{_type_name(node['additionalProperties'])}"
    return str(kind)


def _range(low: Any, high: Any, unit: str = "") -> str | None:
    if low is not None and high is not None:
        return f"{unit}{low}..{high}"
    if low is not None:
        return f"{unit}>= {low}"
    if high is not None:
        return f"{unit}<= {high}"
    return None


def _constraints(node: dict[str, Any]) -> list[str]:
    found: list[str] = []
    if "enum" in node:
        found.append("one of " + ", ".join(f"`{value}`" for value in node["enum"]))
    for text in (_range(node.get("minimum"), node.get("maximum")),
                 _range(node.get("minLength"), node.get("maxLength"), "length "),
                 _range(node.get("minItems"), node.get("maxItems"), "items ")):
        if text:
            found.append(text)
    if "pattern" in node:
        found.append(f"pattern `{node['pattern']}`")
    if node.get("format") == "date-time":
        found.append("RFC 3339 time")
    if node.get("x-kubernetes-list-type") == "set":
        found.append("unique")
    if node.get("x-kubernetes-list-type") == "map":
        found.append("keyed by " + ", ".join(node.get("x-kubernetes-list-map-keys", [])))
    items = node.get("items", {})
    if node.get("type") == "array" and items.get("type") != "object" and _constraints(items):
        found.append("each: " + ", ".join(_constraints(items)))
    return found


def _walk(node: dict[str, Any], path: str, required: bool) -> Iterator[tuple[str, dict[str, Any], bool]]:
    yield path, node, required
    children = node.get("properties", {})
    if node.get("type") == "array" and "properties" in node.get("items", {}):
        children, path = node["items"]["properties"], path + "[]"
        node = node["items"]
    for name, child in children.items():
        yield from _walk(child, f"{path}.{name}", name in node.get("required", []))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(node: dict[str, Any]) -> str:
    if "default" not in node:
        return ""
    value = node["default"]
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict | list):
        # A non-empty object default is the sum of its fields' defaults, listed on their own rows.
        return ("`{}`" if isinstance(value, dict) else "`[]`") if not value else "its fields' defaults"
    if value == "":
        return '`""`'
    return f"`{value}`"


def reference_markdown() -> str:
    """The CRD field reference: every field with type, default, constraints and description."""
    schema = openapi_schema()
    lines = [
        "<!-- Generated from operator/lagpilot_operator/kube/models.py by `lagpilot crds --write`; do not edit. -->",
        "",
        f"# {models.KIND} reference (`{models.API_VERSION}`)",
        "",
        f"Short name `{models.SHORT_NAMES[0]}`, category `{models.CATEGORIES[0]}`, namespaced, with a `/status` "
        "subresource. `kubectl explain kcg.spec` shows the same descriptions.",
        "",
        "Names are camelCase in YAML and snake_case in Python (`lagpilot_operator.kube.models`). A required field "
        "is only required when its parent object is present. Defaults are filled in by the API server.",
    ]
    rules: list[tuple[str, str, str]] = []
    for section in ("spec", "status"):
        lines += ["", f"## {section}", "", schema["properties"][section]["description"], "",
                  "| Field | Type | Required | Default | Constraints | Description |",
                  "|---|---|---|---|---|---|"]
        for path, node, required in _walk(schema["properties"][section], section, section == "spec"):
            rules += [(path, rule["message"], rule["rule"]) for rule in node.get("x-kubernetes-validations", [])]
            if path == section:
                continue
            lines.append("| " + " | ".join(_cell(text) for text in (
                f"`{path}`", f"`{_type_name(node)}`", "yes" if required else "", _default(node),
                "; ".join(_constraints(node)), node.get("description", ""))) + " |")
    lines += ["", "## Cross-field rules", "",
              "Checked by the API server (CEL `x-kubernetes-validations`) and by the pydantic models, with the "
              "same message.", "", "| On | Message | CEL |", "|---|---|---|"]
    lines += [f"| `{path}` | {_cell(message)} | `{_cell(rule)}` |" for path, message, rule in rules]
    lines += ["", "## Printer columns (`kubectl get kcg`)", "", "| Column | JSONPath | Shown | Description |",
              "|---|---|---|---|"]
    lines += [f"| {c['name']} | `{_cell(c['jsonPath'])}` | {'-o wide' if c.get('priority') else 'always'} | "
              f"{_cell(c.get('description', 'Time since creation.'))} |" for c in PRINTER_COLUMNS]
    return "\n".join(lines) + "\n"


# --- command line ---------------------------------------------------------------------------------------------


def _check(path: Path, expected: str) -> bool:
    if not path.is_file():
        print(f"{path}: missing; generate it with `lagpilot crds --write` (make crds)", file=sys.stderr)
        return False
    actual = path.read_text()
    if actual == expected:
        return True
    diff = list(difflib.unified_diff(actual.splitlines(), expected.splitlines(), f"{path} (committed)",
                                     f"{path} (from the models)", lineterm=""))
    shown = diff[:80] + ([f"... {len(diff) - 80} more diff lines"] if len(diff) > 80 else [])
    print(f"{path} differs from what the models generate; regenerate with `lagpilot crds --write` "
          "(make crds):\n" + "\n".join(shown), file=sys.stderr)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lagpilot crds",
        description="Print, write or check the KafkaConsumerGroup CRD (and its Markdown reference), generated "
                    "from lagpilot_operator.kube.models. Paths are relative to the current directory (the repo root).")
    parser.add_argument("--reference", action="store_true",
                        help=f"the Markdown field reference ({REFERENCE_PATH}) instead of the CRD")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true",
                        help=f"write {CRD_PATH} and {REFERENCE_PATH} (only the reference with --reference)")
    action.add_argument("--check", nargs="?", const="", default=None, metavar="FILE",
                        help=f"exit 1 when FILE (default: {CRD_PATH} and {REFERENCE_PATH}) differs from the models")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))

    if args.check:  # one named file: a .md file is the reference
        path = Path(args.check)
        expected = reference_markdown() if args.reference or path.suffix == ".md" else crd_yaml()
        return 0 if _check(path, expected) else 1

    targets = [(REFERENCE_PATH, reference_markdown)] if args.reference else [
        (CRD_PATH, crd_yaml), (REFERENCE_PATH, reference_markdown)]
    if args.check is not None:
        results = [_check(path, render()) for path, render in targets]
        return 0 if all(results) else 1
    if args.write:
        for path, render in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render())
            print(f"wrote {path}")
        return 0
    sys.stdout.write(reference_markdown() if args.reference else crd_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())

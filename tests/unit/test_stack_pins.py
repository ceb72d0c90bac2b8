"""Every version of the local stack is pinned once, in hack/versions.env; the build files must agree."""

from __future__ import annotations

import re
from pathlib import Path

HACK = Path(__file__).resolve().parents[2] / "hack"


def pins() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (HACK / "versions.env").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def test_kubernetes_wrapper_module_matches_pins() -> None:
    go_mod = (HACK / "k8s" / "go.mod").read_text()
    assert f"require k8s.io/kubernetes {pins()['KUBERNETES_VERSION']}" in go_mod
    staging = re.findall(r"^\s+(k8s\.io/\S+) => \1 (\S+)$", go_mod, flags=re.MULTILINE)
    assert len(staging) >= 30, "every staging module of k8s.io/kubernetes needs a replace line"
    assert {version for _, version in staging} == {pins()["KUBERNETES_STAGING_VERSION"]}


def test_etcd_and_helm_modules_match_pins() -> None:
    assert f"go.etcd.io/etcd/server/v3 {pins()['ETCD_VERSION']}" in (HACK / "etcd" / "go.mod").read_text()
    assert f"helm.sh/helm/v3 {pins()['HELM_VERSION']}" in (HACK / "helm" / "go.mod").read_text()


def test_kafka_pom_defaults_match_pins() -> None:
    pom = (HACK / "kafka" / "pom.xml").read_text()
    assert f"<kafka.version>{pins()['KAFKA_VERSION']}</kafka.version>" in pom
    assert f"<log4j.version>{pins()['LOG4J_VERSION']}</log4j.version>" in pom

"""KEDA for the benchmarks (hack/stack.py's `keda` command, hack/keda) and the apiserver's aggregation layer."""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HACK = Path(__file__).resolve().parents[2] / "hack"


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("lagpilot_stack", HACK / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STATE", tmp_path / "stack")
    monkeypatch.setenv("LAGPILOT_NODE", "0")
    return module


def flag(cmd: list[str], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in cmd if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {cmd}"
    return values[0]


def test_keda_wrapper_module_builds_the_pinned_release(stack: Any) -> None:
    go_mod = (HACK / "keda" / "go.mod").read_text()
    assert f"require github.com/kedacore/keda/v2 {stack.PINS['KEDA_VERSION']}\n" in go_mod
    tools = (HACK / "keda" / "tools.go").read_text()
    for command in stack.KEDA_BINARIES:
        assert f'_ "github.com/kedacore/keda/v2/cmd/{command}"' in tools
    # The go.sum holds the release's own go.mod hash: the wrapper resolves the module it names.
    go_sum = (HACK / "keda" / "go.sum").read_text()
    assert f"github.com/kedacore/keda/v2 {stack.PINS['KEDA_VERSION']}/go.mod h1:" in go_sum


def test_keda_version_ldflags_drop_the_tags_v(stack: Any) -> None:
    ldflags = stack.keda_ldflags("v2.21.0")
    assert "-X=github.com/kedacore/keda/v2/version.Version=2.21.0" in ldflags.split()
    assert "-X=github.com/kedacore/keda/v2/version.GitCommit=v2.21.0" in ldflags.split()


def test_the_apiserver_has_no_aggregation_layer_unless_asked(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "make_certificates", lambda: None)
    monkeypatch.setattr(stack, "make_front_proxy_certificates", lambda: None)
    monkeypatch.delenv("LAGPILOT_AGGREGATION", raising=False)
    assert not [arg for arg in stack.apiserver_cmd() if arg.startswith(("--requestheader", "--proxy-client"))]
    monkeypatch.setenv("LAGPILOT_AGGREGATION", "1")
    cmd = stack.apiserver_cmd()
    files = stack.front_proxy_files()
    assert flag(cmd, "requestheader-client-ca-file") == str(files["ca"])
    assert flag(cmd, "proxy-client-cert-file") == str(files["client-cert"])
    assert flag(cmd, "proxy-client-key-file") == str(files["client-key"])
    assert flag(cmd, "requestheader-allowed-names") == stack.FRONT_PROXY_CLIENT_CN
    assert flag(cmd, "requestheader-username-headers") == "X-Remote-User"
    assert flag(cmd, "requestheader-group-headers") == "X-Remote-Group"
    assert flag(cmd, "requestheader-extra-headers-prefix") == "X-Remote-Extra-"
    # Endpoint routing would need a non-loopback EndpointSlice address; the ExternalName Service needs it off.
    assert flag(cmd, "enable-aggregator-routing") == "false"


def test_operator_and_adapter_meet_on_one_grpc_address_and_one_cert_dir(stack: Any) -> None:
    operator, adapter = stack.keda_operator_cmd(), stack.keda_adapter_cmd()
    assert flag(operator, "metrics-service-bind-address") == flag(adapter, "metrics-service-address")
    assert flag(operator, "cert-dir") == flag(adapter, "cert-dir") == str(stack.keda_cert_dir())
    assert flag(operator, "leader-elect") == "false"
    for address in (flag(operator, name) for name in
                    ("metrics-bind-address", "health-probe-bind-address", "metrics-service-bind-address")):
        assert address.startswith(f"{stack.HOST}:")
    assert flag(adapter, "bind-address") == stack.HOST
    kubeconfig = str(stack.kubeconfig_path())
    for name in ("kubeconfig", "lister-kubeconfig", "authentication-kubeconfig", "authorization-kubeconfig"):
        assert flag(adapter, name) == kubeconfig
    env = stack.keda_env()
    assert env["WATCH_NAMESPACE"] == ""  # KEDA exits when it is unset
    assert env["KEDA_CLUSTER_OBJECT_NAMESPACE"]  # else it reads a service account file a Pod would have


def test_the_apiservice_reaches_the_adapter_through_an_externalname_service(stack: Any) -> None:
    objects = {obj["kind"]: obj for obj in stack.keda_objects(b"PEM")}
    apiservice, service = objects["APIService"], objects["Service"]
    assert apiservice["metadata"]["name"] == "v1beta1.external.metrics.k8s.io"
    assert base64.b64decode(apiservice["spec"]["caBundle"]) == b"PEM"
    ref = apiservice["spec"]["service"]
    assert (ref["name"], ref["namespace"]) == (service["metadata"]["name"], service["metadata"]["namespace"])
    assert ref["port"] == stack.PORTS["keda-adapter"] == int(flag(stack.keda_adapter_cmd(), "secure-port"))
    assert service["spec"] == {"type": "ExternalName", "externalName": stack.HOST,
                               "ports": [{"name": "https", "port": stack.PORTS["keda-adapter"], "protocol": "TCP"}]}
    # The aggregator checks the adapter's certificate for <service>.<namespace>.svc.
    assert f"DNS:{ref['name']}.{ref['namespace']}.svc" in stack.keda_cert_san()
    binding = objects["ClusterRoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "horizontal-pod-autoscaler",
                                    "namespace": "kube-system"}]


def test_crds_are_copied_from_the_modules_config_crd_bases(stack: Any, tmp_path: Path) -> None:
    bases = tmp_path / "keda" / "config" / "crd" / "bases"
    bases.mkdir(parents=True)
    for name in stack.KEDA_CRDS:
        (bases / name).write_text(f"# {name}\n")
    (bases / "keda.sh_notakind.yaml").write_text("# not wanted\n")
    copied = stack.extract_keda_crds(tmp_path / "keda")
    assert sorted(path.name for path in (stack.keda_dir() / "crds").iterdir()) == sorted(stack.KEDA_CRDS)
    assert [path.read_text() for path in copied] == [f"# {name}\n" for name in stack.KEDA_CRDS]
    (bases / stack.KEDA_CRDS[0]).unlink()
    with pytest.raises(stack.StackError, match=re.escape(stack.KEDA_CRDS[0])):
        stack.extract_keda_crds(tmp_path / "keda")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_keda_and_front_proxy_certificates(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "CACHE", stack.STATE / "cache")  # openssl's logs
    stack.make_keda_certificates()
    certs = stack.keda_cert_dir()

    def openssl(*args: str) -> str:
        return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout

    assert "OK" in openssl("verify", "-CAfile", str(certs / "ca.crt"), str(certs / "tls.crt"))
    text = openssl("x509", "-in", str(certs / "tls.crt"), "-noout", "-text")
    assert "DNS:keda-metrics-apiserver.keda.svc" in text and "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    before = (certs / "tls.crt").read_bytes()
    stack.make_keda_certificates()
    assert (certs / "tls.crt").read_bytes() == before  # minted once, kept while the names stay

    stack.make_front_proxy_certificates()
    files = stack.front_proxy_files()
    assert "OK" in openssl("verify", "-CAfile", str(files["ca"]), str(files["client-cert"]))
    subject = openssl("x509", "-in", str(files["client-cert"]), "-noout", "-subject")
    assert f"CN = {stack.FRONT_PROXY_CLIENT_CN}" in subject


def test_keda_crd_object_names_come_from_the_file_names(stack: Any) -> None:
    assert stack.keda_crd_names() == [
        "scaledobjects.keda.sh", "scaledjobs.keda.sh", "triggerauthentications.keda.sh",
        "clustertriggerauthentications.keda.sh", "cloudeventsources.eventing.keda.sh",
        "clustercloudeventsources.eventing.keda.sh"]


def test_the_metrics_apiservice_is_available_only_on_a_true_available_condition(stack: Any) -> None:
    available = {"status": {"conditions": [{"type": "Available", "status": "True"}]}}
    failing = {"status": {"conditions": [{"type": "Available", "status": "False",
                                          "reason": "FailedDiscoveryCheck"}]}}
    assert stack.apiservice_available(available)
    assert not stack.apiservice_available(failing)
    assert not stack.apiservice_available({"status": {}})
    assert not stack.apiservice_available({})


def test_keda_up_runs_the_operator_and_adapter_as_pidfile_services_on_keda_ports(stack: Any) -> None:
    operator, adapter = stack.keda_services()
    assert (operator.name, adapter.name) == ("keda-operator", "keda-adapter")
    # Every port either binds is checked free before start and is one of the stack's KEDA ports.
    assert set(operator.ports) | set(adapter.ports) == {key for key in stack.PORTS if key.startswith("keda-")}
    assert operator.start() == stack.keda_operator_cmd() and adapter.start() == stack.keda_adapter_cmd()
    assert operator.env is stack.keda_env and adapter.env is stack.keda_env
    # The adapter is ready when the aggregator serves its API, not when its port opens.
    assert adapter.ready is stack.keda_metrics_api_ready


def test_keda_up_and_keda_down_are_commands(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    monkeypatch.setattr(stack, "keda_up", lambda: called.append("up"))
    monkeypatch.setattr(stack, "keda_down", lambda: called.append("down"))
    assert stack.main(["keda-up"]) == 0 and stack.main(["keda-down"]) == 0
    assert called == ["up", "down"]


def test_crds_are_awaited_until_established_even_before_they_have_conditions(stack: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after the apply a CRD has no status.conditions: `kubectl wait --for=condition=Established`
    failed at once there ("<nil> is of the type <nil>"); the wait keeps reading until each says True."""
    answers = iter(["a.x=\nb.x=\n", "a.x=True\nb.x=\n", None, "a.x=True\nb.x=True\nother.y=True\n"])
    calls: list[tuple[str, ...]] = []

    def kubectl_output(*args: str, timeout: float = 20) -> str | None:
        calls.append(args)
        return next(answers)

    monkeypatch.setattr(stack, "kubectl_output", kubectl_output)
    monkeypatch.setattr(stack.time, "sleep", lambda seconds: None)
    stack.wait_established(["a.x", "b.x"], 60)
    assert len(calls) == 4


def test_a_crd_that_never_becomes_established_is_named(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "kubectl_output", lambda *args, timeout=20: "a.x=True\nb.x=False\n")
    monkeypatch.setattr(stack.time, "sleep", lambda seconds: None)
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(stack.time, "monotonic", lambda: float(next(clock)))
    with pytest.raises(stack.StackError, match=r"not Established after 60 s: b\.x$"):
        stack.wait_established(["a.x", "b.x"], 60)

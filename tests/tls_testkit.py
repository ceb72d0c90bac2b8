"""Certificates a test mints for itself: a CA the stack's broker does not know, and a client certificate
signed by it (the stack's own CA and client certificate come from `hack/stack.py`, see the `stack` fixture)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ForeignPki:
    """A CA unknown to the broker, and a client certificate and key it signed (PEM files)."""

    ca: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def mint_foreign_pki(folder: Path, client_cn: str = "lagpilot-untrusted-client") -> ForeignPki:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "client.key", "client.csr", "client.crt"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lagpilot-foreign-ca",
             "-keyout", str(ca_key), "-out", str(ca))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={client_cn}", "-keyout", str(key),
             "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "2", "-out", str(cert))
    return ForeignPki(ca=ca, client_cert=cert, client_key=key)


def key_material(pem: str) -> list[str]:
    """The base64 lines of a PEM private key: any one of them in a log would be a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]

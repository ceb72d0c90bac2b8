"""`secret_cache.SecretCache`: a Secret found is read once per refresh for every resource naming it, a missing
one on every poll, a forgotten one on the next poll; and `reconcile.kafka_settings` through it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping

import pytest

from lagpilot_operator import reconcile
from lagpilot_operator.kafka import kafka_lag
from lagpilot_operator.kube import kube_io, models
from lagpilot_operator.kube.secret_cache import SecretCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Secrets:
    """The API server's Secrets, and the GETs made."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = secrets
        self.gets: list[tuple[str, str]] = []

    def read(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.gets.append((namespace, name))
        return self.secrets.get((namespace, name))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_a_secret_found_is_read_once_per_refresh_for_every_poll_naming_it() -> None:
    api, clock = Secrets({("ns", "login"): {"password": b64("pw")}}), Clock()
    cache = SecretCache(api.read, refresh_seconds=60, clock=clock)
    assert cache.to_fetch("ns", ["login"]) == ["login"]
    cache.fetch("ns", ["login"])
    assert cache.to_fetch("ns", ["login"]) == [] and cache.data("ns", ["login"]) == {"login": {"password": b64("pw")}}
    clock.now += 59.9
    assert cache.to_fetch("ns", ["login"]) == []
    clock.now += 0.1
    # Due: the first poll reads it again, the others use the kept one meanwhile.
    assert cache.to_fetch("ns", ["login"]) == ["login"]
    assert cache.to_fetch("ns", ["login"]) == [] and "login" in cache.data("ns", ["login"])
    api.secrets[("ns", "login")] = {"password": b64("rotated")}
    cache.fetch("ns", ["login"])
    assert cache.data("ns", ["login"]) == {"login": {"password": b64("rotated")}} and len(api.gets) == 2
    assert cache.to_fetch("other", ["login"]) == ["login"]  # a namespace's Secrets are its own


def test_a_missing_secret_is_asked_for_on_every_poll_and_a_deleted_one_dropped() -> None:
    api, clock = Secrets({}), Clock()
    cache = SecretCache(api.read, refresh_seconds=60, clock=clock)
    for _ in range(3):
        assert cache.to_fetch("ns", ["late"]) == ["late"]
        cache.fetch("ns", ["late"])
        assert cache.data("ns", ["late"]) == {}
    api.secrets[("ns", "late")] = {"password": b64("pw")}
    cache.fetch("ns", cache.to_fetch("ns", ["late"]))
    assert "late" in cache.data("ns", ["late"])
    del api.secrets[("ns", "late")]
    clock.now += 60
    cache.fetch("ns", cache.to_fetch("ns", ["late"]))
    assert cache.data("ns", ["late"]) == {} and len(cache) == 0


def test_a_forgotten_secret_is_read_on_the_next_poll_and_a_failed_read_lets_the_next_poll_try() -> None:
    api = Secrets({("ns", "login"): {"password": b64("pw")}})
    cache = SecretCache(api.read, refresh_seconds=60, clock=Clock())
    cache.fetch("ns", ["login"])
    cache.forget("ns", ["login", "never-kept"])
    assert cache.to_fetch("ns", ["login"]) == ["login"]

    def refused(namespace: str, name: str) -> Mapping[str, str] | None:
        raise RuntimeError("403")

    clock = Clock()
    failing = SecretCache(refused, refresh_seconds=60, clock=clock)
    failing._kept[("ns", "login")] = (clock.now - 60, {"password": b64("pw")})
    assert failing.to_fetch("ns", ["login"]) == ["login"]
    with pytest.raises(RuntimeError):
        failing.fetch("ns", ["login"])
    assert failing.to_fetch("ns", ["login"]) == ["login"]  # not left marked as being read


def sasl_spec(secret: str) -> models.KafkaConsumerGroupSpec:
    return models.KafkaConsumerGroupSpec.from_k8s({
        "kafka": {"bootstrapServers": "kafka:9093",
                  "security": {"protocol": "SASL_PLAINTEXT",
                               "sasl": {"mechanism": "PLAIN",
                                        "usernameSecretRef": {"name": secret, "key": "username"},
                                        "passwordSecretRef": {"name": secret, "key": "password"}}}},
        "groupId": "g", "topics": ["t"], "scaleTargetRef": {"name": "w"}})


def test_kafka_settings_take_kept_credentials_and_name_a_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    api = Secrets({("ns", "login"): {"username": b64("user"), "password": b64("pw"), "ca.p12": "not text"}})
    cache = SecretCache(api.read, refresh_seconds=60, clock=Clock())
    for _ in range(3):
        settings = asyncio.run(reconcile.kafka_settings(sasl_spec("login"), "ns", cache))
        assert settings["sasl.username"] == "user" and settings["sasl.password"] == "pw"
    assert api.gets == [("ns", "login")]
    with pytest.raises(kafka_lag.CredentialsUnavailable, match="absent/"):
        asyncio.run(reconcile.kafka_settings(sasl_spec("absent"), "ns", cache))
    monkeypatch.setattr(kube_io, "read_secret_data", api.read)
    settings = asyncio.run(reconcile.kafka_settings(sasl_spec("login"), "ns"))  # no cache: read now
    assert settings["sasl.password"] == "pw" and api.gets[-1] == ("ns", "login")

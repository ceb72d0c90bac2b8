"""What the workers must be told, and whether they were told it: the CR as their one source of truth.

Pure: the env the operator injects into every container of a templated Deployment, and the
comparison of an existing Deployment's worker settings with the KafkaConsumerGroup (the
`WorkerConfigMismatch` condition). kube_io applies the env and reads the containers.

Injected (worker names from `lagpilot_contract.worker_env`):
* the pool-size contract (`LAGPILOT_POOL_CONFIGMAP`, `LAGPILOT_NAMESPACE`);
* `LAGPILOT_BOOTSTRAP_SERVERS`, `LAGPILOT_GROUP_ID`, `LAGPILOT_TOPICS`;
* `LAGPILOT_SHARE_GROUP`: `true` for `spec.groupType: share`, else `false` (always set: a strategic merge
  keeps env items the patch leaves out, so a `true` left from a share group would outlive a switch back);
* `LAGPILOT_KAFKA_AUTO_OFFSET_RESET` = `policy.lagThreshold.offsetResetPolicy`, so a never-committed
  partition is counted as lag exactly when the worker will consume it;
* security: protocol and SASL mechanism as values; username, password and PEMs as
  `valueFrom.secretKeyRef` to the very Secret keys the CR names (a secret value is never copied);
* dead letters: `LAGPILOT_DEAD_LETTER` (true only with an enabled `spec.deadLetter`), and with it
  `LAGPILOT_DLQ_TOPIC` and `LAGPILOT_RETRY_DELAYS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lagpilot_contract import naming
from lagpilot_contract import pool as pool_contract
from lagpilot_contract import worker_env as env_contract
from lagpilot_operator.kube import models

ConditionStatus = Literal["True", "False", "Unknown"]


def _value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret(name: str, ref: models.SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def secret_settings(connection: models.KafkaConnection) -> dict[str, models.SecretKeyRef]:
    """librdkafka settings whose values live in Secrets, by the Secret key the CR names."""
    security = connection.security
    found: dict[str, models.SecretKeyRef | None] = {}
    if security is not None and security.sasl is not None:
        found["sasl.username"] = security.sasl.username_secret_ref
        found["sasl.password"] = security.sasl.password_secret_ref
    if security is not None and security.tls is not None:
        found["ssl.ca.pem"] = security.tls.ca_secret_ref
        found["ssl.certificate.pem"] = security.tls.cert_secret_ref
        found["ssl.key.pem"] = security.tls.key_secret_ref
    return {setting: ref for setting, ref in found.items() if ref is not None}


def injected_env(spec: models.KafkaConsumerGroupSpec, kcg_name: str) -> list[dict[str, Any]]:
    """The env every worker container of a templated Deployment gets, in a fixed order (no churn)."""
    kafka = env_contract.kafka_setting_env
    env = [
        _value(pool_contract.ENV_POOL_CONFIGMAP, pool_contract.pool_configmap_name(kcg_name)),
        {"name": pool_contract.ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        _value(env_contract.ENV_BOOTSTRAP_SERVERS, spec.kafka.bootstrap_servers),
        _value(env_contract.ENV_GROUP_ID, spec.group_id),
        _value(env_contract.ENV_TOPICS, ",".join(spec.topics)),
        _value(env_contract.ENV_SHARE_GROUP, "true" if spec.group_type == "share" else "false"),
        _value(kafka("auto.offset.reset"), spec.policy.lag_threshold.offset_reset_policy),
    ]
    security = spec.kafka.security
    if security is not None:
        env.append(_value(kafka("security.protocol"), security.protocol))
        if security.sasl is not None:
            env.append(_value(kafka("sasl.mechanism"), security.sasl.mechanism))
    env += [_secret(kafka(setting), ref) for setting, ref in secret_settings(spec.kafka).items()]
    dead_letter = spec.dead_letter
    enabled = dead_letter is not None and dead_letter.enabled
    env.append(_value(env_contract.ENV_DEAD_LETTER, "true" if enabled else "false"))
    if dead_letter is not None and enabled:
        env.append(_value(env_contract.ENV_DLQ_TOPIC, naming.dead_letter_topic(spec.group_id, dead_letter.topic)))
        env.append(_value(env_contract.ENV_RETRY_DELAYS,
                          ",".join(str(tier.delay_seconds) for tier in dead_letter.retry_tiers)))
    return env


def with_injected_env(container_env: Sequence[Mapping[str, Any]], injected: Sequence[Mapping[str, Any]],
                      ) -> list[dict[str, Any]]:
    """A container's own env without the names the operator sets, then the operator's (the CR wins)."""
    owned = {e["name"] for e in injected}
    return [dict(e) for e in container_env if e.get("name") not in owned] + [dict(e) for e in injected]


# --- what an existing Deployment's workers say --------------------------------------------------------------


@dataclass(frozen=True)
class DeclaredWorkerConfig:
    """The group, topics and brokers one container declares as literal values (None: not readable)."""

    container: str
    bootstrap_servers: str | None = None
    group_id: str | None = None
    topics: tuple[str, ...] | None = None
    share_group: bool | None = None  # None: neither the --share-group flag nor a literal LAGPILOT_SHARE_GROUP
    commit_interval_seconds: float | None = None  # --commit-interval or LAGPILOT_COMMIT_INTERVAL_SECONDS

    @property
    def declares_anything(self) -> bool:
        return (self.bootstrap_servers, self.group_id, self.topics) != (None, None, None)


def _literal(value: Any) -> str | None:
    # $(VAR) is expanded by the kubelet from other env vars: not a value the operator can compare.
    if not isinstance(value, str) or "$(" in value:
        return None
    return value


def _flag_values(argv: Sequence[str], flag: str) -> list[str]:
    """Every value given to `flag` as `--flag value` or `--flag=value` (argparse's two spellings)."""
    values: list[str] = []
    for index, item in enumerate(argv):
        if item == flag and index + 1 < len(argv):
            values.append(argv[index + 1])
        elif item.startswith(flag + "="):
            values.append(item[len(flag) + 1:])
    return values


def declared_config(container: Mapping[str, Any]) -> DeclaredWorkerConfig:
    """Read a container spec (camelCase dict) the way the worker's CLI does: flags win over env."""
    env: dict[str, str | None] = {}
    for entry in container.get("env") or []:
        # valueFrom (ConfigMap, Secret, field) cannot be compared without reading it: unknown.
        env[str(entry.get("name"))] = _literal(entry.get("value")) if "valueFrom" not in entry else None
    argv = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]

    def setting(flag: str, *names: str) -> str | None:
        flagged = _flag_values(argv, flag)
        if flagged:
            return _literal(flagged[-1])
        for name in names:
            if name in env:
                return env[name]
        return None

    topics_flags = _flag_values(argv, env_contract.FLAG_TOPIC)
    topics_raw: list[str] | None
    if topics_flags:
        topics_raw = None if any(_literal(t) is None for t in topics_flags) else topics_flags
    else:
        value = env.get(env_contract.ENV_TOPICS)
        topics_raw = None if value is None else [value]
    share_group: bool | None = None
    if env_contract.FLAG_SHARE_GROUP in argv:
        share_group = True
    elif (share_env := env.get(env_contract.ENV_SHARE_GROUP)) is not None:
        share_group = share_env.strip().lower() in ("1", "true", "yes", "on")  # the worker CLI's _env_bool
    return DeclaredWorkerConfig(
        container=str(container.get("name", "")),
        share_group=share_group,
        bootstrap_servers=setting(env_contract.FLAG_BOOTSTRAP_SERVERS, env_contract.ENV_BOOTSTRAP_SERVERS,
                                  env_contract.ENV_BOOTSTRAP_SERVERS_FALLBACK),
        group_id=setting(env_contract.FLAG_GROUP_ID, env_contract.ENV_GROUP_ID),
        topics=None if topics_raw is None else tuple(env_contract.split_topics(topics_raw)),
        commit_interval_seconds=_seconds(setting(env_contract.FLAG_COMMIT_INTERVAL, env_contract.ENV_COMMIT_INTERVAL)),
    )


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # the worker would not start with it: nothing to go by
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else None


def declared_commit_interval(containers: Sequence[Mapping[str, Any]]) -> float | None:
    """The longest commit interval a container declares as a literal value (None: none declares one, so the
    worker's default). The longest, because the policy reads it as how far behind a group that keeps up
    can look."""
    declared = [d.commit_interval_seconds for d in map(declared_config, containers)]
    return max((s for s in declared if s is not None), default=None)


def _brokers(value: str) -> frozenset[str]:
    return frozenset(b.strip() for b in value.split(",") if b.strip())


def mismatches(spec: models.KafkaConsumerGroupSpec, declared: DeclaredWorkerConfig) -> list[str]:
    """`field: worker says X, spec says Y` for each of group id, topics, brokers and group type that disagree."""
    found: list[str] = []
    if declared.group_id is not None and declared.group_id != spec.group_id:
        found.append(f"groupId (container {declared.container} has {declared.group_id!r}, "
                     f"spec.groupId is {spec.group_id!r})")
    if declared.topics is not None and set(declared.topics) != set(spec.topics):
        found.append(f"topics (container {declared.container} has {','.join(declared.topics)!r}, "
                     f"spec.topics is {','.join(spec.topics)!r})")
    if declared.share_group is not None and declared.share_group != (spec.group_type == "share"):
        kind = "a share-group member" if declared.share_group else "a consumer-group member"
        found.append(f"groupType (container {declared.container} runs as {kind}, spec.groupType is "
                     f"{spec.group_type!r})")
    if (declared.bootstrap_servers is not None
            and _brokers(declared.bootstrap_servers) != _brokers(spec.kafka.bootstrap_servers)):
        found.append(f"bootstrapServers (container {declared.container} has {declared.bootstrap_servers!r}, "
                     f"spec.kafka.bootstrapServers is {spec.kafka.bootstrap_servers!r})")
    return found


@dataclass(frozen=True)
class MismatchCondition:
    status: ConditionStatus
    reason: str
    message: str


def mismatch_condition(spec: models.KafkaConsumerGroupSpec, deployment: str,
                       containers: Sequence[Mapping[str, Any]]) -> MismatchCondition:
    """The `WorkerConfigMismatch` condition for a Deployment's containers (True: they disagree)."""
    declared = [d for d in map(declared_config, containers) if d.declares_anything]
    if not declared:
        return MismatchCondition(
            "Unknown", "WorkerConfigNotDeclared",
            f"no container of Deployment {deployment} sets the group id, topics or bootstrap servers as a literal "
            f"value ({env_contract.ENV_GROUP_ID}, {env_contract.ENV_TOPICS}, {env_contract.ENV_BOOTSTRAP_SERVERS} "
            "or the --group, --topic, --bootstrap-servers flags); they cannot be compared with the spec")
    found = [problem for d in declared for problem in mismatches(spec, d)]
    if found:
        return MismatchCondition(
            "True", "WorkerConfigMismatch",
            f"Deployment {deployment} disagrees with the spec: {'; '.join(found)}. The workers would consume "
            "another group or topics than the operator scales on; fix the Deployment or the KafkaConsumerGroup")
    names = ", ".join(d.container for d in declared)
    return MismatchCondition("False", "WorkerConfigMatches",
                             f"containers {names} of Deployment {deployment} declare what the spec says")

"""The KafkaConsumerGroup resource (`lagpilot.io/v1alpha1`): the one source of truth for its schema.

`crds/kafkaconsumergroups.lagpilot.io.yaml` and `docs/crd-reference.md` are generated from these
models by `lagpilot_operator.kube.crdgen`; a test fails when the committed files differ.

Conventions:
* YAML/JSON names are camelCase (aliases), Python attributes snake_case; both are accepted on input.
* Spec models are strict (no "5" for 5, no 2.5 for an int: the API server rejects those too),
  frozen, and forbid unknown fields (the API server rejects those with kubectl's strict field
  validation, and there is no field where a secret could be written inline).
* Cross-field rules are declared once as `CelRule`s: the CRD gets them as `x-kubernetes-validations`
  and the model validators raise the same message, so `kubectl apply` and a Python caller report
  the same words.
* Nested objects with defaults are optional; the CRD carries the same defaults, so the API server
  stores exactly what pydantic would fill in.

Read a resource with `KafkaConsumerGroupSpec.from_k8s(body["spec"])` and write status with
`KafkaConsumerGroupStatus(...).to_k8s()`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "lagpilot.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "KafkaConsumerGroup"
PLURAL = "kafkaconsumergroups"
SINGULAR = "kafkaconsumergroup"
SHORT_NAMES = ("kcg",)
CATEGORIES = ("lagpilot",)
CRD_NAME = f"{PLURAL}.{GROUP}"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LagSourceKind = Literal["kafka", "prometheus"]
GroupType = Literal["consumer", "share"]
PolicyMode = Literal["drainTime", "lagThreshold"]
OffsetResetPolicy = Literal["latest", "earliest"]
FallbackMode = Literal["hold", "replicas"]
DeletionPolicy = Literal["Retain", "Delete"]
ConditionStatus = Literal["True", "False", "Unknown"]
PartitionVerdict = Literal["OK", "LAGGING", "STALLED", "STOPPED", "REWOUND"]
DeadLetterRole = Literal["dlq", "retry"]
RedriveState = Literal["Pending", "Running", "Done", "Failed"]

# Condition types the operator writes (the schema accepts any CamelCase type).
READY = "Ready"
KAFKA_REACHABLE = "KafkaReachable"
TARGET_FOUND = "TargetFound"
SCALING = "Scaling"
LAG_METRIC_AVAILABLE = "LagMetricAvailable"
PARTITIONS_STUCK = "PartitionsStuck"
DEAD_LETTER_READY = "DeadLetterReady"
WORKER_CONFIG_MISMATCH = "WorkerConfigMismatch"  # True: the Deployment's workers disagree with the spec
PAUSED = "Paused"
CONDITION_TYPES = (READY, KAFKA_REACHABLE, TARGET_FOUND, SCALING, LAG_METRIC_AVAILABLE, PARTITIONS_STUCK,
                   DEAD_LETTER_READY, PAUSED, WORKER_CONFIG_MISMATCH)

# Kafka's legal topic characters; 249 is Kafka's length limit.
TOPIC_PATTERN = r"^[a-zA-Z0-9._-]+$"
TOPIC_MAX_LENGTH = 249
# Kubernetes object names (DNS subdomain) and Secret data keys.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# metav1.Condition's own patterns.
CONDITION_TYPE_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"  # noqa: E501
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule: CEL for the API server, the same `message` from the pydantic validator."""

    cel: str
    message: str
    field_path: str | None = None  # where the API server reports it, relative to the object (e.g. ".max")

    def to_schema(self) -> dict[str, str]:
        rule = {"rule": self.cel, "message": self.message}
        if self.field_path:
            rule["fieldPath"] = self.field_path
        return rule


def _add_cel_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    rules: tuple[CelRule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_schema() for rule in rules]


def _rfc3339(value: str) -> str:
    # Kubernetes accepts RFC 3339 with a zone; Python 3.11 parses that, including "Z".
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone (RFC 3339, e.g. 2026-11-21T10:00:00Z)")
    return value


Timestamp = Annotated[str, AfterValidator(_rfc3339), Field(json_schema_extra={"format": "date-time"})]


def rfc3339(moment: datetime | float) -> str:
    """Kubernetes' time format (seconds, UTC, "Z") for a datetime or epoch seconds."""
    when = moment if isinstance(moment, datetime) else datetime.fromtimestamp(moment, tz=UTC)
    if when.tzinfo is None:
        raise ValueError("naive datetime: pass an aware one (UTC)")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plain(value: Any) -> Any:
    """A copy with mappings and sequences as dicts and lists (kopf hands out views; strict models want dicts)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [plain(v) for v in value]
    return value


def _require(rule: CelRule, holds: bool) -> None:
    if not holds:
        raise ValueError(rule.message)


# Kafka refuses exactly these two names (they are directory names on the broker's disk); "..." is legal.
TOPIC_NOT_DOTS = CelRule(cel="self != '.' && self != '..'",
                         message="topic names . and .. are not allowed (Kafka rejects them)")


def _topic_not_dots(name: str) -> str:
    _require(TOPIC_NOT_DOTS, name not in (".", ".."))
    return name


# A Kafka topic name wherever the spec takes one: legal characters and length in the pattern, the
# two reserved names in a CEL rule on the string itself (so the API server names the rule).
TopicName = Annotated[str, Field(min_length=1, max_length=TOPIC_MAX_LENGTH, pattern=TOPIC_PATTERN,
                                 json_schema_extra={"x-kubernetes-validations": [TOPIC_NOT_DOTS.to_schema()]}),
                      AfterValidator(_topic_not_dots)]


class CamelModel(BaseModel):
    """camelCase on the wire, snake_case in Python; `cel_rules` become `x-kubernetes-validations`."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        json_schema_extra=_add_cel_rules,
    )
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def from_k8s(cls, data: Mapping[str, Any]) -> Self:
        """Parse an object as the API server returns it (camelCase; kopf bodies are fine)."""
        return cls.model_validate(plain(data))

    def to_k8s(self, *, only_set: bool = False) -> dict[str, Any]:
        """camelCase JSON-ready dict without None values (what goes to the API server).

        `only_set=True` leaves out fields never set (defaults included): for a merge patch of part of
        the status, where an empty default list would otherwise wipe e.g. the stored conditions.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=only_set)


class SpecModel(CamelModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class StatusModel(CamelModel):
    # Tolerant reader: an older operator must not choke on a newer one's status.
    model_config = ConfigDict(extra="ignore")


def _nested(factory: type[SpecModel], description: str) -> Any:
    """An optional nested object whose absence means "all defaults".

    The CRD default is the whole default object, not `{}`: the API server checks a default against
    the CEL rules without filling in the nested defaults first.
    """
    return Field(default_factory=factory, description=description,
                 json_schema_extra={"default": factory().to_k8s()})


# --- spec: Kafka connection ------------------------------------------------------------------------------


class SecretKeyRef(SpecModel):
    """A key of a Secret in the KafkaConsumerGroup's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
                      description="Name of the Secret (same namespace as the KafkaConsumerGroup).")
    key: str = Field(min_length=1, max_length=253, pattern=DATA_KEY_PATTERN,
                     description="Key in the Secret's data.")


class SaslConfig(SpecModel):
    """SASL authentication; username and password come from Secrets."""

    mechanism: SaslMechanism = Field(description="SASL mechanism (librdkafka `sasl.mechanism`).")
    username_secret_ref: SecretKeyRef = Field(description="Secret key holding the SASL username.")
    password_secret_ref: SecretKeyRef = Field(description="Secret key holding the SASL password.")


TLS_CLIENT_PAIR = CelRule(
    cel="has(self.certSecretRef) == has(self.keySecretRef)",
    message="kafka.security.tls: set certSecretRef and keySecretRef together (client certificate and its key)",
)


class TlsConfig(SpecModel):
    """TLS settings; every PEM value comes from a Secret."""

    cel_rules = (TLS_CLIENT_PAIR,)

    ca_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the PEM CA bundle that signed the brokers' certificates. "
                          "Absent: the system trust store.")
    cert_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the PEM client certificate (mutual TLS); needs keySecretRef.")
    key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the PEM private key of the client certificate; needs certSecretRef.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(TLS_CLIENT_PAIR, (self.cert_secret_ref is None) == (self.key_secret_ref is None))
        return self


SASL_MATCHES_PROTOCOL = CelRule(
    cel="has(self.sasl) == self.protocol.startsWith('SASL_')",
    message="kafka.security: sasl is required with protocol SASL_PLAINTEXT or SASL_SSL, "
            "and not allowed with PLAINTEXT or SSL",
)
TLS_NEEDS_SSL = CelRule(
    cel="!has(self.tls) || self.protocol in ['SSL', 'SASL_SSL']",
    message="kafka.security: tls needs protocol SSL or SASL_SSL",
)


class KafkaSecurity(SpecModel):
    """How to authenticate and encrypt. No secret value can be written inline: only Secret references."""

    cel_rules = (SASL_MATCHES_PROTOCOL, TLS_NEEDS_SSL)

    protocol: SecurityProtocol = Field(description="librdkafka `security.protocol`.")
    sasl: SaslConfig | None = Field(None, description="SASL settings; required for the SASL_* protocols.")
    tls: TlsConfig | None = Field(None, description="TLS settings for SSL and SASL_SSL.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(SASL_MATCHES_PROTOCOL, (self.sasl is not None) == self.protocol.startswith("SASL_"))
        _require(TLS_NEEDS_SSL, self.tls is None or self.protocol in ("SSL", "SASL_SSL"))
        return self


class KafkaConnection(SpecModel):
    """Where the consumer group lives."""

    bootstrap_servers: str = Field(
        min_length=1, max_length=4096, pattern=r"^[^\s,]+(,[^\s,]+)*$",
        description="Comma-separated host:port list of brokers, without spaces (e.g. `kafka-0:9092,kafka-1:9092`).")
    security: KafkaSecurity | None = Field(None, description="Authentication and encryption. Absent: PLAINTEXT.")


# --- spec: workload ----------------------------------------------------------------------------------------


class ScaleTargetRef(SpecModel):
    """An existing Deployment whose replicas the operator sets (through its scale subresource)."""

    api_version: Literal["apps/v1"] = Field("apps/v1", description="API version of the target.")
    kind: Literal["Deployment"] = Field("Deployment", description="Kind of the target.")
    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN,
                      description="Name of the Deployment, in the KafkaConsumerGroup's namespace.")


class DeploymentTemplate(SpecModel):
    """A Deployment the operator creates and owns (deleted with the KafkaConsumerGroup)."""

    metadata: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"default": {}},
        description="Labels and annotations for the Deployment (ObjectMeta; name and namespace are the operator's).")
    spec: dict[str, Any] = Field(
        description="A Deployment spec (apps/v1 DeploymentSpec). `replicas` is managed by the operator, which "
                    "also adds the pool-size environment (LAGPILOT_POOL_CONFIGMAP, LAGPILOT_NAMESPACE) to every "
                    "container.")


REPLICAS_ORDER = CelRule(cel="self.min <= self.max",
                         message="replicas.min must be less than or equal to replicas.max")


class ReplicasSpec(SpecModel):
    """Bounds on the worker Deployment's replicas."""

    cel_rules = (REPLICAS_ORDER,)

    min: int = Field(1, ge=0, le=1000, description="Fewest replicas. 0 allows scale to zero (woken by "
                                                    "policy.lagThreshold.activationLag in lagThreshold mode, "
                                                    "by any lag in drainTime mode).")
    max: int = Field(10, ge=1, le=1000, description="Most replicas. Never more than the partition count "
                                                     "unless policy.lagThreshold.allowIdleConsumers.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(REPLICAS_ORDER, self.min <= self.max)
        return self


POOL_ORDER = CelRule(cel="self.min <= self.initial && self.initial <= self.max",
                     message="pool sizes must satisfy pool.min <= pool.initial <= pool.max")


class PoolSpec(SpecModel):
    """Bounds on the in-pod pool: concurrent messages per worker pod, changed live without a rebalance."""

    cel_rules = (POOL_ORDER,)

    min: int = Field(1, ge=1, le=1024, description="Smallest pool per pod.")
    max: int = Field(64, ge=1, le=1024, description="Largest pool per pod.")
    initial: int = Field(8, ge=1, le=1024, description="Pool per pod before the first decision.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(POOL_ORDER, self.min <= self.initial <= self.max)
        return self


# --- spec: lag and policy ------------------------------------------------------------------------------------


class PrometheusLagSource(SpecModel):
    """Read per-partition lag from Prometheus instead of Kafka."""

    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://",
                     description="Base URL of the Prometheus server (e.g. `http://prometheus:9090`).")
    query: str = Field(
        min_length=1, max_length=4096,
        description="PromQL template returning one series per partition with `topic` and `partition` labels; "
                    "`{group}` is replaced by spec.groupId. E.g. `sum by (topic, partition) "
                    "(kafka_consumergroup_lag{consumergroup=\"{group}\"})`.")


PROMETHEUS_NEEDS_QUERY = CelRule(
    cel="self.source != 'prometheus' || has(self.prometheus)",
    message="lag.source is prometheus: set lag.prometheus.url and lag.prometheus.query",
)


class LagSpec(SpecModel):
    """Where lag is read and how often."""

    cel_rules = (PROMETHEUS_NEEDS_QUERY,)

    source: LagSourceKind = Field("kafka", description="`kafka`: committed and end offsets from the brokers. "
                                                        "`prometheus`: a PromQL query (lag.prometheus).")
    poll_interval_seconds: int = Field(5, ge=1, le=300, description="Seconds between two lag reads and decisions.")
    prometheus: PrometheusLagSource | None = Field(None, description="Required when source is prometheus.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(PROMETHEUS_NEEDS_QUERY, self.source != "prometheus" or self.prometheus is not None)
        return self


class LagThresholdPolicy(SpecModel):
    """KEDA's Kafka-scaler meaning, where one consumer is one pool slot."""

    lag_per_consumer: int = Field(10, ge=1, le=1_000_000_000,
                                  description="Target lag per consumer slot (KEDA `lagThreshold`).")
    activation_lag: int = Field(0, ge=0, le=1_000_000_000,
                                description="Wake from zero replicas only when the total lag is above this "
                                            "(KEDA `activationLagThreshold`).")
    allow_idle_consumers: bool = Field(False, description="Allow more consumers than partitions "
                                                          "(KEDA `allowIdleConsumers`).")
    offset_reset_policy: OffsetResetPolicy = Field(
        "earliest", description="Where a partition the group never committed starts, as the worker's "
                                "`auto.offset.reset` (same default, `earliest`; template mode injects this "
                                "value): `earliest` counts the retained log (end minus start offset) as lag, "
                                "`latest` counts 1 like KEDA.")
    exclude_persistent_lag: bool = Field(False, description="Leave out the lag of partitions whose committed "
                                                            "offset does not move (KEDA `excludePersistentLag`).")


# A Kubernetes (Go) duration with the units a latency target needs: "200ms", "1.5s", "1m30s", "2h".
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DURATION_UNITS_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
MIN_TIME_LAG_SECONDS = 0.001
MAX_TIME_LAG_SECONDS = 86400.0


def duration_seconds(value: str) -> float:
    """Seconds of a duration string in DURATION_PATTERN's form (what CEL's `duration()` reads)."""
    if re.fullmatch(DURATION_PATTERN, value) is None:
        raise ValueError(f"{value!r} is not a duration such as 200ms, 1.5s or 1m30s")
    return sum(float(number) * DURATION_UNITS_SECONDS[unit] for number, unit in _DURATION_PART.findall(value))


TIME_LAG_ONE_FORM = CelRule(
    cel="!has(self.targetTimeLag) || !has(self.targetTimeLagSeconds)",
    message="policy.drainTime: set targetTimeLag or targetTimeLagSeconds, not both")
TIME_LAG_IN_RANGE = CelRule(
    cel="!has(self.targetTimeLag) || "
        "(duration(self.targetTimeLag) >= duration('1ms') && duration(self.targetTimeLag) <= duration('24h'))",
    message="policy.drainTime.targetTimeLag must be between 1ms and 24h")


class DrainTimePolicy(SpecModel):
    """Rate-based: keep up with the produce rate plus headroom, and drain the backlog in time."""

    cel_rules = (TIME_LAG_ONE_FORM, TIME_LAG_IN_RANGE)

    target_drain_seconds: int = Field(60, ge=1, le=86400, description="Drain the current backlog within this "
                                                                      "many seconds.")
    target_time_lag: str | None = Field(None, max_length=32, pattern=DURATION_PATTERN,
                                        description="Also stay under this much time behind (time lag), as a "
                                                    "duration: `200ms`, `1.5s`, `1m30s` (1ms..24h). Absent: "
                                                    "targetTimeLagSeconds, or no time-lag target.")
    target_time_lag_seconds: int | None = Field(None, ge=1, le=86400,
                                                description="Also stay under this many whole seconds behind "
                                                            "(time lag); targetTimeLag takes fractions. Set at "
                                                            "most one of the two. Absent: no time-lag target.")
    headroom_percent: int = Field(20, ge=0, le=1000, description="Capacity kept above the produce rate, in percent.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(TIME_LAG_ONE_FORM, self.target_time_lag is None or self.target_time_lag_seconds is None)
        if self.target_time_lag is not None:
            seconds = duration_seconds(self.target_time_lag)
            _require(TIME_LAG_IN_RANGE, MIN_TIME_LAG_SECONDS - 1e-12 <= seconds <= MAX_TIME_LAG_SECONDS)
        return self

    @property
    def time_lag_target_seconds(self) -> float | None:
        """The time-lag target in seconds, from whichever of the two fields is set."""
        if self.target_time_lag is not None:
            return duration_seconds(self.target_time_lag)
        return None if self.target_time_lag_seconds is None else float(self.target_time_lag_seconds)


SCALE_UP_MOVES = CelRule(cel="self.minStep > 0 || self.maxStepPercent > 0",
                         message="policy.scaleUp: minStep and maxStepPercent cannot both be 0 "
                                 "(it could never scale up)")
SCALE_DOWN_MOVES = CelRule(cel="self.minStep > 0 || self.maxStepPercent > 0",
                           message="policy.scaleDown: minStep and maxStepPercent cannot both be 0 "
                                   "(it could never scale down)")

_STABILIZATION = "Use the most conservative recommendation of this many seconds (HPA stabilization window)."
_MAX_STEP = "Change capacity by at most this percent of the current capacity per period."
_MIN_STEP = "...or by this many consumer slots per period, whichever is larger."
_PERIOD = "Length of the period the step limits apply to, in seconds."


class ScaleUpBehavior(SpecModel):
    """How fast capacity may grow (defaults: fast)."""

    cel_rules = (SCALE_UP_MOVES,)

    stabilization_seconds: int = Field(0, ge=0, le=3600, description=_STABILIZATION)
    max_step_percent: int = Field(100, ge=0, le=1000, description=_MAX_STEP)
    min_step: int = Field(4, ge=0, le=1000, description=_MIN_STEP)
    period_seconds: int = Field(5, ge=1, le=1800, description=_PERIOD)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(SCALE_UP_MOVES, self.min_step > 0 or self.max_step_percent > 0)
        return self


class ScaleDownBehavior(SpecModel):
    """How fast capacity may shrink (defaults: slow)."""

    cel_rules = (SCALE_DOWN_MOVES,)

    stabilization_seconds: int = Field(120, ge=0, le=3600, description=_STABILIZATION)
    max_step_percent: int = Field(25, ge=0, le=1000, description=_MAX_STEP)
    min_step: int = Field(1, ge=0, le=1000, description=_MIN_STEP)
    period_seconds: int = Field(30, ge=1, le=1800, description=_PERIOD)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(SCALE_DOWN_MOVES, self.min_step > 0 or self.max_step_percent > 0)
        return self


class PolicySpec(SpecModel):
    """How the desired capacity (replicas x pool) follows the lag."""

    mode: PolicyMode = Field("drainTime", description="`drainTime`: rate-based (produce and consume rates from "
                                                      "offset deltas). `lagThreshold`: KEDA-compatible lag per "
                                                      "consumer.")
    lag_threshold: LagThresholdPolicy = _nested(LagThresholdPolicy, "Settings of the lagThreshold mode.")
    drain_time: DrainTimePolicy = _nested(DrainTimePolicy, "Settings of the drainTime mode.")
    scale_up: ScaleUpBehavior = _nested(ScaleUpBehavior, "Scale-up behaviour.")
    scale_down: ScaleDownBehavior = _nested(ScaleDownBehavior, "Scale-down behaviour.")
    cooldown_seconds: int = Field(0, ge=0, le=3600, description="Minimum seconds between two replica changes "
                                                                "(pool changes are live and not limited).")


class FallbackSpec(SpecModel):
    """What to do while lag cannot be read. Lagpilot never scales down on missing data."""

    mode: FallbackMode = Field("hold", description="`hold`: keep replicas as they are. `replicas`: after "
                                                   "failureThreshold failed reads, go to fallback.replicas.")
    replicas: int = Field(1, ge=1, le=1000, description="Replicas in `replicas` mode; within replicas.min and "
                                                        "replicas.max, never 0.")
    failure_threshold: int = Field(3, ge=1, le=1000, description="Failed lag reads in a row before the fallback "
                                                                 "applies.")


# --- spec: dead letters ---------------------------------------------------------------------------------------


class RetryTier(SpecModel):
    """One retry topic: a failed record is retried after this delay."""

    delay_seconds: int = Field(ge=1, le=604800, description="Seconds a record waits in this tier before the retry.")


RETRY_TIERS_ASCENDING = CelRule(
    cel="!has(self.retryTiers) || (self.retryTiers.map(t, t.delaySeconds).isSorted() && "
        "self.retryTiers.all(t, self.retryTiers.exists_one(u, u.delaySeconds == t.delaySeconds)))",
    message="deadLetter.retryTiers: delaySeconds must be strictly ascending (e.g. 10, 60, 300)",
)


class DeadLetterSpec(SpecModel):
    """Dead-letter and retry topics the operator creates and keeps in line with this spec."""

    cel_rules = (RETRY_TIERS_ASCENDING,)

    enabled: bool = Field(True, description="Manage the topics. false: leave them alone (they are not deleted).")
    topic: TopicName | None = Field(None,
                                    description="DLQ topic name. Absent: `<groupId>.dlq`. Retry tiers are named "
                                          "`<topic without .dlq>.retry.<n>`.")
    partitions: int | None = Field(None, ge=1, le=10000, description="Partitions of each topic. Absent: those of "
                                                                     "the first source topic. Only ever increased.")
    replication_factor: int | None = Field(None, ge=1, le=32, description="Replication factor of new topics. "
                                                                          "Absent: the broker default.")
    config: dict[str, str] = Field(default_factory=dict, json_schema_extra={"default": {}},
                                   description="Topic configs with Kafka's names and string values "
                                               "(e.g. `retention.ms: \"604800000\"`); drift is reverted.")
    retry_tiers: list[RetryTier] = Field(default_factory=list, max_length=10, json_schema_extra={"default": []},
                                         description="Retry topics in order of their (strictly ascending) delays; "
                                                     "a record that fails every tier goes to the DLQ.")
    deletion_policy: DeletionPolicy = Field("Retain", description="`Delete`: delete the topics with the "
                                                                  "KafkaConsumerGroup. `Retain`: keep them.")

    @model_validator(mode="after")
    def _rules(self) -> Self:
        delays = [tier.delay_seconds for tier in self.retry_tiers]
        _require(RETRY_TIERS_ASCENDING, all(a < b for a, b in pairwise(delays)))
        return self


class RedriveSpec(SpecModel):
    """Ask for a redrive: move the DLQ's records back to their original topics, once per requestId."""

    request_id: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                            description="A new value starts a new redrive of the records in the DLQ at that "
                                        "moment; progress is in status.redrive.")
    max_messages: int | None = Field(None, ge=1, description="Redrive at most this many records. "
                                                             "Absent: all of them.")


# --- spec -----------------------------------------------------------------------------------------------------

EXACTLY_ONE_TARGET = CelRule(
    cel="has(self.scaleTargetRef) != has(self.template)",
    message="set exactly one of spec.scaleTargetRef (an existing Deployment) "
            "or spec.template (a Deployment the operator creates)",
)
FALLBACK_WITHIN_BOUNDS = CelRule(
    cel="self.fallback.mode != 'replicas' || "
        "(self.fallback.replicas >= self.replicas.min && self.fallback.replicas <= self.replicas.max)",
    message="fallback.replicas must lie within replicas.min and replicas.max when fallback.mode is replicas",
)
REDRIVE_NEEDS_DEAD_LETTER = CelRule(
    cel="!has(self.redrive) || has(self.deadLetter)",
    message="spec.redrive needs spec.deadLetter: without it no worker writes to a DLQ, so there is nothing to "
            "redrive",
)
DEAD_LETTER_NOT_A_SOURCE = CelRule(
    cel="!has(self.deadLetter) || !has(self.deadLetter.topic) || !(self.deadLetter.topic in self.topics)",
    message="deadLetter.topic must not be one of spec.topics (failed records would be consumed again)",
)

SHARE_GROUP_NO_RETRY_TIERS = CelRule(
    cel="!has(self.groupType) || self.groupType != 'share' || !has(self.deadLetter) "
        "|| !has(self.deadLetter.retryTiers) || size(self.deadLetter.retryTiers) == 0",
    message="a share group retries by redelivery (the broker's delivery count), not with deadLetter.retryTiers; "
            "the share-group worker refuses retry tiers",
)


class KafkaConsumerGroupSpec(SpecModel):
    """Desired state of a KafkaConsumerGroup: which group to watch and how to scale its workers."""

    cel_rules = (EXACTLY_ONE_TARGET, FALLBACK_WITHIN_BOUNDS, DEAD_LETTER_NOT_A_SOURCE, REDRIVE_NEEDS_DEAD_LETTER,
                 SHARE_GROUP_NO_RETRY_TIERS)

    kafka: KafkaConnection = Field(description="The Kafka cluster.")
    group_id: str = Field(min_length=1, max_length=255, description="The consumer group's id.")
    group_type: GroupType = Field(
        "consumer", description="`consumer`: a consumer group, whose consumers each own some partitions (replicas "
                                "are capped at the partition count). `share`: a share group (KIP-932, Kafka 4.2+), "
                                "whose consumers share partitions record by record: replicas are not capped at the "
                                "partition count, templated workers run with LAGPILOT_SHARE_GROUP=true, and the lag "
                                "is the broker's count of records not yet acknowledged.")
    topics: list[TopicName] = Field(
        min_length=1, max_length=100, json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Topics the group consumes (1 to 100, unique).")
    scale_target_ref: ScaleTargetRef | None = Field(None, description="An existing Deployment to scale. Exactly "
                                                                       "one of scaleTargetRef and template.")
    template: DeploymentTemplate | None = Field(None, description="A Deployment the operator creates and owns. "
                                                                   "Exactly one of scaleTargetRef and template.")
    replicas: ReplicasSpec = _nested(ReplicasSpec, "Replica bounds.")
    pool: PoolSpec = _nested(PoolSpec, "In-pod pool bounds.")
    lag: LagSpec = _nested(LagSpec, "Lag source and polling.")
    policy: PolicySpec = _nested(PolicySpec, "Scaling policy.")
    paused: bool = Field(False, description="Hold replicas and pool exactly as they are; lag is still reported. "
                                             "The annotations `lagpilot.io/paused: \"true\"` and "
                                             "`lagpilot.io/paused-replicas: \"N\"` (pins N replicas) pause too; "
                                             "condition Paused says which.")
    fallback: FallbackSpec = _nested(FallbackSpec, "Behaviour while lag cannot be read.")
    dead_letter: DeadLetterSpec | None = Field(
        None, description="Dead-letter and retry topics. Absent: no dead-lettering — no topics are managed and "
                          "workers log and skip a record that failed for good (the worker's own default; in "
                          "template mode the operator also sets LAGPILOT_DEAD_LETTER=false).")
    redrive: RedriveSpec | None = Field(None, description="A redrive request (DLQ back to the source topics); "
                                                          "needs deadLetter.")

    @field_validator("topics")
    @classmethod
    def _unique_topics(cls, topics: list[str]) -> list[str]:
        seen: set[str] = set()
        for topic in topics:
            if topic in seen:
                # The API server's words for a duplicate in an `x-kubernetes-list-type: set`.
                raise ValueError(f'topics: Duplicate value: "{topic}"')
            seen.add(topic)
        return topics

    @model_validator(mode="after")
    def _rules(self) -> Self:
        _require(EXACTLY_ONE_TARGET, (self.scale_target_ref is None) != (self.template is None))
        _require(FALLBACK_WITHIN_BOUNDS, self.fallback.mode != "replicas"
                   or self.replicas.min <= self.fallback.replicas <= self.replicas.max)
        _require(DEAD_LETTER_NOT_A_SOURCE, self.dead_letter is None or self.dead_letter.topic is None
                   or self.dead_letter.topic not in self.topics)
        _require(REDRIVE_NEEDS_DEAD_LETTER, self.redrive is None or self.dead_letter is not None)
        _require(SHARE_GROUP_NO_RETRY_TIERS, self.group_type != "share" or self.dead_letter is None
                 or not self.dead_letter.retry_tiers)
        return self


# --- status ---------------------------------------------------------------------------------------------------


class Condition(StatusModel):
    """One aspect of the resource's state (Kubernetes condition conventions)."""

    model_config = ConfigDict(frozen=True)

    type: str = Field(max_length=316, pattern=CONDITION_TYPE_PATTERN,
                      description="CamelCase condition type: Ready, KafkaReachable, TargetFound, Scaling, "
                                  "LagMetricAvailable, PartitionsStuck, DeadLetterReady, Paused, "
                                  "WorkerConfigMismatch.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN,
                        description="One-word CamelCase cause of the last transition.")
    message: str = Field("", max_length=32768, description="What happened and what a person can do about it.")
    last_transition_time: Timestamp = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the condition was "
                                                                    "computed for.")


class PartitionLagStatus(StatusModel):
    """Lag of one partition (status lists the top 10 by lag)."""

    topic: str = Field(description="Topic.")
    partition: int = Field(ge=0, description="Partition.")
    lag: int = Field(ge=0, description="Offset lag (end offset minus committed offset).")
    time_lag_seconds: float | None = Field(None, ge=0, description="Estimated seconds behind, if known.")
    verdict: PartitionVerdict | None = Field(None, description="OK, LAGGING, STALLED, STOPPED or REWOUND.")


class DeadLetterTopicStatus(StatusModel):
    """One managed DLQ or retry topic."""

    name: str = Field(description="Topic name.")
    role: DeadLetterRole = Field(description="`dlq` or `retry`.")
    exists: bool = Field(description="Whether the topic exists in Kafka.")
    partitions: int = Field(0, ge=0, description="Partition count.")
    messages: int = Field(0, ge=0, description="Records held (end minus start offsets).")
    oldest_time: Timestamp | None = Field(None, description="Timestamp of the oldest record held.")
    newest_time: Timestamp | None = Field(None, description="Timestamp of the newest record held.")


class DeadLetterStatus(StatusModel):
    """State of the dead-letter and retry topics."""

    topics: list[DeadLetterTopicStatus] = Field(default_factory=list, description="DLQ first, then retry tiers.")


class RedriveSnapshotEntry(StatusModel):
    """DLQ offsets [startOffset, endOffset) of one partition that a redrive moves."""

    partition: int = Field(ge=0, description="DLQ partition.")
    start_offset: int = Field(ge=0, description="First offset to move.")
    end_offset: int = Field(ge=0, description="Offset after the last one to move.")


class RedriveStatus(StatusModel):
    """Progress of the last redrive request."""

    request_id: str = Field(description="spec.redrive.requestId this progress belongs to.")
    state: RedriveState = Field(description="Pending, Running, Done or Failed.")
    total: int = Field(0, ge=0, description="Records to move.")
    done: int = Field(0, ge=0, description="Records moved so far.")
    skipped: int = Field(0, ge=0, description="Records without origin headers, left in the DLQ.")
    message: str = Field("", description="Human-readable progress or cause of failure.")
    snapshot: list[RedriveSnapshotEntry] = Field(default_factory=list,
                                                 description="The DLQ offsets taken when the request arrived.")


class KafkaConsumerGroupStatus(StatusModel):
    """Observed state, written only by the operator."""

    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last acted on.")
    total_lag: int | None = Field(None, ge=0, description="Offset lag used by the last decision.")
    partitions: int | None = Field(None, ge=0, description="Partitions of the source topics.")
    top_partitions: list[PartitionLagStatus] = Field(default_factory=list,
                                                     description="The partitions with the most lag (top 10).")
    produce_rate_per_second: float | None = Field(
        None, ge=0, description="Messages produced per second to the group's partitions (log-end offset deltas "
                                "over the last 15 s of polls). Kafka lag source only.")
    consume_rate_per_second: float | None = Field(
        None, ge=0, description="Messages the group consumed per second (committed offset deltas over the last "
                                "30 s of polls). Kafka lag source only.")
    max_time_lag_seconds: float | None = Field(None, ge=0, description="Largest estimated time lag, in seconds.")
    mean_time_lag_seconds: float | None = Field(None, ge=0, description="Mean estimated time lag, in seconds.")
    desired_replicas: int | None = Field(None, ge=0, description="Replicas the last decision asked for.")
    current_replicas: int | None = Field(None, ge=0, description="Replicas the target Deployment has.")
    pool_size: int | None = Field(None, ge=0, description="Pool size per pod published to the workers.")
    last_scale_time: Timestamp | None = Field(None, description="When replicas or pool last changed.")
    last_decision: str | None = Field(None, description="The reason of the last decision, in words.")
    consecutive_lag_failures: int | None = Field(None, ge=0, description="Lag reads failed in a row.")
    dead_letter: DeadLetterStatus | None = Field(None, description="Dead-letter and retry topics.")
    redrive: RedriveStatus | None = Field(None, description="Progress of the last redrive.")
    policy_memory: dict[str, Any] | None = Field(
        None, description="The policy's memory (stabilization windows, measured rates), so an operator restart "
                          "resumes without a spurious scale. Internal; its shape may change.")
    conditions: list[Condition] = Field(
        default_factory=list, json_schema_extra={"x-kubernetes-list-type": "map",
                                                 "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, KafkaReachable, TargetFound, Scaling, LagMetricAvailable, PartitionsStuck, "
                    "DeadLetterReady, Paused, WorkerConfigMismatch.")


# --- the resource ---------------------------------------------------------------------------------------------


class KafkaConsumerGroup(CamelModel):
    """A whole KafkaConsumerGroup object, e.g. from a YAML file."""

    model_config = ConfigDict(extra="forbid")

    api_version: Literal["lagpilot.io/v1alpha1"] = Field("lagpilot.io/v1alpha1", description="lagpilot.io/v1alpha1")
    kind: Literal["KafkaConsumerGroup"] = Field("KafkaConsumerGroup", description="KafkaConsumerGroup")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: KafkaConsumerGroupSpec = Field(description="Desired state.")
    status: KafkaConsumerGroupStatus | None = Field(None, description="Observed state.")


SPEC_MODELS: tuple[type[SpecModel], ...] = (
    SecretKeyRef, SaslConfig, TlsConfig, KafkaSecurity, KafkaConnection, ScaleTargetRef, DeploymentTemplate,
    ReplicasSpec, PoolSpec, PrometheusLagSource, LagSpec, LagThresholdPolicy, DrainTimePolicy, ScaleUpBehavior,
    ScaleDownBehavior, PolicySpec, FallbackSpec, RetryTier, DeadLetterSpec, RedriveSpec, KafkaConsumerGroupSpec,
)


def all_cel_rules() -> list[CelRule]:
    """Every CEL rule of the spec (each has an invalid example under examples/invalid/)."""
    return [TOPIC_NOT_DOTS, *(rule for model in SPEC_MODELS for rule in model.cel_rules)]


def condition_reason_ok(reason: str) -> bool:
    """Whether `reason` is a valid condition reason (one CamelCase word)."""
    return _CONDITION_REASON.fullmatch(reason) is not None


# Compiled once: a condition is set several times per poll, and re's cache lookup by pattern string was 2 % of
# the operator's CPU at 1,000 resources (py-spy, the fleet bench's bursts).
_CONDITION_REASON = re.compile(CONDITION_REASON_PATTERN)

"""Topic diffing: what to do to make Kafka match the desired dead-letter and retry topics (pure).

The sync is one way, like Strimzi's topic operator: the spec wins. A config key set in the spec is
pinned as a topic-level (dynamic) config with the spec's value; a topic-level config that the spec
does not name is removed, so the topic falls back to the broker default. Partitions only grow;
a decrease or a replication-factor change is refused and reported, never attempted, while the
rest of the plan (configs, other topics) still runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

BROKER_DEFAULT = -1
"""`num_partitions` / `replication_factor` value that asks the broker for its default (KIP-464)."""

REASON_NOT_SUPPORTED = "NotSupported"


class ConfigSource(StrEnum):
    """Where a topic's effective config value comes from, reduced to what the sync needs."""

    TOPIC = "topic"  # a dynamic topic-level override: ours to set or remove
    INHERITED = "inherited"  # broker default, static or dynamic broker config: not ours


@dataclass(frozen=True)
class ObservedConfig:
    value: str | None
    source: ConfigSource


@dataclass(frozen=True)
class DesiredTopic:
    name: str
    partitions: int | None = None
    """None: broker default on create, and the partition count is never managed."""
    replication_factor: int | None = None
    """None: broker default on create, and the replication factor is never checked."""
    configs: Mapping[str, str] = field(default_factory=dict)
    partitions_exact: bool = True
    """False when the count was derived (e.g. from the source topic) rather than asked for: a topic
    that already has more partitions is then fine, not a refused decrease."""


@dataclass(frozen=True)
class ObservedTopic:
    name: str
    exists: bool
    partitions: int = 0
    replication_factor: int = 0
    configs: Mapping[str, ObservedConfig] = field(default_factory=dict)

    def topic_overrides(self) -> dict[str, str | None]:
        return {k: c.value for k, c in self.configs.items() if c.source is ConfigSource.TOPIC}


@dataclass(frozen=True)
class CreateTopic:
    topic: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str]

    def describe(self) -> str:
        parts = "broker-default" if self.partitions == BROKER_DEFAULT else str(self.partitions)
        return f"created topic {self.topic} with {parts} partitions"


@dataclass(frozen=True)
class AlterTopicConfigs:
    topic: str
    set_configs: Mapping[str, str]
    delete_configs: tuple[str, ...]

    def describe(self) -> str:
        pieces = [f"{k}={v}" for k, v in sorted(self.set_configs.items())]
        pieces += [f"removed {k}" for k in self.delete_configs]
        return f"synced configs of topic {self.topic} to the spec: {', '.join(pieces)}"


def configs_applied(action: AlterTopicConfigs, observed: Mapping[str, ObservedConfig]) -> bool:
    """Whether a broker's topic configs show the change: every set key at its value, no deleted key left."""
    return (all(key in observed and observed[key].source == ConfigSource.TOPIC and observed[key].value == value
                for key, value in action.set_configs.items())
            and not any(key in observed and observed[key].source == ConfigSource.TOPIC
                        for key in action.delete_configs))


@dataclass(frozen=True)
class IncreasePartitions:
    topic: str
    from_count: int
    to_count: int

    def describe(self) -> str:
        return f"increased partitions of topic {self.topic} from {self.from_count} to {self.to_count}"


TopicAction = CreateTopic | AlterTopicConfigs | IncreasePartitions


@dataclass(frozen=True)
class Refusal:
    """A requested change Kafka cannot make safely; material for a condition, never an action."""

    topic: str
    reason: str
    message: str


@dataclass(frozen=True)
class TopicPlan:
    topic: str
    actions: tuple[TopicAction, ...] = ()
    refusals: tuple[Refusal, ...] = ()

    @property
    def converged(self) -> bool:
        return not self.actions and not self.refusals


def normalize_config_value(value: str) -> str:
    """Kafka reports list configs as `a,b`; a spec may say `a, b`. Compare them as equal."""
    if "," not in value:
        return value.strip()
    return ",".join(part.strip() for part in value.split(","))


def plan_topic(desired: DesiredTopic, observed: ObservedTopic) -> TopicPlan:
    if desired.name != observed.name:
        raise ValueError(f"desired {desired.name!r} compared with observed {observed.name!r}")
    if not observed.exists:
        create = CreateTopic(
            topic=desired.name,
            partitions=desired.partitions if desired.partitions is not None else BROKER_DEFAULT,
            replication_factor=(
                desired.replication_factor if desired.replication_factor is not None else BROKER_DEFAULT
            ),
            configs=dict(desired.configs),
        )
        return TopicPlan(desired.name, actions=(create,))

    actions: list[TopicAction] = []
    refusals: list[Refusal] = []

    overrides = observed.topic_overrides()
    to_set = {
        key: value
        for key, value in sorted(desired.configs.items())
        if overrides.get(key) is None or normalize_config_value(overrides[key] or "") != normalize_config_value(value)
    }
    to_delete = tuple(sorted(key for key in overrides if key not in desired.configs))
    if to_set or to_delete:
        actions.append(AlterTopicConfigs(desired.name, to_set, to_delete))

    if desired.partitions is not None:
        if desired.partitions > observed.partitions:
            actions.append(IncreasePartitions(desired.name, observed.partitions, desired.partitions))
        elif desired.partitions < observed.partitions and desired.partitions_exact:
            refusals.append(
                Refusal(
                    desired.name,
                    REASON_NOT_SUPPORTED,
                    f"topic {desired.name} has {observed.partitions} partitions, spec asks for "
                    f"{desired.partitions}: Kafka cannot decrease partitions (kept {observed.partitions})",
                )
            )

    wants_rf = desired.replication_factor
    if wants_rf is not None and wants_rf not in (BROKER_DEFAULT, observed.replication_factor):
        refusals.append(
            Refusal(
                desired.name,
                REASON_NOT_SUPPORTED,
                f"topic {desired.name} has replication factor {observed.replication_factor}, spec asks "
                f"for {wants_rf}: changing it needs a partition reassignment, which Lagpilot does not do",
            )
        )

    return TopicPlan(desired.name, tuple(actions), tuple(refusals))


def plan_topics(desired: Iterable[DesiredTopic], observed: Mapping[str, ObservedTopic]) -> list[TopicPlan]:
    """One plan per desired topic; a topic missing from `observed` is treated as absent."""
    return [plan_topic(d, observed.get(d.name, ObservedTopic(d.name, exists=False))) for d in desired]

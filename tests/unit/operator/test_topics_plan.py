"""Topic diffing: Strimzi-like one-way sync, partitions only grow, refusals as condition material."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lagpilot_operator.kafka.topics_plan import (
    BROKER_DEFAULT,
    AlterTopicConfigs,
    ConfigSource,
    CreateTopic,
    DesiredTopic,
    IncreasePartitions,
    ObservedConfig,
    ObservedTopic,
    Refusal,
    TopicAction,
    configs_applied,
    normalize_config_value,
    plan_topic,
    plan_topics,
)

TOPIC = "orders-workers.dlq"


def topic_cfg(value: str) -> ObservedConfig:
    return ObservedConfig(value, ConfigSource.TOPIC)


def default_cfg(value: str) -> ObservedConfig:
    return ObservedConfig(value, ConfigSource.INHERITED)


def existing(partitions: int = 3, rf: int = 1, **configs: ObservedConfig) -> ObservedTopic:
    return ObservedTopic(TOPIC, exists=True, partitions=partitions, replication_factor=rf,
                         configs={k.replace("_", "."): v for k, v in configs.items()})


CASES: list[tuple[str, DesiredTopic, ObservedTopic, tuple[TopicAction, ...], tuple[str, ...]]] = [
    (
        "missing topic is created with spec partitions, rf and configs",
        DesiredTopic(TOPIC, 6, 1, {"retention.ms": "1000"}),
        ObservedTopic(TOPIC, exists=False),
        (CreateTopic(TOPIC, 6, 1, {"retention.ms": "1000"}),),
        (),
    ),
    (
        "missing topic without partitions/rf asks the broker defaults",
        DesiredTopic(TOPIC),
        ObservedTopic(TOPIC, exists=False),
        (CreateTopic(TOPIC, BROKER_DEFAULT, BROKER_DEFAULT, {}),),
        (),
    ),
    (
        "converged topic needs nothing",
        DesiredTopic(TOPIC, 3, 1, {"retention.ms": "1000"}),
        existing(retention_ms=topic_cfg("1000"), segment_bytes=default_cfg("1073741824")),
        (),
        (),
    ),
    (
        "hand-changed spec key is set back",
        DesiredTopic(TOPIC, 3, 1, {"retention.ms": "1000"}),
        existing(retention_ms=topic_cfg("5")),
        (AlterTopicConfigs(TOPIC, {"retention.ms": "1000"}, ()),),
        (),
    ),
    (
        "spec key equal to the broker default is still pinned at topic level",
        DesiredTopic(TOPIC, 3, 1, {"cleanup.policy": "delete"}),
        existing(cleanup_policy=default_cfg("delete")),
        (AlterTopicConfigs(TOPIC, {"cleanup.policy": "delete"}, ()),),
        (),
    ),
    (
        "topic-level config not in spec is removed; inherited ones are left alone",
        DesiredTopic(TOPIC, 3, 1, {}),
        existing(segment_bytes=topic_cfg("1000000"), retention_ms=default_cfg("604800000")),
        (AlterTopicConfigs(TOPIC, {}, ("segment.bytes",)),),
        (),
    ),
    (
        "list values compare without spaces",
        DesiredTopic(TOPIC, 3, 1, {"cleanup.policy": "compact, delete"}),
        existing(cleanup_policy=topic_cfg("compact,delete")),
        (),
        (),
    ),
    (
        "partitions grow",
        DesiredTopic(TOPIC, 8, 1),
        existing(partitions=3),
        (IncreasePartitions(TOPIC, 3, 8),),
        (),
    ),
    (
        "partition decrease is refused, config drift still fixed",
        DesiredTopic(TOPIC, 2, 1, {"retention.ms": "1000"}),
        existing(partitions=3),
        (AlterTopicConfigs(TOPIC, {"retention.ms": "1000"}, ()),),
        ("NotSupported",),
    ),
    (
        "derived partition count below the existing one is not a decrease request",
        DesiredTopic(TOPIC, 2, None, partitions_exact=False),
        existing(partitions=3),
        (),
        (),
    ),
    (
        "derived partition count above the existing one still grows the topic",
        DesiredTopic(TOPIC, 5, None, partitions_exact=False),
        existing(partitions=3),
        (IncreasePartitions(TOPIC, 3, 5),),
        (),
    ),
    (
        "replication factor change is refused",
        DesiredTopic(TOPIC, 3, 3),
        existing(rf=1),
        (),
        ("NotSupported",),
    ),
    (
        "no partitions or rf in spec: neither is managed",
        DesiredTopic(TOPIC, None, None),
        existing(partitions=12, rf=3),
        (),
        (),
    ),
    (
        "decrease and rf change give two refusals",
        DesiredTopic(TOPIC, 1, 2),
        existing(partitions=3, rf=1),
        (),
        ("NotSupported", "NotSupported"),
    ),
]


@pytest.mark.parametrize(("desired", "observed", "actions", "refusal_reasons"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_table(desired: DesiredTopic, observed: ObservedTopic, actions: tuple[TopicAction, ...],
                    refusal_reasons: tuple[str, ...]) -> None:
    plan = plan_topic(desired, observed)
    assert plan.actions == actions
    assert tuple(r.reason for r in plan.refusals) == refusal_reasons
    assert plan.converged == (not actions and not refusal_reasons)


def test_refusal_message_names_topic_and_counts() -> None:
    plan = plan_topic(DesiredTopic(TOPIC, 2), existing(partitions=3))
    (refusal,) = plan.refusals
    assert refusal == Refusal(TOPIC, "NotSupported", refusal.message)
    assert TOPIC in refusal.message and "3" in refusal.message and "2" in refusal.message


def test_plan_topics_treats_unobserved_as_missing() -> None:
    plans = plan_topics([DesiredTopic("a", 1), DesiredTopic("b", 1)],
                        {"a": ObservedTopic("a", True, 1, 1)})
    assert [p.converged for p in plans] == [True, False]
    assert plans[1].actions == (CreateTopic("b", 1, BROKER_DEFAULT, {}),)


def test_mismatched_names_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="compared with"):
        plan_topic(DesiredTopic("a"), ObservedTopic("b", exists=False))


@pytest.mark.parametrize(("raw", "normal"), [("a, b", "a,b"), (" x ", "x"), ("compact,delete", "compact,delete")])
def test_normalize_config_value(raw: str, normal: str) -> None:
    assert normalize_config_value(raw) == normal


# --- properties: applying the plan to a simulated broker converges, and never shrinks ---------

BROKER_DEFAULTS = {"retention.ms": "604800000", "segment.bytes": "1073741824", "cleanup.policy": "delete",
                   "min.insync.replicas": "1", "max.message.bytes": "1048588"}
config_keys = st.sampled_from(sorted(BROKER_DEFAULTS))
config_values = st.sampled_from(["1", "1000", "compact", "delete", "60000"])


def simulate(observed: ObservedTopic, actions: tuple[TopicAction, ...]) -> ObservedTopic:
    """What a broker does with the actions (the model the planner relies on)."""
    state = observed
    for action in actions:
        if isinstance(action, CreateTopic):
            partitions = 1 if action.partitions == BROKER_DEFAULT else action.partitions
            rf = 1 if action.replication_factor == BROKER_DEFAULT else action.replication_factor
            configs = {k: default_cfg(v) for k, v in BROKER_DEFAULTS.items()}
            configs.update({k: topic_cfg(v) for k, v in action.configs.items()})
            state = ObservedTopic(action.topic, True, partitions, rf, configs)
        elif isinstance(action, AlterTopicConfigs):
            configs = dict(state.configs)
            for key in action.delete_configs:
                configs[key] = default_cfg(BROKER_DEFAULTS[key])
            configs.update({k: topic_cfg(v) for k, v in action.set_configs.items()})
            state = replace(state, configs=configs)
        else:
            assert action.to_count > state.partitions
            state = replace(state, partitions=action.to_count)
    return state


@st.composite
def observed_topics(draw: st.DrawFn) -> ObservedTopic:
    if not draw(st.booleans()):
        return ObservedTopic(TOPIC, exists=False)
    overrides = draw(st.dictionaries(config_keys, config_values, max_size=4))
    configs = {k: default_cfg(v) for k, v in BROKER_DEFAULTS.items()}
    configs.update({k: topic_cfg(v) for k, v in overrides.items()})
    return ObservedTopic(TOPIC, True, draw(st.integers(1, 64)), draw(st.integers(1, 3)), configs)


@st.composite
def desired_topics(draw: st.DrawFn) -> DesiredTopic:
    return DesiredTopic(
        TOPIC,
        draw(st.none() | st.integers(1, 64)),
        draw(st.none() | st.integers(1, 3)),
        draw(st.dictionaries(config_keys, config_values, max_size=4)),
        partitions_exact=draw(st.booleans()),
    )


@given(desired_topics(), observed_topics())
def test_plan_converges_in_one_round_and_is_then_idempotent(desired: DesiredTopic,
                                                            observed: ObservedTopic) -> None:
    plan = plan_topic(desired, observed)
    after = simulate(observed, plan.actions)
    second = plan_topic(desired, after)
    assert second.actions == ()
    assert second.refusals == plan.refusals or not observed.exists
    # Spec keys are topic-level overrides with the spec's values; nothing else is overridden.
    assert after.topic_overrides() == dict(desired.configs)


@given(desired_topics(), observed_topics())
def test_plan_never_shrinks_partitions_and_refuses_exact_decreases(desired: DesiredTopic,
                                                                   observed: ObservedTopic) -> None:
    plan = plan_topic(desired, observed)
    after = simulate(observed, plan.actions)
    if observed.exists:
        assert after.partitions >= observed.partitions
        assert after.replication_factor == observed.replication_factor
        wants_decrease = (desired.partitions is not None and desired.partitions_exact
                          and desired.partitions < observed.partitions)
        assert any("decrease" in r.message for r in plan.refusals) == wants_decrease
    if desired.partitions is not None:
        assert after.partitions >= desired.partitions


@given(desired_topics(), observed_topics())
def test_plan_only_deletes_topic_level_keys_outside_the_spec(desired: DesiredTopic,
                                                             observed: ObservedTopic) -> None:
    for action in plan_topic(desired, observed).actions:
        if isinstance(action, AlterTopicConfigs):
            assert action.set_configs or action.delete_configs
            for key in action.delete_configs:
                assert key not in desired.configs
                assert observed.configs[key].source is ConfigSource.TOPIC


def test_an_alter_is_applied_once_a_broker_describes_every_set_and_no_deleted_key() -> None:
    action = AlterTopicConfigs("dlq", {"retention.ms": "3600000"}, ("segment.bytes",))
    restored = {"retention.ms": ObservedConfig("3600000", ConfigSource.TOPIC),
                "segment.bytes": ObservedConfig("1073741824", ConfigSource.INHERITED)}
    assert configs_applied(action, restored)
    # A broker that has not replayed the change yet still describes the values set by hand.
    stale = {"retention.ms": ObservedConfig("1000", ConfigSource.TOPIC),
             "segment.bytes": ObservedConfig("1048576", ConfigSource.TOPIC)}
    assert not configs_applied(action, stale)
    assert not configs_applied(action, {**restored, "segment.bytes": ObservedConfig("1048576", ConfigSource.TOPIC)})
    # The broker's default at that value is not the topic's own setting yet.
    assert not configs_applied(action, {"retention.ms": ObservedConfig("3600000", ConfigSource.INHERITED)})

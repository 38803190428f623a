"""Topic builders, the parser and the QoS / retain table."""

from __future__ import annotations

import pytest

from protocol import (
    COMMAND_KINDS,
    TOPIC_POLICY,
    InvalidTopic,
    ProtocolError,
    TopicKind,
    alert_command_topic,
    command_filter,
    defect_event_topic,
    drift_topic,
    fleet_filter,
    metrics_topic,
    model_topic,
    parse_topic,
    rollback_command_topic,
    shared_fleet_filter,
    status_topic,
    topic_for,
    update_command_topic,
    validate_id,
)

BUILDERS = [
    (status_topic, "lineguard/plant1/line-3/status", TopicKind.STATUS),
    (metrics_topic, "lineguard/plant1/line-3/metrics", TopicKind.METRICS),
    (defect_event_topic, "lineguard/plant1/line-3/events/defect", TopicKind.DEFECT_EVENT),
    (drift_topic, "lineguard/plant1/line-3/drift", TopicKind.DRIFT),
    (model_topic, "lineguard/plant1/line-3/model", TopicKind.MODEL),
    (update_command_topic, "lineguard/plant1/line-3/cmd/update", TopicKind.UPDATE_COMMAND),
    (rollback_command_topic, "lineguard/plant1/line-3/cmd/rollback", TopicKind.ROLLBACK_COMMAND),
    (alert_command_topic, "lineguard/plant1/line-3/cmd/alert", TopicKind.ALERT_COMMAND),
]


@pytest.mark.parametrize(("builder", "expected", "kind"), BUILDERS)
def test_builders_and_parser_agree(builder, expected, kind):
    assert builder("plant1", "line-3") == expected
    assert topic_for(kind, "plant1", "line-3") == expected
    assert parse_topic(expected) == ("plant1", "line-3", kind)


def test_every_kind_has_a_builder_and_a_policy():
    assert {kind for _, _, kind in BUILDERS} == set(TopicKind)
    assert set(TOPIC_POLICY) == set(TopicKind)


@pytest.mark.parametrize(
    ("kind", "qos", "retain"),
    [
        (TopicKind.STATUS, 1, True),
        (TopicKind.METRICS, 1, False),
        (TopicKind.DEFECT_EVENT, 1, False),
        (TopicKind.DRIFT, 1, False),
        (TopicKind.MODEL, 1, True),
        (TopicKind.UPDATE_COMMAND, 1, False),
        (TopicKind.ROLLBACK_COMMAND, 1, False),
    ],
)
def test_policy_table(kind, qos, retain):
    assert TOPIC_POLICY[kind] == (qos, retain)
    assert TOPIC_POLICY[kind].qos == qos
    assert TOPIC_POLICY[kind].retain is retain


def test_command_kinds_are_the_cmd_topics():
    assert {k for k in TopicKind if k.value.startswith("cmd/")} == COMMAND_KINDS


@pytest.mark.parametrize(
    "value",
    ["a", "0", "plant1", "line_3", "a-b_c", "9" * 63, "x" + "-" * 62],
)
def test_valid_ids(value):
    assert validate_id(value) == value
    assert parse_topic(status_topic(value, value)) == (value, value, TopicKind.STATUS)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 64,
        "Line3",
        "-a",
        "_a",
        "a/b",
        "a+",
        "#",
        "+",
        "a b",
        "a.b",
        "line\n",
        "línea",
        "a\x00",
    ],
)
def test_invalid_ids_are_refused_by_every_builder(value):
    for builder, _, _ in BUILDERS:
        with pytest.raises(InvalidTopic):
            builder(value, "line-3")
        with pytest.raises(InvalidTopic):
            builder("plant1", value)
    with pytest.raises(InvalidTopic):
        command_filter("plant1", value)
    with pytest.raises(InvalidTopic):
        shared_fleet_filter(value)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "/",
        "lineguard",
        "lineguard/",
        "lineguard/plant1",
        "lineguard/plant1/line-3",
        "lineguard/plant1/line-3/",
        "lineguard/plant1/line-3/status/",
        "lineguard/plant1/line-3/statuses",
        "lineguard/plant1/line-3/events",
        "lineguard/plant1/line-3/events/",
        "lineguard/plant1/line-3/events/other",
        "lineguard/plant1/line-3/cmd/#",
        "lineguard/plant1/line-3/cmd/reboot",
        "lineguard/+/line-3/status",
        "lineguard/plant1/#",
        "lineguard/plant1//status",
        "lineguard//line-3/status",
        "Lineguard/plant1/line-3/status",
        "/lineguard/plant1/line-3/status",
        "$share/g/lineguard/plant1/line-3/status",
        "other/plant1/line-3/status",
        "lineguard/PLANT1/line-3/status",
        "lineguard/plant1/line-3/STATUS",
        "lineguard/plant1/line 3/status",
        "lineguard/plant1/line-3/status\n",
        "lineguard/plant1/line-3/status\x00",
        "lineguard/" + "a" * 64 + "/line-3/status",
        "lineguard/plant1/" + "b" * 300 + "/status",
    ],
)
def test_parse_topic_rejects(topic):
    with pytest.raises(InvalidTopic) as info:
        parse_topic(topic)
    assert isinstance(info.value, ProtocolError)
    assert str(info.value)


def test_parse_topic_rejects_non_str():
    with pytest.raises(InvalidTopic):
        parse_topic(b"lineguard/plant1/line-3/status")  # type: ignore[arg-type]


def test_filters():
    assert command_filter("plant1", "line-3") == "lineguard/plant1/line-3/cmd/#"
    assert fleet_filter() == "lineguard/+/+/#"
    assert shared_fleet_filter("collectors") == "$share/collectors/lineguard/+/+/#"

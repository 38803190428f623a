"""The MQTT topic tree: `lineguard/<site>/<line>/<kind>`.

Builders validate site and line ids (`[a-z0-9][a-z0-9_-]{0,62}`) so that a config
value can never inject a wildcard (`+`, `#`) or an extra level (`/`) into a topic, and
`parse_topic` accepts exactly the topics the builders make. QoS and retain flags per
kind are data (`TOPIC_POLICY`), so publishers and tests read the same table.
"""

from __future__ import annotations

import re
from enum import StrEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from protocol.errors import InvalidTopic

TOPIC_ROOT: Final = "lineguard"

_ID_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class TopicKind(StrEnum):
    """The last levels of a topic; the value is the topic suffix after `<site>/<line>/`."""

    STATUS = "status"
    METRICS = "metrics"
    DEFECT_EVENT = "events/defect"
    DRIFT = "drift"
    MODEL = "model"
    UPDATE_COMMAND = "cmd/update"
    ROLLBACK_COMMAND = "cmd/rollback"
    ALERT_COMMAND = "cmd/alert"


class TopicPolicy(NamedTuple):
    """How a kind is published: MQTT QoS level and the retain flag."""

    qos: int
    retain: bool


TOPIC_POLICY: Final = MappingProxyType(
    {
        # Retained so a monitor that subscribes late sees every line's state at once;
        # the appliance's last will is an `offline` status on this topic.
        TopicKind.STATUS: TopicPolicy(qos=1, retain=True),
        TopicKind.METRICS: TopicPolicy(qos=1, retain=False),
        TopicKind.DEFECT_EVENT: TopicPolicy(qos=1, retain=False),
        TopicKind.DRIFT: TopicPolicy(qos=1, retain=False),
        # Retained: a monitor sees each line's current model and last update step.
        TopicKind.MODEL: TopicPolicy(qos=1, retain=True),
        # Never retained: a stale command must not be replayed to every reconnecting line.
        TopicKind.UPDATE_COMMAND: TopicPolicy(qos=1, retain=False),
        TopicKind.ROLLBACK_COMMAND: TopicPolicy(qos=1, retain=False),
        TopicKind.ALERT_COMMAND: TopicPolicy(qos=1, retain=False),
    }
)

# Kinds the cloud publishes to a line; everything else is published by the line.
COMMAND_KINDS: Final = frozenset(
    {TopicKind.UPDATE_COMMAND, TopicKind.ROLLBACK_COMMAND, TopicKind.ALERT_COMMAND}
)

_KIND_BY_SUFFIX: Final = MappingProxyType({kind.value: kind for kind in TopicKind})


def validate_id(value: str, what: str = "id") -> str:
    """Return `value` if it is a valid site / line / group id, else raise `InvalidTopic`.

    `what` names the value in the error message (e.g. "site").
    """
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise InvalidTopic(f"{what} {value!r} must match [a-z0-9][a-z0-9_-]{{0,62}}")
    return value


def line_client_id(site: str, line: str) -> str:
    """A line's MQTT client id and broker account name: `line.<site>.<line>`.

    The shipped broker config (`use_username_as_clientid true`) makes the username the
    client id, so the line's account name and its client id are one and the same;
    deploy/mosquitto/make_acl.py writes the same name (`line_username`). Ids never hold
    `.`, so the name splits back unambiguously. Raises InvalidTopic for a bad id.
    """
    return f"line.{validate_id(site, 'site')}.{validate_id(line, 'line')}"


def line_prefix(site: str, line: str) -> str:
    """Return `lineguard/<site>/<line>`; raises `InvalidTopic` for a bad id."""
    return f"{TOPIC_ROOT}/{validate_id(site, 'site')}/{validate_id(line, 'line')}"


def topic_for(kind: TopicKind, site: str, line: str) -> str:
    """Return the topic of `kind` for one line; raises `InvalidTopic` for a bad id."""
    return f"{line_prefix(site, line)}/{TopicKind(kind).value}"


def status_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/status` (retained; the last will goes here)."""
    return topic_for(TopicKind.STATUS, site, line)


def metrics_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/metrics`."""
    return topic_for(TopicKind.METRICS, site, line)


def defect_event_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/events/defect`."""
    return topic_for(TopicKind.DEFECT_EVENT, site, line)


def drift_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/drift`."""
    return topic_for(TopicKind.DRIFT, site, line)


def model_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/model` (retained)."""
    return topic_for(TopicKind.MODEL, site, line)


def update_command_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/cmd/update` (cloud to line)."""
    return topic_for(TopicKind.UPDATE_COMMAND, site, line)


def rollback_command_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/cmd/rollback` (cloud to line)."""
    return topic_for(TopicKind.ROLLBACK_COMMAND, site, line)


def alert_command_topic(site: str, line: str) -> str:
    """`lineguard/<site>/<line>/cmd/alert` (cloud to line: an alarm for the panel)."""
    return topic_for(TopicKind.ALERT_COMMAND, site, line)


def command_filter(site: str, line: str) -> str:
    """Subscription filter for one line's commands: `lineguard/<site>/<line>/cmd/#`."""
    return f"{line_prefix(site, line)}/cmd/#"


def fleet_filter() -> str:
    """Subscription filter for every message of every line: `lineguard/+/+/#`."""
    return f"{TOPIC_ROOT}/+/+/#"


def shared_fleet_filter(group: str) -> str:
    """MQTT 5 shared subscription `$share/<group>/lineguard/+/+/#` for collectors.

    Several collectors with the same `group` split the messages between them.
    Raises `InvalidTopic` if `group` is not a valid id.
    """
    return f"$share/{validate_id(group, 'group')}/{fleet_filter()}"


def parse_topic(topic: str) -> tuple[str, str, TopicKind]:
    """Split a concrete topic into `(site, line, kind)`.

    Raises `InvalidTopic` for anything that `topic_for` would not have produced:
    another root, a bad site or line id, an unknown kind, wildcards, empty levels.
    """
    if not isinstance(topic, str):
        raise InvalidTopic(f"topic must be a str, not {type(topic).__name__}")
    if len(topic) > 256:
        raise InvalidTopic(f"topic is {len(topic)} characters long; at most 256")
    parts = topic.split("/", 3)
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise InvalidTopic(f"topic {topic!r} is not under {TOPIC_ROOT}/<site>/<line>/")
    _, site, line, suffix = parts
    validate_id(site, "site")
    validate_id(line, "line")
    kind = _KIND_BY_SUFFIX.get(suffix)
    if kind is None:
        raise InvalidTopic(f"topic {topic!r}: unknown kind {suffix!r}")
    return site, line, kind

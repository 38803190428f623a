"""Bytes on the wire to and from payload models.

`decode` is the one gate every received MQTT message goes through: whatever the bytes,
it returns a validated model or raises a `ProtocolError` subclass, never anything else.
"""

from __future__ import annotations

import json
from typing import Final, NamedTuple, NoReturn

from pydantic import ValidationError

from protocol.configfile import format_validation_error
from protocol.errors import MalformedPayload, PayloadTooLarge, TopicMismatch, UnknownSchema
from protocol.registry import SCHEMAS, Message
from protocol.topics import TOPIC_POLICY, parse_topic, topic_for

# Larger payloads are refused unread by `decode` and never produced by `encode`.
MAX_PAYLOAD_BYTES: Final = 256 * 1024

_MAX_REPORTED_ERRORS: Final = 5


class Outgoing(NamedTuple):
    """Everything an MQTT publish needs for one message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


def encode(message: Message) -> bytes:
    """Serialise `message` to compact UTF-8 JSON.

    Raises `PayloadTooLarge` if the result is over `MAX_PAYLOAD_BYTES` (a consumer would
    refuse it).
    """
    payload = message.model_dump_json(by_alias=True).encode("utf-8")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"{message.schema_id} payload is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}"
        )
    return payload


def topic_of(message: Message) -> str:
    """The topic `message` is published on (from its kind, site and line)."""
    return topic_for(message.KIND, message.site, message.line)


def prepare(message: Message) -> Outgoing:
    """Topic, encoded payload, QoS and retain flag for publishing `message`.

    Raises `PayloadTooLarge` like `encode`.
    """
    policy = TOPIC_POLICY[message.KIND]
    return Outgoing(topic_of(message), encode(message), policy.qos, policy.retain)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def decode(topic: str, payload: bytes) -> Message:
    """Validate a received MQTT message and return its payload model.

    The model is chosen by the payload's `schema`; it must belong to the topic's kind,
    and the payload's `site` and `line` must equal the topic's.

    Raises (all `ProtocolError`):
    - `PayloadTooLarge`: more than `MAX_PAYLOAD_BYTES` bytes (checked before parsing);
    - `InvalidTopic`: the topic is not in the lineguard tree;
    - `MalformedPayload`: not UTF-8, not a JSON object (NaN, Infinity and duplicate keys
      are refused), no `schema` string, or the fields break the model;
    - `UnknownSchema`: a `schema` this build cannot read (e.g. a newer version);
    - `TopicMismatch`: a schema of another kind, or another site or line than the topic's.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise MalformedPayload(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"payload is {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    site, line, kind = parse_topic(topic)
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPayload(f"payload is not UTF-8: {e.reason} at byte {e.start}") from e
    try:
        document: object = json.loads(
            text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as e:
        raise MalformedPayload(f"payload is not valid JSON: {e}") from e
    if not isinstance(document, dict):
        raise MalformedPayload(f"payload must be a JSON object, not {type(document).__name__}")
    schema = document.get("schema")
    if not isinstance(schema, str):
        raise MalformedPayload("payload has no string field 'schema'")
    model = SCHEMAS.get(schema)
    if model is None:
        raise UnknownSchema(f"schema {schema[:80]!r} is not one this build reads")
    if kind != model.KIND:
        raise TopicMismatch(f"schema {schema!r} belongs on kind {model.KIND}, topic is {kind}")
    try:
        message = model.model_validate_json(text)
    except ValidationError as e:
        why = format_validation_error(e, noun="field", max_errors=_MAX_REPORTED_ERRORS)
        raise MalformedPayload(f"{schema} payload is invalid: {why}") from e
    if message.site != site or message.line != line:
        raise TopicMismatch(
            f"payload is from {message.site}/{message.line}, topic is for {site}/{line}"
        )
    return message

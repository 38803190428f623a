"""Bytes on the wire to and from payload models.

`decode` is the one gate every received MQTT message goes through: whatever the bytes,
it returns a validated model or raises a `ProtocolError` subclass, never anything else.
"""

from __future__ import annotations

import json
import re
from typing import Final, NamedTuple, NoReturn

from pydantic import ValidationError
from pydantic_core import from_json, to_json

from protocol.configfile import format_validation_error
from protocol.errors import MalformedPayload, PayloadTooLarge, TopicMismatch, UnknownSchema
from protocol.registry import SCHEMAS, Message
from protocol.topics import TOPIC_POLICY, TopicKind, parse_topic, topic_for

# Larger payloads are refused unread by `decode` and never produced by `encode`.
MAX_PAYLOAD_BYTES: Final = 256 * 1024

_MAX_REPORTED_ERRORS: Final = 5
# `{"schema":"<name>"` at the start of a payload (JSON whitespace allowed), the name
# without escapes: what `encode` writes, and the fast path of `decode`.
_SCHEMA_FIRST: Final = re.compile(
    rb'[ \t\r\n]*\{[ \t\r\n]*"schema"[ \t\r\n]*:[ \t\r\n]*"([!#-\[\]-~]{1,64})"')


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
    data = bytes(payload)
    message = _decode_fast(site, line, kind, data)
    if message is not None:
        return message
    return _decode_checked(site, line, kind, data)


def _decode_fast(site: str, line: str, kind: TopicKind, data: bytes) -> Message | None:
    """One parse for the common case: a valid message whose first key is `schema` (as
    `encode` writes it). Returns None on anything else (any doubt, any error), and
    `_decode_checked` then gives the verdict, so this path never changes one: it
    returns only messages that `_decode_checked` accepts too."""
    head = _SCHEMA_FIRST.match(data)
    if head is None:
        return None
    model = SCHEMAS.get(head.group(1).decode("ascii"))
    if model is None or kind != model.KIND:
        return None
    try:
        data.decode("utf-8")  # the JSON parser would replace bad bytes; refuse them
        message = model.model_validate_json(data)
    except (UnicodeDecodeError, ValidationError):
        return None
    if message.site != site or message.line != line:
        return None
    try:
        repeats = _has_duplicate_key(data)
    except ValueError:  # not expected of a document that validated; let the full check say
        return None
    return message if repeats is False else None


def _has_duplicate_key(document: bytes) -> bool | None:
    """Whether an object of the valid JSON `document` repeats a key; None if that is
    not cheap to tell (a backslash in it, or whitespace between its tokens).

    Without backslashes every `"` delimits a string, and without whitespace between
    tokens every key is written `"key":`; the same document written back compactly from
    a parse (which keeps one entry per distinct key of each object) has fewer `":`
    exactly when a key repeats.
    """
    if b"\\" in document:
        return None
    between = b"".join(document.split(b'"')[0::2])  # what is outside the strings
    if len(between.translate(None, b" \t\r\n")) != len(between):
        return None
    return document.count(b'":') != to_json(from_json(document)).count(b'":')


def _decode_checked(site: str, line: str, kind: TopicKind, data: bytes) -> Message:
    """Every check in order, each with its own error (see `decode`)."""
    try:
        text = data.decode("utf-8")
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

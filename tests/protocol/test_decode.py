"""decode(): whatever the bytes, a validated message or a ProtocolError subclass."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import (
    MAX_PAYLOAD_BYTES,
    SCHEMAS,
    InvalidTopic,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    TopicKind,
    TopicMismatch,
    UnknownSchema,
    decode,
    encode,
    topic_of,
)
from protocol.examples import example_messages

EXAMPLES = [m for _, m in example_messages()]
STATUS, METRICS = EXAMPLES[0], EXAMPLES[2]
STATUS_TOPIC = topic_of(STATUS)
HYPOTHESIS = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def _doc(message=STATUS) -> dict[str, object]:
    return json.loads(encode(message))


def _bytes(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _with(**changes: object) -> bytes:
    return _bytes({**_doc(), **changes})


def _without(key: str) -> bytes:
    doc = _doc()
    del doc[key]
    return _bytes(doc)


CASES = [
    # (id, topic, payload, expected error)
    ("too large", STATUS_TOPIC, b" " * (MAX_PAYLOAD_BYTES + 1), PayloadTooLarge),
    (
        "too large but valid",
        STATUS_TOPIC,
        encode(STATUS) + b" " * MAX_PAYLOAD_BYTES,
        PayloadTooLarge,
    ),
    ("bad topic", "lineguard/plant1/line-3/nope", encode(STATUS), InvalidTopic),
    ("wildcard topic", "lineguard/+/line-3/status", encode(STATUS), InvalidTopic),
    ("not utf-8", STATUS_TOPIC, b'{"schema":"\xff"}', MalformedPayload),
    ("empty", STATUS_TOPIC, b"", MalformedPayload),
    ("not json", STATUS_TOPIC, b"online", MalformedPayload),
    ("truncated", STATUS_TOPIC, encode(STATUS)[:-1], MalformedPayload),
    ("array", STATUS_TOPIC, b"[]", MalformedPayload),
    ("string", STATUS_TOPIC, b'"lineguard.status/1"', MalformedPayload),
    ("null", STATUS_TOPIC, b"null", MalformedPayload),
    ("deeply nested", STATUS_TOPIC, b"[" * 100_000, MalformedPayload),
    ("deeply nested object", STATUS_TOPIC, b'{"a":' * 50_000, MalformedPayload),
    (
        "NaN",
        topic_of(METRICS),
        encode(METRICS).replace(b'"fps":29.8', b'"fps":NaN'),
        MalformedPayload,
    ),
    (
        "Infinity",
        topic_of(METRICS),
        encode(METRICS).replace(b'"fps":29.8', b'"fps":Infinity'),
        MalformedPayload,
    ),
    (
        "huge float",
        topic_of(METRICS),
        encode(METRICS).replace(b'"fps":29.8', b'"fps":1e999'),
        MalformedPayload,
    ),
    (
        "huge int",
        topic_of(METRICS),
        encode(METRICS).replace(b'"passed":281', b'"passed":' + b"9" * 5000),
        MalformedPayload,
    ),
    ("duplicate key", STATUS_TOPIC, encode(STATUS)[:-1] + b',"state":"offline"}', MalformedPayload),
    ("no schema", STATUS_TOPIC, _without("schema"), MalformedPayload),
    ("schema not str", STATUS_TOPIC, _with(schema=1), MalformedPayload),
    ("unknown schema", STATUS_TOPIC, _with(schema="lineguard.status/2"), UnknownSchema),
    ("other family", STATUS_TOPIC, _with(schema="sparkplug.b/1"), UnknownSchema),
    ("schema of other kind", STATUS_TOPIC, _bytes(_doc(METRICS)), TopicMismatch),
    ("other line", STATUS_TOPIC, _with(line="line-4"), TopicMismatch),
    ("other site", STATUS_TOPIC, _with(site="plant2"), TopicMismatch),
    ("invalid line id", STATUS_TOPIC, _with(line="line/4"), MalformedPayload),
    ("no msg_id", STATUS_TOPIC, _without("msg_id"), MalformedPayload),
    ("no sent_at", STATUS_TOPIC, _without("sent_at"), MalformedPayload),
    ("naive sent_at", STATUS_TOPIC, _with(sent_at="2025-03-14T09:26:53"), MalformedPayload),
    ("epoch sent_at", STATUS_TOPIC, _with(sent_at=1741944413), MalformedPayload),
    ("unknown field", STATUS_TOPIC, _with(colour="blue"), MalformedPayload),
    (
        "python name of schema",
        STATUS_TOPIC,
        _with(schema_id="lineguard.status/1"),
        MalformedPayload,
    ),
    ("bad enum", STATUS_TOPIC, _with(state="ONLINE"), MalformedPayload),
    (
        "lax number",
        topic_of(METRICS),
        encode(METRICS).replace(b'"fps":29.8', b'"fps":"29.8"'),
        MalformedPayload,
    ),
    (
        "bool as int",
        topic_of(METRICS),
        encode(METRICS).replace(b'"passed":281', b'"passed":true'),
        MalformedPayload,
    ),
    (
        "float as int",
        topic_of(METRICS),
        encode(METRICS).replace(b'"passed":281', b'"passed":281.0'),
        MalformedPayload,
    ),
    (
        "negative count",
        topic_of(METRICS),
        encode(METRICS).replace(b'"passed":281', b'"passed":-1'),
        MalformedPayload,
    ),
]


@pytest.mark.parametrize(
    ("topic", "payload", "error"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decode_errors(topic, payload, error):
    with pytest.raises(error) as info:
        decode(topic, payload)
    assert isinstance(info.value, ProtocolError)
    assert str(info.value)
    assert len(str(info.value)) < 2000


def test_payload_of_exactly_max_size_is_read():
    payload = encode(STATUS)
    padded = payload + b" " * (MAX_PAYLOAD_BYTES - len(payload))
    assert len(padded) == MAX_PAYLOAD_BYTES
    assert decode(STATUS_TOPIC, padded) == STATUS


def test_decode_accepts_bytearray_and_memoryview_and_refuses_str():
    payload = encode(STATUS)
    assert decode(STATUS_TOPIC, bytearray(payload)) == STATUS
    assert decode(STATUS_TOPIC, memoryview(payload)) == STATUS
    with pytest.raises(MalformedPayload):
        decode(STATUS_TOPIC, payload.decode())  # type: ignore[arg-type]


def test_error_names_the_bad_field():
    with pytest.raises(MalformedPayload, match=r"verdicts\.passed"):
        decode(topic_of(METRICS), encode(METRICS).replace(b'"passed":281', b'"passed":-1'))


def test_every_kind_refuses_every_other_kinds_schema():
    for message in EXAMPLES:
        for kind in TopicKind:
            topic = f"lineguard/{message.site}/{message.line}/{kind.value}"
            if kind == message.KIND:
                assert decode(topic, encode(message)) == message
            else:
                with pytest.raises(TopicMismatch):
                    decode(topic, encode(message))


# ---- generated inputs -------------------------------------------------------------

ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
examples = st.sampled_from(EXAMPLES)


def _outcome(topic: str, payload: bytes) -> type[Exception] | None:
    """None if decode accepted it, else the ProtocolError subclass it raised."""
    try:
        decode(topic, payload)
    except ProtocolError as e:
        return type(e)
    return None


@HYPOTHESIS
@given(examples, st.binary(max_size=4096))
def test_random_bytes(message, payload):
    assert _outcome(topic_of(message), payload) is not None


@HYPOTHESIS
@given(examples, json_values)
def test_random_json(message, value):
    assert _outcome(topic_of(message), json.dumps(value).encode()) in {
        MalformedPayload,
        UnknownSchema,
    }


@HYPOTHESIS
@given(examples, st.text(max_size=80).filter(lambda s: s not in SCHEMAS))
def test_wrong_schema(message, schema):
    doc = _doc(message)
    doc["schema"] = schema
    assert _outcome(topic_of(message), _bytes(doc)) is UnknownSchema


@HYPOTHESIS
@given(examples, ids, ids)
def test_wrong_line_or_site(message, site, line):
    assume((site, line) != (message.site, message.line))
    doc = _doc(message)
    doc["site"], doc["line"] = site, line
    assert _outcome(topic_of(message), _bytes(doc)) is TopicMismatch
    # ... and a message for the line it names is read on that line's topic.
    topic = f"lineguard/{site}/{line}/{message.KIND.value}"
    assert _outcome(topic, _bytes(doc)) is None


@HYPOTHESIS
@given(examples, st.integers(min_value=1, max_value=3 * MAX_PAYLOAD_BYTES))
def test_oversized(message, extra):
    payload = encode(message)
    padded = payload + b" " * (MAX_PAYLOAD_BYTES - len(payload) + extra)
    assert _outcome(topic_of(message), padded) is PayloadTooLarge


@HYPOTHESIS
@given(examples, st.text(min_size=1, max_size=30), json_values)
def test_unknown_field(message, key, value):
    doc = _doc(message)
    assume(key not in doc)
    doc[key] = value
    assert _outcome(topic_of(message), _bytes(doc)) is MalformedPayload


@HYPOTHESIS
@given(examples, st.data())
def test_missing_required_field(message, data):
    doc = _doc(message)
    required = [k for k in type(message).model_json_schema()["required"] if k != "schema"]
    del doc[data.draw(st.sampled_from(required))]
    assert _outcome(topic_of(message), _bytes(doc)) is MalformedPayload


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    found: list[tuple[object, ...]] = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@HYPOTHESIS
@given(examples, st.data(), json_values)
def test_any_value_replaced(message, data, value):
    # Replacing any value anywhere with anything: accepted (the new value happens to be
    # valid) or a ProtocolError, never another exception.
    doc = _doc(message)
    path = data.draw(st.sampled_from(_paths(doc)))
    node: object = doc
    for key in path[:-1]:
        node = node[key]  # type: ignore[index]
    node[path[-1]] = value  # type: ignore[index]
    outcome = _outcome(topic_of(message), _bytes(doc))
    assert outcome in {None, MalformedPayload, UnknownSchema, TopicMismatch}


@HYPOTHESIS
@given(examples, st.text(max_size=120))
def test_random_topics(message, topic):
    outcome = _outcome(topic, encode(message))
    if topic == topic_of(message):
        assert outcome is None
    else:
        assert outcome in {InvalidTopic, TopicMismatch}

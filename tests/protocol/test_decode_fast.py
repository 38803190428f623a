"""decode()'s one-parse path for the common case gives the same verdict as the full,
step-by-step check, for good payloads and for the tricky ones (duplicate keys written
with escapes, whitespace, `schema` not first, unicode keys)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import ProtocolError, decode, encode, parse_topic, topic_of
from protocol.codec import _decode_checked, _decode_fast, _has_duplicate_key
from protocol.examples import example_messages

EXAMPLES = [m for _, m in example_messages()]


def verdict(topic: str, payload: bytes) -> object:
    try:
        return decode(topic, payload)
    except ProtocolError as e:
        return type(e)


def checked(topic: str, payload: bytes) -> object:
    site, line, kind = parse_topic(topic)
    try:
        return _decode_checked(site, line, kind, payload)
    except ProtocolError as e:
        return type(e)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.schema_id)
def test_every_example_takes_the_fast_path(message) -> None:
    site, line, kind = parse_topic(topic_of(message))
    assert _decode_fast(site, line, kind, encode(message)) == message


def _status_with(tail: bytes) -> bytes:
    return encode(EXAMPLES[0])[:-1] + tail


@pytest.mark.parametrize(
    "payload",
    [
        _status_with(b',"state":"offline"}'),
        _status_with(b',"st\\u0061te":"offline"}'),  # the same key, escaped
        _status_with(b',"schema":"lineguard.status/1"}'),
        _status_with(b' }'),  # whitespace: not the fast path, still valid
        _status_with(b',"\\u00e9":1}'),
        b'{"msg_id":"x","schema":"lineguard.status/1"}',
        b' {"schema" : "lineguard.status/1"}',
        b'{"schema":"lineguard.status/1"',
        b'{"schema":"lineguard.status/1","schema":"lineguard.status/1"}',
    ],
)
def test_tricky_payloads_get_the_checked_verdict(payload: bytes) -> None:
    topic = topic_of(EXAMPLES[0])
    assert verdict(topic, payload) == checked(topic, payload)


def test_duplicate_key_detection() -> None:
    assert _has_duplicate_key(b'{"a":1,"b":{"a":2},"c":[{"a":1},{"a":2}]}') is False
    assert _has_duplicate_key(b'{"a":1,"b":{"a":2,"a":3}}') is True
    assert _has_duplicate_key(b'{"a":":x","b":1,"b":2}') is True
    assert _has_duplicate_key(b'{"a":":x","b":1}') is False
    assert _has_duplicate_key(b'{"a":1, "a":2}') is None  # whitespace: not cheap to tell
    assert _has_duplicate_key(b'{"a\\"":1}') is None  # an escape


keys = st.sampled_from(["schema", "msg_id", "site", "line", "state", "a", "é", ":", ""])


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(message=st.sampled_from(EXAMPLES), extra=st.lists(st.tuples(keys, st.integers()),
                                                         max_size=3),
       drop=st.sampled_from([None, "state", "msg_id", "sent_at"]))
def test_fast_and_checked_agree(message, extra, drop) -> None:
    document = json.loads(encode(message))
    if drop is not None:
        document.pop(drop, None)
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)[:-1]
    for key, value in extra:
        text += f',{json.dumps(key, ensure_ascii=False)}:{value}'
    payload = (text + "}").encode("utf-8")
    topic = topic_of(message)
    assert verdict(topic, payload) == checked(topic, payload)

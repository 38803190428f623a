"""Validation of deliveries (pure): what is stored, what is quarantined and why."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.collector.validate import UNDECODABLE_TOPIC, Delivery, classify, reason_of
from protocol import MAX_PAYLOAD_BYTES, MalformedPayload, PayloadTooLarge, UnknownSchema
from tests.cloud import fleet_helpers as h


def delivery(topic: str, payload: bytes) -> Delivery:
    return Delivery(topic, payload, mid=1, qos=1, received_at_ms=0, generation=1)


def _doc(message) -> dict:
    return json.loads(h.wire(message)[1])


METRICS = h.metrics()
TOPIC, PAYLOAD = h.wire(METRICS)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"", "malformed_payload"),
        (TOPIC, b"\xff\xfe", "malformed_payload"),
        (TOPIC, b"[1, 2]", "malformed_payload"),
        (TOPIC, b'{"schema": 1}', "malformed_payload"),
        (TOPIC, b'{"a": NaN}', "malformed_payload"),
        (TOPIC, PAYLOAD.replace(b"{", b'{"fps": 1, ', 1), "malformed_payload"),  # dup key
        (TOPIC, json.dumps({**_doc(METRICS), "extra": 1}).encode(), "malformed_payload"),
        (TOPIC, json.dumps({**_doc(METRICS), "fps": -1}).encode(), "malformed_payload"),
        (TOPIC, json.dumps({**_doc(METRICS), "schema": "lineguard.metrics/99"}).encode(),
         "unknown_schema"),
        ("lineguard/plant1/line-1/status", PAYLOAD, "topic_mismatch"),
        ("lineguard/plant1/line-9/metrics", PAYLOAD, "topic_mismatch"),
        ("lineguard/plant1/line-1/nonsense", PAYLOAD, "invalid_topic"),
        ("lineguard/Plant1/line-1/metrics", PAYLOAD, "invalid_topic"),
        ("other/topic", PAYLOAD, "invalid_topic"),
        (UNDECODABLE_TOPIC, PAYLOAD, "invalid_topic_encoding"),
        (TOPIC, b" " * (MAX_PAYLOAD_BYTES + 1), "payload_too_large"),
    ],
)
def test_bad_deliveries_are_rejected_with_a_reason(topic, payload, reason):
    received, rejected = classify([delivery(topic, payload)])
    assert received == []
    assert [r.reason for r in rejected] == [reason]
    assert rejected[0].detail


def test_valid_messages_of_every_kind_pass():
    messages = [h.status(), h.metrics(), h.defect(), h.drift(), h.model_report()]
    received, rejected = classify([delivery(*h.wire(m)) for m in messages])
    assert rejected == []
    assert [r.message for r in received] == messages


def test_reason_names():
    assert reason_of(MalformedPayload("x")) == "malformed_payload"
    assert reason_of(PayloadTooLarge("x")) == "payload_too_large"
    assert reason_of(UnknownSchema("x")) == "unknown_schema"


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=80), payload=st.binary(max_size=2048))
def test_classify_never_raises(topic, payload):
    received, rejected = classify([delivery(topic, payload)])
    assert len(received) + len(rejected) == 1

"""Payload models: round trips, bounds and cross-field rules, encoding."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from protocol import (
    MESSAGE_TYPES,
    SCHEMAS,
    TOPIC_POLICY,
    BrightnessHistogram,
    ChannelStats,
    DefectEvent,
    DriftSketch,
    LatencyStats,
    MetricsMessage,
    ModelRef,
    SizedDetection,
    StatusMessage,
    TopicKind,
    UninspectedReason,
    UpdateCommand,
    VerdictCounts,
    decode,
    encode,
    last_will,
    new_msg_id,
    parse_topic,
    prepare,
    schema_of,
    topic_of,
)
from protocol.examples import example_messages
from protocol.registry import LEGACY_TYPES

T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
EXAMPLES = example_messages()


def _envelope(**extra: object) -> dict[str, object]:
    return {"msg_id": new_msg_id(), "site": "plant1", "line": "line-3", "sent_at": T0, **extra}


@pytest.mark.parametrize(("title", "message"), EXAMPLES, ids=[t for t, _ in EXAMPLES])
def test_round_trip(title, message):
    payload = encode(message)
    assert decode(topic_of(message), payload) == message
    # Compact JSON: no whitespace between tokens, `schema` first.
    assert payload == json.dumps(json.loads(payload), separators=(",", ":")).encode()
    assert next(iter(json.loads(payload))) == "schema"
    # Re-encoding what was decoded gives the same bytes.
    assert encode(decode(topic_of(message), payload)) == payload


def test_examples_cover_every_model_and_kind():
    assert {type(m) for _, m in EXAMPLES} == set(MESSAGE_TYPES) - set(LEGACY_TYPES)
    assert {m.KIND for _, m in EXAMPLES} == set(TopicKind)


@pytest.mark.parametrize("model", MESSAGE_TYPES, ids=lambda m: m.__name__)
def test_registry_is_consistent(model):
    schema = schema_of(model)
    assert SCHEMAS[schema] is model
    # lineguard.<kind with / as .>/<N>
    name, version = schema.split("/")
    assert name == "lineguard." + model.KIND.value.replace("/", ".")
    assert version.isdigit()
    assert int(version) >= 1


def test_prepare_uses_the_policy():
    for _, message in EXAMPLES:
        out = prepare(message)
        site, line, kind = parse_topic(out.topic)
        assert (site, line, kind) == (message.site, message.line, message.KIND)
        assert (out.qos, out.retain) == TOPIC_POLICY[kind]
        assert out.payload == encode(message)


def test_timestamps_are_normalised_to_utc():
    cet = timezone(timedelta(hours=1))
    message = StatusMessage(
        **_envelope(sent_at=datetime(2025, 1, 1, 10, 0, tzinfo=cet)), state="online"
    )
    assert message.sent_at == datetime(2025, 1, 1, 9, 0, tzinfo=UTC)
    assert message.sent_at.utcoffset() == timedelta(0)
    assert b'"sent_at":"2025-01-01T09:00:00Z"' in encode(message)


def test_naive_timestamps_are_refused():
    with pytest.raises(ValidationError):
        StatusMessage(**_envelope(sent_at=datetime(2025, 1, 1, 10, 0)), state="online")


def test_last_will_is_a_retained_offline_status():
    will = last_will("plant1", "line-3", T0, app_version="0.1.0")
    assert (will.state, will.reason) == ("offline", "connection_lost")
    out = prepare(will)
    assert out.topic == "lineguard/plant1/line-3/status"
    assert out.retain
    assert out.qos == 1
    assert last_will("plant1", "line-3", T0).msg_id != will.msg_id


def test_msg_ids():
    ids = {new_msg_id() for _ in range(1000)}
    assert len(ids) == 1000
    for good in [new_msg_id(), "01JPB8Z6Q4T9W2X7Y3K5M8N1R0", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"]:
        StatusMessage(**_envelope(msg_id=good), state="online")
    for bad in [
        "",
        "0F8E3C2A9B7D4E61A5C3F2E1D0B9A877",  # uuid hex must be lowercase
        "0f8e3c2a-9b7d-4e61-a5c3-f2e1d0b9a877",
        "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",  # ULID above 2**128
        "01JPB8Z6Q4T9W2X7Y3K5M8N1RI",  # I is not Crockford base32
        "x" * 32,
    ]:
        with pytest.raises(ValidationError):
            StatusMessage(**_envelope(msg_id=bad), state="online")


def _detection(**overrides: object) -> SizedDetection:
    fields: dict[str, object] = {
        "class_id": 0,
        "class_name": "scratches",
        "score": 0.5,
        "box_xyxy": (1.0, 2.0, 3.0, 4.0),
    }
    return SizedDetection(**{**fields, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        {"score": 1.01},
        {"score": -0.1},
        {"score": float("nan")},
        {"box_xyxy": (3.0, 2.0, 1.0, 4.0)},
        {"box_xyxy": (1.0, 4.0, 3.0, 2.0)},
        {"box_xyxy": (1.0, 2.0, 3.0)},
        {"box_xyxy": (1.0, 2.0, float("inf"), 4.0)},
        {"class_id": -1},
        {"class_id": True},
        {"class_name": ""},
        {"class_name": "a\nb"},
        {"class_name": "x" * 65},
    ],
)
def test_detection_bounds(overrides):
    with pytest.raises(ValidationError):
        _detection(**overrides)


def test_defect_event_needs_a_defect():
    model = ModelRef(name="m", version=1)
    base = _envelope(frame_id="1", captured_at=T0, model=model, image_size_wh=(200, 200))
    DefectEvent(**base, defects=[_detection()])
    with pytest.raises(ValidationError):
        DefectEvent(**base, defects=[])
    with pytest.raises(ValidationError):
        DefectEvent(**base, defects=[_detection()] * 1001)


def test_status_reason_only_when_offline():
    with pytest.raises(ValidationError, match="reason"):
        StatusMessage(**_envelope(), state="online", reason="shutdown")
    with pytest.raises(ValidationError, match="repeat"):
        StatusMessage(**_envelope(), state="online", alarms=["a", "a"])
    with pytest.raises(ValidationError):
        StatusMessage(**_envelope(), state="online", sources={"cam": "exploded"})
    with pytest.raises(ValidationError):
        StatusMessage(**_envelope(), state="maybe")


def _metrics(**overrides: object) -> MetricsMessage:
    fields: dict[str, object] = {
        "window_s": 10.0,
        "fps": 30.0,
        "verdicts": VerdictCounts(passed=1, failed=2, uninspected=3),
    }
    return MetricsMessage(**_envelope(), **{**fields, **overrides})


def test_metrics_rules():
    _metrics(uninspected_by_reason={UninspectedReason.DEADLINE: 1,
                                    UninspectedReason.DROPPED: 2})
    _metrics()  # the breakdown is optional
    with pytest.raises(ValidationError, match="sums to 2"):
        _metrics(uninspected_by_reason={UninspectedReason.DEADLINE: 2})
    with pytest.raises(ValidationError):
        _metrics(window_s=0.0)
    with pytest.raises(ValidationError):
        _metrics(fps=-1.0)
    with pytest.raises(ValidationError):
        _metrics(defects_by_class={"scratches": -1})
    with pytest.raises(ValidationError):
        _metrics(queue_depths={"bad key/with slash": 1})
    with pytest.raises(ValidationError):
        _metrics(engine_provider="CUDA Execution Provider")
    with pytest.raises(ValidationError, match="p50_ms <= p95_ms"):
        LatencyStats(p50_ms=5.0, p95_ms=4.0, p99_ms=6.0, samples=1)
    with pytest.raises(ValidationError):
        VerdictCounts(passed=2**53, failed=0, uninspected=0)


def _drift(**overrides: object) -> DriftSketch:
    fields: dict[str, object] = {
        "window_start": T0 - timedelta(minutes=15),
        "window_end": T0,
        "frame_count": 10,
    }
    return DriftSketch(**_envelope(), **{**fields, **overrides})


def test_drift_rules():
    _drift()
    _drift(frame_count=0)
    _drift(channels=[ChannelStats(channel="gray", mean_u8=100.0, std_u8=20.0)])
    with pytest.raises(ValidationError, match="before"):
        _drift(window_end=T0 - timedelta(hours=1))
    with pytest.raises(ValidationError, match="frame_count 0"):
        _drift(frame_count=0, brightness_hist=BrightnessHistogram(fractions=[0.5, 0.5]))
    with pytest.raises(ValidationError, match="repeat"):
        _drift(channels=[ChannelStats(channel="r", mean_u8=1.0, std_u8=1.0)] * 2)
    with pytest.raises(ValidationError, match="sum"):
        BrightnessHistogram(fractions=[0.5, 0.4])
    with pytest.raises(ValidationError):
        BrightnessHistogram(fractions=[1.0])
    with pytest.raises(ValidationError):
        ChannelStats(channel="r", mean_u8=256.0, std_u8=1.0)


def test_commands_need_an_issuer_and_bound_text():
    UpdateCommand(**_envelope(), issued_by="alice@plant1")
    with pytest.raises(ValidationError):
        UpdateCommand(**_envelope())
    with pytest.raises(ValidationError):
        UpdateCommand(**_envelope(), issued_by="x", reason="r" * 1001)
    with pytest.raises(ValidationError):
        UpdateCommand(**_envelope(), issued_by="x", target_version=-1)


def test_messages_are_frozen_and_refuse_unknown_fields():
    _, message = EXAMPLES[0]
    with pytest.raises(ValidationError):
        message.site = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        StatusMessage(**_envelope(), state="online", colour="blue")


def test_schema_field_cannot_be_overridden():
    with pytest.raises(ValidationError):
        StatusMessage(**_envelope(), state="online", schema="lineguard.status/2")

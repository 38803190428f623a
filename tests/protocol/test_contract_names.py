"""The stage, queue and reason names of `metrics` are a closed, typed set (issue 8 item
1): both ends validate them, the JSON Schema lists them, and version 1 stays readable."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from protocol import (
    LatencyStage,
    LatencyStats,
    MalformedPayload,
    MetricsMessage,
    MetricsMessageV1,
    QueueName,
    UninspectedReason,
    VerdictCounts,
    decode,
    encode,
    new_msg_id,
)
from protocol.schemas import SCHEMA_DIR

T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
TOPIC = "lineguard/plant1/line-3/metrics"
_STATS = {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "samples": 5}


def _payload(schema: str, **fields: object) -> bytes:
    body = {"schema": schema, "msg_id": new_msg_id(), "site": "plant1", "line": "line-3",
            "sent_at": "2025-03-14T09:26:53Z", "window_s": 10.0, "fps": 1.0,
            "verdicts": {"passed": 5, "failed": 0, "uninspected": 0}, **fields}
    return json.dumps(body).encode()


def test_names_are_the_documented_ones():
    assert [s.value for s in LatencyStage] == [
        "queue", "preprocess", "batch_wait", "inference", "postprocess", "end_to_end"]
    assert {q.value for q in QueueName} == {
        "preprocess", "batcher", "postprocess", "pending", "store", "telemetry"}
    assert {r.value for r in UninspectedReason} == {
        "dropped", "engine_failure", "shutdown", "deadline", "no_model", "unreadable", "corrupt",
        "wrong_size", "crash", "store_full"}


def test_schema_lists_the_names_and_is_closed():
    schema = json.loads((SCHEMA_DIR / "metrics.v2.json").read_text("utf-8"))
    props = schema["properties"]
    for key, names in (("latency_ms", LatencyStage), ("queue_depths", QueueName),
                       ("uninspected_by_reason", UninspectedReason)):
        assert set(props[key]["properties"]) == {n.value for n in names}, key
        assert props[key]["additionalProperties"] is False, key
    assert "input_fps" in props
    assert schema["properties"]["schema"]["const"] == "lineguard.metrics/2"


@pytest.mark.parametrize(("field", "value"), [
    ("latency_ms", {"total": _STATS}),
    ("latency_ms", {"infer": _STATS}),
    ("queue_depths", {"post": 1}),
    ("queue_depths", {"intake:cam-1": 1}),
])
def test_v2_refuses_names_outside_the_contract(field, value):
    with pytest.raises(MalformedPayload):
        decode(TOPIC, _payload("lineguard.metrics/2", **{field: value}))


def test_v2_round_trip_with_every_name():
    message = MetricsMessage(
        msg_id=new_msg_id(), site="plant1", line="line-3", sent_at=T0, window_s=10.0,
        fps=1.0, input_fps=1.5, verdicts=VerdictCounts(passed=4, failed=0, uninspected=1),
        uninspected_by_reason={UninspectedReason.DROPPED: 1},
        latency_ms={s: LatencyStats(p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, samples=4)
                    for s in LatencyStage},
        queue_depths={q: 0 for q in QueueName},
    )
    payload = encode(message)
    assert json.loads(payload)["latency_ms"].keys() == {s.value for s in LatencyStage}
    assert decode(TOPIC, payload) == message


def test_v1_from_older_lines_still_decodes():
    message = decode(TOPIC, _payload("lineguard.metrics/1", latency_ms={"total": _STATS},
                                     queue_depths={"post": 1, "intake:cam-1": 0}))
    assert isinstance(message, MetricsMessageV1)
    assert message.latency_ms["total"].p50_ms == 1.0

"""Building telemetry messages from appliance data (pure): the metrics window, metrics,
defect events, status, gauges from pipeline statistics, and the config."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from appliance.errors import ConfigError
from appliance.pipeline.engine import ModelInfo
from appliance.pipeline.stats import PipelineStats, StationStats
from appliance.records import STAGE_ON_WIRE, STAGES, DefectRecord
from appliance.telemetry import Gauges, Telemetry, TelemetryConfig
from appliance.telemetry.gauges import gauges_from_stats, model_ref
from appliance.telemetry.messages import (
    defect_event,
    defect_facts,
    model_ref_from_version_id,
    status_key,
    status_message,
)
from appliance.telemetry.metrics import (
    VerdictWindow,
    WindowCounts,
    build_metrics,
    wire_queue_depths,
)
from protocol import DiskUsage, LatencyStage, ModelRef, QueueName, decode, prepare
from tests.appliance.telemetry_helpers import LINE, SITE, record

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
MODEL = ModelRef(name="neu-det-yolo11n", version=7, label="retrain")


def test_window_counts_each_verdict_once() -> None:
    window = VerdictWindow()
    for i in range(10):
        window.add(record(i, "pass"))
    for i in range(3):
        window.add(record(10 + i, "fail"))
    window.add(record(20, "uninspected"))
    counts = window.take()
    assert dict(counts.verdicts) == {"pass": 10, "fail": 3, "uninspected": 1}
    assert dict(counts.uninspected_by_reason) == {"deadline": 1}
    assert dict(counts.defects_by_class) == {"scratches": 3}
    # an uninspected part's only latency (time to the decision) is not sampled
    assert sorted(counts.latency_ms) == ["infer", "total"]
    assert len(counts.latency_ms["total"]) == 13
    empty = window.take()
    assert empty.parts == 0 and not empty.latency_ms


def test_window_latency_is_a_bounded_uniform_sample() -> None:
    window = VerdictWindow(max_samples=100, seed=1)
    for i in range(10_000):
        window.add(record(i, "pass"))
    values = window.take().latency_ms["total"]
    assert len(values) == 100
    # record(i) has total = 15 + i % 20: a uniform sample keeps the spread
    assert min(values) < 18 and max(values) > 31


def counts(**verdicts: int) -> WindowCounts:
    return WindowCounts(
        verdicts=verdicts,
        uninspected_by_reason={"deadline": verdicts.get("uninspected", 0)},
        defects_by_class={"scratches": 4, "bad\x00name": 1},
        latency_ms={"total": [10.0, 20.0, 30.0, 40.0], "bad stage": [1.0], "infer": []},
    )


def test_build_metrics_round_trips_through_the_wire() -> None:
    gauges = Gauges(
        model=MODEL, engine_provider="CPUExecutionProvider",
        queue_depths={"batcher": 3, "bad key": 1}, sources={"top": "streaming", "x": "weird"},
        disk=DiskUsage(used_bytes=10, quota_bytes=100, free_bytes=1000),
    )
    message = build_metrics(
        site=SITE, line=LINE, msg_id="a" * 32, sent_at=T0, window_s=10.0,
        counts=counts(**{"pass": 95, "fail": 4, "uninspected": 1}), gauges=gauges,
        outbox_depth=7, outbox_dropped=2, telemetry_pending=1,
    )
    back = decode(*prepare(message)[:2])
    assert back == message
    assert message.fps == 10.0
    assert (message.verdicts.passed, message.verdicts.failed,
            message.verdicts.uninspected) == (95, 4, 1)
    assert message.uninspected_by_reason == {"deadline": 1}
    assert message.defects_by_class == {"scratches": 4, "bad?name": 1}
    # The pipeline's `total` is the contract's `end_to_end`; invalid and empty stages
    # are left out.
    assert set(message.latency_ms) == {"end_to_end"}
    total = message.latency_ms[LatencyStage.END_TO_END]
    assert (total.p50_ms, total.samples) == (25.0, 4)
    assert total.p50_ms <= total.p95_ms <= total.p99_ms <= 40.0
    assert message.queue_depths == {"batcher": 3, "telemetry": 1, "preprocess": 0}
    assert message.sources == {"top": "streaming"}
    assert message.outbox is not None and (message.outbox.depth, message.outbox.dropped) == (7, 2)


def test_every_pipeline_stage_and_queue_has_its_contract_name() -> None:
    assert set(STAGE_ON_WIRE) == set(STAGES)
    assert set(STAGE_ON_WIRE.values()) == set(LatencyStage)
    depths = wire_queue_depths({"batcher": 1, "post": 2, "pending": 3, "store": 4,
                                "telemetry": 5, "intake:a": 6, "intake:b": 7})
    assert depths == {"batcher": 1, "postprocess": 2, "pending": 3, "store": 4,
                      "telemetry": 5, "preprocess": 13}
    assert set(depths) == set(QueueName)
    gauges = Gauges(frames_captured=1)
    message = build_metrics(
        site=SITE, line=LINE, msg_id="c" * 32, sent_at=T0, window_s=10.0,
        counts=counts(**{"pass": 10, "uninspected": 2}), gauges=gauges, outbox_depth=0,
        outbox_dropped=0, telemetry_pending=0, frames_captured=25,
    )
    assert message.input_fps == 2.5 and message.fps == 1.2


def test_build_metrics_without_gauges_or_parts() -> None:
    message = build_metrics(
        site=SITE, line=LINE, msg_id="b" * 32, sent_at=T0, window_s=0.0,
        counts=VerdictWindow().take(), gauges=None, outbox_depth=0, outbox_dropped=0,
        telemetry_pending=0,
    )
    assert message.fps == 0.0 and message.window_s > 0 and message.model is None
    decode(*prepare(message)[:2])


def test_defect_event_from_a_failed_record() -> None:
    rec = record(3, "fail", with_image=True)
    facts = defect_facts(rec)
    assert facts.image_size_wh == (64, 48)
    event = defect_event(facts, site=SITE, line=LINE, model=MODEL, msg_id="c" * 32,
                         sent_at=T0)
    assert decode(*prepare(event)[:2]) == event
    assert (event.frame_id, event.part_id, event.station) == ("top:3", "P-3", "top")
    assert event.image_size_wh == (64, 48)
    assert event.latency_ms == rec.latency_ms["total"]
    assert [(d.class_id, d.class_name, d.score, d.box_xyxy) for d in event.defects] == \
        [(5, "scratches", 0.91, (10.0, 20.0, 50.0, 60.0))]


def test_defect_event_frame_size_fallbacks() -> None:
    facts = defect_facts(record(4, "fail"))  # no frame in the record
    known = defect_event(facts, site=SITE, line=LINE, model=MODEL, msg_id="d" * 32,
                         sent_at=T0, size_fallback_wh=(1280, 1024))
    assert known.image_size_wh == (1280, 1024)
    boxes_only = defect_event(facts, site=SITE, line=LINE, model=MODEL, msg_id="e" * 32,
                              sent_at=T0)
    assert boxes_only.image_size_wh == (50, 60)


def test_defect_event_keeps_the_best_1000_detections() -> None:
    rec = record(5, "fail")
    many = tuple(DefectRecord(1, "inclusion", ((i * 7) % 1500) / 1500.0, (0.0, 0.0, 5.0, 5.0))
                 for i in range(1500))
    facts = defect_facts(rec)
    facts = type(facts)(**{**{s: getattr(facts, s) for s in facts.__slots__},
                           "defects": many})
    event = defect_event(facts, site=SITE, line=LINE, model=MODEL, msg_id="f" * 32, sent_at=T0)
    assert len(event.defects) == 1000
    assert min(d.score for d in event.defects) == sorted(d.score for d in many)[-1000]


@pytest.mark.parametrize(
    ("version_id", "expected"),
    [
        ("neu-det-yolo11n:7", ModelRef(name="neu-det-yolo11n", version=7)),
        ("a:b:12", ModelRef(name="a:b", version=12)),
        ("noversion", None),
        ("name:v7", None),
        ("bad name:3", None),
        (None, None),
    ],
)
def test_model_ref_from_version_id(version_id: str | None, expected: ModelRef | None) -> None:
    assert model_ref_from_version_id(version_id) == expected


def test_status_message_and_what_counts_as_a_change() -> None:
    gauges = Gauges(model=MODEL, sources={"top": "lost", "side": "streaming"},
                    alarms=("camera_lost", "camera_lost", "bad alarm"))
    online = status_message(site=SITE, line=LINE, msg_id="1" * 32, sent_at=T0,
                            state="online", app_version="0.1.0", started_at=T0, gauges=gauges)
    assert decode(*prepare(online)[:2]) == online
    assert online.sources == {"side": "streaming", "top": "lost"}
    assert online.alarms == ["camera_lost"] and online.reason is None
    offline = status_message(site=SITE, line=LINE, msg_id="2" * 32, sent_at=T0,
                             state="offline", reason="shutdown")
    assert prepare(offline).retain and offline.reason == "shutdown"
    # order and repeats do not make a change; a source's state does
    same = ("bad alarm", "camera_lost")
    assert status_key(gauges) == status_key(Gauges(model=MODEL, alarms=same,
                                                   sources={"side": "streaming", "top": "lost"}))
    assert status_key(gauges) != status_key(Gauges(model=MODEL, alarms=same,
                                                   sources={"side": "streaming",
                                                            "top": "streaming"}))


def model_info(label: str = "2025-03-10 retrain") -> ModelInfo:
    return ModelInfo(version_id="neu-det-yolo11n:7", name="neu-det-yolo11n", version=7,
                     label=label, preprocess_hash="h", classes=("a",), input_hw=(224, 224),
                     providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                     io_binding=True, max_batch=8, bundle_root="/b", load_s=0.1)


def pipeline_stats(model: ModelInfo | None, *, lost: bool = False,
                   fallbacks: int = 0) -> PipelineStats:
    stations = {
        "top": StationStats("top", "lost" if lost else "streaming", 10, 0, 0, None, None),
        "side": StationStats("side", "streaming", 10, 0, 0, None, None),
    }
    return PipelineStats(
        at=0.0, uptime_s=1.0, frames=20, verdicts={"pass": 20, "fail": 0, "uninspected": 0},
        uninspected={}, defects={}, fps=20.0, latency_ms={},
        queue_depths={"batcher": 2, "post": 0, "pending": 1}, stations=stations, model=model,
        providers=model.providers if model else (), batches=3, mean_batch=6.7,
        late_results=0, engine_failures=0, engine_fallbacks=fallbacks,
    )


def test_gauges_from_pipeline_stats() -> None:
    disk = DiskUsage(used_bytes=1, quota_bytes=2, free_bytes=10)
    g = gauges_from_stats(pipeline_stats(model_info()), store_queue=5, disk=disk,
                          min_free_disk_bytes=5)
    assert g.model == ModelRef(name="neu-det-yolo11n", version=7, label="2025-03-10 retrain")
    assert g.engine_provider == "CUDAExecutionProvider"
    assert g.queue_depths == {"batcher": 2, "post": 0, "pending": 1, "store": 5}
    assert g.sources == {"top": "streaming", "side": "streaming"}
    assert g.alarms == () and g.disk == disk
    bad = gauges_from_stats(pipeline_stats(None, lost=True, fallbacks=1), disk=disk,
                            min_free_disk_bytes=100)
    assert bad.alarms == ("camera_lost", "no_model", "engine_cpu_fallback", "disk_low")
    assert bad.model is None and bad.engine_provider is None


def test_model_ref_survives_a_label_the_wire_cannot_carry() -> None:
    assert model_ref(model_info(label="")) == ModelRef(name="neu-det-yolo11n", version=7)
    assert model_ref(model_info(label="x" * 500)) == ModelRef(name="neu-det-yolo11n", version=7)


def test_config_is_strict_and_keeps_secrets_out_of_sight() -> None:
    cfg = TelemetryConfig.model_validate({"broker": {"username": "line-7", "password": "s3cret"}})
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.model_dump())
    with pytest.raises(ValidationError, match="extra"):
        TelemetryConfig.model_validate({"hots": "broker"})
    with pytest.raises(ValidationError, match="password needs a username"):
        TelemetryConfig.model_validate({"broker": {"password": "x"}})
    with pytest.raises(ValidationError, match="cert_file and key_file"):
        TelemetryConfig.model_validate({"broker": {"tls": {"cert_file": "/a.pem"}}})
    with pytest.raises(ValidationError, match="backlog_inflight_max"):
        TelemetryConfig.model_validate({"inflight_max": 4, "backlog_inflight_max": 8})


def test_records_keep_no_image_in_defect_facts() -> None:
    facts = defect_facts(record(1, "fail", with_image=True))
    assert not any(isinstance(getattr(facts, s), np.ndarray) for s in facts.__slots__)


def test_site_and_line_must_fit_a_topic(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="site"):
        Telemetry(TelemetryConfig(), tmp_path / "x.db", site="Plant 1", line=LINE)
    with pytest.raises(ConfigError, match="line"):
        Telemetry(TelemetryConfig(), tmp_path / "x.db", site=SITE, line="a/b")


def test_disabled_telemetry_does_nothing(tmp_path: Path) -> None:
    telemetry = Telemetry(TelemetryConfig(enabled=False), tmp_path / "none.db", site=SITE,
                          line=LINE)
    telemetry.start()  # no database needed, nothing started
    telemetry.on_verdict(record(1, "fail"))
    assert telemetry.stats() is None and telemetry.window.take().parts == 0
    assert not telemetry.publish_model(MODEL)
    telemetry.stop()

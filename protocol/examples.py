"""One realistic example message per topic kind (plus the last will), for the README.

Fixed ids and timestamps so the generated README is stable; tests decode every example.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from protocol.alerts import AlertCommand
from protocol.codec import prepare
from protocol.commands import RollbackCommand, UpdateCommand
from protocol.defect import DefectEvent, SizedDetection
from protocol.drift import DriftSketchV2, ReferenceInfo, SignalMoments
from protocol.fields import ModelRef
from protocol.metrics import (
    DiskUsage,
    LatencyStage,
    LatencyStats,
    MetricsMessage,
    OutboxStats,
    QueueName,
    UninspectedReason,
    VerdictCounts,
)
from protocol.model_report import ModelReport, UpdateProgress
from protocol.registry import Message
from protocol.status import StatusMessage

SITE = "plant1"
LINE = "line-3"
_T0 = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


def _status_examples(current: ModelRef) -> list[tuple[str, Message]]:
    online = StatusMessage(
        msg_id="0f8e3c2a9b7d4e61a5c3f2e1d0b9a877",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        state="online",
        app_version="0.1.0",
        started_at=_T0 - timedelta(hours=2),
        model=current,
        sources={"cam-top": "streaming", "cam-side": "lost"},
        alarms=["camera_lost"],
    )
    # What `last_will()` builds; the broker publishes it when the connection dies.
    will = StatusMessage(
        msg_id="5b1e9f0c3d2a4b8e9f7a6c5d4e3b2a19",
        site=SITE,
        line=LINE,
        sent_at=_T0 - timedelta(hours=2),
        state="offline",
        reason="connection_lost",
        app_version="0.1.0",
    )
    return [("status (online)", online), ("status (last will)", will)]


def _metrics_example(current: ModelRef) -> MetricsMessage:
    return MetricsMessage(
        msg_id="01JPB8Z6Q4T9W2X7Y3K5M8N1R0",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        window_s=10.0,
        fps=29.8,
        input_fps=29.8,
        verdicts=VerdictCounts(passed=281, failed=14, uninspected=3),
        defects_by_class={"scratches": 9, "inclusion": 4, "patches": 2},
        failed_parts_by_class={"scratches": 8, "inclusion": 4, "patches": 2},
        uninspected_by_reason={UninspectedReason.DEADLINE: 2, UninspectedReason.DROPPED: 1},
        latency_ms={
            LatencyStage.QUEUE: LatencyStats(p50_ms=0.8, p95_ms=2.1, p99_ms=3.0, samples=295),
            LatencyStage.PREPROCESS: LatencyStats(p50_ms=1.9, p95_ms=2.6, p99_ms=3.4,
                                                  samples=295),
            LatencyStage.BATCH_WAIT: LatencyStats(p50_ms=1.2, p95_ms=2.0, p99_ms=2.0,
                                                  samples=295),
            LatencyStage.INFERENCE: LatencyStats(p50_ms=6.2, p95_ms=8.9, p99_ms=12.5,
                                                 samples=295),
            LatencyStage.POSTPROCESS: LatencyStats(p50_ms=0.9, p95_ms=1.4, p99_ms=2.2,
                                                   samples=295),
            LatencyStage.END_TO_END: LatencyStats(p50_ms=18.4, p95_ms=31.0, p99_ms=47.2,
                                                  samples=295),
        },
        engine_provider="CUDAExecutionProvider",
        model=current,
        queue_depths={QueueName.PREPROCESS: 0, QueueName.BATCHER: 3, QueueName.POSTPROCESS: 0,
                      QueueName.PENDING: 4, QueueName.STORE: 12, QueueName.TELEMETRY: 1},
        sources={"cam-top": "streaming"},
        disk=DiskUsage(
            used_bytes=8_234_567_890, quota_bytes=20_000_000_000, free_bytes=96_000_000_000
        ),
        outbox=OutboxStats(depth=1, dropped=0),
    )


def _defect_example(current: ModelRef) -> DefectEvent:
    return DefectEvent(
        msg_id="7c4d2e9a1b3f4c5d8e6f7a8b9c0d1e2f",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        part_id="P-2025-0314-004711",
        frame_id="184467",
        station="cam-top",
        captured_at=_T0 - timedelta(milliseconds=41),
        model=current,
        image_size_wh=(1280, 1024),
        defects=[
            SizedDetection(
                class_id=5,
                class_name="scratches",
                score=0.91,
                box_xyxy=(412.0, 96.5, 530.25, 188.0),
                size_mm_wh=(23.65, 18.3),
            ),
            SizedDetection(
                class_id=1,
                class_name="inclusion",
                score=0.47,
                box_xyxy=(80.0, 700.0, 112.0, 741.5),
                size_mm_wh=(6.4, 8.3),
            ),
        ],
        latency_ms=38.6,
    )


def _drift_example(current: ModelRef) -> DriftSketchV2:
    names = ["roi.luma", "roi.log_std", "roi.sharpness", "bg.luma", "emb0"]
    return DriftSketchV2(
        msg_id="a1b2c3d4e5f60718293a4b5c6d7e8f90",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        window_start=_T0 - timedelta(seconds=30),
        window_end=_T0,
        station="cam-top",
        ref_model=current,
        first_frame_id=120_400,
        last_frame_id=120_699,
        frame_count=300,
        signals_version="lineguard.drift-signals/2",
        reference=ReferenceInfo(source="bundle", frames=1200, sha256="9f" * 32),
        image=SignalMoments(
            names=names,
            sums=[141.3, 147.6, 396.0, 37.8, -9.6],
            sums_sq=[66.6, 73.1, 523.1, 4.8, 12.9],
            samples=[[0.471, 0.489, 1.318, 0.126, -0.041],
                     [0.468, 0.502, 1.327, 0.125, -0.022]],
        ),
        output=SignalMoments(
            names=["detections", "score_mean", "score_max", "class.scratch", "class.pit"],
            sums=[231.0, 101.7, 129.3, 140.0, 91.0],
            sums_sq=[412.0, 61.2, 73.0, 190.0, 95.0],
        ),
    )


def _model_example(current: ModelRef, previous: ModelRef) -> ModelReport:
    return ModelReport(
        msg_id="3e5f7a9b1c2d4e6f8a0b2c4d6e8f0a1b",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        current=previous,
        previous=ModelRef(name="neu-det-yolo11n", version=5),
        update=UpdateProgress(
            update_id="upd-20250314-0926",
            trigger="hint",
            cmd_msg_id="9d8c7b6a5f4e4d3c2b1a0f9e8d7c6b5a",
            target=current,
            step="shadow",
            state="running",
            progress=0.4,
        ),
    )


def _command_examples(current: ModelRef, previous: ModelRef) -> list[tuple[str, Message]]:
    update = UpdateCommand(
        msg_id="9d8c7b6a5f4e4d3c2b1a0f9e8d7c6b5a",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        target_name=current.name,
        target_version=current.version,
        reason="canary rollout of version 7",
        issued_by="rollout-service",
    )
    rollback = RollbackCommand(
        msg_id="c0ffee00deadbeef0123456789abcdef",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        target_version=previous.version,
        reason="canary showed a defect-rate shift",
        issued_by="alice@plant1",
    )
    alert = AlertCommand(
        msg_id="d71f3a5c9e2b4f6a8c0d1e2f3a4b5c6d",
        site=SITE,
        line=LINE,
        sent_at=_T0,
        alert_id="drift-8c41e07d2b",
        code="drift",
        severity="warning",
        message="image drift on line-3 (model neu-det-yolo11n v7): roi.sharpness, bg.luma",
        model=current,
        channels=["roi.sharpness", "bg.luma"],
        began_at=_T0 - timedelta(minutes=4),
        raised_at=_T0,
        issued_by="drift-monitor",
    )
    return [("cmd/update", update), ("cmd/rollback", rollback), ("cmd/alert", alert)]


def example_messages() -> list[tuple[str, Message]]:
    """Return `(title, message)` pairs: one per topic kind, and the status last will."""
    current = ModelRef(name="neu-det-yolo11n", version=7, label="2025-03-10 retrain")
    previous = ModelRef(name="neu-det-yolo11n", version=6, label="2025-02-02 retrain")
    return [
        *_status_examples(current),
        ("metrics", _metrics_example(current)),
        ("events/defect", _defect_example(current)),
        ("drift", _drift_example(current)),
        ("model", _model_example(current, previous)),
        *_command_examples(current, previous),
    ]


README_BEGIN = "<!-- BEGIN GENERATED EXAMPLES (python -m protocol.schemas --readme) -->"
README_END = "<!-- END GENERATED EXAMPLES -->"


def examples_markdown() -> str:
    """The README's examples section: a heading with the topic, then the JSON payload."""
    blocks = []
    for title, message in example_messages():
        outgoing = prepare(message)
        flags = f"QoS {outgoing.qos}" + (", retained" if outgoing.retain else "")
        pretty = json.dumps(json.loads(outgoing.payload), indent=2, ensure_ascii=False)
        blocks.append(f"#### {title}: `{outgoing.topic}` ({flags})\n\n```json\n{pretty}\n```\n")
    return "\n".join(blocks)


def render_readme(text: str) -> str:
    """Return README `text` with the generated examples between the markers replaced.

    Raises ValueError if the markers are missing or out of order.
    """
    start = text.find(README_BEGIN)
    end = text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"README lacks the markers {README_BEGIN!r} ... {README_END!r}")
    head = text[: start + len(README_BEGIN)]
    return f"{head}\n\n{examples_markdown()}\n{text[end:]}"

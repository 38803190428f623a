"""Verdicts from detections: per-class thresholds, ROI offsets, uninspected records."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from appliance.capture import Frame
from appliance.pipeline.judge import Judge, inspected_record, uninspected_record
from appliance.records import UninspectedReason
from models.manifest import InputSpec, Lineage, Manifest, OutputSpec, PostprocessSpec
from models.postprocess import Detections

CLASSES = ("dent", "scratch", "stain")


def detections(rows: list[tuple[int, float]]) -> Detections:
    """One box per (class id, score); box i is (i, i, i + 10, i + 20)."""
    if not rows:
        return Detections.empty()
    boxes = np.array([[i, i, i + 10, i + 20] for i in range(len(rows))], dtype=np.float32)
    return Detections(boxes, np.array([s for _, s in rows], dtype=np.float32),
                      np.array([c for c, _ in rows], dtype=np.int64))


@pytest.mark.parametrize(
    ("thresholds", "rows", "verdict", "kept"),
    [
        ((0.25, 0.25, 0.25), [], "pass", []),
        ((0.25, 0.25, 0.25), [(0, 0.9)], "fail", ["dent"]),
        ((0.25, 0.25, 0.25), [(0, 0.25)], "pass", []),  # strictly above the threshold
        ((0.25, 0.8, 0.25), [(1, 0.7)], "pass", []),  # scratch needs > 0.8
        ((0.25, 0.8, 0.25), [(1, 0.85), (2, 0.3)], "fail", ["scratch", "stain"]),
        ((0.5, 0.5, 0.1), [(0, 0.4), (2, 0.2)], "fail", ["stain"]),
    ],
)
def test_verdict_table(thresholds: tuple[float, float, float], rows: list[tuple[int, float]],
                       verdict: str, kept: list[str]) -> None:
    judge = Judge(CLASSES, np.array(thresholds, dtype=np.float32))
    got, defects = judge.verdict(detections(rows))
    assert got == verdict
    assert [d.class_name for d in defects] == kept


def test_boxes_are_shifted_by_the_station_roi_origin() -> None:
    judge = Judge(CLASSES, np.full(3, 0.25, dtype=np.float32))
    _, defects = judge.verdict(detections([(2, 0.5)]), offset_xy=(100, 50))
    assert defects[0].box_xyxy == (100.0, 50.0, 110.0, 70.0)
    assert defects[0].class_id == 2 and defects[0].score == pytest.approx(0.5)


def test_thresholds_come_from_the_bundle_postprocess_spec() -> None:
    manifest = Manifest(
        name="m", version=1, label="m", classes=list(CLASSES),
        input=InputSpec(height=64, width=64), output=OutputSpec(),
        postprocess=PostprocessSpec(score_threshold=0.3, class_score_thresholds={"stain": 0.6}),
        lineage=Lineage(created_at=datetime(2026, 1, 1, tzinfo=UTC)),
    )
    judge = Judge.from_manifest(manifest)
    assert judge.thresholds.tolist() == pytest.approx([0.3, 0.3, 0.6])
    assert judge.verdict(detections([(2, 0.5)]))[0] == "pass"
    assert judge.verdict(detections([(0, 0.5)]))[0] == "fail"


def frame() -> Frame:
    return Frame("cam:7", "cam", 7, 1000.0, "part-7", np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize("reason", list(UninspectedReason))
def test_uninspected_records_carry_the_reason_and_never_pass(
    reason: UninspectedReason,
) -> None:
    record = uninspected_record(frame(), reason, judged_at=1000.25, model_version="m:1")
    assert record.verdict == "uninspected" and record.reason == str(reason)
    assert record.latency_ms == {"total": pytest.approx(250.0)}
    assert record.defects == () and record.part_id == "part-7"
    assert record.image_bgr is not None
    assert uninspected_record(frame(), reason, judged_at=999.0,
                              keep_image=False).latency_ms == {"total": 0.0}


def test_inspected_record() -> None:
    judge = Judge(CLASSES, np.full(3, 0.25, dtype=np.float32))
    verdict, defects = judge.verdict(detections([(0, 0.9)]))
    record = inspected_record(frame(), verdict, defects, judged_at=1000.1, model_version="m:1",
                              preprocess_hash="abc", latency_ms={"infer": 3.0, "total": 100.0},
                              keep_image=False)
    assert record.verdict == "fail" and record.reason is None and record.image_bgr is None
    assert record.defects == defects

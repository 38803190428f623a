"""Verdicts: detections in, `InspectionRecord`s out. Pure functions, no IO, no clock.

A part `fail`s when at least one detection scores above its class's threshold (the
bundle's `postprocess.score_threshold`, overridden per class by
`class_score_thresholds`) and, where the station has a scale and a minimum defect
size for its class (`calibration.station.DefectSizing`), its box's longer side
reaches that size in mm; it `pass`es otherwise, and is `uninspected` (with the reason)
when it got no real inference: dropped at capture, engine failure, no model, deadline
missed, shutdown. The line treats `uninspected` as a reject; nothing here ever turns a
missing result into a `pass`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from appliance.capture import Frame
from appliance.records import DefectRecord, InspectionRecord, UninspectedReason, Verdict
from calibration.station import DefectSizing
from models.manifest import Manifest
from models.postprocess import Detections


@dataclass(frozen=True)
class Judge:
    """Per-class thresholds of one bundle. `thresholds[c]` applies to class `c`."""

    classes: tuple[str, ...]
    thresholds: npt.NDArray[np.float32]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Judge:
        """Thresholds from the bundle's postprocess spec."""
        classes = tuple(manifest.classes)
        return cls(classes, manifest.postprocess.threshold_for(classes))

    def defects(
        self,
        detections: Detections,
        offset_xy: tuple[float, float] = (0.0, 0.0),
        sizing: DefectSizing | None = None,
    ) -> tuple[DefectRecord, ...]:
        """The detections that count as defects (score > their class threshold and, with
        `sizing`, at least their class's minimum size in mm), highest score first, boxes
        xyxy shifted by `offset_xy` (the station ROI origin) into full-frame pixels, with
        their size in mm when `sizing` is given."""
        if len(detections) == 0:
            return ()
        class_ids = detections.class_ids
        scores = detections.scores
        keep = scores > self.thresholds[class_ids]
        sizes = None
        if sizing is not None:
            sizes = sizing.sizes_mm(detections.boxes_xyxy)
            keep &= sizing.large_enough(sizes, [self.classes[int(c)] for c in class_ids])
        if not keep.any():
            return ()
        boxes = detections.boxes_xyxy[keep].astype(np.float64)
        dx, dy = offset_xy
        if dx or dy:
            boxes += np.array([dx, dy, dx, dy])
        return tuple(
            DefectRecord(
                class_id=int(c),
                class_name=self.classes[int(c)],
                score=min(1.0, max(0.0, float(s))),
                box_xyxy=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                size_mm_wh=None if mm is None else (float(mm[0]), float(mm[1])),
            )
            for c, s, b, mm in zip(class_ids[keep], scores[keep], boxes,
                                   sizes[keep] if sizes is not None else [None] * len(boxes),
                                   strict=True)
        )

    def verdict(
        self,
        detections: Detections,
        offset_xy: tuple[float, float] = (0.0, 0.0),
        sizing: DefectSizing | None = None,
    ) -> tuple[Verdict, tuple[DefectRecord, ...]]:
        """("fail", defects) if any detection is a defect, else ("pass", ())."""
        found = self.defects(detections, offset_xy, sizing)
        return ("fail" if found else "pass"), found


def inspected_record(
    frame: Frame,
    verdict: Verdict,
    defects: Sequence[DefectRecord],
    *,
    judged_at: float,
    model_version: str,
    preprocess_hash: str,
    latency_ms: Mapping[str, float],
    keep_image: bool,
) -> InspectionRecord:
    """The record of a frame that went through the model."""
    return InspectionRecord(
        frame_id=frame.frame_id,
        station=frame.station,
        part_id=frame.part_id,
        captured_at=frame.captured_at,
        judged_at=judged_at,
        verdict=verdict,
        reason=None,
        model_version=model_version,
        preprocess_hash=preprocess_hash,
        latency_ms=latency_ms,
        defects=tuple(defects),
        # A frame the source could not read has an empty image: nothing to keep.
        image_bgr=frame.image_bgr if keep_image and frame.image_bgr.size else None,
    )


def uninspected_record(
    frame: Frame,
    reason: UninspectedReason,
    *,
    judged_at: float,
    model_version: str | None = None,
    preprocess_hash: str | None = None,
    keep_image: bool = True,
) -> InspectionRecord:
    """The record of a frame that got no real verdict; its only latency is `total`
    (capture to this record, ms, never negative)."""
    return InspectionRecord(
        frame_id=frame.frame_id,
        station=frame.station,
        part_id=frame.part_id,
        captured_at=frame.captured_at,
        judged_at=judged_at,
        verdict="uninspected",
        reason=str(reason),
        model_version=model_version,
        preprocess_hash=preprocess_hash,
        latency_ms={"total": max(0.0, (judged_at - frame.captured_at) * 1000.0)},
        image_bgr=frame.image_bgr if keep_image else None,
    )

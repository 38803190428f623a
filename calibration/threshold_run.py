"""`lineguard calibration thresholds`: score the validation set, choose thresholds,
write the new bundle version and the report. The IO around `calibration.thresholds`.

Inference is `models.evaluate.iter_detections` (the serving path: the bundle's own
preprocessing, undistortion included, single-label decoding and the bundle's NMS),
at the validation floor 0.001 so every score a threshold could fall on is seen.
The new bundle keeps everything but its postprocessing thresholds, gets version + 1
with the old one as parent, and its golden set is made again (a higher threshold
drops detections the old golden set lists).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from calibration.errors import ThresholdError
from calibration.thresholds import (
    ClassThreshold,
    PartScores,
    choose_threshold,
    curves,
    part_scores,
)
from models.bundle import Bundle, load_bundle
from models.evaluate import ProgressCallback, iter_detections
from models.golden import GOLDEN_JSON, GoldenFile, build_bundle
from models.imagefile import decode_image
from models.manifest import Lineage
from models.undistort import CAMERA_FILE, bundle_camera
from models.yolo_dataset import YoloDataset
from protocol.atomic import atomic_write_text

__all__ = [
    "ThresholdRun",
    "choose_all",
    "load_bundle",
    "run_json",
    "score_parts",
    "temp_bundle_dir",
    "write_report",
    "write_thresholds_bundle",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThresholdRun:
    """What one calibration chose and measured."""

    target_miss_rate: float
    per_class: bool
    split: str
    parts: int
    thresholds: list[ClassThreshold]


def score_parts(
    bundle: Bundle, dataset: YoloDataset, split: str, per_class: bool,
    *, batch_size: int = 8, providers: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
) -> list[PartScores]:
    """Highest score per class of every part of `split`, and its defect flags."""
    manifest = bundle.manifest
    nc = len(manifest.classes)
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for image in iter_detections(
        bundle, dataset, split, batch_size=batch_size, providers=providers,
        iou=manifest.postprocess.iou_threshold, max_det=manifest.postprocess.max_detections,
        multi_label=False, progress=progress,
    ):
        found = image.detections
        best = np.zeros(nc, np.float64)
        if len(found):
            np.maximum.at(best, found.class_ids.astype(np.int64), found.scores.astype(np.float64))
        labels.append(image.labels[:, 0].astype(np.int64) if image.labels.size else
                      np.zeros(0, np.int64))
        scores.append(best)
    if not labels:
        raise ThresholdError(f"{dataset.label}:{split}: no images")
    return part_scores(labels, scores, manifest.classes, per_class)


def choose_all(parts: Sequence[PartScores], target: float) -> list[ClassThreshold]:
    """`choose_threshold` for every entry; refuses (ThresholdError) naming every class
    that cannot support the target, in one line."""
    chosen, errors = [], []
    for part in parts:
        try:
            chosen.append(choose_threshold(part, target))
        except ThresholdError as exc:
            errors.append(str(exc))
    if errors:
        raise ThresholdError("; ".join(errors))
    return chosen


def _golden_images(bundle: Bundle) -> list[np.ndarray]:
    golden = GoldenFile.model_validate_json(bundle.path_of(GOLDEN_JSON).read_bytes())
    images = []
    for entry in golden.images:
        data = bundle.path_of(entry.file).read_bytes()
        # as the golden set reads them: unchanged (a grey frame stays grey)
        images.append(np.asarray(decode_image(data, Path(entry.file).name,
                                              flags=cv2.IMREAD_UNCHANGED), np.uint8))
    return images


def write_thresholds_bundle(
    bundle: Bundle, out_dir: Path, run: ThresholdRun, *, dataset_label: str,
    providers: Sequence[str] | None = None,
) -> Bundle:
    """The bundle with the chosen thresholds as version + 1 in `out_dir` (golden set
    made again, calibration shipped again when its spec names one)."""
    m = bundle.manifest
    if run.per_class:
        post = m.postprocess.model_copy(update={"class_score_thresholds": {
            t.name: t.threshold for t in run.thresholds}})
    else:
        post = m.postprocess.model_copy(update={
            "score_threshold": run.thresholds[0].threshold, "class_score_thresholds": {}})
    camera = None
    if m.preprocess.undistort_calibration is not None:
        camera = bundle_camera(m.preprocess.undistort_calibration,
                               bundle.path_of(CAMERA_FILE).read_bytes(), "bundle")
    config = dict(m.lineage.training_config)
    config["thresholds_target_miss_rate"] = run.target_miss_rate
    config["thresholds_dataset"] = f"{dataset_label}:{run.split}"
    lineage = Lineage(
        dataset_fingerprint=m.lineage.dataset_fingerprint, code_revision=m.lineage.code_revision,
        training_config=config, parent_version=m.version, created_at=datetime.now(UTC))
    return build_bundle(
        out_dir, bundle.model_path, name=m.name, version=m.version + 1, label=m.label,
        variant=m.variant, classes=m.classes, input_hw=(m.input.height, m.input.width),
        preprocess=m.preprocess.model_copy(update={"undistort_calibration": None}),
        postprocess=post, output_format=m.output.format, lineage=lineage, metrics=m.metrics,
        golden_images=_golden_images(bundle), providers=providers, camera=camera)


def run_json(run: ThresholdRun) -> str:
    """The run as JSON (thresholds, rates and intervals per class)."""
    return json.dumps({
        "target_miss_rate": run.target_miss_rate, "per_class": run.per_class,
        "split": run.split, "parts": run.parts,
        "thresholds": [asdict(t) for t in run.thresholds]}, indent=2) + "\n"


def write_report(report_dir: Path, run: ThresholdRun, parts: Sequence[PartScores],
                 title: str) -> Path:
    """``report.html`` (self-contained), one PNG per class and ``thresholds.json`` in
    `report_dir`; returns the HTML path."""
    from calibration.report import render_report  # lazily: matplotlib

    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "thresholds.json", run_json(run))
    return render_report(report_dir, run, [(p, curves(p)) for p in parts], title)


def temp_bundle_dir() -> tempfile.TemporaryDirectory[str]:
    """A scratch directory for unpacking a .tar bundle."""
    return tempfile.TemporaryDirectory(prefix="lineguard-thresholds-")


"""Golden sets on tiny real ONNX detectors: creation, verification, and every way
verification must fail loudly, naming the image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from models.bundle import Bundle, load_bundle
from models.errors import BundleIntegrityError, GoldenMismatchError, ModelError, ModelShapeError
from models.golden import GOLDEN_JSON, build_bundle, create_golden, verify_golden
from models.preprocess import Tensor
from models.runtime import OnnxDetector

from .onnx_builders import (
    build_tiny_bundle,
    build_yolo_raw_model,
    read_image,
    resign_bundle,
    simple_raw_detections,
    tiny_lineage,
)


@pytest.fixture(scope="module")
def raw_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("golden")
    return build_tiny_bundle(work / "bundle", work).root


@pytest.fixture
def raw_bundle(raw_bundle_dir: Path, tmp_path: Path) -> Bundle:
    """A private copy of the module's bundle, free to tamper with."""
    import shutil

    shutil.copytree(raw_bundle_dir, tmp_path / "copy")
    return load_bundle(tmp_path / "copy")


class ScaledScores:
    """A detector whose class scores drift by `factor` (like a different runtime)."""

    def __init__(self, inner: OnnxDetector, factor: float = 1.0, shift_px: float = 0.0) -> None:
        self.inner, self.factor, self.shift_px = inner, factor, shift_px

    def run(self, batch: Tensor) -> Tensor:
        out = self.inner.run(batch).copy()
        out[:, 4:, :] *= np.float32(self.factor)
        out[:, 0, :] += np.float32(self.shift_px)
        return out


def test_built_bundle_verifies(raw_bundle: Bundle) -> None:
    files = raw_bundle.manifest.files
    assert {GOLDEN_JSON, "golden/img_000.png", "golden/img_002.png"} <= set(files)
    report = verify_golden(raw_bundle, OnnxDetector(raw_bundle.model_path))
    assert report.images == 3 and report.detections == 6
    assert report.max_score_diff == 0.0 and report.min_iou == pytest.approx(1.0)


def test_end2end_bundle_verifies(tmp_path: Path) -> None:
    bundle = build_tiny_bundle(tmp_path / "bundle", tmp_path, output_format="end2end")
    assert isinstance(bundle, Bundle)
    assert bundle.manifest.output.format == "end2end"
    report = verify_golden(bundle, OnnxDetector(bundle.model_path))
    assert report.images == 3 and report.detections == 6


def test_corrupt_golden_image_is_caught_by_sha256(raw_bundle: Bundle) -> None:
    path = raw_bundle.root / "golden" / "img_001.png"
    image = read_image(path)
    image[0, 0] = 0
    cv2.imwrite(str(path), image)
    with pytest.raises(BundleIntegrityError, match=r"golden/img_001\.png: sha256 mismatch"):
        load_bundle(raw_bundle.root)


def test_corrupt_and_resigned_golden_image_is_named(raw_bundle: Bundle) -> None:
    path = raw_bundle.root / "golden" / "img_001.png"
    image = read_image(path)
    image[10:20, 10:20] = 0
    cv2.imwrite(str(path), image)
    resign_bundle(raw_bundle.root)
    bundle = load_bundle(raw_bundle.root)
    with pytest.raises(
        GoldenMismatchError,
        match=r"golden image img_001\.png: preprocessed tensor sha256 .* same spec",
    ):
        verify_golden(bundle, OnnxDetector(bundle.model_path))


@pytest.mark.parametrize(
    ("preprocess", "image"),
    [
        ({"pad_value": 0}, "img_000.png"),  # 48x64 is padded: first image differs
        ({"interpolation": "nearest"}, "img_002.png"),  # only 80x40 is resized
        ({"resize": "stretch"}, "img_000.png"),
        ({"color_order": "bgr"}, "img_000.png"),
    ],
)
def test_changed_preprocessing_spec_names_the_image(
    raw_bundle: Bundle, preprocess: dict[str, Any], image: str
) -> None:
    resign_bundle(raw_bundle.root, lambda d: d["preprocess"].update(preprocess))
    bundle = load_bundle(raw_bundle.root)
    with pytest.raises(
        GoldenMismatchError,
        match=rf"golden image {image}: preprocessed tensor .* preprocessing spec changed",
    ):
        verify_golden(bundle, OnnxDetector(bundle.model_path))


def test_changed_class_threshold_names_image_and_count(raw_bundle: Bundle) -> None:
    resign_bundle(
        raw_bundle.root, lambda d: d["postprocess"].update(class_score_thresholds={"scratch": 0.9})
    )
    bundle = load_bundle(raw_bundle.root)
    with pytest.raises(
        GoldenMismatchError,
        match=r"golden image img_000\.png: 1 detections, expected 2: detection 1 \(class scratch",
    ):
        verify_golden(bundle, OnnxDetector(bundle.model_path))


def test_score_drift_is_named(raw_bundle: Bundle) -> None:
    drifting = ScaledScores(OnnxDetector(raw_bundle.model_path), factor=0.98)
    with pytest.raises(
        GoldenMismatchError, match=r"golden image img_000\.png: detection 0 \(class dent\) score"
    ):
        verify_golden(raw_bundle, drifting)
    tiny = ScaledScores(OnnxDetector(raw_bundle.model_path), factor=1.001)
    report = verify_golden(raw_bundle, tiny)  # within score_tol 0.005
    assert 0 < report.max_score_diff < 0.005


def test_box_drift_is_named(raw_bundle: Bundle) -> None:
    shifted = ScaledScores(OnnxDetector(raw_bundle.model_path), shift_px=3.0)
    with pytest.raises(GoldenMismatchError, match=r"img_000\.png: .* not reproduced \(best IoU"):
        verify_golden(raw_bundle, shifted)


def test_missing_golden_set(raw_bundle: Bundle) -> None:
    (raw_bundle.root / GOLDEN_JSON).unlink()
    resign_bundle(raw_bundle.root, lambda d: d["files"].pop(GOLDEN_JSON))
    bundle = load_bundle(raw_bundle.root)
    with pytest.raises(GoldenMismatchError, match="no golden set"):
        verify_golden(bundle, OnnxDetector(bundle.model_path))


def test_build_bundle_checks_model_io_first(tmp_path: Path) -> None:
    boxes, scores = simple_raw_detections(3)
    onnx_path = build_yolo_raw_model(tmp_path / "m.onnx", boxes, scores)
    lineage = tiny_lineage()
    with pytest.raises(ModelShapeError, match=r"expected 4\+2 = 6 rows for 2 classes"):
        build_bundle(
            tmp_path / "out",
            onnx_path,
            name="tiny",
            version=1,
            label="v1",
            classes=["a", "b"],
            input_hw=(64, 64),
            lineage=lineage,
            golden_images=[np.zeros((64, 64, 3), np.uint8)],
        )
    assert not (tmp_path / "out").exists()


def test_create_golden_needs_images(tmp_path: Path, raw_bundle: Bundle) -> None:
    with pytest.raises(ModelError, match="at least one image"):
        create_golden(tmp_path, raw_bundle.manifest, [], OnnxDetector(raw_bundle.model_path))


def test_grey_golden_images_round_trip(tmp_path: Path) -> None:
    boxes, scores = simple_raw_detections(3)
    onnx_path = build_yolo_raw_model(tmp_path / "m.onnx", boxes, scores)
    grey = np.random.default_rng(3).integers(100, 256, (50, 70), dtype=np.uint8)
    bundle = build_bundle(
        tmp_path / "out",
        onnx_path,
        name="grey",
        version=1,
        label="v1",
        classes=["a", "b", "c"],
        input_hw=(64, 64),
        lineage=tiny_lineage(),
        golden_images=[grey],
    )
    stored = read_image(bundle.root / "golden" / "img_000.png")
    assert stored.shape == (50, 70)  # kept grey, lossless
    np.testing.assert_array_equal(stored, grey)
    assert verify_golden(bundle, OnnxDetector(bundle.model_path)).detections == 2


@pytest.mark.parametrize(("a", "b", "expected"), [
    ([0, 480, 106.5, 480], [0, 480, 106.5, 480], 1.0),   # flat against the border, found again
    ([0, 480, 106.5, 480], [0, 479.2, 106.5, 480], 0.0),  # flat vs. a box: no overlap to measure
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),
    ([0, 0, 10, 10], [5, 0, 15, 10], 1 / 3),
])
def test_iou_of_flat_boxes(a: list[float], b: list[float], expected: float) -> None:
    from models.golden import _iou_xyxy

    got = _iou_xyxy(np.asarray(a, np.float32), np.asarray([b], np.float32))
    assert got[0] == pytest.approx(expected)

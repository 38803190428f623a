"""Undistortion in the versioned preprocessing: a bundle names its camera calibration,
ships it, its golden set covers it, and a station with another camera is refused."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.camera_model import CameraCalibration
from linesim.config import LineConfig
from linesim.line import render
from models.bundle import load_bundle
from models.errors import BundleIntegrityError, ModelError
from models.golden import build_bundle, verify_golden
from models.manifest import Lineage, PreprocessSpec
from models.preprocess import preprocess, preprocess_batch
from models.runtime import OnnxDetector
from models.undistort import (
    CAMERA_FILE,
    CalibrationMismatch,
    Undistorter,
    bundle_undistorter,
    check_station_camera,
)

from .onnx_builders import resign_bundle

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"
CAMERA = CameraCalibration(fx=700.0, fy=700.0, cx=320.0, cy=240.0,
                           dist=(-0.25, 0.08, 0.001, -0.0008, 0.0), image_size=(640, 480),
                           rms_px=0.1).with_hash()
OTHER = CAMERA.model_copy(update={"cx": 321.0, "sha256": ""}).with_hash()


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [render(LineConfig(seed=1), k).image_bgr for k in range(3)]


@pytest.fixture(scope="module")
def undistorting_bundle(tmp_path_factory: pytest.TempPathFactory,
                        frames: list[np.ndarray]) -> Path:
    demo = load_bundle(DEMO).manifest
    bundle = build_bundle(
        tmp_path_factory.mktemp("undistort") / "bundle", DEMO / "model.onnx", name="demo",
        version=2, label="undistorted", classes=demo.classes, input_hw=(320, 320),
        lineage=Lineage(created_at=datetime(2026, 1, 1, tzinfo=UTC)),
        golden_images=frames[:2], providers=["cpu"], camera=CAMERA)
    return bundle.root


def test_bundle_names_ships_and_verifies_its_calibration(undistorting_bundle: Path) -> None:
    bundle = load_bundle(undistorting_bundle)
    spec = bundle.manifest.preprocess
    assert spec.undistort_calibration == CAMERA.content_hash()
    assert CAMERA_FILE in bundle.manifest.files
    # the hash enters the preprocessing hash
    plain = spec.model_copy(update={"undistort_calibration": None})
    assert spec.version_hash() != plain.version_hash()
    report = verify_golden(bundle, OnnxDetector(bundle.model_path, ["cpu"]))
    assert report.images == 2


def test_undistorted_tensor_differs_and_tables_are_built_once(frames: list[np.ndarray]) -> None:
    spec = PreprocessSpec(undistort_calibration=CAMERA.content_hash())
    undistorter = Undistorter(CAMERA)
    batch, _ = preprocess_batch(frames, spec, (320, 320), undistort=undistorter)
    again, _ = preprocess(frames[0], spec, (320, 320), undistort=undistorter)
    raw, _ = preprocess(frames[0], PreprocessSpec(), (320, 320))
    assert undistorter.tables_built == 1  # once per camera, not per frame
    np.testing.assert_array_equal(batch[0], again)
    assert not np.array_equal(again, raw)
    # the remap is OpenCV's own undistortion with K as the new camera matrix
    expected = cv2.undistort(frames[0], CAMERA.matrix, CAMERA.dist_array, None, CAMERA.matrix)
    diff = np.abs(undistorter.apply(frames[0]).astype(int) - expected.astype(int))
    assert np.mean(diff[20:-20, 20:-20]) < 1.0


@pytest.mark.parametrize(("undistort", "message"), [
    (None, "no camera calibration was given"),
    (Undistorter(OTHER), "but frames come with calibration"),
])
def test_preprocess_refuses_a_missing_or_other_calibration(
    frames: list[np.ndarray], undistort: Undistorter | None, message: str
) -> None:
    spec = PreprocessSpec(undistort_calibration=CAMERA.content_hash())
    with pytest.raises(ModelError, match=message):
        preprocess(frames[0], spec, (320, 320), undistort=undistort)


def test_frame_of_another_size_is_refused() -> None:
    with pytest.raises(ModelError, match="frame is 320x240 but camera calibration"):
        Undistorter(CAMERA).apply(np.zeros((240, 320, 3), np.uint8))


@pytest.mark.parametrize(("station", "message"), [
    (OTHER, f"needs camera calibration {CAMERA.content_hash()[:16]}.., but this station's "
            f"camera calibration is {OTHER.content_hash()[:16]}"),
    (None, "this station has no camera calibration"),
])
def test_station_with_another_camera_is_refused(
    station: CameraCalibration | None, message: str
) -> None:
    with pytest.raises(CalibrationMismatch, match=message.replace(".", r"\.")):
        check_station_camera(CAMERA.content_hash(), station, "bundle demo v2")
    check_station_camera(CAMERA.content_hash(), CAMERA, "bundle demo v2")
    check_station_camera(None, station, "bundle demo v1")  # names none: runs anywhere


def test_shipped_calibration_must_match_the_spec(undistorting_bundle: Path,
                                                 tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(undistorting_bundle, root)
    (root / CAMERA_FILE).write_text(OTHER.to_json())
    resign_bundle(root)
    with pytest.raises(BundleIntegrityError, match=r"preprocess\.undistort_calibration names"):
        bundle_undistorter(load_bundle(root))
    edited = json.loads(CAMERA.to_json())
    edited["fx"] = 701.0  # edited without a new hash
    (root / CAMERA_FILE).write_text(json.dumps(edited))
    resign_bundle(root)
    with pytest.raises(BundleIntegrityError, match="does not match the content"):
        bundle_undistorter(load_bundle(root))

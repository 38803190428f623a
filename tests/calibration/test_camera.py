"""Camera calibration and scale on linesim views against their truth (issue 15's
accuracy bounds), and the camera.json contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from calibration.camera import calibrate_camera, list_images, parse_board, read_grey
from calibration.camera_model import CameraCalibration, load_camera, write_camera
from calibration.errors import CalibrationError
from calibration.scale import Scale, box_size_mm, measure_scale, roi_mm_to_px


def _views(root: Path) -> list[Path]:
    return [p for p in list_images(root) if p.name.startswith("view_")]


def _undistorted_corner_rms(camera: CameraCalibration, truth: dict[str, Any]) -> float:
    """RMS (px) between the true corners undistorted with the estimated model (new
    camera matrix = its K, as the preprocessing does) and with the true one."""
    k_true = np.array([[truth["fx"], 0, truth["cx"]], [0, truth["fy"], truth["cy"]], [0, 0, 1]])
    points = np.concatenate([np.array(c) for c in truth["corners_px"]]).reshape(-1, 1, 2)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    ideal = cv2.undistortPoints(points, k_true, np.array(truth["dist"]), P=k_true,
                                criteria=criteria).reshape(-1, 2)
    found = cv2.undistortPoints(points, camera.matrix, camera.dist_array, P=camera.matrix,
                                criteria=criteria).reshape(-1, 2)
    return float(np.sqrt(((found - ideal) ** 2).sum(axis=1).mean()))


@pytest.mark.slow
@pytest.mark.parametrize(("views", "board"), [
    ("chessboard_views", "chessboard:9x6"),
    ("charuco_views", "charuco:10x7"),
])
def test_recovers_the_true_camera(views: str, board: str, request: pytest.FixtureRequest,
                                  tmp_path: Path) -> None:
    root, truth = request.getfixturevalue(views)
    assert truth["board"] == board
    spec = parse_board(board, truth["square_mm"])
    camera = calibrate_camera(_views(root), spec)
    assert abs(camera.fx / truth["fx"] - 1) < 0.01
    assert abs(camera.fy / truth["fy"] - 1) < 0.01
    assert abs(camera.cx - truth["cx"]) < 2.0 and abs(camera.cy - truth["cy"]) < 2.0
    assert _undistorted_corner_rms(camera, truth) < 0.3
    assert camera.rms_px < 0.3 and len(camera.views) == len(truth["views"])
    # scale on the conveyor plane within 0.5%, and the board's distance
    found = measure_scale(read_grey(root / "scale_board.png"), camera, spec,
                          camera_height_mm=truth["conveyor_distance_mm"])
    assert abs(found.scale.mm_per_px / truth["mm_per_px"] - 1) < 0.005
    assert abs(found.distance_mm / truth["conveyor_distance_mm"] - 1) < 0.01
    # camera.json: same keys as truth.json, hash checked on load
    written = write_camera(tmp_path / "camera.json", camera)
    data = json.loads((tmp_path / "camera.json").read_text())
    assert {"fx", "fy", "cx", "cy", "dist", "image_size", "rms_px"} <= set(data) & set(truth)
    assert data["image_size"] == truth["image_size"] and len(data["dist"]) == 5
    assert load_camera(tmp_path / "camera.json") == written
    assert written.sha256 == camera.content_hash()


def test_content_hash_covers_the_model_only(tmp_path: Path) -> None:
    base = CameraCalibration(fx=700, fy=701, cx=320, cy=240, dist=(0.1, 0, 0, 0, 0),
                             image_size=(640, 480), rms_px=0.1)
    assert base.content_hash() == base.model_copy(update={"rms_px": 0.5}).content_hash()
    assert base.content_hash() != base.model_copy(update={"fx": 700.001}).content_hash()
    assert base.content_hash() != base.model_copy(update={"image_size": (640, 481)}).content_hash()
    path = tmp_path / "camera.json"
    write_camera(path, base)
    edited = json.loads(path.read_text())
    edited["dist"][0] = 0.2  # a hand-edited coefficient
    path.write_text(json.dumps(edited))
    with pytest.raises(CalibrationError, match="does not match the content"):
        load_camera(path)


def test_scale_converts_roi_and_box_sizes() -> None:
    scale = Scale(mm_per_px_x=0.5, mm_per_px_y=0.25)
    assert roi_mm_to_px((10.0, 10.0, 100.0, 50.0), scale, (640, 480)) == (20, 40, 200, 200)
    assert roi_mm_to_px((300.0, 0.0, 100.0, 50.0), scale, (640, 480)) == (600, 0, 40, 200)
    assert box_size_mm((10.0, 20.0, 30.0, 60.0), scale) == (10.0, 10.0)
    with pytest.raises(CalibrationError, match="outside the 640x480 px frame"):
        roi_mm_to_px((400.0, 0.0, 10.0, 10.0), scale, (640, 480))

"""Millimetres per pixel on the part plane, from the board lying on the conveyor.

The board is found in one view, its corners are undistorted with the station's
camera calibration (new camera matrix = K, as `models.undistort` does for frames),
and the scale is the square size divided by the mean spacing of neighbouring
corners in undistorted pixels. The board's pose (``solvePnP``) says how far it is
from the camera and how much it is tilted: a tilted board does not lie on the part
plane, and a pose distance that disagrees with the measured camera height means the
square size given is wrong (both scale with it, so nothing else can tell).

Scale also converts between millimetres and undistorted pixels for ROIs and defect
sizes (`Scale`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from calibration.camera import BoardSpec, find_board, sharpness
from calibration.camera_model import CameraCalibration
from calibration.errors import CalibrationError

__all__ = [
    "MAX_TILT_DEG",
    "Scale",
    "ScaleMeasurement",
    "box_size_mm",
    "measure_scale",
    "roi_mm_to_px",
]

MAX_TILT_DEG = 5.0
"""A board tilted more than this from the image plane is refused for scale."""
MAX_HEIGHT_MISMATCH = 0.05


class Scale(BaseModel):
    """mm per undistorted pixel on the part plane, per axis."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    mm_per_px_x: float = Field(gt=0.0, le=1e4)
    mm_per_px_y: float = Field(gt=0.0, le=1e4)

    @property
    def mm_per_px(self) -> float:
        """Geometric mean of the two axes."""
        return math.sqrt(self.mm_per_px_x * self.mm_per_px_y)


@dataclass(frozen=True)
class ScaleMeasurement:
    """What `measure_scale` found: the scale, the board distance (mm, along the optical
    axis) and its tilt from the image plane (degrees)."""

    scale: Scale
    distance_mm: float
    tilt_deg: float
    corners: int


def _undistort(
    points: npt.NDArray[np.float32], camera: CameraCalibration
) -> npt.NDArray[np.float64]:
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    out = cv2.undistortPoints(points.reshape(-1, 1, 2).astype(np.float64), camera.matrix,
                              camera.dist_array, P=camera.matrix, criteria=criteria)
    return np.asarray(out, np.float64).reshape(-1, 2)


def measure_scale(
    grey: npt.NDArray[np.uint8], camera: CameraCalibration, board: BoardSpec,
    *, name: str = "image", camera_height_mm: float | None = None,
) -> ScaleMeasurement:
    """Measure mm per pixel from one view of `board` lying flat on the part plane.

    `camera_height_mm`, if known (tape measure, camera to conveyor), is compared with
    the board distance the pose gives. Raises CalibrationError: image size differs from
    the calibration's, board not found, board tilted over `MAX_TILT_DEG`, or the
    height disagreeing by more than 5% (wrong --square-mm).
    """
    height, width = grey.shape[:2]
    if (width, height) != tuple(camera.image_size):
        raise CalibrationError(
            f"{name} is {width}x{height} but the camera calibration is for "
            f"{camera.image_size[0]}x{camera.image_size[1]}")
    detection = find_board(grey, board)
    if detection is None:
        blurred = sharpness(grey) < 15.0
        raise CalibrationError(
            f"{name}: no {board} corners found"
            + (" (the view looks blurred)" if blurred else
               " (board partly out of frame or a different --board size?)"))
    undistorted = _undistort(detection.image_points, camera)
    obj = detection.object_points.astype(np.float64)
    spacing_x, spacing_y = [], []
    # neighbours along the board's x (same y, x one square apart) and y axes
    index = {(round(p[0] / board.square_mm), round(p[1] / board.square_mm)): i
             for i, p in enumerate(obj)}
    for (i, j), k in index.items():
        if (i + 1, j) in index:
            spacing_x.append(undistorted[index[(i + 1, j)]] - undistorted[k])
        if (i, j + 1) in index:
            spacing_y.append(undistorted[index[(i, j + 1)]] - undistorted[k])
    if not spacing_x or not spacing_y:
        raise CalibrationError(f"{name}: too few neighbouring corners to measure a scale")
    vectors = np.concatenate((spacing_x, spacing_y))
    # Image-axis scale: project the board steps onto image x and y. For a board turned
    # by any angle on the conveyor, |dx| and |dy| sums give the per-axis pixel pitch.
    px_per_square = np.linalg.norm(vectors, axis=1)
    angle = np.arctan2(vectors[:, 1], vectors[:, 0])
    wx, wy = np.abs(np.cos(angle)), np.abs(np.sin(angle))
    pitch_x = float((px_per_square * wx).sum() / wx.sum())
    pitch_y = float((px_per_square * wy).sum() / wy.sum())
    ok, rvec, tvec = cv2.solvePnP(obj, undistorted, camera.matrix, None)
    if not ok:
        raise CalibrationError(f"{name}: could not estimate the board's pose")
    rot, _ = cv2.Rodrigues(rvec)
    tilt = math.degrees(math.acos(min(1.0, abs(float(rot[2, 2])))))
    centre = rot @ obj.mean(axis=0) + tvec.ravel()
    distance = float(centre[2])
    if tilt > MAX_TILT_DEG:
        raise CalibrationError(
            f"{name}: the board is tilted {tilt:.1f} degrees from the image plane (max "
            f"{MAX_TILT_DEG:g}); lay it flat on the conveyor for the scale")
    if camera_height_mm is not None and abs(distance / camera_height_mm - 1) > MAX_HEIGHT_MISMATCH:
        implied = board.square_mm * camera_height_mm / distance
        raise CalibrationError(
            f"{name}: the board appears {distance:.1f} mm from the camera but the camera "
            f"height is {camera_height_mm:g} mm: --square-mm {board.square_mm:g} is "
            f"probably wrong (the views fit {implied:.2f} mm squares)")
    scale = Scale(mm_per_px_x=board.square_mm / pitch_x, mm_per_px_y=board.square_mm / pitch_y)
    return ScaleMeasurement(scale, distance, tilt, len(obj))


def roi_mm_to_px(roi_mm_xywh: tuple[float, float, float, float], scale: Scale,
                 image_wh: tuple[int, int]) -> tuple[int, int, int, int]:
    """An ROI in mm (x, y from the frame's top-left, on the part plane) -> pixels
    (x, y, w, h), rounded outwards and clipped to the frame. Raises CalibrationError
    if nothing of it lies inside the frame."""
    x, y, w, h = roi_mm_xywh
    x0 = math.floor(x / scale.mm_per_px_x)
    y0 = math.floor(y / scale.mm_per_px_y)
    x1 = math.ceil((x + w) / scale.mm_per_px_x)
    y1 = math.ceil((y + h) / scale.mm_per_px_y)
    width, height = image_wh
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width, x1), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise CalibrationError(
            f"ROI {roi_mm_xywh} mm lies outside the {width}x{height} px frame "
            f"({width * scale.mm_per_px_x:.1f} x {height * scale.mm_per_px_y:.1f} mm)")
    return (x0, y0, x1 - x0, y1 - y0)


def box_size_mm(box_xyxy: tuple[float, float, float, float], scale: Scale) -> tuple[float, float]:
    """(width, height) in mm of an xyxy box in undistorted pixels."""
    x1, y1, x2, y2 = box_xyxy
    return (abs(x2 - x1) * scale.mm_per_px_x, abs(y2 - y1) * scale.mm_per_px_y)

"""Camera calibration from board views: intrinsics, distortion, reprojection errors.

`find_board` detects a chessboard (``findChessboardCornersSB``, sub-pixel) or a
ChArUco board (``cv2.aruco.CharucoDetector``) in one grey image; `calibrate_camera`
runs OpenCV's ``calibrateCamera`` over a folder of views after checking the set:
same image size everywhere, the board found in every view (or, with `skip_bad`,
enough usable views), and corners in every ninth of the frame (the edges are where
distortion is strong and where an under-sampled model extrapolates badly). Each
refusal is a `CalibrationError` with a one-line message that names the image or the
missing region.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from calibration.camera_model import CameraCalibration, ViewError
from calibration.errors import CalibrationError

__all__ = [
    "IMAGE_SUFFIXES",
    "MIN_EDGE_SHARPNESS",
    "MIN_SHARPNESS",
    "BoardDetection",
    "BoardSpec",
    "calibrate_camera",
    "edge_sharpness",
    "find_board",
    "list_images",
    "parse_board",
    "read_grey",
    "sharpness",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SHARPNESS = 15.0
"""Variance of the Laplacian below which a view whose board is not found is called
blurred (a sharp board view measures in the hundreds; a 3 px blur about 10)."""
MIN_EDGE_SHARPNESS = 0.3
"""`edge_sharpness` below which a view whose board was found is still refused as
blurred: a sharp edge measures about 1, a 1.5 px Gaussian blur about 0.47, 3 px 0.25."""
MIN_VIEWS = 6
_REGIONS = (("top-left", "top", "top-right"), ("left", "centre", "right"),
            ("bottom-left", "bottom", "bottom-right"))

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class BoardSpec:
    """A calibration target: ``chessboard:COLSxROWS`` (inner corners) or
    ``charuco:COLSxROWS`` (squares); sizes in mm."""

    kind: str
    cols: int
    rows: int
    square_mm: float
    marker_mm: float | None = None
    aruco_dict: str = "DICT_4X4_50"

    def __str__(self) -> str:
        return f"{self.kind}:{self.cols}x{self.rows}"

    @property
    def corner_count(self) -> int:
        """Inner corners of a full view."""
        if self.kind == "charuco":
            return (self.cols - 1) * (self.rows - 1)
        return self.cols * self.rows

    def object_points(self) -> F32:
        """[N, 3] inner corners in board mm (chessboard order, z = 0)."""
        cols, rows = (self.cols - 1, self.rows - 1) if self.kind == "charuco" else (
            self.cols, self.rows)
        xs, ys = np.meshgrid(np.arange(cols), np.arange(rows))
        grid = np.stack((xs.ravel(), ys.ravel(), np.zeros(xs.size)), axis=1)
        return (grid * self.square_mm).astype(np.float32)


_BOARD_RE = re.compile(r"^(chessboard|charuco):(\d{1,2})x(\d{1,2})$")


def parse_board(text: str, square_mm: float, marker_mm: float | None = None,
                aruco_dict: str = "DICT_4X4_50") -> BoardSpec:
    """Parse ``chessboard:9x6`` / ``charuco:10x7``. Raises CalibrationError."""
    match = _BOARD_RE.match(text.strip())
    if not match:
        raise CalibrationError(
            f"--board {text!r}: expected chessboard:COLSxROWS (inner corners) or "
            "charuco:COLSxROWS (squares), e.g. chessboard:9x6")
    kind, cols, rows = match.group(1), int(match.group(2)), int(match.group(3))
    low = 3 if kind == "charuco" else 2
    if cols < low or rows < low:
        raise CalibrationError(f"--board {text!r}: needs at least {low}x{low}")
    if not 0 < square_mm <= 1000:
        raise CalibrationError(f"--square-mm {square_mm}: must be > 0 and <= 1000")
    if kind == "charuco":
        marker = marker_mm if marker_mm is not None else 0.75 * square_mm
        if not 0 < marker < square_mm:
            raise CalibrationError(f"--marker-mm {marker}: must be > 0 and < --square-mm")
        if not hasattr(cv2.aruco, aruco_dict):
            raise CalibrationError(f"--aruco-dict {aruco_dict!r}: not an OpenCV aruco dictionary")
        return BoardSpec(kind, cols, rows, square_mm, marker, aruco_dict)
    return BoardSpec(kind, cols, rows, square_mm)


@dataclass(frozen=True)
class BoardDetection:
    """Board corners found in one view: image points [N, 2] px, object points [N, 3] mm."""

    image_points: F32
    object_points: F32


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted. Raises CalibrationError for a missing
    or empty folder."""
    root = Path(folder)
    if not root.is_dir():
        raise CalibrationError(f"{root}: not a folder of calibration images")
    images = sorted(p for p in root.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise CalibrationError(
            f"{root}: no images (looked for {', '.join(IMAGE_SUFFIXES)}); nothing to calibrate")
    return images


def read_grey(path: Path) -> U8:
    """An image as grey uint8. Raises CalibrationError if OpenCV cannot decode it."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise CalibrationError(f"{path.name}: cannot read the image (not an image OpenCV decodes)")
    return np.asarray(image, np.uint8)


def sharpness(grey: U8) -> float:
    """Variance of the Laplacian: a focus measure (higher is sharper)."""
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def edge_sharpness(grey: U8, corners: F32) -> float:
    """How steep the board's edges are, 0..1: the 99th percentile of the 3x3 Sobel
    gradient inside the corners' bounding box over 4x the board's contrast (an ideal
    step edge gives 1, whatever the lighting or noise)."""
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    roi = grey[max(0, y0):y1, max(0, x0):x1].astype(np.float32)
    if roi.shape[0] < 3 or roi.shape[1] < 3:
        return 0.0
    gradient = np.maximum(np.abs(cv2.Sobel(roi, cv2.CV_32F, 1, 0, ksize=3)),
                          np.abs(cv2.Sobel(roi, cv2.CV_32F, 0, 1, ksize=3)))
    low, high = np.percentile(roi, (1, 99))
    contrast = max(float(high - low), 1.0)
    return min(1.0, float(np.percentile(gradient, 99)) / (4.0 * contrast))


def _charuco(board: BoardSpec) -> tuple[cv2.aruco.CharucoBoard, cv2.aruco.CharucoDetector]:
    dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, board.aruco_dict))
    marker_mm = board.marker_mm if board.marker_mm is not None else 0.75 * board.square_mm
    charuco = cv2.aruco.CharucoBoard((board.cols, board.rows), board.square_mm, marker_mm,
                                     dictionary)
    return charuco, cv2.aruco.CharucoDetector(charuco)


def find_board(grey: U8, board: BoardSpec, min_fraction: float = 0.5) -> BoardDetection | None:
    """Board corners in `grey`, or None when the (full) board is not found.

    A chessboard must be found whole; a ChArUco board may be partly hidden, but at
    least `min_fraction` of its corners must be found.
    """
    if board.kind == "chessboard":
        flags = cv2.CALIB_CB_ACCURACY | cv2.CALIB_CB_NORMALIZE_IMAGE
        ok, corners = cv2.findChessboardCornersSB(grey, (board.cols, board.rows), flags=flags)
        if not ok or corners is None:
            return None
        return BoardDetection(np.asarray(corners, np.float32).reshape(-1, 2), board.object_points())
    charuco, detector = _charuco(board)
    corners, ids, _, _ = detector.detectBoard(grey)
    if ids is None or corners is None or len(ids) < max(4, min_fraction * board.corner_count):
        return None
    all_points = np.asarray(charuco.getChessboardCorners(), np.float32).reshape(-1, 3)
    return BoardDetection(np.asarray(corners, np.float32).reshape(-1, 2),
                     all_points[np.asarray(ids).ravel()])


def _not_found(name: str, grey: U8, board: BoardSpec) -> str:
    sharp = sharpness(grey)
    if sharp < MIN_SHARPNESS:
        return (f"{name}: no {board} corners found; the view looks blurred (sharpness "
                f"{sharp:.1f} < {MIN_SHARPNESS:g}): refocus or hold the board still")
    return (f"{name}: no {board} corners found (board partly out of frame, too steep, "
            "or a different --board size?)")


def _missing_regions(points: Sequence[F32], width: int, height: int) -> list[str]:
    hit = np.zeros((3, 3), bool)
    for pts in points:
        col = np.clip((pts[:, 0] * 3 // width).astype(int), 0, 2)
        row = np.clip((pts[:, 1] * 3 // height).astype(int), 0, 2)
        hit[row, col] = True
    return [_REGIONS[r][c] for r in range(3) for c in range(3) if not hit[r, c]]


def calibrate_camera(
    images: Sequence[Path], board: BoardSpec, *, min_views: int = MIN_VIEWS,
    skip_bad: bool = False, require_coverage: bool = True,
) -> CameraCalibration:
    """Calibrate from board views. Returns the calibration with its content hash.

    Raises CalibrationError: no images, differing image sizes, the board not found in
    an image (unless `skip_bad`), fewer than `min_views` usable views, corners missing
    from a ninth of the frame (named), or OpenCV failing to converge.
    """
    if not images:
        raise CalibrationError("no calibration images given")
    size: tuple[int, int] | None = None
    first = ""
    found: list[tuple[str, BoardDetection]] = []
    for path in images:
        grey = read_grey(path)
        wh = (int(grey.shape[1]), int(grey.shape[0]))
        if size is None:
            size, first = wh, path.name
        elif wh != size:
            raise CalibrationError(
                f"image sizes differ: {first} is {size[0]}x{size[1]} but {path.name} is "
                f"{wh[0]}x{wh[1]}; calibrate one camera at one resolution")
        detection = find_board(grey, board)
        message = ""
        if detection is None:
            message = _not_found(path.name, grey, board)
        else:
            edges = edge_sharpness(grey, detection.image_points)
            if edges < MIN_EDGE_SHARPNESS:
                message = (f"{path.name}: the board looks blurred (edge sharpness {edges:.2f} < "
                           f"{MIN_EDGE_SHARPNESS:g}): refocus or hold the board still")
        if message:
            if not skip_bad:
                raise CalibrationError(message)
            logger.warning("skipped %s", message)
            continue
        if detection is not None:
            found.append((path.name, detection))
    if size is None:  # unreachable: images is non-empty
        raise CalibrationError("no calibration images given")
    if len(found) < min_views:
        raise CalibrationError(
            f"too few usable views: the board was found in {len(found)} of {len(images)} "
            f"images, need at least {min_views}")
    if require_coverage:
        missing = _missing_regions([d.image_points for _, d in found], *size)
        if missing:
            raise CalibrationError(
                f"views do not cover the frame: no board corners in the {', '.join(missing)} "
                "region(s); add views with the board there")
    object_points = [d.object_points for _, d in found]
    image_points = [d.image_points.reshape(-1, 1, 2) for _, d in found]
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-12)
    try:
        rms, matrix, dist, rvecs, tvecs = cv2.calibrateCamera(
            object_points, image_points, size, None, None, criteria=criteria)
    except cv2.error as exc:
        raise CalibrationError(f"OpenCV calibration failed: {exc.err}") from None
    views = []
    for (name, det), rvec, tvec in zip(found, rvecs, tvecs, strict=True):
        projected, _ = cv2.projectPoints(det.object_points, rvec, tvec, matrix, dist)
        err = projected.reshape(-1, 2) - det.image_points
        views.append(ViewError(file=name, rms_px=float(np.sqrt((err**2).sum(axis=1).mean()))))
    d = np.asarray(dist, np.float64).ravel()
    camera = CameraCalibration(
        fx=float(matrix[0, 0]), fy=float(matrix[1, 1]), cx=float(matrix[0, 2]),
        cy=float(matrix[1, 2]), dist=(float(d[0]), float(d[1]), float(d[2]), float(d[3]),
                                      float(d[4])),
        image_size=size, rms_px=float(rms), board=str(board), square_mm=board.square_mm,
        views=tuple(views))
    logger.info("calibrated %s from %d views: fx %.2f fy %.2f rms %.3f px", board, len(found),
                camera.fx, camera.fy, camera.rms_px)
    return camera.with_hash()

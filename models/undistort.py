"""Undistortion of whole frames with a camera calibration, for the preprocessing.

`Undistorter` holds one camera's remap tables, computed once (on the first frame,
under a lock) and reused for every frame after: ``initUndistortRectifyMap`` costs
tens of milliseconds, a ``remap`` with its fixed-point tables about one. The new
camera matrix is the calibration's own K, so undistorted pixels keep the camera's
focal length and principal point (what `calibration.scale` measures millimetres in).

A bundle whose preprocessing names a calibration (`PreprocessSpec.undistort_calibration`,
the calibration's content hash) ships it as ``calibration/camera.json``;
`bundle_undistorter` loads and checks it, `check_station_camera` refuses a station
whose own calibration differs.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import numpy.typing as npt

from calibration.camera_model import CameraCalibration, check_calibration_hash, parse_camera
from calibration.errors import CalibrationError
from models.bundle import Bundle
from models.errors import BundleIntegrityError, ModelError

__all__ = [
    "CAMERA_FILE",
    "CalibrationMismatch",
    "Undistorter",
    "bundle_camera",
    "bundle_undistorter",
    "check_station_camera",
]

CAMERA_FILE = "calibration/camera.json"
"""Where a bundle ships the camera calibration its preprocessing names."""


class CalibrationMismatch(ModelError):
    """A bundle needs a camera calibration this station does not have."""


class Undistorter:
    """Remaps frames of one camera to the undistorted image (same size, same K).

    Thread-safe; the tables are computed once, on first use.
    """

    def __init__(self, camera: CameraCalibration) -> None:
        self.camera = camera
        self.calibration_hash = camera.content_hash()
        self._lock = threading.Lock()
        self._maps: tuple[npt.NDArray[np.int16], npt.NDArray[np.uint16]] | None = None
        self.tables_built = 0  # how many times the tables were computed (tests, metrics)

    def _tables(self) -> tuple[npt.NDArray[np.int16], npt.NDArray[np.uint16]]:
        with self._lock:
            if self._maps is None:
                k = self.camera.matrix
                map1, map2 = cv2.initUndistortRectifyMap(
                    k, self.camera.dist_array, None, k, tuple(self.camera.image_size),
                    cv2.CV_16SC2)
                self._maps = (np.asarray(map1), np.asarray(map2))
                self.tables_built += 1
            return self._maps

    def apply(self, image_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The undistorted frame (same shape). Raises ModelError if the frame's size
        is not the calibration's image size."""
        width, height = self.camera.image_size
        if image_bgr.shape[0] != height or image_bgr.shape[1] != width:
            raise ModelError(
                f"frame is {image_bgr.shape[1]}x{image_bgr.shape[0]} but camera calibration "
                f"{self.calibration_hash[:16]}.. is for {width}x{height} frames")
        map1, map2 = self._tables()
        out = cv2.remap(image_bgr, map1, map2, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return np.asarray(out, np.uint8)


def bundle_camera(
    spec_hash: str | None, camera_json: bytes | None, what: str
) -> CameraCalibration | None:
    """The calibration a bundle ships for its preprocessing, checked against the hash
    the spec names; None when the spec names none. `camera_json`: the bytes of
    `CAMERA_FILE` (None when the bundle lacks it). Raises BundleIntegrityError."""
    if spec_hash is None:
        return None
    if camera_json is None:
        raise BundleIntegrityError(
            f"{what}: preprocess.undistort_calibration names {spec_hash[:16]}.. but the "
            f"bundle has no {CAMERA_FILE}")
    try:
        camera = parse_camera(camera_json.decode("utf-8", errors="replace"), CAMERA_FILE)
    except CalibrationError as exc:
        raise BundleIntegrityError(f"{what}: {exc}") from None
    if camera.content_hash() != spec_hash:
        raise BundleIntegrityError(
            f"{what}: {CAMERA_FILE} has hash {camera.content_hash()[:16]}.. but "
            f"preprocess.undistort_calibration names {spec_hash[:16]}..")
    return camera


def bundle_undistorter(bundle: Bundle) -> Undistorter | None:
    """An `Undistorter` for the calibration `bundle` ships, or None when its
    preprocessing names none. Raises BundleIntegrityError (missing, invalid, other hash)."""
    m = bundle.manifest
    wanted = m.preprocess.undistort_calibration
    if wanted is None:
        return None
    data = bundle.path_of(CAMERA_FILE).read_bytes() if CAMERA_FILE in m.files else None
    camera = bundle_camera(wanted, data, f"bundle {m.name} v{m.version}")
    return Undistorter(camera) if camera is not None else None


def check_station_camera(spec_hash: str | None, station: CameraCalibration | None,
                         what: str) -> None:
    """Refuse (CalibrationMismatch) to run a bundle whose preprocessing names camera
    calibration `spec_hash` on a station whose calibration is another (or none).
    A bundle that names none runs anywhere."""
    if spec_hash is None:
        return
    try:
        check_calibration_hash(spec_hash, station, what)
    except CalibrationError as exc:
        raise CalibrationMismatch(str(exc)) from None

"""``camera.json``: a camera's intrinsics and distortion, as validated, hashed data.

The content hash (`CameraCalibration.content_hash`) covers exactly what changes an
undistorted image: fx, fy, cx, cy, the five distortion coefficients and the image
size. It is what a bundle's preprocessing names (`undistort_calibration`) and what
a station compares before it runs such a bundle. The file also records how the
calibration was measured (board, views, reprojection errors); those do not enter the
hash, and ``sha256`` in the file must equal the recomputed hash (a hand-edited
coefficient is refused).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from calibration.errors import CalibrationError, CalibrationMismatchError
from protocol.atomic import atomic_write_text
from protocol.configfile import format_validation_error

__all__ = [
    "CAMERA_FORMAT",
    "CameraCalibration",
    "ViewError",
    "check_calibration_hash",
    "load_camera",
    "write_camera",
]

CAMERA_FORMAT = "lineguard.camera/1"
MAX_CAMERA_BYTES = 4 * 1024 * 1024

Coefficient = Annotated[float, Field(ge=-1e3, le=1e3)]
Pixels = Annotated[float, Field(ge=0.0, le=1e5)]
Side = Annotated[int, Field(ge=1, le=65_535)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ViewError(_Frozen):
    """One calibration view and its RMS reprojection error (pixels)."""

    file: str = Field(max_length=1024)
    rms_px: float = Field(ge=0.0, le=1e6)


class CameraCalibration(_Frozen):
    """A pinhole camera with OpenCV's distortion model.

    fx, fy, cx, cy in pixels; `dist` = (k1, k2, p1, p2, k3) in OpenCV's order;
    `image_size` = (width, height) px of the frames it applies to; `rms_px` the overall
    RMS reprojection error; `sha256` the content hash (see module doc).
    """

    format: Literal["lineguard.camera/1"] = "lineguard.camera/1"
    fx: float = Field(gt=0.0, le=1e6)
    fy: float = Field(gt=0.0, le=1e6)
    cx: Pixels
    cy: Pixels
    dist: tuple[Coefficient, Coefficient, Coefficient, Coefficient, Coefficient]
    image_size: tuple[Side, Side]
    rms_px: float = Field(ge=0.0, le=1e6)
    board: str = Field(default="", max_length=256)
    square_mm: float | None = Field(default=None, gt=0.0, le=1e4)
    views: tuple[ViewError, ...] = Field(default=(), max_length=10_000)
    sha256: str = Field(default="", max_length=64)

    @model_validator(mode="after")
    def _hash_matches(self) -> CameraCalibration:
        if self.sha256 and self.sha256 != self.content_hash():
            raise ValueError(
                f"sha256 {self.sha256[:16]}.. does not match the content "
                f"({self.content_hash()[:16]}..): the file was edited or corrupted"
            )
        return self

    def content_hash(self) -> str:
        """sha256 hex over the canonical JSON of format, fx, fy, cx, cy, dist and
        image_size (floats as repr, so equal numbers give equal hashes)."""
        payload = {
            "format": self.format,
            "fx": repr(float(self.fx)),
            "fy": repr(float(self.fy)),
            "cx": repr(float(self.cx)),
            "cy": repr(float(self.cy)),
            "dist": [repr(float(d)) for d in self.dist],
            "image_size": list(self.image_size),
        }
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def with_hash(self) -> CameraCalibration:
        """This calibration with `sha256` filled in."""
        return self.model_copy(update={"sha256": self.content_hash()})

    @property
    def matrix(self) -> npt.NDArray[np.float64]:
        """The 3x3 camera matrix K."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], np.float64
        )

    @property
    def dist_array(self) -> npt.NDArray[np.float64]:
        """(k1, k2, p1, p2, k3) as a float64 array."""
        return np.array(self.dist, np.float64)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, 2-space indent, trailing newline), hash included."""
        data = self.with_hash().model_dump(mode="json")
        return json.dumps(data, sort_keys=True, indent=2) + "\n"


def parse_camera(text: str, source: str = "camera.json") -> CameraCalibration:
    """Parse camera.json text. Raises CalibrationError naming `source` and bad fields."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{source}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{source}: top level must be a JSON object")
    try:
        return CameraCalibration.model_validate(data)
    except ValidationError as exc:
        raise CalibrationError(f"{source}: {format_validation_error(exc, noun='field')}") from None


def load_camera(path: Path) -> CameraCalibration:
    """Read and validate a camera.json. Raises CalibrationError (missing, too large,
    invalid, hash mismatch)."""
    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(MAX_CAMERA_BYTES + 1)
    except OSError as exc:
        raise CalibrationError(
            f"cannot read camera calibration {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CAMERA_BYTES:
        raise CalibrationError(f"{path}: larger than {MAX_CAMERA_BYTES} bytes")
    return parse_camera(raw.decode("utf-8", errors="replace"), str(path))


def write_camera(path: Path, camera: CameraCalibration) -> CameraCalibration:
    """Write camera.json atomically (hash filled in); returns what was written."""
    hashed = camera.with_hash()
    atomic_write_text(Path(path), hashed.to_json())
    return hashed


def check_calibration_hash(expected: str, camera: CameraCalibration | None, what: str) -> None:
    """Raise CalibrationMismatchError unless `camera` has content hash `expected`;
    `what` names the thing that needs it (e.g. "bundle demo v3")."""
    if camera is None:
        raise CalibrationMismatchError(
            f"{what} needs frames undistorted with camera calibration {expected[:16]}.., "
            "but this station has no camera calibration (set calibration.camera_json)"
        )
    found = camera.content_hash()
    if found != expected:
        raise CalibrationMismatchError(
            f"{what} needs camera calibration {expected[:16]}.., but this station's camera "
            f"calibration is {found[:16]}..: recalibrate the bundle for this camera or "
            "install the matching camera.json"
        )

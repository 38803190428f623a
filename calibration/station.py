"""A station's calibration settings (the appliance's `stations[].calibration`) and the
defect-size rule they give the judge. Pure: files are read by the appliance.

Sizes are of a defect's box on the part plane: width x height in mm through the
station's mm-per-pixel scale (`lineguard calibration scale`). Boxes are in the
pixels the model's boxes are mapped back to: undistorted pixels when the bundle
undistorts, raw pixels otherwise (then the scale is exact near the image centre and
off by the lens distortion towards the edges).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from calibration.scale import Scale

__all__ = ["DefectSizing", "StationCalibrationConfig"]

Millimetres = Annotated[float, Field(ge=0.0, le=1e6)]
MmPerPx = Annotated[float, Field(gt=0.0, le=1e4)]


class StationCalibrationConfig(BaseModel):
    """A station camera's calibration and scale (see docs/calibration.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    camera_json: Path | None = None
    """The camera.json of this station's camera (`lineguard calibration camera`); a
    bundle that undistorts runs only where this has the calibration hash it names."""
    mm_per_px_xy: tuple[MmPerPx, MmPerPx] | None = None
    """Millimetres per pixel on the part plane, x and y (`lineguard calibration scale`):
    defect sizes in mm appear in verdicts, the store and `events/defect`."""
    roi_mm_xywh: tuple[Millimetres, Millimetres, Millimetres, Millimetres] | None = None
    """The station's ROI in mm (x, y from the frame's top-left, width, height), instead
    of `roi_xywh` in pixels; needs `mm_per_px_xy`."""
    min_defect_mm: dict[Annotated[str, Field(min_length=1, max_length=128)], Millimetres] = \
        Field(default_factory=dict, max_length=1000)
    """Per class name, the smallest defect that fails a part: the longer side of its box
    in mm (smaller detections are ignored); needs `mm_per_px_xy`."""

    @model_validator(mode="after")
    def _needs_scale(self) -> StationCalibrationConfig:
        if self.mm_per_px_xy is None:
            needing = [k for k in ("roi_mm_xywh", "min_defect_mm") if getattr(self, k)]
            if needing:
                raise ValueError(f"{' and '.join(needing)} need mm_per_px_xy (the station's "
                                 "scale, from `lineguard calibration scale`)")
        if self.roi_mm_xywh is not None and (self.roi_mm_xywh[2] <= 0 or self.roi_mm_xywh[3] <= 0):
            raise ValueError("roi_mm_xywh needs width and height > 0")
        return self

    @property
    def scale(self) -> Scale | None:
        if self.mm_per_px_xy is None:
            return None
        return Scale(mm_per_px_x=self.mm_per_px_xy[0], mm_per_px_y=self.mm_per_px_xy[1])

    def roi_px(self) -> tuple[int, int, int, int] | None:
        """`roi_mm_xywh` in pixels (rounded outwards), or None."""
        if self.roi_mm_xywh is None or self.mm_per_px_xy is None:
            return None
        x, y, w, h = self.roi_mm_xywh
        sx, sy = self.mm_per_px_xy
        x0, y0 = math.floor(x / sx), math.floor(y / sy)
        return (x0, y0, math.ceil((x + w) / sx) - x0, math.ceil((y + h) / sy) - y0)

    def sizing(self) -> DefectSizing | None:
        """The judge's size rule, or None without a scale."""
        scale = self.scale
        if scale is None:
            return None
        return DefectSizing(scale, dict(self.min_defect_mm))


@dataclass(frozen=True)
class DefectSizing:
    """Box sizes in mm and the per-class minimum defect size (longer side, mm)."""

    scale: Scale
    min_defect_mm: dict[str, float] = field(default_factory=dict)

    def sizes_mm(self, boxes_xyxy: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """[K, 2] (width, height) in mm of [K, 4] xyxy pixel boxes."""
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        wh = np.abs(boxes[:, 2:] - boxes[:, :2])
        out: npt.NDArray[np.float64] = wh * np.array(
            [self.scale.mm_per_px_x, self.scale.mm_per_px_y])
        return out

    def large_enough(self, sizes_mm: npt.NDArray[np.float64],
                     class_names: list[str]) -> npt.NDArray[np.bool_]:
        """Per box: its longer side reaches its class's minimum (True without one)."""
        minimum = np.array([self.min_defect_mm.get(n, 0.0) for n in class_names], np.float64)
        keep: npt.NDArray[np.bool_] = sizes_mm.max(axis=1, initial=0.0) >= minimum
        return keep

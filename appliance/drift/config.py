"""`drift:` in the appliance config: per-frame drift signals and their windows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

FracBox = tuple[float, float, float, float]


class DriftConfig(BaseModel):
    """Drift signals of every inspected frame (of its station's ROI view), aggregated
    into windows published on `drift` (see docs/drift.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # A window closes after this many frames or this many seconds, whichever first.
    window_frames: int = Field(300, ge=10, le=100_000)
    window_s: float = Field(300.0, ge=1.0, le=86_400.0)
    # Frames whose whole signal vector travels with the window (for the cloud's test).
    sample_frames: int = Field(16, ge=0, le=32)
    # Where the signals look, as fractions (x1, y1, x2, y2) of the station's image.
    roi_frac: FracBox = (0.15, 0.15, 0.85, 0.85)
    background_frac: FracBox = (0.0, 0.0, 1.0, 0.1)
    # The image is brought to this width before the signals are computed.
    work_width_px: int = Field(320, ge=32, le=4096)
    # At most this many frames per second and station are measured (by capture time;
    # the others are skipped, counted): window statistics need no more, and the
    # signals' cost stays bounded when a station runs far faster than a line's parts
    # arrive (a benchmark at full speed, a fast camera). null: every frame.
    max_frames_per_s: float | None = Field(30.0, gt=0.0, le=100_000.0)
    # Frames waiting for the signal thread; beyond it frames are skipped (counted).
    queue_max_frames: int = Field(64, ge=1, le=10_000)
    # The signal thread's niceness (Linux; added to the process's): it is background
    # work, so on a busy machine the pipeline's threads go first and drift frames are
    # skipped (counted) rather than the line slowed. 0: the same priority as the rest.
    thread_nice: int = Field(10, ge=0, le=19)
    # The partial window is saved in the store every this many frames (and at stop),
    # so a restart resumes it instead of losing it.
    persist_every_frames: int = Field(50, ge=1, le=100_000)
    # Refine the bundle's reference from the first frames the line runs a model on:
    # 0 = off; else the windows of the first this-many frames are marked `source: line`
    # and the cloud builds its reference from them (recorded per model).
    refine_reference_frames: int = Field(0, ge=0, le=100_000)

    @model_validator(mode="after")
    def _regions(self) -> DriftConfig:
        for name, box in (("roi_frac", self.roi_frac), ("background_frac", self.background_frac)):
            x1, y1, x2, y2 = box
            if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
                raise ValueError(f"{name} {box} must satisfy 0 <= x1 < x2 <= 1 and "
                                 "0 <= y1 < y2 <= 1")
        return self

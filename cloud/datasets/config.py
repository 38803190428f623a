"""`datasets:` in the cloud config: where dataset images live, the held-out share, and
the limits of the lines' sample uploads."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class DatasetsConfig(BaseModel):
    """Dataset versions (their rows are in the cloud database) and uploaded samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Image objects (`objects/<sha256[:2]>/<sha256>.<ext>`) and cached holdout folders.
    root: Path = Path("datasets")
    # Share of images an import (with the default hash split) or an inbox acceptance
    # puts in `val`, chosen by image hash: a frame never moves between train and val.
    # Changing it moves frames for new versions only; keep it fixed.
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # Largest sample upload (the whole multipart body: image and meta); bigger is 413.
    upload_max_bytes: int = Field(8 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024)
    # Largest uploaded frame, width x height in pixels (a header claiming more is 422).
    upload_max_pixels: int = Field(40_000_000, ge=4096, le=100_000_000)

"""Configuration of the local store and its image keeper (pydantic, extra="forbid")."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GiB = 1024**3


class ImageKeepConfig(BaseModel):
    """Which frames are kept as JPEG, and how much disk they may use.

    Every `fail` frame is kept while room can be made for it; other frames are kept when
    a deterministic hash of their frame id falls under `keep_pass_fraction`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dir: Path
    keep_pass_fraction: float = Field(default=0.01, ge=0.0, le=1.0)
    quota_bytes: int = Field(default=2 * GiB, ge=0)
    """Upper bound on the bytes of kept JPEG files; never exceeded."""
    min_free_disk_bytes: int = Field(default=1 * GiB, ge=0)
    """No image is written if it would leave less than this free on the images' disk."""
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    annotate_fails: bool = True
    """Keep an annotated copy (boxes, classes, scores drawn) beside each kept `fail` image;
    it counts against `quota_bytes` with its original and is deleted with it."""
    queue_max_images: int = Field(default=64, ge=1, le=10_000)
    """Frames waiting for the encoder; a full queue skips `pass` frames at once."""
    fail_offer_timeout_ms: int = Field(default=1000, ge=0, le=60_000)
    """How long a `fail` frame waits for room in a full encoder queue before it is skipped
    (and the skip recorded as an event)."""


class StoreConfig(BaseModel):
    """The SQLite database and its writer.

    Durability with `synchronous="NORMAL"` (WAL): a committed batch survives a crash or
    kill of the process; a power loss may lose the last batches committed before it
    (never corrupts). `"FULL"` also survives power loss at the cost of an fsync per batch.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    batch_max_rows: int = Field(default=1000, ge=1, le=100_000)
    flush_interval_ms: int = Field(default=50, ge=1, le=60_000)
    """Longest time a submitted record waits before its batch is committed."""
    queue_max_rows: int = Field(default=100_000, ge=1)
    submit_timeout_ms: int = Field(default=5000, ge=0, le=600_000)
    """How long `submit` blocks on a full queue before raising StoreError."""
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    reserve_bytes: int = Field(default=16 * 1024**2, ge=0, le=64 * GiB)
    """Disk kept for the database in a pre-allocated file beside it (`<db>.reserve`): when
    the disk fills, it is released so verdicts keep committing (alarm
    `store_reserve_used`), and re-created once there is room. Keep it well under
    `images.min_free_disk_bytes` (images stop at that floor first). 0: no reserve."""
    images: ImageKeepConfig

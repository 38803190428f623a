"""Intake: stations (a source and its ROI), the frame budget, and the jobs they feed
into the pipeline.

A station's thread drives its `ResilientSource` and hands each frame, cropped to the
station's ROI (a view, no copy), to the pipeline as a `Job`. The ROI belongs to the
appliance, not the bundle: the bundle's preprocessing (which may crop again inside it)
sees only the ROI, and boxes are shifted back by the ROI origin into full-frame pixels
(`Job.offset_xy`), so verdicts, the panel and kept images all speak full-frame pixels.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from appliance.capture import Frame, FrameSource
from models.preprocess import FrameTransform, Tensor
from protocol.backoff import BackoffConfig

ImageBGR = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Station:
    """One camera of the line. `first_seq` continues frame numbering after a restart
    (frame ids are ``"{name}:{seq}"`` and must never repeat in the store)."""

    name: str
    source: FrameSource
    roi_xywh: tuple[int, int, int, int] | None = None
    first_seq: int = 0
    reconnect: BackoffConfig = field(default_factory=BackoffConfig)


def crop_to_roi(
    image: ImageBGR, roi_xywh: tuple[int, int, int, int] | None
) -> tuple[ImageBGR, tuple[int, int]] | None:
    """(the ROI view of `image`, its origin (x, y)); the whole image and (0, 0) without
    an ROI; None if the ROI does not lie inside the frame."""
    if roi_xywh is None:
        return image, (0, 0)
    x, y, w, h = roi_xywh
    height, width = image.shape[:2]
    if x + w > width or y + h > height:
        return None
    return image[y : y + h, x : x + w], (x, y)


@dataclass(slots=True)
class Job:
    """A frame on its way through the pipeline.

    `image` is the ROI view; `intake_t` is when the pipeline got it (perf_counter
    seconds). In worker mode `tensor` / `transform` hold its preprocessed input and
    `pre_key` says for which preprocessing (spec hash and input size) it was made, so a
    model swap in between is noticed and the frame preprocessed again.
    """

    frame: Frame
    image: ImageBGR
    offset_xy: tuple[int, int]
    intake_t: float
    tensor: Tensor | None = None
    transform: FrameTransform | None = None
    pre_key: str | None = None
    pre_ms: float = 0.0


@dataclass
class FrameBudget:
    """At most `limit` frames in all (None: no limit), reserved before each read so no
    frame is read that then cannot be taken. Thread-safe."""

    limit: int | None
    taken: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def reserve(self) -> bool:
        if self.limit is None:
            return True
        with self._lock:
            if self.taken >= self.limit:
                return False
            self.taken += 1
            return True

    def release(self) -> None:
        """Give back a reservation whose read produced no frame."""
        if self.limit is not None:
            with self._lock:
                self.taken -= 1

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.taken >= self.limit


def now_perf() -> float:
    return time.perf_counter()

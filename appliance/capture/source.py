"""The seam in front of every camera: `FrameSource`, the `Frame` it feeds the pipeline,
the states a source reports, and a small rate limiter shared by the file sources.

A `FrameSource` is one device or stream with no retry logic of its own: it opens, reads
until it raises `SourceLost` (device or stream gone; retrying may help) or `SourceEnded`
(no more frames), and closes. `ResilientSource` (resilient.py) adds reconnects, state and
counters on top, and turns what a source reads into `Frame`s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import cv2
import numpy as np
import numpy.typing as npt

from appliance.errors import SourceLost

ImageBGR = npt.NDArray[np.uint8]
"""A colour frame: uint8, shape (H, W, 3), BGR channel order (OpenCV's)."""

SourceRead = tuple[ImageBGR, str | None, float | None]
"""What `FrameSource.read` returns: (image_bgr, part id or None, capture time or None).
The capture time is unix seconds; None means "stamp it when read"."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame, as the pipeline receives it.

    `frame_id` is `"{station}:{seq}"`; `seq` counts frames of one station's
    `ResilientSource` (across reconnects); `captured_at` is unix seconds (the source's
    capture or trigger time where it has one, else when the frame was read); `part_id` is
    set where the source knows which part is under the camera.
    """

    frame_id: str
    station: str
    seq: int
    captured_at: float
    part_id: str | None
    image_bgr: ImageBGR
    fault: str | None = None
    """Why the source has no usable image for this frame (``unreadable``, ``corrupt``);
    `image_bgr` is then empty (0 x 0 x 3) and the frame is recorded `uninspected`."""


class SourceState(StrEnum):
    """What a source is doing; every change is reported to `on_state`."""

    CONNECTING = "connecting"
    """Opening the device or stream (first time, or a reconnect attempt)."""
    STREAMING = "streaming"
    """Open and delivering frames."""
    LOST = "lost"
    """Gone or failed to open; waiting (backoff) before the next attempt."""
    ENDED = "ended"
    """No more frames (file or folder end without loop), or stopped."""


class FrameSource(Protocol):
    """One camera, file, folder or stream. No retry logic of its own.

    `read` blocks until the next frame, for at most about one frame interval or the
    source's read timeout, so a caller can check its stop event between reads.
    """

    def open(self) -> None:
        """Open the device or stream. Raises SourceLost if it cannot (retry may help),
        SourceEnded if there is nothing left to read."""
        ...

    def read(self) -> SourceRead:
        """The next frame: (image_bgr (H, W, 3) uint8, part id or None, unix capture time
        or None). Raises SourceLost (device or stream failed) or SourceEnded."""
        ...

    def close(self) -> None:
        """Release the device. Idempotent; safe on a source that never opened."""
        ...


def to_bgr_u8(image: cv2.typing.MatLike, what: str) -> ImageBGR:
    """`image` as H x W x 3 BGR uint8 (grey and BGRA are converted).
    Raises SourceLost for other pixel types: a source delivering them is misconfigured."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise SourceLost(f"{what}: unsupported pixel type {array.dtype} (need 8-bit)")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 1):
        array = np.asarray(cv2.cvtColor(array, cv2.COLOR_GRAY2BGR))
    elif array.ndim == 3 and array.shape[2] == 4:
        array = np.asarray(cv2.cvtColor(array, cv2.COLOR_BGRA2BGR))
    if array.ndim != 3 or array.shape[2] != 3:
        raise SourceLost(f"{what}: unsupported frame shape {array.shape}")
    return array.astype(np.uint8, copy=False)


class FramePacer:
    """Spaces reads at least `1 / max_fps` seconds apart on a monotonic clock.

    `max_fps=None` means no limit. Used by the file sources so a video or folder plays at
    a line-like rate instead of as fast as it decodes.
    """

    def __init__(
        self,
        max_fps: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_fps is not None and max_fps <= 0:
            raise ValueError(f"max_fps must be > 0, got {max_fps}")
        self._interval_s = 0.0 if max_fps is None else 1.0 / max_fps
        self._clock = clock
        self._sleep = sleep
        self._next_due: float | None = None

    def wait(self) -> None:
        """Sleep until the next frame is due, then schedule the one after it."""
        if self._interval_s <= 0.0:
            return
        now = self._clock()
        if self._next_due is not None and now < self._next_due:
            self._sleep(self._next_due - now)
            now = self._next_due
        # Schedule from the due time, not from "now", unless we fell behind by more than
        # one interval (then restart the schedule rather than bursting to catch up).
        base = now if self._next_due is None or now - self._next_due > self._interval_s \
            else self._next_due
        self._next_due = base + self._interval_s

    def reset(self) -> None:
        """Forget the schedule (after a reconnect the next frame is due at once)."""
        self._next_due = None

"""The first stage: one per station. It reads the station's camera through a
`ResilientSource`, opens each frame in the verdict book, crops it to the station's ROI
(a view, no copy) and hands it on as a `Job` (to the engine's batcher, or to the
station's preprocess worker).

The ROI belongs to the appliance, not the bundle: the bundle's preprocessing (which may
crop again inside it) sees only the ROI, and boxes are shifted back by the ROI origin
into full-frame pixels (`Job.offset_xy`), so verdicts, the panel and kept images all
speak full-frame pixels.

Frame numbering has one owner: the station's `ResilientSource`, made once per stage and
kept across restarts of the stage, numbers frames ``"{station}:{seq}"`` from
`Station.first_seq` (which the composition root reads from the store, so a restarted
appliance never reuses an id).

Invariants:
- every frame read is opened in the book before anything else happens to it, and is
  either handed on or closed (`dropped` when the outbox is full under `overflow: drop`
  or stopped under `block`; `engine_failure` when the ROI lies outside the frame;
  `unreadable` / `corrupt` when the source had no usable image for it; `wrong_size`
  when it is smaller than `Station.min_frame_px` or not `Station.frame_wh`), so a
  damaged frame is never judged `pass`;
- at most `FrameBudget.limit` frames are read in all, reserved before each read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from appliance.capture import Frame, FrameSource, ResilientSource, SourceState
from appliance.pipeline.cpu import CpuMeter, thread_cpu_s
from appliance.pipeline.events import Events
from appliance.pipeline.inbox import Outbox
from appliance.pipeline.job import Job
from appliance.pipeline.verdicts import VerdictBook
from appliance.records import Severity
from appliance.records import UninspectedReason as Reason
from calibration.station import DefectSizing
from protocol.backoff import BackoffConfig

logger = logging.getLogger(__name__)

ImageBGR = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Station:
    """One camera of the line. `first_seq` is the seq of its next frame (frame ids are
    ``"{name}:{seq}"`` and must never repeat in the store)."""

    name: str
    source: FrameSource
    roi_xywh: tuple[int, int, int, int] | None = None
    first_seq: int = 0
    reconnect: BackoffConfig = field(default_factory=BackoffConfig)
    min_frame_px: int = 1
    """Frames narrower or lower than this (pixels) are `uninspected: wrong_size`."""
    frame_wh: tuple[int, int] | None = None
    """The (width, height) the camera delivers; other sizes are `wrong_size`."""
    sizing: DefectSizing | None = None
    """Defect sizes in mm and the minimum size per class (a calibrated station)."""


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


class StationsDone:
    """Counts stations that stopped producing; `event` is set once all have."""

    def __init__(self, stations: int) -> None:
        self._left = stations
        self._lock = threading.Lock()
        self.event = threading.Event()

    def one_done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self.event.set()


class SourceStage:
    """One station's source thread (see the module docstring). `run` is the stage body
    (supervised: restarted if it raises); `stop_event` stops it."""

    def __init__(
        self,
        station: Station,
        *,
        outbox: Outbox[Job],
        book: VerdictBook,
        events: Events,
        budget: FrameBudget,
        done: StationsDone,
        overflow: Literal["drop", "block"],
        abort: threading.Event,
        cpu: CpuMeter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.station = station
        self._cpu = cpu
        self.name = f"source:{station.name}"
        self._outbox = outbox
        self._book = book
        self._events = events
        self._budget = budget
        self._done = done
        self._block = overflow == "block"
        self._abort = abort
        self.stop_event = threading.Event()
        self.finished = threading.Event()
        """Set once the stage stopped producing for good (source ended, budget, stop)."""
        self.produced = 0
        self.dropped = 0
        self._roi_alarmed = False
        self._outage_alarmed = False  # a `lost` alarm recorded, no reopen since
        self._size_alarmed = False
        self.source = ResilientSource(
            station.name, station.source, reconnect=station.reconnect, clock=clock,
            on_state=self._on_state,
            first_seq=station.first_seq,
        )

    def take_lost(self) -> list[Job]:
        """Jobs this stage held when it died: none (a frame is handed on or closed)."""
        return []

    def run(self) -> None:
        frames = self.source.frames_until(self.stop_event)
        try:
            while True:
                if not self._budget.reserve():
                    # Budget used up: stop this source the way a stop does (state ENDED);
                    # with the stop event set the generator ends without another read.
                    self.stop_event.set()
                    for frame in frames:  # pragma: no cover - defensive, still recorded
                        self._take(frame)
                    break
                started = thread_cpu_s()
                try:
                    frame = next(frames)
                except StopIteration:
                    self._budget.release()
                    break
                self._take(frame)
                self._cpu.add("source", thread_cpu_s() - started)
        finally:
            frames.close()
        self.finished.set()
        self._done.one_done()

    def _take(self, frame: Frame) -> None:
        self.produced += 1
        if not self._book.open(frame):
            return  # read after stop: the sealed book recorded it as shutdown
        if frame.fault is not None:
            self._unusable(frame, Reason(frame.fault), frame.fault)
            return
        height, width = frame.image_bgr.shape[:2]
        expected = self.station.frame_wh
        if min(width, height) < self.station.min_frame_px or (
                expected is not None and (width, height) != expected):
            self._unusable(frame, Reason.WRONG_SIZE, f"{width}x{height}")
            return
        cropped = crop_to_roi(frame.image_bgr, self.station.roi_xywh)
        if cropped is None:
            self._roi_outside(frame.image_bgr.shape[1], frame.image_bgr.shape[0])
            self._book.close_uninspected([frame], Reason.ENGINE_FAILURE)
            return
        job = Job(frame, cropped[0], cropped[1], time.perf_counter())
        if self._outbox.offer(job) or (self._block and self._outbox.put(job, self._abort)):
            return
        self.dropped += 1
        self._book.close_uninspected([frame], Reason.DROPPED)

    def _unusable(self, frame: Frame, reason: Reason, detail: str) -> None:
        """Close a frame that has no usable image, and say so: an event per frame (each
        is a part the line rejects); a wrong size is also an alarm, once per stage."""
        st = self.station
        self._book.close_uninspected([frame], reason)
        self._events.record("frame_unusable", "warning", self.name,
                            f"station {st.name}: frame {frame.frame_id} is {reason}: "
                            f"{detail}", station=st.name, frame_id=frame.frame_id,
                            reason=str(reason), part_id=frame.part_id)
        if reason == Reason.WRONG_SIZE and not self._size_alarmed:
            self._size_alarmed = True
            want = (f"{st.frame_wh[0]}x{st.frame_wh[1]}" if st.frame_wh
                    else f"at least {st.min_frame_px} px wide and high")
            self._events.record("alarm", "alarm", self.name,
                                f"station {st.name}: frames of {detail}, expected {want}; "
                                "they are recorded as uninspected", alarm="frame_size",
                                station=st.name)

    def _roi_outside(self, width: int, height: int) -> None:
        if self._roi_alarmed:
            return
        self._roi_alarmed = True
        name = self.station.name
        self._events.record("alarm", "alarm", self.name,
                            f"station {name}: ROI {self.station.roi_xywh} lies outside its "
                            f"{width}x{height} frames; they are recorded as uninspected",
                            alarm="roi_outside_frame", station=name)

    def _on_state(self, station: str, old: SourceState, new: SourceState, detail: str) -> None:
        rs = self.source
        if new == SourceState.CONNECTING or (new == SourceState.LOST and self._outage_alarmed):
            return  # retries of one outage: the LOST that started it was recorded
        # One outage, one `lost` alarm: the read that lost the stream or, at start, the
        # first open that failed; the failed reopens after it are not new outages.
        self._outage_alarmed = new == SourceState.LOST
        severity: Severity = "alarm" if new == SourceState.LOST else "info"
        self._events.record("source_state", severity, self.name,
                            f"station {station}: {old} -> {new} ({detail})", station=station,
                            old=str(old), new=str(new), reconnects=rs.reconnects,
                            gap_s=rs.last_gap_s if new == SourceState.STREAMING else None)

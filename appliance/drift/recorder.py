"""The drift recorder: a verdict listener that computes each inspected frame's drift
signals on its own thread and publishes a `drift` window per station when it closes.

Invariants:
- the pipeline never waits for it: `on_verdict` only puts the record on a bounded
  queue; when the queue is full the frame is skipped and counted (`skipped_busy`);
- per station, a frame is counted at most once (DriftWindow) and windows never overlap
  in frame seq; a window closes on `window_frames`, `window_s`, a model change, or at
  stop (then it is saved, not sent, and resumed by the next start);
- the open window is saved in the store every `persist_every_frames` frames, so a
  restart resumes it: frames counted after the last save may be missing from the
  window, never counted twice.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from appliance.drift.config import DriftConfig
from appliance.drift.window import DriftWindow, WindowState
from appliance.records import InspectionRecord
from models.drift.signals import (
    SIGNAL_NAMES,
    SIGNALS_VERSION,
    SignalError,
    SignalSpec,
    frame_signals,
    output_names,
    output_signals,
)
from protocol.drift import DriftSketchV2, ReferenceInfo
from protocol.fields import ModelRef

logger = logging.getLogger(__name__)

POLL_S = 0.2


@dataclass(frozen=True)
class ModelFacts:
    """What the recorder needs to know about the model that judged a frame."""

    ref: ModelRef
    classes: tuple[str, ...]
    reference: ReferenceInfo | None = None


Publish = Callable[[DriftSketchV2], bool]
SaveWindow = Callable[[str, str], None]
ModelLookup = Callable[[str], ModelFacts | None]


class DriftRecorder:
    """See the module docstring. `start` / `stop` from the app; `on_verdict` from the
    verdict book's delivering threads."""

    def __init__(self, cfg: DriftConfig, *, site: str, line: str, publish: Publish,
                 models: ModelLookup, save: SaveWindow | None = None,
                 saved: dict[str, WindowState] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._site, self._line = site, line
        self._publish = publish
        self._models = models
        self._save = save
        self._clock = clock
        self._spec = SignalSpec(cfg.roi_frac, cfg.background_frac, cfg.work_width_px)
        self._queue: queue.Queue[InspectionRecord] = queue.Queue(cfg.queue_max_frames)
        self._windows: dict[str, DriftWindow] = {
            station: self._window(station, state) for station, state in (saved or {}).items()}
        self._since_save: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.counted = 0
        self.skipped_busy = 0
        self.skipped_rate = 0
        self._last_taken: dict[str, float] = {}  # station -> capture time of its last frame
        self.skipped_no_image = 0
        self.published = 0
        self.refused = 0
        self.signal_ms_total = 0.0

    def _window(self, station: str, state: WindowState | None = None) -> DriftWindow:
        return DriftWindow(station, window_frames=self._cfg.window_frames,
                           window_s=self._cfg.window_s, sample_frames=self._cfg.sample_frames,
                           seed=zlib.crc32(station.encode("utf-8")), state=state)

    # ------------------------------------------------------------------ intake
    def on_verdict(self, record: InspectionRecord) -> None:
        """A verdict listener: queue an inspected frame (never blocks)."""
        if record.verdict == "uninspected":
            return
        if record.image_bgr is None:
            self.skipped_no_image += 1
            return
        if self._cfg.max_frames_per_s is not None:
            last = self._last_taken.get(record.station)
            if last is not None and 0.0 <= record.captured_at - last \
                    < 1.0 / self._cfg.max_frames_per_s:
                self.skipped_rate += 1
                return
            self._last_taken[record.station] = record.captured_at
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.skipped_busy += 1

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Handle what is queued, then save every open window (resumed at next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for station, window in self._windows.items():
            self._persist(station, window)

    def _run(self) -> None:
        _lower_priority(self._cfg.thread_nice)
        while True:
            try:
                record = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                self._close_due()
                continue
            try:
                self.handle(record)
            except (SignalError, ValueError) as e:
                logger.warning("frame %s: drift signals skipped: %s", record.frame_id, e)

    # ------------------------------------------------------------------ core
    def handle(self, record: InspectionRecord) -> None:
        """Count one frame (the thread's work; tests call it directly)."""
        facts = self._models(record.model_version or "")
        seq = _seq(record.frame_id)
        if facts is None or seq is None or record.image_bgr is None:
            return
        t0 = time.perf_counter()
        image = frame_signals(record.image_bgr, self._spec, [d.box_xyxy for d in record.defects])
        scores = np.array([d.score for d in record.defects], np.float32)
        ids = np.array([d.class_id for d in record.defects], np.int64)
        out = output_signals(scores, ids, len(facts.classes))
        self.signal_ms_total += (time.perf_counter() - t0) * 1000.0
        names_out = output_names(facts.classes)
        window = self._windows.get(record.station) or self._window(record.station)
        self._windows[record.station] = window
        if not window.fits(facts.ref, SIGNAL_NAMES, names_out):
            self._close(window)
        if window.model is not None and window.model != facts.ref:
            window.new_model()
        if window.add(seq, record.captured_at, facts.ref, image, SIGNAL_NAMES, out, names_out):
            self.counted += 1
            n = self._since_save.get(record.station, 0) + 1
            self._since_save[record.station] = n
            if n >= self._cfg.persist_every_frames:
                self._persist(record.station, window)
        if window.due(self._clock()):
            self._close(window)

    def _close_due(self) -> None:
        now = self._clock()
        for station, window in self._windows.items():
            if window.due(now):
                self._close(window)
                self._persist(station, window)

    def _close(self, window: DriftWindow) -> None:
        """Publish the open window (if any) as a `drift` message."""
        model = window.model
        if model is None or window.state.frames == 0:
            return
        facts = self._models(f"{model.name}:{model.version}")
        refine = self._cfg.refine_reference_frames
        # With refinement on, the cloud builds this model's reference from the line's
        # first `refine` frames instead of the bundle's.
        reference = ReferenceInfo(source="line", frames=refine) if refine else (
            facts.reference if facts is not None else None)
        message = window.close(site=self._site, line=self._line, sent_at=self._clock(),
                               signals_version=SIGNALS_VERSION, reference=reference)
        if message is None:
            return
        if self._publish(message):
            self.published += 1
        else:
            self.refused += 1
            logger.warning("drift window %s..%s of %s refused by telemetry",
                           message.first_frame_id, message.last_frame_id, message.station)

    def _persist(self, station: str, window: DriftWindow) -> None:
        self._since_save[station] = 0
        if self._save is None:
            return
        try:
            self._save(station, window.to_json())
        except Exception:  # the store is another component: log, keep counting
            logger.exception("drift window of %s not saved", station)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by `nice` (Linux: a thread id is a process id
    to setpriority; raising it needs no privilege). Elsewhere nothing happens."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:
        logger.warning("drift thread keeps its priority: %s", e)


def _seq(frame_id: str) -> int | None:
    _, sep, tail = frame_id.rpartition(":")
    return int(tail) if sep and tail.isdigit() else None

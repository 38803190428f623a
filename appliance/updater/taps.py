"""Verdict listeners of a staged activation, off the critical path.

`ShadowTap` copies up to N judged frames into a bounded queue (a full queue drops the
frame: the line never waits for the shadow run) and a thread of its own judges each with
the candidate and, timing both alike, the active model; the line's verdict is never
touched. `RecentVerdicts` keeps the last verdicts of each model for the health window.
"""

from __future__ import annotations

import logging
import queue
import statistics
import threading
import time
from collections import deque
from collections.abc import Mapping

from appliance.pipeline.engine import ImageBGR, LoadedModel
from appliance.pipeline.judge import Judge
from appliance.pipeline.source_stage import crop_to_roi
from appliance.records import InspectionRecord
from appliance.updater.compare import (
    HealthFigures,
    ShadowResult,
    figures_of,
    judgements_agree,
)
from models.postprocess import Detections

logger = logging.getLogger(__name__)

Roi = tuple[int, int, int, int] | None


def _timed(model: LoadedModel, image: ImageBGR) -> tuple[Detections, float]:
    started = time.perf_counter()
    found = model.detect([image])[0]
    return found, (time.perf_counter() - started) * 1000.0


class ShadowTap:
    """Judge `frames` live frames with `candidate` beside `active` (see module doc).
    `roi_of[station]` is the station's crop, as the pipeline applies it."""

    def __init__(self, candidate: LoadedModel, active: LoadedModel, frames: int,
                 roi_of: Mapping[str, Roi], *, min_iou: float, queue_size: int = 8) -> None:
        self._candidate, self._active = candidate, active
        self._judge = Judge.from_manifest(candidate.manifest)
        self._wanted = frames
        self._roi_of = roi_of
        self._min_iou = min_iou
        self._queue: queue.Queue[InspectionRecord] = queue.Queue(queue_size)
        self._taken = 0
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.frames = self.agreed = self.errors = self.dropped = 0
        self._cand_ms: list[float] = []
        self._active_ms: list[float] = []
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def on_verdict(self, record: InspectionRecord) -> None:
        """Verdict sink (pipeline thread): copy an active model's judged frame, never wait."""
        if self._done.is_set() or record.verdict == "uninspected" or record.image_bgr is None \
                or record.model_version != self._active.version_id:
            return
        with self._lock:
            if self._taken >= self._wanted:
                return
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1
                return
            self._taken += 1

    def _run(self) -> None:
        while not self._stop.is_set() and self.frames + self.errors < self._wanted:
            try:
                record = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if record.image_bgr is None:
                continue
            cropped = crop_to_roi(record.image_bgr, self._roi_of.get(record.station))
            if cropped is None:
                continue
            image, origin = cropped
            try:
                # Alternating which runs first evens out cache effects between the two.
                if self.frames % 2:
                    active_ms = _timed(self._active, image)[1]
                    found, cand_ms = _timed(self._candidate, image)
                else:
                    found, cand_ms = _timed(self._candidate, image)
                    active_ms = _timed(self._active, image)[1]
            except Exception as e:  # noqa: BLE001 - any failure of the candidate counts
                logger.warning("shadow: candidate %s failed on frame %s: %s",
                               self._candidate.version_id, record.frame_id, e)
                self.errors += 1
                continue
            verdict, defects = self._judge.verdict(found, (float(origin[0]), float(origin[1])))
            self.frames += 1
            self.agreed += judgements_agree(record.verdict, record.defects, verdict, defects,
                                            min_iou=self._min_iou)
            self._cand_ms.append(cand_ms)
            self._active_ms.append(active_ms)
        self._done.set()

    def wait(self, timeout_s: float, stop: threading.Event | None = None) -> ShadowResult:
        """Wait until `frames` frames were judged, `timeout_s` passed or `stop` is set;
        end the run and return what was measured."""
        deadline = time.monotonic() + timeout_s
        while not self._done.wait(0.05):
            if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
                break
        self._stop.set()
        self._done.set()
        self._thread.join(10.0)
        return ShadowResult(
            frames=self.frames, agreed=self.agreed, errors=self.errors,
            candidate_ms_p50=statistics.median(self._cand_ms) if self._cand_ms else 0.0,
            active_ms_p50=statistics.median(self._active_ms) if self._active_ms else 0.0)


class RecentVerdicts:
    """The last `size` verdicts of each model version (verdict sink; a few microseconds)."""

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._by_model: dict[str | None, deque[tuple[str, str | None, float | None]]] = {}
        self._counts: dict[str | None, int] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def on_verdict(self, record: InspectionRecord) -> None:
        entry = (record.verdict, record.reason, record.latency_ms.get("total"))
        with self._lock:
            recent = self._by_model.get(record.model_version)
            if recent is None:
                recent = self._by_model[record.model_version] = deque(maxlen=self._size)
            recent.append(entry)
            self._counts[record.model_version] = self._counts.get(record.model_version, 0) + 1
            self._changed.notify_all()

    def count(self, version_id: str | None) -> int:
        with self._lock:
            return self._counts.get(version_id, 0)

    def figures(self, version_id: str | None, last: int | None = None) -> HealthFigures | None:
        """Figures of the last `last` (default all kept) verdicts of a model; None if none."""
        with self._lock:
            recent = list(self._by_model.get(version_id, ()))
        if last is not None:
            recent = recent[-last:]
        return figures_of(recent) if recent else None

    def wait_for(self, version_id: str, count: int, timeout_s: float,
                 stop: threading.Event | None = None) -> bool:
        """Wait until `count` verdicts of `version_id` were seen in all; False on timeout
        or `stop`."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._counts.get(version_id, 0) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (stop is not None and stop.is_set()):
                    return False
                self._changed.wait(min(remaining, 0.1))
        return True

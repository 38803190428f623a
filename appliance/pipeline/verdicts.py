"""Exactly one verdict per frame: the ledger between the stages and the sinks, and the
only thing that closes a frame.

Every frame a source produces is `open`ed here first. Stages then tell the book how it
ended: the postprocess stage with its `close_inspected` records, any stage that gives
up on a frame with `close_uninspected(frames, reason)` (dropped at intake, engine
failure, no model, ROI outside the frame), the deadline timer with `deadline`, and
`seal` at shutdown. The first close wins and is delivered to the sinks (store,
statistics, listeners); only the book builds `uninspected` records.

Invariants:
- every opened frame gets exactly one record delivered: by its first close, by its
  deadline expiring (`uninspected: deadline`, delivered at the deadline, from the timer
  thread), or by `seal` at shutdown; a close for a frame that is already closed (a late
  result) is discarded and counted in `late`, never delivered;
- after `seal`, `open` delivers `uninspected: <seal reason>` at once and returns False
  (a straggler read after stop is recorded, never lost);
- sinks run outside the lock in the thread that closed the frame, in order; a sink that
  raises is logged and counted (`sink_errors`), never propagated into a stage;
- with no deadline configured no timer thread runs and `open` is a dict insert;
- while `withhold_pass()` names a reason (the store cannot commit), a `pass` is delivered
  as `uninspected: <reason>` instead: a part is never reported as passed while its
  verdict cannot be kept.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence

from appliance.capture import Frame
from appliance.pipeline.judge import uninspected_record
from appliance.records import InspectionRecord, UninspectedReason

logger = logging.getLogger(__name__)

Sink = Callable[[InspectionRecord], None]


class VerdictBook:
    """See the module docstring. `clock` is unix seconds (capture times, judged_at);
    `mono` is a monotonic clock for the deadline timer."""

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        deadline_s: float | None = None,
        keep_images: bool = True,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        on_open: Callable[[Frame], None] | None = None,
        withhold_pass: Callable[[], UninspectedReason | None] | None = None,
    ) -> None:
        self._sinks = list(sinks)
        self._on_open = on_open
        self._withhold_pass = withhold_pass
        self.deadline_s = deadline_s
        self._keep_images = keep_images
        self._clock = clock
        self._mono = mono
        self._pending: dict[str, Frame] = {}
        self._due: list[tuple[float, int, str]] = []
        self._tick = 0
        self._cv = threading.Condition(threading.Lock())
        self._count_lock = threading.Lock()
        self._stopping = False
        self._sealed: UninspectedReason | None = None
        self._thread: threading.Thread | None = None
        self.opened = 0
        self.delivered = 0
        self.late = 0
        self.expired = 0
        self.sink_errors = 0

    # -- sinks ---------------------------------------------------------------------

    def add_sink(self, sink: Sink) -> None:
        """Add a sink (called for every record, in the delivering thread; keep it fast)."""
        self._sinks = [*self._sinks, sink]

    def _send(self, record: InspectionRecord) -> None:
        with self._count_lock:
            self.delivered += 1
        for sink in self._sinks:
            try:
                sink(record)
            # A sink (store, panel, telemetry, a listener) must never take a stage down;
            # its failure is logged with the frame and counted.
            except Exception:
                with self._count_lock:
                    self.sink_errors += 1
                logger.exception("frame %s: verdict sink %r failed", record.frame_id, sink)

    # -- the ledger -------------------------------------------------------------------

    def open(self, frame: Frame) -> bool:
        """Register a frame that will get a verdict (and schedule its deadline). After
        `seal` the frame is closed at once as uninspected and False is returned.
        `on_open(frame)` (the store's captured high-water mark) runs first, before the
        frame can get a verdict."""
        if self._on_open is not None:
            self._on_open(frame)
        with self._cv:
            sealed = self._sealed
            if sealed is None:
                self._pending[frame.frame_id] = frame
                self.opened += 1
                if self.deadline_s is not None:
                    due = self._mono() + (frame.captured_at + self.deadline_s - self._clock())
                    self._tick += 1
                    heapq.heappush(self._due, (due, self._tick, frame.frame_id))
                    if self._due[0][2] == frame.frame_id:
                        self._cv.notify_all()
                return True
        self._send(uninspected_record(frame, sealed, judged_at=self._clock(),
                                      keep_image=self._keep_images))
        return False

    def is_pending(self, frame_id: str) -> bool:
        """True while the frame has no verdict yet (the engine skips frames whose
        deadline already passed)."""
        return frame_id in self._pending

    def close_inspected(self, records: Sequence[InspectionRecord]) -> int:
        """Deliver each record whose frame has no verdict yet; discard the others (late
        results, counted in `late`). Returns how many were delivered."""
        with self._cv:
            frames = [self._pending.pop(r.frame_id, None) for r in records]
            fresh = [f is not None for f in frames]
            late = len(fresh) - sum(fresh)
            self.late += late
        withheld = self._withhold_pass() if self._withhold_pass is not None else None
        for record, frame in zip(records, frames, strict=True):
            if frame is not None:
                if withheld is not None and record.verdict == "pass":
                    # The verdict cannot be stored: never report a part as pass then.
                    record = uninspected_record(frame, withheld, judged_at=record.judged_at,
                                                model_version=record.model_version,
                                                keep_image=self._keep_images)
                self._send(record)
            else:
                logger.info("frame %s: late %s result of model %s discarded (already judged)",
                            record.frame_id, record.verdict, record.model_version)
        return len(records) - late

    def close_uninspected(self, frames: Sequence[Frame], reason: UninspectedReason,
                          model_version: str | None = None) -> int:
        """Close these frames (those still pending) as `uninspected: reason`."""
        now = self._clock()
        return self.close_inspected([
            uninspected_record(f, reason, judged_at=now, model_version=model_version,
                               keep_image=self._keep_images)
            for f in frames
        ])

    def seal(self, reason: UninspectedReason) -> int:
        """Close every pending frame as `uninspected: reason`, and every frame opened
        from now on (shutdown). Returns how many were pending."""
        with self._cv:
            self._sealed = reason
            frames = list(self._pending.values())
            self._pending.clear()
            self._due.clear()
        now = self._clock()
        for frame in frames:
            self._send(uninspected_record(frame, reason, judged_at=now,
                                          keep_image=self._keep_images))
        if frames:
            logger.warning("%d frames without a verdict closed as uninspected: %s",
                           len(frames), reason)
        return len(frames)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- deadlines ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the deadline timer (only when a deadline is configured)."""
        if self.deadline_s is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run_deadlines, name="deadlines",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the deadline timer (pending frames stay pending: see `seal`)."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _expired(self) -> list[Frame]:
        """Pop the frames whose deadline has passed (caller holds the lock)."""
        now = self._mono()
        frames: list[Frame] = []
        while self._due and self._due[0][0] <= now:
            _, _, frame_id = heapq.heappop(self._due)
            frame = self._pending.pop(frame_id, None)
            if frame is not None:
                frames.append(frame)
        return frames

    def _run_deadlines(self) -> None:
        while True:
            with self._cv:
                if self._stopping:
                    return
                frames = self._expired()
                if not frames:
                    wait = self._due[0][0] - self._mono() if self._due else 0.5
                    self._cv.wait(min(max(wait, 0.0005), 0.5))
                    continue
            now = self._clock()
            self.expired += len(frames)
            for frame in frames:
                logger.warning("frame %s (part %s): no verdict within %.0f ms: uninspected",
                               frame.frame_id, frame.part_id, 1000 * (self.deadline_s or 0))
                self._send(uninspected_record(frame, UninspectedReason.DEADLINE,
                                              judged_at=now, keep_image=self._keep_images))

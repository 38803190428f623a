"""Exactly one verdict per frame: the ledger between the stages and the sinks.

Every frame the pipeline accepts from a source is `open`ed here first; whoever has its
verdict (the postprocess stage, the deadline timer, the shutdown sweep, an engine
failure) `close`s it with a record; the first close wins and is delivered to the
sinks (store, statistics, listeners). Frames refused at intake never open; their
`uninspected: dropped` record is `deliver`ed directly.

Invariants:
- every opened frame gets exactly one record delivered: by `close` (first wins), by its
  deadline expiring (`uninspected: deadline`, delivered at the deadline, from the timer
  thread), or by `close_all` at shutdown; a record for a frame that is already closed
  (a late result) is discarded and counted in `late`, never delivered;
- sinks run outside the lock in the thread that closed the frame, in order; a sink that
  raises is logged and counted (`sink_errors`), never propagated into a stage;
- with no deadline configured no timer thread runs and `open` is a dict insert.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence

from appliance.capture import Frame
from appliance.judge import uninspected_record
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
    ) -> None:
        self._sinks = list(sinks)
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

    def open(self, frame: Frame) -> None:
        """Register a frame that will get a verdict (and schedule its deadline)."""
        with self._cv:
            self._pending[frame.frame_id] = frame
            self.opened += 1
            if self.deadline_s is not None:
                due = self._mono() + (frame.captured_at + self.deadline_s - self._clock())
                self._tick += 1
                heapq.heappush(self._due, (due, self._tick, frame.frame_id))
                if self._due[0][2] == frame.frame_id:
                    self._cv.notify_all()

    def is_pending(self, frame_id: str) -> bool:
        """True while the frame has no verdict yet (the engine skips frames whose
        deadline already passed)."""
        return frame_id in self._pending

    def close(self, record: InspectionRecord) -> bool:
        """Deliver `record` if its frame has no verdict yet; else discard it (a late
        result) and return False."""
        with self._cv:
            if self._pending.pop(record.frame_id, None) is None:
                self.late += 1
                late = True
            else:
                late = False
        if late:
            logger.info("frame %s: late %s result of model %s discarded (already judged)",
                        record.frame_id, record.verdict, record.model_version)
            return False
        self._send(record)
        return True

    def close_many(self, records: Sequence[InspectionRecord]) -> int:
        """`close` each record; returns how many were delivered."""
        return sum(self.close(r) for r in records)

    def deliver(self, record: InspectionRecord) -> None:
        """Deliver the record of a frame that was never opened (dropped at intake)."""
        self._send(record)

    def close_all(self, reason: UninspectedReason) -> int:
        """Close every pending frame as `uninspected: reason` (shutdown sweep)."""
        with self._cv:
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

    def close_frames(self, frames: Sequence[Frame], reason: UninspectedReason,
                     model_version: str | None = None) -> int:
        """Close these frames (those still pending) as `uninspected: reason`."""
        now = self._clock()
        return self.close_many([
            uninspected_record(f, reason, judged_at=now, model_version=model_version,
                               keep_image=self._keep_images)
            for f in frames
        ])

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
        """Stop the deadline timer (pending frames stay pending: see `close_all`)."""
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

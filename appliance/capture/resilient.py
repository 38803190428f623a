"""Reconnect with exponential backoff, report state, count frames and reconnects.

Invariants:
- `state` changes only in the thread running `frames_until`, and every change is
  reported to `on_state(station, old, new, detail)` after the counters are updated, so
  the callback may read `reconnects`, `attempts` and `last_gap_s`;
- a loss goes STREAMING -> LOST, each retry LOST -> CONNECTING, and a failed retry
  CONNECTING -> LOST again; success is CONNECTING -> STREAMING;
- the backoff before retry `k` (1-based) of one outage is `protocol.backoff`'s
  `min(initial_s * 2 ** (k - 1), max_s)` under the `reconnect` bounds, and it is reset
  only once the reopened source has delivered a frame (a source that opens and then fails at once
  does not retry in a tight loop);
- waits happen on the caller's stop event, never past it; the source is closed whenever
  `frames_until` returns, raises or is closed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator

import numpy as np

from appliance.capture.source import Frame, FrameSource, SourceState
from appliance.errors import FrameUnreadable, SourceEnded, SourceLost
from protocol.backoff import Backoff, BackoffConfig

logger = logging.getLogger(__name__)

StateCallback = Callable[[str, SourceState, SourceState, str], None]
"""`on_state(station, old, new, detail)`; detail is a human-readable reason."""

Waiter = Callable[[float, threading.Event], None]
"""`sleep(seconds, stop)`: wait up to `seconds`, returning early once `stop` is set."""


def _wait_on_event(seconds: float, stop: threading.Event) -> None:
    stop.wait(seconds)


class ResilientSource:
    """Drives one station's `FrameSource`: reconnects, states, counters, `Frame`s.

    `reconnect` bounds the backoff between open attempts (None: `BackoffConfig()`'s
    defaults); `clock` stamps frames that come without a capture time and measures gaps
    (unix seconds); `sleep(seconds, stop)` is the backoff wait (injectable for tests).
    """

    def __init__(
        self,
        station: str,
        source: FrameSource,
        *,
        reconnect: BackoffConfig | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Waiter = _wait_on_event,
        on_state: StateCallback | None = None,
        first_seq: int = 0,
    ) -> None:
        self.station = station
        self.source = source
        self._backoff = Backoff(reconnect or BackoffConfig())
        self._clock = clock
        self._sleep = sleep
        self._on_state = on_state
        self._next_seq = first_seq

        self.state = SourceState.CONNECTING
        self.frames = 0
        """Frames delivered."""
        self.reconnects = 0
        """Successful reopens after a loss (not counting the first connect)."""
        self.attempts = 0
        """Failed open attempts since the last frame (the current outage's retries)."""
        self.last_gap_s: float | None = None
        """Seconds without frames in the last outage: from the last frame (or the loss, if
        none came) to the successful reopen. Set before the STREAMING report."""
        self.last_error: str | None = None

    # -- state ---------------------------------------------------------------------

    def _set_state(self, new: SourceState, detail: str) -> None:
        old = self.state
        if new == old:
            return
        self.state = new
        log = logger.warning if new == SourceState.LOST else logger.info
        log("source %s: %s -> %s (%s)", self.station, old, new, detail)
        if self._on_state is not None:
            self._on_state(self.station, old, new, detail)

    # -- main loop -----------------------------------------------------------------

    def frames_until(self, stop: threading.Event) -> Generator[Frame, None, None]:
        """Yield frames until the source ends or `stop` is set.

        Handles SourceLost by closing, waiting the backoff on `stop` and reopening; ends
        (state ENDED) on SourceEnded or stop. Frames are numbered across reconnects.
        """
        opened = False
        ever_opened = False
        lost_at: float | None = None  # start of the current outage (last frame or loss)
        last_frame_at: float | None = None
        self._backoff.reset()  # retries of the current outage: reset by a frame after reopen
        try:
            while not stop.is_set():
                if not opened:
                    self._set_state(SourceState.CONNECTING,
                                    "reconnecting" if ever_opened else "opening")
                    try:
                        self.source.open()
                    except SourceLost as e:
                        self.attempts += 1
                        self.last_error = str(e)
                        if lost_at is None:
                            lost_at = self._clock() if last_frame_at is None else last_frame_at
                        delay_s = self._backoff.next_delay_s()
                        self._set_state(
                            SourceState.LOST,
                            f"open failed (attempt {self.attempts}): {e}; "
                            f"retry in {delay_s:.1f} s",
                        )
                        self._sleep(delay_s, stop)
                        continue
                    opened = True
                    if ever_opened and lost_at is not None:
                        self.reconnects += 1
                        self.last_gap_s = max(0.0, self._clock() - lost_at)
                        detail = (f"reconnected after {self.last_gap_s:.2f} s gap "
                                  f"({self.attempts} failed attempts)")
                    else:
                        detail = "connected"
                    ever_opened = True
                    lost_at = None
                    self._set_state(SourceState.STREAMING, detail)

                fault: str | None = None
                try:
                    image_bgr, part_id, captured_at = self.source.read()
                except FrameUnreadable as e:
                    # A frame that exists but cannot be used still gets a number (and a
                    # verdict): only a source that delivers nothing is lost.
                    fault, part_id, captured_at = e.fault, e.part_id, None
                    image_bgr = np.zeros((0, 0, 3), dtype=np.uint8)
                    logger.warning("station %s: frame %s is %s: %s", self.station,
                                   f"{self.station}:{self._next_seq}", fault, e)
                except SourceLost as e:
                    self.source.close()
                    opened = False
                    self.last_error = str(e)
                    lost_at = self._clock() if last_frame_at is None else last_frame_at
                    delay_s = self._backoff.next_delay_s()
                    self._set_state(SourceState.LOST, f"{e}; retry in {delay_s:.1f} s")
                    self._sleep(delay_s, stop)
                    continue

                now = self._clock()
                last_frame_at = now
                self._backoff.reset()
                self.attempts = 0
                seq = self._next_seq
                self._next_seq += 1
                self.frames += 1
                yield Frame(
                    frame_id=f"{self.station}:{seq}",
                    station=self.station,
                    seq=seq,
                    captured_at=now if captured_at is None else captured_at,
                    part_id=part_id,
                    image_bgr=image_bgr,
                    fault=fault,
                )
            self._set_state(SourceState.ENDED, "stopped")
        except SourceEnded as e:
            self._set_state(SourceState.ENDED, str(e) or "source ended")
        finally:
            self.source.close()

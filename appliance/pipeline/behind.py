"""Falling behind: the line produces more than the machine can judge.

Two signals, either one is enough: frames are captured faster than parts are judged
(`input_fps > judged_fps * (1 + rate_margin)`: the queue grows, or frames are dropped),
or the capture-to-verdict latency keeps growing (faster than
`latency_growth_ms_per_s`: with `overflow: block` the source is held back, so the rates
match while every part waits longer than the one before). The alarm is raised when a
signal has held for `after_s` and cleared when neither has held for `clear_after_s`, so
a burst does not raise it and a single good second does not clear it.

- `RateSampler` turns cumulative counters (frames captured, parts judged, the latest
  verdict's latency) into `Rates` over the last `window_s` seconds. Pure.
- `BehindDetector` turns `Rates` into a `BehindState` and says when the alarm is raised
  or cleared. Pure (time comes with each call).
- `BehindMonitor` runs both on a thread over the pipeline's statistics, logs each
  change and raises or ends the `falling_behind` alarm in the alarm book (one
  `alarm_raised` / `alarm_resolved` event each, with the rates); its `state` goes into
  `PipelineStats.behind`, from where the status line and telemetry (status alarm
  `falling_behind`, `metrics.input_fps`) report it.

"Judged" counts every verdict except the ones that capacity cost: `uninspected` with
reason `dropped` or `deadline`. A line with no model judges nothing but is not behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from appliance.records import UninspectedReason

if TYPE_CHECKING:
    from appliance.config import BehindConfig
    from appliance.pipeline.stats import PipelineStats
    from appliance.store.alarm_rows import AlarmData

logger = logging.getLogger(__name__)

ALARM = "falling_behind"
CAPACITY_REASONS = frozenset({UninspectedReason.DROPPED, UninspectedReason.DEADLINE})

Change = Literal["raised", "cleared"]


@dataclass(frozen=True, slots=True)
class Rates:
    """What the line did over the last window."""

    input_fps: float
    """Frames captured per second, all stations."""
    judged_fps: float
    """Parts judged per second (see the module docstring)."""
    latency_growth_ms_per_s: float | None
    """How fast the capture-to-verdict latency grew (ms per s); None: unknown."""
    backlog_frames: int
    """Frames captured and not yet judged, now."""


@dataclass(frozen=True, slots=True)
class BehindState:
    """Whether the `falling_behind` alarm is active, since when, and the last rates."""

    active: bool
    since: float | None
    """When the line started falling behind (unix s; set while active)."""
    input_fps: float
    judged_fps: float
    backlog_frames: int

    def describe(self) -> str:
        """One phrase for logs and the status line."""
        return (f"falling behind: {self.input_fps:.1f} frames/s captured, "
                f"{self.judged_fps:.1f} parts/s judged, {self.backlog_frames} waiting")


IDLE = BehindState(active=False, since=None, input_fps=0.0, judged_fps=0.0, backlog_frames=0)


class RateSampler:
    """Rates from cumulative counters over the last `window_s` seconds (pure)."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self._window_s = window_s
        self._samples: deque[tuple[float, int, int, float | None]] = deque()

    def add(self, at: float, frames: int, judged: int, latency_ms: float | None,
            backlog_frames: int) -> Rates | None:
        """One reading (time in s, cumulative frames and judged parts, the latest
        verdict's latency). Returns the rates from the oldest reading within the window,
        None until two readings are at least a tenth of the window apart."""
        self._samples.append((at, frames, judged, latency_ms))
        while len(self._samples) > 2 and self._samples[1][0] <= at - self._window_s:
            self._samples.popleft()
        t0, frames0, judged0, latency0 = self._samples[0]
        span_s = at - t0
        if span_s < self._window_s / 10:
            return None
        growth = None if latency0 is None or latency_ms is None else \
            (latency_ms - latency0) / span_s
        return Rates(input_fps=max(0, frames - frames0) / span_s,
                     judged_fps=max(0, judged - judged0) / span_s,
                     latency_growth_ms_per_s=growth, backlog_frames=max(0, backlog_frames))


class BehindDetector:
    """`update(now, rates)` -> (state, change): see the module docstring (pure)."""

    def __init__(self, cfg: BehindConfig) -> None:
        self._cfg = cfg
        self._behind_since: float | None = None
        self._caught_up_since: float | None = None
        self.state = IDLE

    def is_behind(self, rates: Rates) -> bool:
        """Whether these rates, on their own, say the line is behind."""
        cfg = self._cfg
        if rates.input_fps > 0 and rates.input_fps > rates.judged_fps * (1 + cfg.rate_margin):
            return True
        growth = rates.latency_growth_ms_per_s
        return growth is not None and growth > cfg.latency_growth_ms_per_s

    def update(self, now: float, rates: Rates) -> tuple[BehindState, Change | None]:
        cfg = self._cfg
        active = self.state.active
        change: Change | None = None
        if self.is_behind(rates):
            self._caught_up_since = None
            if self._behind_since is None:
                self._behind_since = now
            if not active and now - self._behind_since >= cfg.after_s:
                active, change = True, "raised"
        else:
            self._behind_since = None if not active else self._behind_since
            if active:
                if self._caught_up_since is None:
                    self._caught_up_since = now
                if now - self._caught_up_since >= cfg.clear_after_s:
                    active, change = False, "cleared"
                    self._behind_since = self._caught_up_since = None
        self.state = BehindState(
            active=active, since=self._behind_since if active else None,
            input_fps=round(rates.input_fps, 2), judged_fps=round(rates.judged_fps, 2),
            backlog_frames=rates.backlog_frames,
        )
        return self.state, change


def judged_parts(stats: PipelineStats) -> int:
    """Verdicts so far, less the ones capacity cost (dropped, deadline)."""
    lost = sum(n for reason, n in stats.uninspected.items() if reason in CAPACITY_REASONS)
    return sum(stats.verdicts.values()) - lost


class Alarms(Protocol):
    """Where the monitor raises and ends its alarm (appliance.alarms.AlarmBook fits)."""

    def raise_alarm(self, code: str, message: str, station: str | None = None,
                    severity: str = "warning", *, data: AlarmData | None = None,
                    bump: bool = True) -> object: ...

    def clear(self, code: str, station: str | None = None, *, message: str | None = None,
              data: AlarmData | None = None) -> object: ...


class BehindMonitor:
    """Reads `stats()` every `poll_s` on a thread ("behind-monitor"), runs the sampler and
    the detector, logs each change and raises or ends the alarm in `alarms`. `state` is
    the latest BehindState."""

    def __init__(self, cfg: BehindConfig, stats: Callable[[], PipelineStats],
                 alarms: Alarms, *, clock: Callable[[], float] = time.time) -> None:
        self._cfg = cfg
        self._stats = stats
        self._alarms = alarms
        self._clock = clock
        self._sampler = RateSampler(cfg.window_s)
        self._detector = BehindDetector(cfg)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def state(self) -> BehindState:
        return self._detector.state

    def start(self) -> None:
        if self._cfg.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._main, name="behind-monitor",
                                            daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _main(self) -> None:
        poll_s = min(1.0, self._cfg.window_s / 5)
        while not self._stop.wait(poll_s):
            try:
                self.check()
            except Exception:  # a failed reading must not end the monitor
                logger.exception("falling-behind check failed")

    def check(self) -> BehindState:
        """One reading (the thread calls this; tests may too)."""
        s = self._stats()
        now = self._clock()
        rates = self._sampler.add(time.monotonic(), s.frames, judged_parts(s),
                                  s.recent_latency_ms, s.queue_depths.get("pending", 0))
        if rates is None:
            return self.state
        state, change = self._detector.update(now, rates)
        facts: AlarmData = {"input_fps": state.input_fps, "judged_fps": state.judged_fps,
                            "backlog_frames": state.backlog_frames}
        if change == "raised":
            logger.warning("ALARM %s (for %.1f s)", state.describe(), self._cfg.after_s)
            self._alarms.raise_alarm(ALARM, state.describe(), data=facts, bump=False)
        elif change == "cleared":
            message = (f"caught up: {state.input_fps:.1f} frames/s captured, "
                       f"{state.judged_fps:.1f} parts/s judged")
            logger.info("alarm cleared: %s", message)
            self._alarms.clear(ALARM, message=message, data=facts)
        return state

"""In-process sources: the simulated line (the default camera) and in-memory replay.

`linesim` is imported only when a simulated line is opened, so `import appliance` never
needs it; production code that points at a real camera never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from appliance.capture.source import FramePacer, ImageBGR, SourceRead
from appliance.errors import SourceEnded, SourceLost

if TYPE_CHECKING:
    from linesim import LineConfig, SimFrame


class SimulatedLineSource:
    """Parts of a `linesim` line, one frame per part, with part ids `str(part_id)`.

    With `realtime=True` parts arrive `cfg.frame_interval_s` apart and carry the unix time
    they passed the camera (`clock`, default `time.time`); otherwise they come as fast as
    they render and carry no capture time (the caller stamps them when read), since a
    nominal line time would run ahead of the wall clock. Reopening continues with the next
    part, so part ids never repeat within one source. `on_part(sim_frame)`, if given, sees
    every part read, with its ground truth (the demo scores its verdicts with it).
    """

    def __init__(
        self,
        cfg: LineConfig,
        *,
        realtime: bool = True,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        first_part_id: int = 0,
        on_part: Callable[[SimFrame], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_part = on_part
        self._realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._next_part_id = first_part_id
        self._frames: Iterator[SimFrame] | None = None

    def open(self) -> None:
        """Start the line at the next part id."""
        from linesim import SimulatedLine  # lazy: see the module docstring

        line = SimulatedLine(
            self.cfg,
            realtime=self._realtime,
            clock=self._clock,
            sleep=self._sleep,
            first_part_id=self._next_part_id,
        )
        self._frames = iter(line)

    def read(self) -> SourceRead:
        """The next part's frame (H x W x 3 BGR uint8). Raises SourceLost if not open."""
        if self._frames is None:
            raise SourceLost("simulated line is not open")
        sim = next(self._frames)
        self._next_part_id = sim.part_id + 1
        if self._on_part is not None:
            self._on_part(sim)
        captured_at = sim.timestamp_s if self._realtime else None
        return sim.part.image_bgr, str(sim.part_id), captured_at

    def close(self) -> None:
        self._frames = None


class ReplaySource:
    """Pre-rendered frames from memory, for benchmarks (no rendering or decoding competes
    with inference).

    Frames are returned as given (not copied); `part_ids`, if given, must match `frames`
    in length. With `loop` the sequence repeats; without it the source ends after the
    last frame. `max_fps=None` means as fast as the caller reads.
    """

    def __init__(
        self,
        frames: Sequence[ImageBGR],
        *,
        loop: bool = True,
        max_fps: float | None = None,
        part_ids: Sequence[str] | None = None,
    ) -> None:
        if not frames:
            raise ValueError("ReplaySource needs at least one frame")
        for i, f in enumerate(frames):
            if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
                raise ValueError(f"frame {i} must be H x W x 3 uint8, got {f.shape} {f.dtype}")
        if part_ids is not None and len(part_ids) != len(frames):
            raise ValueError(f"{len(part_ids)} part ids for {len(frames)} frames")
        self._frames = frames
        self._part_ids = part_ids
        self._loop = loop
        self._pacer = FramePacer(max_fps)
        self._next = 0
        self._open = False

    def open(self) -> None:
        self._open = True
        self._pacer.reset()

    def read(self) -> SourceRead:
        """The next frame. Raises SourceEnded after the last frame unless looping."""
        if not self._open:
            raise SourceLost("replay source is not open")
        if self._next >= len(self._frames):
            if not self._loop:
                raise SourceEnded(f"replay ended after {len(self._frames)} frames")
            self._next = 0
        self._pacer.wait()
        i = self._next
        self._next += 1
        part_id = None if self._part_ids is None else self._part_ids[i]
        return self._frames[i], part_id, None

    def close(self) -> None:
        self._open = False

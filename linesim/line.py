"""The simulated line: a deterministic stream of parts passing the camera.

Invariants:
- part `k` of a line with seed `s` is rendered from its own generator seeded with
  `(s, k)`, so any part can be reproduced alone, in any order, on any machine;
- frames carry a monotonically increasing part id and the time the part passed the
  camera, `start + k * interval` on the line's own clock (not when it was rendered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from linesim.config import LineConfig
from linesim.render import RenderedPart, render_part


@dataclass(frozen=True)
class SimFrame:
    """One part under the camera."""

    part_id: int
    timestamp_s: float
    part: RenderedPart


def render(cfg: LineConfig, part_id: int) -> RenderedPart:
    """Render part number `part_id` of the line `cfg` (pure, deterministic)."""
    rng = np.random.default_rng([cfg.seed, part_id])
    drift = cfg.drift.at(part_id)
    return render_part(rng, cfg if drift is cfg.drift else cfg.with_drift(drift))


class SimulatedLine:
    """Iterates parts at the line's rate.

    With `realtime=True` it sleeps so that parts arrive `cfg.frame_interval_s` apart on
    `clock` (injectable for tests); otherwise it yields as fast as it renders, still
    stamping each part with its nominal passing time.
    """

    def __init__(
        self,
        cfg: LineConfig,
        *,
        realtime: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        first_part_id: int = 0,
    ) -> None:
        self.cfg = cfg
        self._realtime = realtime
        self._clock = clock
        self._sleep = sleep
        self._next = first_part_id

    def __iter__(self) -> Iterator[SimFrame]:
        start = self._clock()
        first = self._next
        while True:
            due = start + (self._next - first) * self.cfg.frame_interval_s
            if self._realtime:
                wait = due - self._clock()
                if wait > 0:
                    self._sleep(wait)
            part = render(self.cfg, self._next)
            yield SimFrame(part_id=self._next, timestamp_s=due, part=part)
            self._next += 1

    def take(self, n: int) -> list[SimFrame]:
        """The next `n` parts."""
        it = iter(self)
        return [next(it) for _ in range(n)]

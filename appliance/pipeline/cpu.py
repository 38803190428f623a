"""CPU time per stage: each stage adds the thread CPU time of its work (not its waits),
so the statistics can say where the CPU outside inference goes, per frame.

`time.thread_time()` is one `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, under a
microsecond; stages read it a few times per batch, not per frame where they can.
"""

from __future__ import annotations

import threading
import time

STAGE_CPU = ("source", "preprocess", "infer", "postprocess", "verdicts")
"""`infer` is the engine thread's own share of `session.run` (ONNX Runtime's pool
threads are not ours to time); `verdicts` is delivery to the sinks (store queue,
statistics, listeners)."""


class CpuMeter:
    """Seconds of thread CPU time per stage. Thread-safe."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    def ms(self) -> dict[str, float]:
        """Milliseconds of CPU per stage so far."""
        with self._lock:
            return {k: round(v * 1000.0, 3) for k, v in self._seconds.items()}


def thread_cpu_s() -> float:
    """This thread's CPU time, seconds."""
    return time.thread_time()

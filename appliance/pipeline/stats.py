"""Live pipeline statistics for the status line, the panel and telemetry.

Rolling windows, not database queries: the last `capacity` latencies per stage and the
verdicts of the last `window_s` seconds. Recording costs a few microseconds per frame;
percentiles are computed only when someone asks (`snapshot`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from appliance.pipeline.behind import BehindState
from appliance.pipeline.engine import ModelInfo
from appliance.records import STAGES, InspectionRecord

PERCENTILES = (50, 95, 99)


class LatencyWindow:
    """The last `capacity` latency vectors (ms per stage; NaN where a stage is absent).
    Thread-safe."""

    def __init__(self, capacity: int = 2048) -> None:
        self._data = np.full((capacity, len(STAGES)), np.nan, dtype=np.float64)
        self._index = {stage: i for i, stage in enumerate(STAGES)}
        self._next = 0
        self._count = 0
        self._lock = threading.Lock()

    def add(self, latency_ms: Mapping[str, float]) -> None:
        row = np.full(len(STAGES), np.nan)
        for stage, value in latency_ms.items():
            i = self._index.get(stage)
            if i is not None:
                row[i] = value
        with self._lock:
            self._data[self._next] = row
            self._next = (self._next + 1) % self._data.shape[0]
            self._count = min(self._count + 1, self._data.shape[0])

    def percentiles(
        self, percentiles: Sequence[int] = PERCENTILES
    ) -> dict[str, dict[str, float]]:
        """stage -> {"p50": ms, ...} over the window; stages with no values are left out."""
        with self._lock:
            data = self._data[: self._count].copy()
        out: dict[str, dict[str, float]] = {}
        for stage, i in self._index.items():
            column = data[:, i]
            column = column[~np.isnan(column)]
            if column.size:
                values = np.percentile(column, list(percentiles))
                out[stage] = {f"p{p}": round(float(v), 3) for p, v in zip(percentiles, values,
                                                                          strict=True)}
        return out


class RateMeter:
    """Events per second over the last `window_s` seconds (monotonic clock)."""

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_s
        self._clock = clock
        self._times: deque[float] = deque()
        self._started = clock()
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        now = self._clock()
        with self._lock:
            self._times.extend([now] * n)
            self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self._window_s
        while self._times and self._times[0] < cutoff:
            self._times.popleft()

    def rate(self) -> float:
        now = self._clock()
        with self._lock:
            self._trim(now)
            span = min(self._window_s, now - self._started)
            return len(self._times) / span if span > 0 else 0.0


class VerdictCounters:
    """Verdicts, uninspected reasons, defect classes, latencies and rate of every record
    delivered. Thread-safe; `add` is the sink the verdict book calls."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.verdicts: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.defects: Counter[str] = Counter()
        self.latency = LatencyWindow()
        self.rate = RateMeter(clock=clock)
        self.recent_latency_ms: float | None = None
        """End-to-end latency of the latest inspected part."""
        self._lock = threading.Lock()

    def add(self, record: InspectionRecord) -> None:
        with self._lock:
            self.verdicts[record.verdict] += 1
            if record.reason:
                self.reasons[record.reason] += 1
            for d in record.defects:
                self.defects[d.class_name] += 1
        if record.verdict != "uninspected":
            self.latency.add(record.latency_ms)
            self.recent_latency_ms = record.latency_ms.get("total", self.recent_latency_ms)
        self.rate.add()

    def counts(self) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        """(verdicts with all three keys, uninspected by reason, defects by class)."""
        with self._lock:
            verdicts = {v: self.verdicts.get(v, 0) for v in ("pass", "fail", "uninspected")}
            return verdicts, dict(self.reasons), dict(self.defects)


@dataclass(frozen=True)
class StationStats:
    """One station's source."""

    name: str
    state: str
    frames: int
    """Frames this station produced (each has or will have exactly one verdict)."""
    dropped: int
    reconnects: int
    last_gap_s: float | None
    last_error: str | None


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot for the status line, the panel and telemetry (`as_dict` is JSON-ready).

    `fps` is verdicts per second over the last 10 s; `latency_ms` is stage -> {"p50",
    "p95", "p99"} over the last 2048 inspected frames (stages: queue, preprocess,
    batch_wait, infer, postprocess, total); `queue_depths` holds "batcher" (frames
    waiting for the engine), "post" (batches waiting for postprocessing), "pending"
    (frames without a verdict yet) and "intake:<station>" in worker mode;
    `engine_failures` counts failed batches, `engine_fallbacks` GPU-to-CPU fallbacks.
    """

    at: float
    uptime_s: float
    frames: int
    verdicts: dict[str, int]
    uninspected: dict[str, int]
    defects: dict[str, int]
    fps: float
    latency_ms: dict[str, dict[str, float]]
    queue_depths: dict[str, int]
    stations: dict[str, StationStats]
    model: ModelInfo | None
    providers: tuple[str, ...]
    batches: int
    mean_batch: float
    late_results: int
    engine_failures: int
    engine_fallbacks: int
    stage_restarts: dict[str, int] = field(default_factory=dict)
    sink_errors: int = 0
    stage_cpu_ms: dict[str, float] = field(default_factory=dict)
    """Thread CPU milliseconds per stage since start (see `appliance.pipeline.cpu`)."""
    recent_latency_ms: float | None = None
    """End-to-end latency of the latest inspected part."""
    behind: BehindState | None = None
    """The `falling_behind` alarm's state (set by the App's monitor; None: not watched)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def status_line(self) -> str:
        """One line: fps, latency, verdict counts, queue, sources, model."""
        total = self.latency_ms.get("total", {})
        infer = self.latency_ms.get("infer", {})
        v = self.verdicts
        states = " ".join(f"{s.name}:{s.state}" for s in self.stations.values())
        model = self.model.version_id if self.model else "no model"
        provider = self.providers[0].removesuffix("ExecutionProvider") if self.providers else "-"
        return (
            f"{self.fps:5.1f} fps | total p50 {total.get('p50', 0):.0f} p99 "
            f"{total.get('p99', 0):.0f} ms, infer p50 {infer.get('p50', 0):.0f} ms | "
            f"pass {v['pass']} fail {v['fail']} uninspected {v['uninspected']} | "
            f"queue {self.queue_depths.get('batcher', 0)} | {states} | {model} on {provider}"
            + (f" | ALARM {self.behind.describe()}" if self.behind and self.behind.active
               else "")
        )

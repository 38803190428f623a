"""`metrics` messages: what the line did in one window, built from plain data.

Counts come from the verdicts themselves (`VerdictWindow`, fed by the pipeline's verdict
sink), not from store queries: the store commits asynchronously, so a query over
`[since, until)` would miss the verdicts of a window that commit after it ran, and a sink
costs the pipeline a few microseconds per part instead of a database read per window.
Gauges (model, provider, queue depths, sources, disk, alarms) are read when the message
is built, through a `GaugeSource` (see gauges.py for the one that reads the pipeline and
the store). `build_metrics` is pure.

Invariants: each verdict is counted in exactly one window (`take` swaps the window under
the lock); counts are per window, never cumulative; latency percentiles come from at
most `max_samples` values per stage and window (a uniform reservoir sample), and
`samples` says how many.
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, cast, get_args

import numpy as np

from appliance.records import STAGE_ON_WIRE, InspectionRecord
from protocol import (
    DiskUsage,
    LatencyStage,
    LatencyStats,
    MetricsMessage,
    ModelRef,
    OutboxStats,
    QueueName,
    UninspectedReason,
    VerdictCounts,
)
from protocol.fields import NAME_PATTERN
from protocol.status import SourceState

_NAME_RE = re.compile(NAME_PATTERN)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
SOURCE_STATES: Final = frozenset(get_args(SourceState))
_MAX_MS = 86_400_000.0
_MAX_FPS = 100_000.0
_MAX_WINDOW_S = 86_400.0
# Bounds of the wire models (protocol.metrics): keys per map.
_MAX_CLASSES, _MAX_SOURCES = 1024, 64
_REASONS: Final = frozenset(UninspectedReason)
# The pipeline's queues (PipelineStats.queue_depths, plus "store" and "telemetry") under
# the contract's names; "intake:<station>" queues add up to `preprocess`.
_QUEUE_ON_WIRE: Final[Mapping[str, QueueName]] = {
    "batcher": QueueName.BATCHER,
    "post": QueueName.POSTPROCESS,
    "pending": QueueName.PENDING,
    "store": QueueName.STORE,
    "telemetry": QueueName.TELEMETRY,
}


@dataclass(frozen=True)
class Gauges:
    """Values read when a message is built (not counted over a window)."""

    model: ModelRef | None = None
    engine_provider: str | None = None
    """ONNX Runtime execution provider in use, e.g. CUDAExecutionProvider."""
    queue_depths: Mapping[str, int] = field(default_factory=dict)
    """The pipeline's queue names (see `wire_queue_depths`)."""
    frames_captured: int | None = None
    """Frames captured since start, all stations (for `input_fps`)."""
    sources: Mapping[str, str] = field(default_factory=dict)
    """Station -> capture state (connecting, streaming, lost, ended)."""
    disk: DiskUsage | None = None
    alarms: tuple[str, ...] = ()
    """Active alarm codes (camera_lost, no_model, engine_cpu_fallback, disk_low, ...)."""


GaugeSource = Callable[[], "Gauges | None"]
"""Reads the gauges; None while they are not available (the pipeline is starting)."""


@dataclass(frozen=True)
class WindowCounts:
    """Verdicts of one window. `latency_ms[stage]` holds the sampled values (ms)."""

    verdicts: Mapping[str, int]
    uninspected_by_reason: Mapping[str, int]
    defects_by_class: Mapping[str, int]
    latency_ms: Mapping[str, list[float]]
    failed_parts_by_class: Mapping[str, int] = field(default_factory=dict)
    """Failed parts with a detection of the class (each part once per class)."""

    @property
    def parts(self) -> int:
        return sum(self.verdicts.values())


class VerdictWindow:
    """Counts verdicts, uninspected reasons, defects per class and latency samples per
    stage until `take`. Thread-safe; `add` is a pipeline verdict sink (a few us).

    Latencies of `uninspected` parts are not sampled: their only latency is the time to
    the decision not to inspect, not an inspection's.
    """

    def __init__(self, max_samples: int = 20_000, seed: int | None = None) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be >= 1")
        self._max = max_samples
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._verdicts: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._defects: Counter[str] = Counter()
        self._failed_parts: Counter[str] = Counter()
        self._latency: dict[str, list[float]] = {}
        self._seen: Counter[str] = Counter()

    def add(self, record: InspectionRecord) -> None:
        """Count one verdict."""
        with self._lock:
            self._verdicts[record.verdict] += 1
            if record.verdict == "uninspected":
                self._reasons[record.reason or "unknown"] += 1
                return
            for d in record.defects:
                self._defects[d.class_name] += 1
            if record.verdict == "fail":
                self._failed_parts.update({d.class_name for d in record.defects})
            for stage, value in record.latency_ms.items():
                seen = self._seen[stage] = self._seen[stage] + 1
                values = self._latency.get(stage)
                if values is None:
                    values = self._latency[stage] = []
                if len(values) < self._max:
                    values.append(value)
                else:  # reservoir sampling (Algorithm R): every value equally likely kept
                    j = self._rng.randrange(seen)
                    if j < self._max:
                        values[j] = value

    def take(self) -> WindowCounts:
        """The counts since the last `take` (or construction); starts a new window."""
        with self._lock:
            counts = WindowCounts(
                verdicts=dict(self._verdicts),
                uninspected_by_reason=dict(self._reasons),
                defects_by_class=dict(self._defects),
                latency_ms=self._latency,
                failed_parts_by_class=dict(self._failed_parts),
            )
            self._reset()
        return counts


def is_name(value: str) -> bool:
    """Whether `value` fits the wire's machine-name pattern (stations, stages, queues)."""
    return _NAME_RE.fullmatch(value) is not None


def clean_class_name(name: str) -> str:
    """A class name as the wire takes it: no control characters, 1-64 characters."""
    cleaned = _CONTROL_RE.sub("?", name)[:64]
    return cleaned or "unnamed"


def wire_queue_depths(depths: Mapping[str, int]) -> dict[QueueName, int]:
    """The pipeline's queue depths under the contract's names (`QueueName`): the
    per-station `intake:<station>` queues add up to `preprocess` (0 without workers);
    a queue the contract does not name is left out."""
    out = {QueueName.PREPROCESS: 0}
    for name, depth in depths.items():
        if name.startswith("intake:"):
            out[QueueName.PREPROCESS] += max(0, int(depth))
        elif (queue := _QUEUE_ON_WIRE.get(name)) is not None:
            out[queue] = max(0, int(depth))
    return out


def wire_reasons(reasons: Mapping[str, int], uninspected: int) -> dict[UninspectedReason, int]:
    """Uninspected counts by the contract's reasons; empty when a reason is not one of
    them (the map must add up to `uninspected` or be absent)."""
    if any(r not in _REASONS for r in reasons):
        return {}
    out = {UninspectedReason(r): max(0, int(n)) for r, n in sorted(reasons.items())}
    return out if sum(out.values()) == uninspected else {}


def wire_latency(latency_ms: Mapping[str, list[float]]) -> dict[LatencyStage, LatencyStats]:
    """Percentiles per stage under the contract's stage names; stages without samples or
    without a wire name are left out."""
    return {
        STAGE_ON_WIRE[stage]: latency_stats(values)
        for stage, values in sorted(latency_ms.items())
        if values and stage in STAGE_ON_WIRE
    }


def wire_sources(sources: Mapping[str, str]) -> dict[str, SourceState]:
    """Station -> state for the wire: stations with names or states it cannot carry are
    left out, at most 64."""
    kept = [(k, s) for k, s in sorted(sources.items()) if is_name(k) and s in SOURCE_STATES]
    return {k: cast(SourceState, s) for k, s in kept[:_MAX_SOURCES]}


def latency_stats(values: list[float]) -> LatencyStats:
    """p50/p95/p99 of `values` (ms, non-empty), clamped to the wire's bounds."""
    array = np.clip(np.asarray(values, dtype=np.float64), 0.0, _MAX_MS)
    p50, p95, p99 = (float(v) for v in np.percentile(array, [50, 95, 99]))
    return LatencyStats(p50_ms=round(p50, 3), p95_ms=round(max(p50, p95), 3),
                        p99_ms=round(max(p50, p95, p99), 3), samples=int(array.size))


def build_metrics(
    *,
    site: str,
    line: str,
    msg_id: str,
    sent_at: datetime,
    window_s: float,
    counts: WindowCounts,
    gauges: Gauges | None,
    outbox_depth: int,
    outbox_dropped: int,
    telemetry_pending: int,
    frames_captured: int | None = None,
) -> MetricsMessage:
    """The `metrics` message of one window of `window_s` seconds (its real length).

    Keys that do not fit the wire (names with spaces, too many entries) are left out
    rather than failing the message. `frames_captured` (frames captured in the window)
    gives `input_fps`. Raises pydantic.ValidationError only for a bad
    `site`, `line` or `msg_id`.
    """
    window_s = min(max(window_s, 1e-3), _MAX_WINDOW_S)
    v = counts.verdicts
    uninspected = int(v.get("uninspected", 0))
    reasons = wire_reasons(counts.uninspected_by_reason, uninspected)
    defects: Counter[str] = Counter()
    for name, n in counts.defects_by_class.items():
        defects[clean_class_name(name)] += int(n)
    failed_parts: Counter[str] = Counter()
    for name, n in counts.failed_parts_by_class.items():
        failed_parts[clean_class_name(name)] += int(n)
    g = gauges or Gauges()
    depths = wire_queue_depths({**g.queue_depths, "telemetry": telemetry_pending})
    input_fps = None if frames_captured is None else \
        round(min(max(0, frames_captured) / window_s, _MAX_FPS), 3)
    provider = g.engine_provider if g.engine_provider and is_name(g.engine_provider) else None
    return MetricsMessage(
        msg_id=msg_id,
        site=site,
        line=line,
        sent_at=sent_at,
        window_s=round(window_s, 3),
        fps=round(min(counts.parts / window_s, _MAX_FPS), 3),
        input_fps=input_fps,
        verdicts=VerdictCounts(passed=int(v.get("pass", 0)), failed=int(v.get("fail", 0)),
                               uninspected=uninspected),
        defects_by_class=dict(sorted(defects.items())[:_MAX_CLASSES]),
        failed_parts_by_class=dict(sorted(failed_parts.items())[:_MAX_CLASSES]),
        uninspected_by_reason=reasons,
        latency_ms=wire_latency(counts.latency_ms),
        engine_provider=provider,
        model=g.model,
        queue_depths=depths,
        sources=wire_sources(g.sources),
        disk=g.disk,
        outbox=OutboxStats(depth=max(0, outbox_depth), dropped=max(0, outbox_dropped)),
    )

"""`metrics`: what a line did during one window (published every `window_s` seconds).

Counts (`verdicts`, `defects_by_class`, `failed_parts_by_class`, `uninspected_by_reason`,
`outbox.dropped`) are
for this window only, never cumulative, so a lost or duplicated message shifts nothing
else. Gauges (`queue_depths`, `disk`, `outbox.depth`, `sources`) are read when the
message is built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from protocol.envelope import Envelope
from protocol.fields import WIRE_CONFIG, ClassName, Count, Milliseconds, ModelRef, Name
from protocol.status import SourceState
from protocol.topics import TopicKind


class VerdictCounts(BaseModel):
    """Parts judged in the window, by verdict."""

    model_config = WIRE_CONFIG

    passed: Count
    failed: Count
    uninspected: Count


class LatencyStats(BaseModel):
    """Latency percentiles of one pipeline stage over the window, in milliseconds."""

    model_config = WIRE_CONFIG

    p50_ms: Milliseconds
    p95_ms: Milliseconds
    p99_ms: Milliseconds
    # How many measurements the percentiles come from.
    samples: Count

    @model_validator(mode="after")
    def _ordered(self) -> LatencyStats:
        if not self.p50_ms <= self.p95_ms <= self.p99_ms:
            raise ValueError("latency percentiles must satisfy p50_ms <= p95_ms <= p99_ms")
        return self


class DiskUsage(BaseModel):
    """The appliance's image/database store on disk, in bytes."""

    model_config = WIRE_CONFIG

    used_bytes: Count
    quota_bytes: Count
    # Free space left on the filesystem that holds the store.
    free_bytes: Count


class OutboxStats(BaseModel):
    """The telemetry outbox: messages waiting for a broker acknowledgement."""

    model_config = WIRE_CONFIG

    depth: Count
    # Messages discarded in this window because the outbox was full (oldest first).
    dropped: Count


class MetricsMessage(Envelope):
    """Throughput, verdicts, defects, latency and health of a line over one window."""

    KIND = TopicKind.METRICS

    schema_id: Literal["lineguard.metrics/1"] = Field("lineguard.metrics/1", alias="schema")
    window_s: float = Field(gt=0.0, le=86_400.0)
    fps: float = Field(ge=0.0, le=100_000.0)
    verdicts: VerdictCounts
    # Detections (boxes) per class.
    defects_by_class: dict[ClassName, Count] = Field(default_factory=dict, max_length=1024)
    # Failed parts with at least one detection of the class (a part with three scratches
    # is one); a part with two classes counts under both. Absent from older appliances.
    failed_parts_by_class: dict[ClassName, Count] = Field(default_factory=dict,
                                                          max_length=1024)
    # Reasons (the appliance's UninspectedReason: dropped, engine_failure, shutdown,
    # deadline, no_model, unreadable, corrupt, wrong_size, ...); they sum to
    # `verdicts.uninspected`.
    uninspected_by_reason: dict[Name, Count] = Field(default_factory=dict, max_length=64)
    # Per stage, e.g. capture, preprocess, batch_wait, inference, postprocess, end_to_end.
    latency_ms: dict[Name, LatencyStats] = Field(default_factory=dict, max_length=32)
    # ONNX Runtime execution provider in use (e.g. CUDAExecutionProvider); None: no engine.
    engine_provider: Name | None = None
    model: ModelRef | None = None
    queue_depths: dict[Name, Count] = Field(default_factory=dict, max_length=64)
    sources: dict[Name, SourceState] = Field(default_factory=dict, max_length=64)
    disk: DiskUsage | None = None
    outbox: OutboxStats | None = None

    @model_validator(mode="after")
    def _uninspected_adds_up(self) -> MetricsMessage:
        by_reason = sum(self.uninspected_by_reason.values())
        if self.uninspected_by_reason and by_reason != self.verdicts.uninspected:
            raise ValueError(
                f"uninspected_by_reason sums to {by_reason}, "
                f"verdicts.uninspected is {self.verdicts.uninspected}"
            )
        return self

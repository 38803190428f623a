"""`metrics`: what a line did during one window (published every `window_s` seconds).

Counts (`verdicts`, `defects_by_class`, `failed_parts_by_class`, `uninspected_by_reason`,
`outbox.dropped`) are
for this window only, never cumulative, so a lost or duplicated message shifts nothing
else. Gauges (`queue_depths`, `disk`, `outbox.depth`, `sources`) are read when the
message is built.

Version 2 (`lineguard.metrics/2`, what lines send) names its latency stages, queues and
uninspected reasons from closed sets (`LatencyStage`, `QueueName`, `UninspectedReason`:
the keys of those maps are part of the contract and in the JSON Schema) and adds
`input_fps`. Version 1 (`MetricsMessageV1`, free-form keys) stays readable for lines
that still send it (appliances up to 0.1.0: stages `infer` and `total`).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from protocol.envelope import Envelope
from protocol.fields import WIRE_CONFIG, ClassName, Count, Milliseconds, ModelRef, Name
from protocol.status import SourceState
from protocol.topics import TopicKind


class LatencyStage(StrEnum):
    """The pipeline stages a line reports latency for (keys of `latency_ms`)."""

    QUEUE = "queue"
    """From the frame's arrival at the engine's batcher to the start of its batch."""
    PREPROCESS = "preprocess"
    """Resizing and normalising the frame (and its batch)."""
    BATCH_WAIT = "batch_wait"
    """From the start of the frame's batch to its dispatch to the engine."""
    INFERENCE = "inference"
    """The engine's run of the batch."""
    POSTPROCESS = "postprocess"
    """Decoding boxes and judging the batch's parts."""
    END_TO_END = "end_to_end"
    """From capture to verdict: what the line waits for."""


class QueueName(StrEnum):
    """The queues a line reports the depth of (keys of `queue_depths`)."""

    PREPROCESS = "preprocess"
    """Frames waiting for a preprocessing worker (all stations; 0 when the engine
    preprocesses)."""
    BATCHER = "batcher"
    """Frames waiting for the engine."""
    POSTPROCESS = "postprocess"
    """Batches waiting for postprocessing."""
    PENDING = "pending"
    """Frames captured and not yet given a verdict (the capture-to-verdict backlog)."""
    STORE = "store"
    """Verdicts waiting for the store's writer."""
    TELEMETRY = "telemetry"
    """Messages handed to telemetry and not yet written to its outbox."""


class UninspectedReason(StrEnum):
    """Why a part got no real verdict (keys of `uninspected_by_reason`)."""

    DROPPED = "dropped"
    """The queue was full: the frame was dropped (the line is faster than the machine)."""
    ENGINE_FAILURE = "engine_failure"
    """The engine failed on the frame's batch."""
    SHUTDOWN = "shutdown"
    """The appliance stopped before the frame was judged."""
    DEADLINE = "deadline"
    """No verdict within the configured deadline."""
    NO_MODEL = "no_model"
    """No model was loaded."""
    UNREADABLE = "unreadable"
    """The source could not read the frame (an empty or non-image file, a read error)."""
    CORRUPT = "corrupt"
    """The frame's image is damaged (truncated, header and pixels disagree)."""
    WRONG_SIZE = "wrong_size"
    """The frame is smaller than the station's `min_frame_px` or not its `frame_wh`."""
    CRASH = "crash"
    """Captured, then the process died (kill, power) before its verdict was stored;
    counted in the first window after the restart."""
    STORE_FULL = "store_full"
    """Judged while the appliance's store could not commit (disk full): never `pass`."""


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


# Version 1, kept to read lines that still send it (free-form map keys). Its docstring and
# title are the published schema's: a published version never changes.


def _check_uninspected_sum(verdicts: VerdictCounts, by_reason: Mapping[Any, int]) -> None:
    """Raise ValueError unless the per-reason counts (when given) sum to the total."""
    total = sum(by_reason.values())
    if by_reason and total != verdicts.uninspected:
        raise ValueError(f"uninspected_by_reason sums to {total}, "
                         f"verdicts.uninspected is {verdicts.uninspected}")


class MetricsMessageV1(Envelope):
    """Throughput, verdicts, defects, latency and health of a line over one window."""

    model_config = ConfigDict(**WIRE_CONFIG, title="MetricsMessage")  # v1 schema unchanged

    KIND = TopicKind.METRICS

    schema_id: Literal["lineguard.metrics/1"] = Field("lineguard.metrics/1", alias="schema")
    window_s: float = Field(gt=0.0, le=86_400.0)
    fps: float = Field(ge=0.0, le=100_000.0)
    verdicts: VerdictCounts
    # Detections (boxes) per class.
    defects_by_class: dict[ClassName, Count] = Field(default_factory=dict, max_length=1024)
    # Reasons such as frame_dropped, engine_down, deadline, queue_full; they sum to
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
    def _uninspected_adds_up(self) -> MetricsMessageV1:
        _check_uninspected_sum(self.verdicts, self.uninspected_by_reason)
        return self


class MetricsMessage(Envelope):
    """Throughput, verdicts, defects, latency and health of a line over one window."""

    KIND = TopicKind.METRICS

    schema_id: Literal["lineguard.metrics/2"] = Field("lineguard.metrics/2", alias="schema")
    window_s: float = Field(gt=0.0, le=86_400.0)
    # Parts given a verdict per second (any verdict).
    fps: float = Field(ge=0.0, le=100_000.0)
    # Frames captured per second over the window, all stations; above `fps` the line
    # produces more than the machine judges (see the `falling_behind` alarm). None: unknown.
    input_fps: float | None = Field(None, ge=0.0, le=100_000.0)
    verdicts: VerdictCounts
    # Detections (boxes) per class.
    defects_by_class: dict[ClassName, Count] = Field(default_factory=dict, max_length=1024)
    # Failed parts with at least one detection of the class (a part with three scratches
    # is one); a part with two classes counts under both.
    failed_parts_by_class: dict[ClassName, Count] = Field(default_factory=dict,
                                                          max_length=1024)
    # They sum to `verdicts.uninspected` when present.
    uninspected_by_reason: dict[UninspectedReason, Count] = Field(default_factory=dict)
    # Only stages with samples in the window are present.
    latency_ms: dict[LatencyStage, LatencyStats] = Field(default_factory=dict)
    # ONNX Runtime execution provider in use (e.g. CUDAExecutionProvider); None: no engine.
    engine_provider: Name | None = None
    model: ModelRef | None = None
    queue_depths: dict[QueueName, Count] = Field(default_factory=dict)
    sources: dict[Name, SourceState] = Field(default_factory=dict, max_length=64)
    disk: DiskUsage | None = None
    outbox: OutboxStats | None = None

    @model_validator(mode="after")
    def _uninspected_adds_up(self) -> MetricsMessage:
        _check_uninspected_sum(self.verdicts, self.uninspected_by_reason)
        return self

"""What the pipeline hands to the store: one record per judged part, and events.

Plain frozen dataclasses, validated in `__post_init__` so a malformed record fails where
it is built (with `ValueError`), not later in the store's writer thread. Times are unix
seconds; latencies are milliseconds; defect boxes are xyxy in original frame pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from protocol.metrics import LatencyStage, UninspectedReason

__all__ = [
    "SEVERITIES",
    "STAGES",
    "STAGE_ON_WIRE",
    "VERDICTS",
    "DefectRecord",
    "EventRecord",
    "EventValue",
    "InspectionRecord",
    "Severity",
    "UninspectedReason",
    "Verdict",
]

Verdict = Literal["pass", "fail", "uninspected"]
VERDICTS: tuple[Verdict, ...] = ("pass", "fail", "uninspected")

Severity = Literal["info", "warning", "alarm"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "alarm")

STAGE_ON_WIRE: Mapping[str, LatencyStage] = {
    "queue": LatencyStage.QUEUE,
    "preprocess": LatencyStage.PREPROCESS,
    "batch_wait": LatencyStage.BATCH_WAIT,
    "infer": LatencyStage.INFERENCE,
    "postprocess": LatencyStage.POSTPROCESS,
    "total": LatencyStage.END_TO_END,
}
"""Each pipeline stage that carries a latency and the name telemetry reports it under
(the contract's `LatencyStage`); a new stage needs its wire name here."""

STAGES: tuple[str, ...] = tuple(STAGE_ON_WIRE)
"""Pipeline stages that carry a latency (keys of `InspectionRecord.latency_ms`)."""

EventValue = str | int | float | bool | None


def _finite(value: float) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class DefectRecord:
    """One detection that contributed to a verdict.

    `box_xyxy` is (x1, y1, x2, y2) in original frame pixels; `score` is in [0, 1];
    `size_mm_wh` the box's (width, height) in mm on the part plane when the station
    has a scale (None otherwise). Raises ValueError on a negative class id, a score
    outside [0, 1] or a box that is not finite or has x2 < x1 or y2 < y1.
    """

    class_id: int
    class_name: str
    score: float
    box_xyxy: tuple[float, float, float, float]
    size_mm_wh: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if int(self.class_id) < 0:
            raise ValueError(f"class_id must be >= 0, got {self.class_id}")
        if not (_finite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"score must be within [0, 1], got {self.score!r}")
        if len(self.box_xyxy) != 4 or not all(_finite(v) for v in self.box_xyxy):
            raise ValueError(f"box_xyxy must be 4 finite numbers, got {self.box_xyxy!r}")
        x1, y1, x2, y2 = self.box_xyxy
        if x2 < x1 or y2 < y1:
            raise ValueError(f"box_xyxy must have x1 <= x2 and y1 <= y2, got {self.box_xyxy!r}")


@dataclass(frozen=True, slots=True)
class InspectionRecord:
    """The verdict for one frame (one part).

    Invariants checked here (ValueError otherwise): `frame_id` is a non-empty string;
    `verdict` is one of VERDICTS; `reason` is set (non-empty) iff the verdict is
    `uninspected` (see UninspectedReason for the standard reasons); `latency_ms` keys
    are stage names from STAGES with finite values (a missing stage is stored as NULL).
    `image_bgr` (HxWx3 uint8, BGR) is offered to the store's image keeper, which keeps
    every `fail` frame it can and a sample of the others; it never takes part in
    equality or repr.
    """

    frame_id: str
    station: str
    part_id: str | None
    captured_at: float
    judged_at: float
    verdict: Verdict
    reason: str | None
    model_version: str | None
    preprocess_hash: str | None
    latency_ms: Mapping[str, float]
    defects: tuple[DefectRecord, ...] = ()
    image_bgr: npt.NDArray[np.uint8] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.frame_id, str) or not self.frame_id:
            raise ValueError(f"frame_id must be a non-empty string, got {self.frame_id!r}")
        if self.verdict not in VERDICTS:
            raise ValueError(f"{self.frame_id}: verdict must be one of {VERDICTS}")
        if (self.verdict == "uninspected") != bool(self.reason):
            raise ValueError(
                f"{self.frame_id}: reason must be set iff verdict is 'uninspected' "
                f"(verdict={self.verdict!r}, reason={self.reason!r})"
            )
        if not (_finite(self.captured_at) and _finite(self.judged_at)):
            raise ValueError(f"{self.frame_id}: captured_at and judged_at must be finite")
        for stage, value in self.latency_ms.items():
            if stage not in STAGES:
                raise ValueError(f"{self.frame_id}: unknown latency stage {stage!r}")
            if not _finite(value):
                raise ValueError(f"{self.frame_id}: latency_ms[{stage!r}] must be finite")
        if self.image_bgr is not None and (
            self.image_bgr.dtype != np.uint8 or self.image_bgr.ndim not in (2, 3)
        ):
            raise ValueError(f"{self.frame_id}: image_bgr must be an HxW[x3] uint8 array")


@dataclass(frozen=True, slots=True)
class EventRecord:
    """Something worth telling the operator or the fleet: alarms, source state changes,
    model changes, stage restarts, image deletions.

    `data` holds flat JSON scalars (floats must be finite). Raises ValueError on an
    unknown severity, an empty kind or a non-scalar / non-finite data value.
    """

    at: float
    kind: str
    severity: Severity
    source: str
    message: str
    data: Mapping[str, EventValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("event kind must be non-empty")
        if self.severity not in SEVERITIES:
            raise ValueError(f"event severity must be one of {SEVERITIES}, got {self.severity!r}")
        if not _finite(self.at):
            raise ValueError("event time must be finite")
        for key, value in self.data.items():
            if not isinstance(key, str):
                raise ValueError(f"event data keys must be strings, got {key!r}")
            if value is None or isinstance(value, (str, bool, int)):
                continue
            if not (isinstance(value, float) and math.isfinite(value)):
                raise ValueError(f"event data {key!r} must be a finite JSON scalar, got {value!r}")

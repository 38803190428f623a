"""The validation gate's report: what was measured, the comparison with the parent,
and why the candidate passed or was refused. Stored with the candidate as
`gate/report.json` (this model) and `gate/report.html` (rendered from it)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GATE_REPORT_SCHEMA = "lineguard.gate/1"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ClassResult(_Frozen):
    """One class on one evaluation set; `None` where the model saw no instance of it."""

    name: str
    instances: int = Field(ge=0)
    candidate_recall: float | None = None
    parent_recall: float | None = None
    candidate_ap50: float | None = None
    parent_ap50: float | None = None


class PrCurve(_Frozen):
    """A precision-recall curve (IoU 0.5), sampled at up to 101 recall points."""

    model: Literal["candidate", "parent"]
    class_name: str
    recall: list[float]
    precision: list[float]


class SetResult(_Frozen):
    """Candidate and parent measured on one held-out set."""

    title: str
    """e.g. "the dataset's held-out split" or "the parent's holdout"."""
    dataset: str
    images: int = Field(ge=0)
    candidate_map50: float
    parent_map50: float | None
    candidate_map50_95: float
    parent_map50_95: float | None
    classes: list[ClassResult]
    curves: list[PrCurve] = Field(default_factory=list)


class Check(_Frozen):
    """One rule of the gate and its outcome; `detail` says the numbers."""

    rule: str
    passed: bool
    detail: str


class GateReport(_Frozen):
    """The whole gate decision for one candidate."""

    schema_id: Literal["lineguard.gate/1"] = Field("lineguard.gate/1", alias="schema")
    model: str
    """The candidate, `name@version`."""
    parent: str | None
    passed: bool
    reasons: list[str]
    """Why it was refused (empty when it passed)."""
    checks: list[Check]
    sets: list[SetResult]
    latency_batch1_ms: float | None
    latency_budget_ms: float | None
    measured_on: str
    """CPU model and thread count the latency was measured with."""
    settings: dict[str, float]
    created_at: datetime

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False,
                              populate_by_name=True)

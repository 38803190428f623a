"""The fleet API's model registry endpoints: `GET /models`, `GET /models/{name}/{version}`
(state, gate outcome, lineage, history, and the lines that run each model), and
`GET /retrain/requests` (what asked for retraining, and what became of it)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict

from cloud.fleet.views import LineView
from cloud.registry import ModelEntry, ModelRegistry, RegistryError, StateChange, UnknownModel
from cloud.registry.entry import ModelState
from cloud.registry.where import running_on
from cloud.retrain.errors import RetrainError
from cloud.retrain.requests import RequestSource, RequestState, RetrainQueue, RetrainRequest

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
LINE_KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}$"


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSummary(_View):
    """A registered model, and the lines (`site/line`) that report running it."""

    name: str
    version: int
    label: str
    state: ModelState
    gate_passed: bool | None
    parent: str | None
    dataset: str | None
    dataset_fingerprint: str | None
    holdout: str | None
    source: str
    created_at: datetime
    state_changed_at: datetime
    runs_on: list[str]


class StateChangeView(_View):
    from_state: ModelState | None
    to_state: ModelState
    reason: str
    by: str
    at: datetime


class ModelDetail(ModelSummary):
    """A model with its history (registration first) and the gate's reasons."""

    history: list[StateChangeView]
    gate_reasons: list[str] | None


class RetrainRequestView(_View):
    """A retraining request: who asked (drift, schedule, manual) and why, its state
    (queued -> running -> done | failed), what it fine-tuned and what it made."""

    id: int
    line: str
    source: RequestSource
    reason: str
    state: RequestState
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent: str | None
    dataset: str | None
    candidate: str | None
    outcome: str | None


def _request(r: RetrainRequest) -> RetrainRequestView:
    return RetrainRequestView(
        id=r.id, line=r.line_key, source=r.source, reason=r.reason, state=r.state,
        requested_at=r.requested_at, started_at=r.started_at, finished_at=r.finished_at,
        parent=str(r.parent) if r.parent else None, dataset=r.dataset,
        candidate=str(r.candidate) if r.candidate else None, outcome=r.outcome)


def _summary(entry: ModelEntry, lines: list[LineView]) -> dict[str, object]:
    return {
        "name": entry.name, "version": entry.version, "label": entry.label,
        "state": entry.state, "gate_passed": entry.gate_passed,
        "parent": str(entry.parent) if entry.parent else None,
        "dataset": entry.dataset.ref if entry.dataset else None,
        "dataset_fingerprint": entry.dataset.fingerprint if entry.dataset else None,
        "holdout": entry.holdout, "source": entry.source, "created_at": entry.created_at,
        "state_changed_at": entry.state_changed_at,
        "runs_on": running_on(lines, entry.name, entry.version),
    }


def _change(c: StateChange) -> StateChangeView:
    return StateChangeView(from_state=c.from_state, to_state=c.to_state, reason=c.reason,
                           by=c.by, at=c.at)


def models_router(registry: ModelRegistry, lines: Callable[[], list[LineView]]) -> APIRouter:
    """The registry endpoints; `lines` reads the fleet store's lines (where models run).
    Authentication is added where the router is included."""
    from cloud.registry import GateReport

    router = APIRouter(tags=["models"])

    @router.get("/models")
    def list_models(
        name: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    ) -> list[ModelSummary]:
        """Every registered model (or every version of `name`), by name and version."""
        current = lines()
        return [ModelSummary.model_validate(_summary(e, current)) for e in registry.list(name)]

    @router.get("/models/{name}/{version}",
                responses={404: {"description": "no such model"}})
    def get_model(
        name: Annotated[str, Path(pattern=NAME_PATTERN)],
        version: Annotated[int, Path(ge=1, le=2**31 - 1)],
    ) -> ModelDetail:
        """One model, its history and, once the gate ran, why it passed or failed."""
        try:
            entry = registry.get(name, version)
        except UnknownModel:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                detail=f"no model {name}@{version}") from None
        reasons = None
        if entry.gate_report_path is not None:
            report = GateReport.model_validate_json(entry.gate_report_path.read_text("utf-8"))
            reasons = report.reasons
        return ModelDetail.model_validate(
            _summary(entry, lines())
            | {"history": [_change(c) for c in registry.history(name, version)],
               "gate_reasons": reasons})

    queue = RetrainQueue(registry.engine, min_interval_h=0.0)  # read only here

    @router.get("/retrain/requests", tags=["retrain"])
    def retrain_requests(
        line: Annotated[str | None, Query(pattern=LINE_KEY_PATTERN,
                                          description="site/line")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[RetrainRequestView]:
        """Retraining requests, newest first (of one line when given)."""
        try:
            return [_request(r) for r in queue.requests(line, limit)]
        except RetrainError as e:
            raise RegistryError(str(e)) from e

    return router

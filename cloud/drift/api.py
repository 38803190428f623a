"""The fleet API's drift routes: alerts (list, one, acknowledge) and a line's windows.

`drift_router(store)` returns a router; `create_app` mounts it behind the API token.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from cloud.drift.store import AlertFields, AlertRow, DriftStore
from protocol.fields import ID_PATTERN

ALERT_ID = r"^drift-[0-9a-f]{16}$"
AlertId = Annotated[str, Path(pattern=ALERT_ID)]
SiteId = Annotated[str, Path(pattern=ID_PATTERN)]
LineId = Annotated[str, Path(pattern=ID_PATTERN)]


class MovedChannel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    shift_sd: float = Field(description="mean shift since the onset, in reference SDs")


class DriftAlertView(AlertFields):
    """A drift alert: which line and model, the signals that moved, when it began."""

    station: str | None
    channels: list[MovedChannel]


class DriftWindowView(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    msg_id: str
    station: str
    model_name: str
    model_version: int
    first_frame_id: int
    last_frame_id: int
    frame_count: int
    window_start_ms: int
    window_end_ms: int
    statistic: float | None


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    by: str = Field(min_length=1, max_length=128)


def _view(a: AlertRow) -> DriftAlertView:
    return DriftAlertView(
        **a.model_dump(exclude={"station", "channels"}),
        station=None if a.station == "-" else a.station,
        channels=[MovedChannel(name=n, shift_sd=v) for n, v in a.channels])


def drift_router(store: DriftStore) -> APIRouter:
    """The drift routes over `store` (add the auth dependency when including it)."""
    router = APIRouter(prefix="/drift", tags=["drift"])

    def _not_found(alert_id: str) -> HTTPException:
        return HTTPException(status.HTTP_404_NOT_FOUND, f"no drift alert {alert_id}")

    @router.get("/alerts")
    def alerts(site: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
               line: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[DriftAlertView]:
        """Drift alerts, newest first."""
        return [_view(a) for a in store.alerts(site, line, limit)]

    @router.get("/alerts/{alert_id}")
    def alert(alert_id: AlertId) -> DriftAlertView:
        found = store.alert(alert_id)
        if found is None:
            raise _not_found(alert_id)
        return _view(found)

    @router.post("/alerts/{alert_id}/ack")
    def acknowledge(alert_id: AlertId, body: Annotated[Acknowledge, Body()]) -> DriftAlertView:
        """Acknowledge an alert: its line's detector starts collecting evidence again."""
        found = store.acknowledge(alert_id, body.by, int(time.time() * 1000))
        if found is None:
            raise _not_found(alert_id)
        return _view(found)

    @router.get("/lines/{site}/{line}/windows")
    def windows(site: SiteId, line: LineId,
                limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[DriftWindowView]:
        """A line's recent drift windows with the detector's statistic, newest first."""
        return [DriftWindowView(**{k: v for k, v in w.items() if k not in ("site", "line",
                                                                        "received_at_ms")})
                for w in store.windows(site, line, limit)]

    return router

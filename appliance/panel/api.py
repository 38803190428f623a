"""The panel's JSON API (under /api) and the machine endpoints (/healthz, /readyz,
/metrics). Collaborators come from the `PanelContext` passed to `api_router`; errors of
the domain become HTTP answers here and only here: unknown ids 404, refused input 422,
missing session 401, CSRF or role 403, nothing to roll back to 409.

No `from __future__ import annotations` here: FastAPI reads the route signatures'
`Annotated` dependencies at definition time.
"""

import asyncio
import dataclasses
import json
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from appliance.errors import BadLabel, UnknownAlarm, UnknownFrame
from appliance.panel.auth import Auth
from appliance.panel.context import PanelContext
from appliance.panel.live import LiveFrame
from appliance.panel.ports import LabelKind, RollbackUnavailable
from appliance.panel.sessions import Session
from appliance.panel.shifts import current_shift
from appliance.store import panel_queries
from appliance.store.queries import events as query_events
from appliance.store.queries import open_reader

logger = logging.getLogger(__name__)
T = TypeVar("T")
HOUR_S = 3600.0
KEEPALIVE_S = 1.0
"""A live stream without a new frame this long sends a comment line."""


class LabelIn(BaseModel):
    """Operator feedback on a frame: confirm or reject detection `defect_index`, or mark
    a missed defect (`box_xyxy` in original frame pixels and `class_name`)."""

    model_config = ConfigDict(extra="forbid")
    kind: LabelKind
    defect_index: int | None = Field(None, ge=0, le=10_000)
    class_name: str | None = Field(None, min_length=1, max_length=128)
    box_xyxy: tuple[float, float, float, float] | None = None


class ThresholdsIn(BaseModel):
    """Per-class score thresholds (0..1) replacing the current overrides."""

    model_config = ConfigDict(extra="forbid")
    thresholds: dict[str, float] = Field(max_length=256)


class TtlCache:
    """One value per key, recomputed at most every `ttl_s` (polling clients share it)."""

    def __init__(self, ttl_s: float, mono: Callable[[], float]) -> None:
        self._ttl_s = ttl_s
        self._mono = mono
        self._lock = threading.Lock()
        self._values: dict[str, tuple[float, Any]] = {}

    def get(self, key: str, compute: Callable[[], T]) -> T:
        with self._lock:
            now = self._mono()
            hit = self._values.get(key)
            if hit is not None and now - hit[0] < self._ttl_s:
                value: T = hit[1]
                return value
            value = compute()
            self._values[key] = (now, value)
            return value


def _empty_live(seq: int) -> str:
    return '{"stations":{},"seq":' + str(seq) + "}"


def plain(obj: Any) -> Any:
    """A JSON-ready form of a collaborator's value (dataclass, pydantic model, tuple)."""
    as_dict = getattr(obj, "as_dict", None)
    if callable(as_dict):
        return plain(as_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def api_router(ctx: PanelContext, auth: Auth) -> APIRouter:
    """The routes (see the module docstring)."""
    router = APIRouter()
    cache = TtlCache(1.0, ctx.mono)
    slow_cache = TtlCache(5.0, ctx.mono)

    @contextmanager
    def reader() -> Iterator[sqlite3.Connection]:
        try:
            conn = open_reader(ctx.db_path)
        except sqlite3.Error as e:
            raise HTTPException(503, f"store unreadable: {e}") from e
        try:
            yield conn
        except sqlite3.Error as e:
            raise HTTPException(503, f"store query failed: {e}") from e
        finally:
            conn.close()

    def newer(after: int) -> list[tuple[str, LiveFrame]]:
        frames = ((station, ctx.live.latest(station)) for station in ctx.stations)
        return [(st, f) for st, f in frames if f is not None and f.seq > after]

    def live_body(after: int) -> tuple[str | None, int]:
        """The stations' frames newer than `after` as the /api/live JSON (pre-serialized
        per frame by live.py; None when there is none) and the seq to ask after next."""
        found = newer(after)
        if not found:
            return None, after
        seq = max(f.seq for _, f in found)
        parts = ",".join(f"{json.dumps(st)}:{f.json}" for st, f in found)
        return '{"stations":{' + parts + '},"seq":' + str(seq) + "}", seq

    # ---------------------------------------------------------------- machine endpoints
    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        reasons = list(ctx.readiness().reasons)
        age = ctx.live.last_verdict_age_s()
        if age is None or age > ctx.cfg.ready_verdict_age_s:
            reasons.append("no_recent_verdict")
        body = {"ready": not reasons, "reasons": reasons,
                "last_verdict_age_s": None if age is None else round(age, 3)}
        return JSONResponse(body, status_code=503 if reasons else 200)

    @router.get("/metrics")
    def metrics() -> Response:
        body, content_type = ctx.exporter.render()
        return Response(body, media_type=content_type)

    # ---------------------------------------------------------------- session
    @router.get("/api/session")
    def session_info(session: Annotated[Session, Depends(auth.session)]) -> dict[str, Any]:
        return {"user": session.user, "role": session.role, "csrf_token": session.csrf_token,
                "expires_at_s": session.expires_at_s}

    # ---------------------------------------------------------------- live view
    @router.get("/api/live")
    async def live(session: Annotated[Session, Depends(auth.session)],
                   after: Annotated[int, Query(ge=0)] = 0) -> Response:
        """Each station's latest frame newer than `after` (a seq from an earlier answer):
        verdict, defects and the JPEG (base64), so picture and boxes always match. Async
        and pre-serialized (live.py): the most frequent request costs the least."""
        body, _ = live_body(after)
        return Response(body or _empty_live(after), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    @router.get("/api/live/stream")
    async def live_stream(session: Annotated[Session, Depends(auth.session)]
                          ) -> StreamingResponse:
        """Server-sent events: one `data:` line (the /api/live body) per new frame, at
        most at the live rate; what the live page follows. Ends when the session
        expires or the panel stops (the browser's EventSource then reconnects)."""
        async def events() -> AsyncIterator[str]:
            seq, quiet_s = 0, 0.0
            yield "retry: 1000\n\n"
            while not ctx.live.closed and ctx.sessions.get(session.id) is not None:
                body, seq = live_body(seq)
                if body is not None:
                    quiet_s = 0.0
                    yield f"data: {body}\n\n"
                elif quiet_s >= KEEPALIVE_S:  # a comment: the connection is alive
                    quiet_s = 0.0
                    yield ": keepalive\n\n"
                await asyncio.sleep(ctx.live.interval_s)
                quiet_s += ctx.live.interval_s
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    # ---------------------------------------------------------------- counters, series
    @router.get("/api/counters")
    def counters(session: Annotated[Session, Depends(auth.session)]) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            now = ctx.clock()
            name, start = current_shift(ctx.cfg.shifts, now)
            with reader() as conn:
                shift = panel_queries.counters(conn, start, None)
                hour = panel_queries.counters(conn, now - HOUR_S, None)
            return {"now_s": now, "shift": {"name": name, "start_s": start, **shift},
                    "last_hour": hour}
        return cache.get("counters", compute)

    @router.get("/api/series")
    def series(session: Annotated[Session, Depends(auth.session)]) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            now = ctx.clock()
            start = (now // 60.0) * 60.0 - HOUR_S + 60.0
            with reader() as conn:
                points = panel_queries.series(conn, start, start + HOUR_S, 60.0)
            return {"bucket_s": 60.0, "points": points}
        return slow_cache.get("series", compute)

    # ---------------------------------------------------------------- gallery, frames
    @router.get("/api/gallery")
    def gallery(
        session: Annotated[Session, Depends(auth.session)],
        class_name: Annotated[str | None, Query(alias="class", max_length=128)] = None,
        station: Annotated[str | None, Query(max_length=128)] = None,
        since: Annotated[float | None, Query(ge=0)] = None,
        until: Annotated[float | None, Query(ge=0)] = None,
        before: Annotated[int | None, Query(ge=1)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 24,
    ) -> dict[str, Any]:
        with reader() as conn:
            items = panel_queries.gallery(conn, class_name=class_name or None,
                                          station=station or None, since=since, until=until,
                                          before_id=before, limit=limit)
        return {"items": items,
                "next_before": items[-1]["id"] if len(items) == limit else None}

    def detail(frame_id: str) -> panel_queries.FrameDetail:
        with reader() as conn:
            found = panel_queries.frame_detail(conn, ctx.images_dir, frame_id)
        if found is None:
            raise HTTPException(404, f"no frame {frame_id!r}")
        return found

    @router.get("/api/frames/{frame_id}")
    def frame(frame_id: str,
              session: Annotated[Session, Depends(auth.session)]) -> dict[str, Any]:
        found = detail(frame_id)
        labels = [plain(label) for label in ctx.labels.for_frame(frame_id)]
        model = ctx.model()
        classes = list(model.info.classes) if model is not None else sorted(
            {d["class_name"] for d in found["defects"]})
        return {**found, "image_path": None, "has_image": found["image_path"] is not None,
                "labels": labels, "classes": classes}

    @router.get("/api/frames/{frame_id}/image")
    def frame_image(frame_id: str,
                    session: Annotated[Session, Depends(auth.session)]) -> FileResponse:
        path = detail(frame_id)["image_path"]
        if path is None:
            raise HTTPException(404, f"frame {frame_id!r} has no kept image")
        return FileResponse(path, media_type="image/jpeg")

    @router.post("/api/frames/{frame_id}/labels", status_code=201)
    def add_label(frame_id: str, body: LabelIn,
                  session: Annotated[Session, Depends(auth.csrf)]) -> dict[str, Any]:
        try:
            label = ctx.labels.add(frame_id, body.kind, session.user,
                                   defect_index=body.defect_index, class_name=body.class_name,
                                   box_xyxy=body.box_xyxy)
        except (UnknownFrame, LookupError) as e:
            raise HTTPException(404, str(e)) from e
        except (BadLabel, ValueError) as e:
            raise HTTPException(422, str(e)) from e
        return {"label": plain(label)}

    # ---------------------------------------------------------------- alarms
    @router.get("/api/alarms")
    def alarms(session: Annotated[Session, Depends(auth.session)],
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
        return {"current": [plain(a) for a in ctx.alarms.current()],
                "history": [plain(a) for a in ctx.alarms.history(limit)]}

    @router.post("/api/alarms/{alarm_id}/ack")
    def acknowledge(alarm_id: int,
                    session: Annotated[Session, Depends(auth.csrf)]) -> dict[str, Any]:
        try:
            alarm = ctx.alarms.acknowledge(alarm_id, session.user)
        except (UnknownAlarm, LookupError) as e:
            raise HTTPException(404, str(e)) from e
        return {"alarm": plain(alarm)}

    # ---------------------------------------------------------------- model, controls
    @router.get("/api/model")
    def model(session: Annotated[Session, Depends(auth.session)]) -> dict[str, Any]:
        loaded = ctx.model()
        with reader() as conn:
            history = query_events(conn, kinds=["model_change", "thresholds_changed",
                                                "rollback"], limit=50)
        overrides = ctx.thresholds.values
        out: dict[str, Any] = {"active": None, "history": history,
                               "overrides": overrides,
                               "rollback_to": ctx.rollback.previous()}
        if loaded is not None:
            m = loaded.manifest
            bundle = m.postprocess.threshold_for(list(m.classes))
            out["active"] = {
                **loaded.info.as_dict(),
                "metrics": m.metrics.model_dump(mode="json") if m.metrics else None,
                "lineage": m.lineage.model_dump(mode="json"),
                "thresholds": {c: {"bundle": round(float(t), 4),
                                   "override": overrides.get(c)}
                               for c, t in zip(m.classes, bundle, strict=True)},
            }
        return out

    @router.post("/api/thresholds")
    def set_thresholds(body: ThresholdsIn,
                       session: Annotated[Session, Depends(auth.engineer)]) -> dict[str, Any]:
        loaded = ctx.model()
        if loaded is not None:
            unknown = sorted(set(body.thresholds) - set(loaded.info.classes))
            if unknown:
                raise HTTPException(422, f"unknown class(es) {unknown}; the model has "
                                         f"{list(loaded.info.classes)}")
        try:
            previous = ctx.thresholds.set(body.thresholds)
        except ValueError as e:
            raise HTTPException(422, str(e)) from e
        except OSError as e:
            raise HTTPException(503, f"cannot persist the thresholds: {e}") from e
        current = ctx.thresholds.values
        ctx.record_event("thresholds_changed", "info", "panel",
                         f"{session.user} set class thresholds {current} (was {previous})",
                         user=session.user, thresholds=str(current), previous=str(previous))
        return {"overrides": current, "previous": previous}

    @router.post("/api/rollback")
    def rollback(session: Annotated[Session, Depends(auth.engineer)]) -> dict[str, Any]:
        try:
            active = ctx.rollback.rollback(session.user)
        except RollbackUnavailable as e:
            raise HTTPException(409, str(e)) from e
        return {"active": active, "at_s": ctx.clock()}

    return router

"""The release side's records in the cloud database: releases, assignments, rollouts,
rollout steps and events (tables in cloud/release/tables.py).

The TUF repository is what lines trust; these rows are the cloud's own memory of what
it signed and why (history, the API, the rollout controller's state across restarts).
Every rollout step is also written as an event, in the same transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from cloud.release import tables
from cloud.release.errors import ReleaseError


def ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, UTC)


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReleaseView(_View):
    """A published bundle."""

    model: str
    version: int
    label: str | None
    target_path: str
    sha256: str
    length: int
    released_by: str
    released_at: datetime


class AssignmentView(_View):
    """One signed assignment of one line."""

    site: str
    line: str
    sequence: int
    model: str
    version: int
    bundle_target: str
    rollout_id: str | None
    stage: str
    issued_by: str
    reason: str | None
    issued_at: datetime


class RolloutStepView(_View):
    """One step of a rollout (also an event)."""

    kind: str
    site: str | None
    line: str | None
    detail: str
    at: datetime


class RolloutView(_View):
    """A rollout: the stages of lines it moves to `model@version`, where it is."""

    rollout_id: str
    model: str
    version: int
    state: str
    stages: list[list[str]]
    stage_index: int
    stage_started_at: datetime
    previous: dict[str, tuple[str, int] | None]
    health_window_s: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    reason: str | None
    steps: list[RolloutStepView] = []


class EventView(_View):
    """Something the release side did (publish, assign, rollout step, rollback)."""

    kind: str
    model: str | None
    version: int | None
    site: str | None
    line: str | None
    rollout_id: str | None
    detail: str
    at: datetime


class ReleaseStore:
    """See the module docstring. `engine` is migrated (cloud.db.upgrade)."""

    def __init__(self, engine: Engine,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._engine = engine
        self.clock_ms = clock_ms

    @contextmanager
    def _begin(self, what: str) -> Iterator[Connection]:
        try:
            with self._engine.begin() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise ReleaseError(f"{what}: database error: {e}") from e

    # ---- releases

    def record_release(self, r: ReleaseView) -> None:
        with self._begin(f"recording release {r.model}@{r.version}") as conn:
            conn.execute(insert(tables.releases).values(
                model=r.model, version=r.version, label=r.label, target_path=r.target_path,
                sha256=r.sha256, length=r.length, released_by=r.released_by,
                released_at_ms=int(r.released_at.timestamp() * 1000)))
            self._event(conn, "released", model=r.model, version=r.version,
                        detail=f"{r.target_path} ({r.length} bytes) by {r.released_by}")

    def release(self, model: str, version: int) -> ReleaseView | None:
        with self._begin("reading a release") as conn:
            row = conn.execute(select(tables.releases).where(
                tables.releases.c.model == model, tables.releases.c.version == version)).first()
        return None if row is None else _release(row._mapping)

    def releases(self, limit: int = 100) -> list[ReleaseView]:
        """Newest first."""
        with self._begin("reading releases") as conn:
            rows = conn.execute(select(tables.releases).order_by(
                tables.releases.c.released_at_ms.desc(), tables.releases.c.model,
                tables.releases.c.version.desc()).limit(limit)).all()
        return [_release(r._mapping) for r in rows]

    # ---- assignments

    def last_sequence(self, site: str, line: str) -> int:
        with self._begin("reading assignments") as conn:
            value = conn.execute(select(func.max(tables.assignments.c.sequence)).where(
                tables.assignments.c.site == site, tables.assignments.c.line == line)).scalar()
        return int(value or 0)

    def record_assignment(self, a: AssignmentView) -> None:
        with self._begin(f"recording the assignment of {a.site}/{a.line}") as conn:
            conn.execute(insert(tables.assignments).values(
                site=a.site, line=a.line, sequence=a.sequence, model=a.model,
                version=a.version, bundle_target=a.bundle_target, rollout_id=a.rollout_id,
                stage=a.stage, issued_by=a.issued_by, reason=a.reason,
                issued_at_ms=int(a.issued_at.timestamp() * 1000)))
            self._event(conn, "assigned", model=a.model, version=a.version, site=a.site,
                        line=a.line, rollout_id=a.rollout_id,
                        detail=f"sequence {a.sequence}, stage {a.stage}, by {a.issued_by}"
                        + (f": {a.reason}" if a.reason else ""))

    def assignments(self, site: str | None = None, line: str | None = None,
                    limit: int = 100) -> list[AssignmentView]:
        """Newest first."""
        q = select(tables.assignments)
        if site is not None:
            q = q.where(tables.assignments.c.site == site)
        if line is not None:
            q = q.where(tables.assignments.c.line == line)
        q = q.order_by(tables.assignments.c.issued_at_ms.desc(),
                       tables.assignments.c.sequence.desc()).limit(limit)
        with self._begin("reading assignments") as conn:
            return [_assignment(r._mapping) for r in conn.execute(q).all()]

    def current_assignments(self) -> list[AssignmentView]:
        """Each line's newest assignment."""
        a = tables.assignments
        newest = (select(a.c.site, a.c.line, func.max(a.c.sequence).label("seq"))
                  .group_by(a.c.site, a.c.line).subquery())
        q = select(a).join(newest, (a.c.site == newest.c.site) & (a.c.line == newest.c.line)
                           & (a.c.sequence == newest.c.seq)).order_by(a.c.site, a.c.line)
        with self._begin("reading assignments") as conn:
            return [_assignment(r._mapping) for r in conn.execute(q).all()]

    def current_assignment(self, site: str, line: str) -> AssignmentView | None:
        found = self.assignments(site, line, limit=1)
        return found[0] if found else None

    # ---- rollouts

    def create_rollout(self, r: RolloutView) -> None:
        with self._begin(f"creating rollout {r.rollout_id}") as conn:
            conn.execute(insert(tables.rollouts).values(
                rollout_id=r.rollout_id, model=r.model, version=r.version, state=r.state,
                stages_json=json.dumps(r.stages), stage_index=r.stage_index,
                stage_started_at_ms=_ms(r.stage_started_at),
                previous_json=json.dumps(r.previous), health_window_s=r.health_window_s,
                created_by=r.created_by, created_at_ms=_ms(r.created_at),
                updated_at_ms=_ms(r.updated_at), reason=r.reason))
            self._step(conn, r.rollout_id, r.model, r.version, "created", None, None,
                       f"{r.model}@{r.version}: stages {json.dumps(r.stages)} by {r.created_by}")

    def rollout(self, rollout_id: str, *, with_steps: bool = True) -> RolloutView | None:
        with self._begin("reading a rollout") as conn:
            row = conn.execute(select(tables.rollouts).where(
                tables.rollouts.c.rollout_id == rollout_id)).first()
            if row is None:
                return None
            steps = self._steps(conn, rollout_id) if with_steps else []
        return _rollout(row._mapping, steps)

    def rollouts(self, *, state: str | None = None, limit: int = 50) -> list[RolloutView]:
        """Newest first, with their steps."""
        q = select(tables.rollouts)
        if state is not None:
            q = q.where(tables.rollouts.c.state == state)
        q = q.order_by(tables.rollouts.c.created_at_ms.desc(),
                       tables.rollouts.c.rollout_id.desc()).limit(limit)
        with self._begin("reading rollouts") as conn:
            rows = conn.execute(q).all()
            return [_rollout(r._mapping, self._steps(conn, r._mapping["rollout_id"]))
                    for r in rows]

    def move_rollout(self, r: RolloutView, *, state: str, stage_index: int,
                     stage_started_at_ms: int, reason: str | None, step: str,
                     detail: str, site: str | None = None, line: str | None = None) -> bool:
        """Compare-and-set the rollout from `r`'s state and stage to the new ones and
        record the step; False if someone else moved it meanwhile (nothing written)."""
        t = tables.rollouts
        with self._begin(f"moving rollout {r.rollout_id}") as conn:
            changed = conn.execute(update(t).where(
                t.c.rollout_id == r.rollout_id, t.c.state == r.state,
                t.c.stage_index == r.stage_index).values(
                state=state, stage_index=stage_index, stage_started_at_ms=stage_started_at_ms,
                updated_at_ms=self.clock_ms(), reason=reason))
            if changed.rowcount != 1:
                return False
            self._step(conn, r.rollout_id, r.model, r.version, step, site, line, detail)
        return True

    def add_step(self, r: RolloutView, kind: str, detail: str, *, site: str | None = None,
                 line: str | None = None) -> None:
        with self._begin(f"recording a step of rollout {r.rollout_id}") as conn:
            self._step(conn, r.rollout_id, r.model, r.version, kind, site, line, detail)

    def _steps(self, conn: Connection, rollout_id: str) -> list[RolloutStepView]:
        s = tables.rollout_steps
        rows = conn.execute(select(s).where(s.c.rollout_id == rollout_id)
                            .order_by(s.c.id)).all()
        return [RolloutStepView(kind=r.kind, site=r.site, line=r.line, detail=r.detail,
                                at=ms_to_dt(r.at_ms)) for r in rows]

    def _step(self, conn: Connection, rollout_id: str, model: str, version: int, kind: str,
              site: str | None, line: str | None, detail: str) -> None:
        now = self.clock_ms()
        conn.execute(insert(tables.rollout_steps).values(
            rollout_id=rollout_id, kind=kind, site=site, line=line, detail=detail, at_ms=now))
        self._event(conn, f"rollout.{kind}", model=model, version=version, site=site,
                    line=line, rollout_id=rollout_id, detail=detail)

    # ---- events

    def event(self, kind: str, detail: str, **keys: str | int | None) -> None:
        with self._begin(f"recording event {kind}") as conn:
            self._event(conn, kind, detail=detail, **keys)

    def _event(self, conn: Connection, kind: str, *, detail: str,
               **keys: str | int | None) -> None:
        conn.execute(insert(tables.events).values(kind=kind, detail=detail,
                                                  at_ms=self.clock_ms(), **keys))

    def events(self, limit: int = 200) -> list[EventView]:
        """Newest first."""
        e = tables.events
        with self._begin("reading events") as conn:
            rows = conn.execute(select(e).order_by(e.c.id.desc()).limit(limit)).all()
        return [EventView(kind=r.kind, model=r.model, version=r.version, site=r.site,
                          line=r.line, rollout_id=r.rollout_id, detail=r.detail,
                          at=ms_to_dt(r.at_ms)) for r in rows]


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _release(m: object) -> ReleaseView:
    r = dict(m)  # type: ignore[call-overload]
    return ReleaseView(model=r["model"], version=r["version"], label=r["label"],
                       target_path=r["target_path"], sha256=r["sha256"], length=r["length"],
                       released_by=r["released_by"], released_at=ms_to_dt(r["released_at_ms"]))


def _assignment(m: object) -> AssignmentView:
    r = dict(m)  # type: ignore[call-overload]
    return AssignmentView(
        site=r["site"], line=r["line"], sequence=r["sequence"], model=r["model"],
        version=r["version"], bundle_target=r["bundle_target"], rollout_id=r["rollout_id"],
        stage=r["stage"], issued_by=r["issued_by"], reason=r["reason"],
        issued_at=ms_to_dt(r["issued_at_ms"]))


def _rollout(m: object, steps: list[RolloutStepView]) -> RolloutView:
    r = dict(m)  # type: ignore[call-overload]
    previous = {k: (None if v is None else (v[0], int(v[1])))
                for k, v in json.loads(r["previous_json"]).items()}
    return RolloutView(
        rollout_id=r["rollout_id"], model=r["model"], version=r["version"], state=r["state"],
        stages=json.loads(r["stages_json"]), stage_index=r["stage_index"],
        stage_started_at=ms_to_dt(r["stage_started_at_ms"]), previous=previous,
        health_window_s=r["health_window_s"], created_by=r["created_by"],
        created_at=ms_to_dt(r["created_at_ms"]), updated_at=ms_to_dt(r["updated_at_ms"]),
        reason=r["reason"], steps=steps)

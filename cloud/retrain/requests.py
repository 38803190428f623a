"""Retraining requests: what asks for a line's model to be retrained (the drift
detector, the schedule), queued in the cloud database for `lineguard cloud
retrain-worker`.

Invariants:
- At most one open (queued or running) request per line: a second ask while one is
  open is dropped (a unique partial index enforces it across processes).
- A line gets at most one request per `min_interval_h` (counted from the previous
  request's time, whatever became of it).
- A request moves queued -> running -> done | failed, each move a compare-and-set, so
  two workers never run the same request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from sqlalchemy import Engine, RowMapping, Select, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from cloud.registry import tables
from cloud.registry.entry import ModelRef
from cloud.retrain.errors import RetrainError
from protocol import ProtocolError, validate_id

logger = logging.getLogger(__name__)

RequestState = Literal["queued", "running", "done", "failed"]
RequestSource = Literal["drift", "schedule", "manual"]


@dataclass(frozen=True)
class RetrainRequest:
    id: int
    site: str
    line: str
    reason: str
    source: RequestSource
    state: RequestState
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    parent: ModelRef | None
    dataset: str | None
    candidate: ModelRef | None
    outcome: str | None

    @property
    def line_key(self) -> str:
        return f"{self.site}/{self.line}"


def _dt(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000.0, UTC) if ms is not None else None


def _request(row: RowMapping) -> RetrainRequest:
    def ref(name: str | None, version: int | None) -> ModelRef | None:
        return ModelRef(name, int(version)) if name is not None and version is not None else None

    requested = _dt(row["requested_at_ms"])
    assert requested is not None
    return RetrainRequest(
        id=int(row["id"]), site=row["site"], line=row["line"], reason=row["reason"],
        source=cast(RequestSource, row["source"]), state=cast(RequestState, row["state"]),
        requested_at=requested, started_at=_dt(row["started_at_ms"]),
        finished_at=_dt(row["finished_at_ms"]),
        parent=ref(row["parent_name"], row["parent_version"]), dataset=row["dataset_ref"],
        candidate=ref(row["candidate_name"], row["candidate_version"]), outcome=row["outcome"])


def split_line(line: str) -> tuple[str, str]:
    """`site/line` -> (site, line). Raises RetrainError."""
    site, sep, name = line.partition("/")
    try:
        if not sep:
            raise ValueError("missing '/'")
        return validate_id(site, "site"), validate_id(name, "line")
    except (ValueError, ProtocolError) as e:
        raise RetrainError(f"line {line!r} is not site/line: {e}") from e


class RetrainQueue:
    """Retraining requests in the cloud database (migrated, registry branch)."""

    def __init__(self, engine: Engine, *, min_interval_h: float,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._engine = engine
        self._min_interval_ms = int(min_interval_h * 3600 * 1000)
        self._clock_ms = clock_ms

    def request_retrain(self, line: str, reason: str,
                        source: RequestSource = "drift") -> RetrainRequest | None:
        """Ask for `line`'s model ("site/line") to be retrained. Returns the queued
        request, or None when one is already open for the line or the line's previous
        request is younger than `min_interval_h`. Raises RetrainError (bad line id,
        database error)."""
        site, name = split_line(line)
        reason = reason.strip()[:1000] or "(no reason given)"
        t = tables.retrain_requests
        now = self._clock_ms()
        try:
            with self._engine.begin() as conn:
                last = conn.execute(select(func.max(t.c.requested_at_ms)).where(
                    t.c.site == site, t.c.line == name)).scalar()
                open_count = conn.execute(select(func.count()).select_from(t).where(
                    t.c.site == site, t.c.line == name,
                    t.c.state.in_(("queued", "running")))).scalar_one()
                if open_count:
                    logger.info("retrain of %s not queued (%s): one is already open", line,
                                reason)
                    return None
                if last is not None and now - int(last) < self._min_interval_ms:
                    logger.info("retrain of %s not queued (%s): the last request is %.1f h "
                                "old", line, reason, (now - int(last)) / 3.6e6)
                    return None
                new_id = conn.execute(insert(t).values(
                    site=site, line=name, reason=reason, source=source, state="queued",
                    requested_at_ms=now).returning(t.c.id)).scalar_one()
        except IntegrityError:
            return None  # another process queued one for this line meanwhile
        except SQLAlchemyError as e:
            raise RetrainError(f"queueing a retrain of {line}: database error: {e}") from e
        logger.info("retrain of %s queued as request %d (%s: %s)", line, new_id, source, reason)
        return self.get(int(new_id))

    def get(self, request_id: int) -> RetrainRequest:
        """Raises RetrainError for an unknown id."""
        t = tables.retrain_requests
        row = self._read(select(t).where(t.c.id == request_id))
        if not row:
            raise RetrainError(f"no retrain request {request_id}")
        return row[0]

    def requests(self, line: str | None = None, limit: int = 100) -> list[RetrainRequest]:
        """Requests, newest first (of one line "site/line" when given)."""
        t = tables.retrain_requests
        query = select(t).order_by(t.c.id.desc()).limit(limit)
        if line is not None:
            site, name = split_line(line)
            query = query.where(t.c.site == site, t.c.line == name)
        return self._read(query)

    def last_requested(self) -> dict[str, datetime]:
        """`site/line` -> time of its newest request, for every line that had one."""
        t = tables.retrain_requests
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(t.c.site, t.c.line, func.max(t.c.requested_at_ms))
                                    .group_by(t.c.site, t.c.line)).all()
        except SQLAlchemyError as e:
            raise RetrainError(f"reading retrain requests: {e}") from e
        return {f"{site}/{line}": _dt(int(ms)) for site, line, ms in rows}  # type: ignore[misc]

    def _read(self, query: Select[Any]) -> list[RetrainRequest]:
        try:
            with self._engine.connect() as conn:
                return [_request(r._mapping) for r in conn.execute(query)]
        except SQLAlchemyError as e:
            raise RetrainError(f"reading retrain requests: {e}") from e

    def queued(self) -> list[RetrainRequest]:
        """The queued requests, oldest first."""
        t = tables.retrain_requests
        return self._read(select(t).where(t.c.state == "queued").order_by(t.c.id))

    def claim(self, ready: Callable[[RetrainRequest], bool] = lambda _: True
              ) -> RetrainRequest | None:
        """The oldest queued request that is `ready`, now running (None when there is
        none; another worker claiming it first moves on to the next)."""
        for request in self.queued():
            if ready(request) and self._move(request.id, "queued", "running",
                                             started_at_ms=self._clock_ms()):
                return self.get(request.id)
        return None

    def drop(self, request_id: int, outcome: str) -> RetrainRequest | None:
        """queued -> failed without running (why in `outcome`); None when it was no
        longer queued."""
        if not self._move(request_id, "queued", "failed", finished_at_ms=self._clock_ms(),
                          outcome=outcome[:2000]):
            return None
        return self.get(request_id)

    def set_plan(self, request_id: int, parent: ModelRef, dataset: str) -> None:
        """Record what a running request fine-tunes (parent, dataset)."""
        self._update(request_id, parent_name=parent.name, parent_version=parent.version,
                     dataset_ref=dataset)

    def finish(self, request_id: int, *, ok: bool, outcome: str,
               candidate: ModelRef | None = None) -> RetrainRequest:
        """running -> done (a candidate was made and gated) or failed (with why)."""
        values: dict[str, object] = {"finished_at_ms": self._clock_ms(), "outcome": outcome[:2000]}
        if candidate is not None:
            values |= {"candidate_name": candidate.name, "candidate_version": candidate.version}
        if not self._move(request_id, "running", "done" if ok else "failed", **values):
            raise RetrainError(f"retrain request {request_id} is not running")
        return self.get(request_id)

    def _move(self, request_id: int, from_state: RequestState, to_state: RequestState,
              **values: object) -> bool:
        t = tables.retrain_requests
        try:
            with self._engine.begin() as conn:
                result = conn.execute(update(t).where(t.c.id == request_id,
                                                      t.c.state == from_state)
                                      .values(state=to_state, **values))
                return bool(result.rowcount == 1)
        except SQLAlchemyError as e:
            raise RetrainError(f"updating retrain request {request_id}: {e}") from e

    def _update(self, request_id: int, **values: object) -> None:
        t = tables.retrain_requests
        try:
            with self._engine.begin() as conn:
                conn.execute(update(t).where(t.c.id == request_id).values(**values))
        except SQLAlchemyError as e:
            raise RetrainError(f"updating retrain request {request_id}: {e}") from e

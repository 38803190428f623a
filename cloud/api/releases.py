"""The fleet API's release endpoints.

- `GET /tuf/metadata/{file}` and `GET /tuf/targets/{path}`: the TUF repository, read-only
  static files for lines' TUF clients (no token: every byte is verified against the
  signed metadata, and lines hold no API token). Paths are checked before any file is
  opened: no `..`, no hidden names, nothing outside the repository, regular files only.
- `GET /releases`, `GET /releases/lines`, `GET /releases/events`, `GET /rollouts`,
  `GET /rollouts/{rollout_id}`: release history, each line's assigned and running
  versions, the release events, rollouts with their steps (behind the token).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict

from cloud.fleet.views import LineView
from cloud.release.errors import ReleaseError
from cloud.release.store import (
    AssignmentView,
    EventView,
    ReleaseStore,
    ReleaseView,
    RolloutView,
)

logger = logging.getLogger(__name__)

_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_METADATA_FILE = re.compile(r"^(?:[1-9][0-9]{0,18}\.)?[A-Za-z0-9_-]{1,64}\.json$")


def _safe_file(base: FsPath, parts: list[str]) -> FsPath:
    if not parts or any(not _SEGMENT.match(p) for p in parts):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    path = base.joinpath(*parts)
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file") from None
    if not resolved.is_relative_to(base.resolve()) or not resolved.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return resolved


def tuf_router(repository_dir: FsPath) -> APIRouter:
    """Static, read-only, path-safe access to `repository_dir`'s metadata and targets."""
    router = APIRouter(prefix="/tuf", tags=["tuf"])
    metadata_dir = repository_dir / "metadata"
    targets_dir = repository_dir / "targets"

    @router.get("/metadata/{name}", response_class=FileResponse,
                summary="a TUF metadata file (e.g. 2.root.json, timestamp.json)")
    def metadata(name: Annotated[str, Path(max_length=96)]) -> FileResponse:
        if not _METADATA_FILE.match(name):
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
        return FileResponse(_safe_file(metadata_dir, [name]), media_type="application/json",
                            headers={"Cache-Control": "no-cache"})

    @router.get("/targets/{path:path}", response_class=FileResponse,
                summary="a TUF target file (hash-prefixed name)")
    def target(path: Annotated[str, Path(max_length=1024)]) -> FileResponse:
        return FileResponse(_safe_file(targets_dir, path.split("/")),
                            media_type="application/octet-stream",
                            headers={"Cache-Control": "public, max-age=31536000, immutable"})

    return router


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineVersions(_View):
    """A line's signed assignment and the model it reports running."""

    site: str
    line: str
    assigned: AssignmentView | None
    running_model: str | None
    running_version: int | None
    in_sync: bool


def releases_router(store: ReleaseStore, lines: Callable[[], list[LineView]]) -> APIRouter:
    """Release history, line versions, events and rollouts over `store`; `lines` is the
    fleet store's line list (what each line reports running)."""
    router = APIRouter(tags=["releases"])

    @router.get("/releases", summary="published bundles, newest first")
    def releases(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[ReleaseView]:
        return store.releases(limit)

    @router.get("/releases/lines", summary="each line's assigned and running versions")
    def line_versions() -> list[LineVersions]:
        assigned = {(a.site, a.line): a for a in store.current_assignments()}
        running = {(v.site, v.line): v for v in lines()}
        out = []
        for key in sorted(assigned.keys() | running.keys()):
            a, v = assigned.get(key), running.get(key)
            model = v.model if v is not None else None
            out.append(LineVersions(
                site=key[0], line=key[1], assigned=a,
                running_model=model.name if model else None,
                running_version=model.version if model else None,
                in_sync=a is not None and model is not None
                and (a.model, a.version) == (model.name, model.version)))
        return out

    @router.get("/releases/events", summary="release, assignment and rollout events")
    def events(limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[EventView]:
        return store.events(limit)

    @router.get("/rollouts", summary="rollouts with their steps, newest first")
    def rollouts(limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[RolloutView]:
        return store.rollouts(limit=limit)

    @router.get("/rollouts/{rollout_id}", summary="one rollout with its steps")
    def rollout(rollout_id: Annotated[str, Path(max_length=64)]) -> RolloutView:
        found = store.rollout(rollout_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}")
        return found

    return router


@dataclass(frozen=True)
class ReleaseApi:
    """What `create_app` needs to serve the release endpoints."""

    store: ReleaseStore
    repository_dir: FsPath


def add_release_routes(app: FastAPI, release: ReleaseApi, lines: Callable[[], list[LineView]],
                       auth: Sequence[Any], responses: dict[int | str, dict[str, Any]]) -> None:
    """Mount the TUF files (public) and the release views (behind `auth`) on `app`;
    a ReleaseError becomes 503."""
    app.include_router(tuf_router(release.repository_dir))
    app.include_router(releases_router(release.store, lines), dependencies=auth,
                       responses=responses)

    @app.exception_handler(ReleaseError)
    def _release_failed(request: Request, exc: ReleaseError) -> JSONResponse:
        logger.error("release error on %s: %s", request.url.path, exc)
        return JSONResponse(status_code=503, content={"detail": "release records unavailable"})

"""The fleet API (FastAPI): lines, their metrics and defect events, models, quarantine.

`create_app(store, token)` builds the app; nothing is created at import time. Every
endpoint but `/health` needs `Authorization: Bearer <token>` (401 otherwise; the token
is compared in constant time). Bad query or path parameters are 422; an unknown line
is 404; a fleet store that cannot be read is 503. Times are ISO 8601 with an offset
(a time without one is refused); ranges are `since` inclusive, `until` exclusive, and
results come newest first, at most `limit` (page back with `until` = the oldest time).
"""


import hmac
import logging
from typing import Annotated, Final

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AwareDatetime, BaseModel, ConfigDict, SecretStr
from swagger_ui_bundle import swagger_ui_path

from cloud.errors import FleetStoreError
from cloud.fleet import (
    CollectorCounters,
    DefectEventView,
    FleetStore,
    LineModelView,
    LineView,
    MetricsPoint,
    QuarantineSummary,
)
from cloud.fleet.report import LineReport, ReportTooLarge

logger = logging.getLogger(__name__)

API_VERSION: Final = "1"
ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DOCS_ASSETS: Final = "/docs-assets"
"""Where Swagger UI's scripts and styles are served from (vendored, no CDN)."""

SiteParam = Annotated[str, Path(pattern=ID_PATTERN, description="site id")]
LineParam = Annotated[str, Path(pattern=ID_PATTERN, description="line id")]
SinceQuery = Annotated[
    AwareDatetime | None, Query(description="inclusive lower bound, ISO 8601 with offset")
]
UntilQuery = Annotated[
    AwareDatetime | None, Query(description="exclusive upper bound, ISO 8601 with offset")
]


class Health(BaseModel):
    """`ok` when the fleet store can be read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: str
    api_version: str


class MetricsSeries(BaseModel):
    """A line's metrics messages, newest first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str
    line: str
    points: list[MetricsPoint]


class _Auth:
    """The bearer-token check, as a dependency."""

    def __init__(self, token: SecretStr) -> None:
        self._expected = token.get_secret_value().encode("utf-8")

    def __call__(
        self,
        credentials: Annotated[
            HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))
        ],
    ) -> None:
        given = credentials.credentials.encode("utf-8") if credentials else b""
        if not hmac.compare_digest(given, self._expected):
            raise HTTPException(
                status_code=status.HTTP_401_UNAUTHORIZED,
                detail="missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )


def _check_range(since: AwareDatetime | None, until: AwareDatetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "until must be after since")


def _not_found(site: str, line: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no line {site}/{line}")


def create_app(store: FleetStore, token: SecretStr | str) -> FastAPI:
    """The fleet API over `store`; `token` is the bearer token (at least 16 characters).

    Raises ValueError for a shorter token.
    """
    secret = token if isinstance(token, SecretStr) else SecretStr(token)
    if len(secret.get_secret_value()) < 16:
        raise ValueError("the API token must be at least 16 characters")

    def get_store() -> FleetStore:
        return store

    Store = Annotated[FleetStore, Depends(get_store)]

    # The interactive docs are served from this process, with Swagger UI's assets from
    # the swagger-ui-bundle package: a plant network is often air-gapped, and FastAPI's
    # default /docs and /redoc load their scripts from a CDN (a blank page offline).
    app = FastAPI(
        title="lineguard fleet API",
        version=API_VERSION,
        description=__doc__,
        docs_url=None,
        redoc_url=None,
    )
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.exception_handler(FleetStoreError)
    def _store_failed(request: Request, exc: FleetStoreError) -> JSONResponse:
        logger.error("fleet store error on %s: %s", request.url.path, exc)
        return JSONResponse(status_code=503, content={"detail": "fleet store unavailable"})

    @app.get("/health", tags=["health"])
    def health(fleet: Store) -> Health:
        """Liveness and readiness (no token needed): 200 when the store can be read."""
        fleet.ping()
        return Health(status="ok", api_version=API_VERSION)

    router = APIRouter(dependencies=[Depends(_Auth(secret))])

    @router.get("/lines", tags=["lines"])
    def list_lines(fleet: Store) -> list[LineView]:
        """Every line ever heard from, with online state, model and sources."""
        return fleet.lines()

    @router.get("/lines/{site}/{line}", tags=["lines"])
    def get_line(fleet: Store, site: SiteParam, line: LineParam) -> LineView:
        """One line; 404 if it never sent a valid message."""
        found = fleet.line(site, line)
        if found is None:
            raise _not_found(site, line)
        return found

    @router.get("/lines/{site}/{line}/metrics", tags=["lines"])
    def line_metrics(
        fleet: Store,
        site: SiteParam,
        line: LineParam,
        since: SinceQuery = None,
        until: UntilQuery = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> MetricsSeries:
        """The line's metrics as a time series by `sent_at` (window end), newest first."""
        _check_range(since, until)
        if fleet.line(site, line) is None:
            raise _not_found(site, line)
        points = fleet.metrics(site, line, since=since, until=until, limit=limit)
        return MetricsSeries(site=site, line=line, points=points)

    @router.get("/lines/{site}/{line}/report", tags=["lines"])
    def line_report(
        fleet: Store,
        site: SiteParam,
        line: LineParam,
        since: SinceQuery = None,
        until: UntilQuery = None,
        bucket_s: Annotated[int, Query(ge=1, le=31 * 86_400,
                                       description="bucket length, seconds")] = 3600,
    ) -> LineReport:
        """Parts, pass, fail, uninspected by reason, yield and failed parts per class
        (parts, not boxes), in total and per time bucket (epoch-aligned; a metrics window
        counts in the bucket of its end; only buckets with data), from the line's metrics
        messages. 422 when the range holds more than 10000 buckets of data."""
        _check_range(since, until)
        if fleet.line(site, line) is None:
            raise _not_found(site, line)
        try:
            return fleet.line_report(site, line, since=since, until=until, bucket_s=bucket_s)
        except ReportTooLarge as e:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from e

    @router.get("/lines/{site}/{line}/model", tags=["lines"])
    def line_model(fleet: Store, site: SiteParam, line: LineParam) -> LineModelView:
        """The line's current model and its latest update step."""
        found = fleet.line_model(site, line)
        if found is None:
            raise _not_found(site, line)
        return found

    @router.get("/events/defects", tags=["events"])
    def defect_events(
        fleet: Store,
        site: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        line: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
        class_name: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        since: SinceQuery = None,
        until: UntilQuery = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[DefectEventView]:
        """Defect events by capture time, newest first; `class_name` keeps events with
        at least one detection of that class."""
        _check_range(since, until)
        return fleet.defect_events(
            site=site, line=line, class_name=class_name, since=since, until=until, limit=limit
        )

    @router.get("/quarantine", tags=["collector"])
    def quarantine(
        fleet: Store, limit: Annotated[int, Query(ge=0, le=1000)] = 50
    ) -> QuarantineSummary:
        """Payloads that failed validation: counts by reason and the most recent ones."""
        return fleet.quarantine(limit)

    @router.get("/collectors", tags=["collector"])
    def collectors(fleet: Store) -> list[CollectorCounters]:
        """Each collector instance's counters (received, stored, duplicates, ...)."""
        return fleet.counters()

    app.include_router(router)
    return app

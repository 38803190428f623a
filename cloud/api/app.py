"""The fleet API (FastAPI): lines, their metrics and defect events, models, quarantine.

`create_app(store, token)` builds the app; nothing is created at import time. Every
endpoint but `/health` needs `Authorization: Bearer <token>` (401 otherwise; the token
is compared in constant time), the OpenAPI spec `/openapi.json` included unless
`api.public_docs` is set. The interactive docs page `/docs` holds no data: it asks for
the token once per browser tab and loads the spec with it. Bad query or path
parameters are 422 (the error says where and why; it never echoes the input back); an
unknown line is 404; a fleet store that cannot be read is 503. Times are ISO 8601 with
an offset (`2025-03-14T09:00:00Z`; a time without one, or a number, is refused); ranges
are `since` inclusive, `until` exclusive, and results come newest first, at most
`limit` (page back with `until` = the oldest time).
"""


import hmac
import html
import logging
import re
from collections.abc import Sequence
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, SecretStr
from swagger_ui_bundle import swagger_ui_path

from cloud.api.models import models_router
from cloud.api.releases import ReleaseApi, add_release_routes
from cloud.drift.api import drift_router
from cloud.drift.store import DriftStore
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
from cloud.registry import ModelRegistry, RegistryError

logger = logging.getLogger(__name__)

API_VERSION: Final = "1"
ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
OPENAPI_URL: Final = "/openapi.json"
DOCS_ASSETS: Final = "/docs-assets"
"""Where Swagger UI's scripts and styles are served from (vendored, no CDN)."""

SiteParam = Annotated[str, Path(pattern=ID_PATTERN, description="site id")]
LineParam = Annotated[str, Path(pattern=ID_PATTERN, description="line id")]
# A date and a time: pydantic alone would also take a number (`until=0.5`) as a Unix
# timestamp. The offset is checked by AwareDatetime.
_ISO_DATETIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_8601_only(value: object) -> object:
    if isinstance(value, str) and _ISO_DATETIME.match(value):
        return value
    raise ValueError("must be an ISO 8601 date and time with an offset, "
                     "e.g. 2025-03-14T09:00:00Z")


IsoDatetime = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only)]
SinceQuery = Annotated[
    IsoDatetime | None, Query(description="inclusive lower bound, ISO 8601 with offset")
]
UntilQuery = Annotated[
    IsoDatetime | None, Query(description="exclusive upper bound, ISO 8601 with offset")
]


class ErrorDetail(BaseModel):
    """An error that is not about one parameter (401, 404, 503)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detail: str


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorDetail, "description": description}


Responses = dict[int | str, dict[str, Any]]
UNAUTHORIZED: Final[Responses] = {401: _error("missing or wrong bearer token")}
UNAVAILABLE: Final[Responses] = {503: _error("the fleet store cannot be read")}
NOT_FOUND: Final[Responses] = {404: _error("no such line (it never sent a valid message)")}


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


def _unprocessable(loc: list[str], msg: str) -> HTTPException:
    """A 422 in the shape of a validation error (FastAPI's documented 422 body)."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": loc, "msg": msg, "type": "value_error"}])


def _check_range(since: AwareDatetime | None, until: AwareDatetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise _unprocessable(["query", "until"], "until must be after since")


def _validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """422 with where and why of each error, never the input: a 100 KB parameter must
    not come back as a 100 KB error (nor be reflected to whoever sent it)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:500],
         "type": str(e.get("type", ""))}
        for e in errors[:20]
    ]
    return JSONResponse(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                        content={"detail": detail})


_DOCS_PAGE: Final = """<!DOCTYPE html>
<html>
<head>
<title>{title}</title>
<link type="text/css" rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="shortcut icon" href="{assets}/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>
// The spec needs the bearer token (unless api.public_docs): ask once per tab, keep it
// in this tab's session storage, and send it with every request the page makes.
const key = "lineguard-fleet-api-token";
let token = sessionStorage.getItem(key);
if ({needs_token} && !token) {{
  token = window.prompt("lineguard fleet API: bearer token");
  if (token) sessionStorage.setItem(key, token);
}}
SwaggerUIBundle({{
  url: "{openapi_url}",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  requestInterceptor: (request) => {{
    if (token && !request.headers.Authorization) {{
      request.headers.Authorization = "Bearer " + token;
    }}
    return request;
  }},
}});
</script>
</body>
</html>
"""


def _not_found(site: str, line: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no line {site}/{line}")


def create_app(
    store: FleetStore, token: SecretStr | str, *, public_docs: bool = False,
    registry: ModelRegistry | None = None, release: ReleaseApi | None = None,
    drift: DriftStore | None = None, routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The fleet API over `store`; `token` is the bearer token (at least 16 characters).
    `public_docs`: serve `/openapi.json` without the token. `registry`: also serve
    `/models` (cloud/api/models.py). `release`: also serve `/tuf/...`, `/releases...`
    and `/rollouts...` (cloud/api/releases.py). `routers`: more endpoints that do their
    own authentication (the lines' sample uploads: cloud/api/uploads.py). `drift`:
    also serve `/drift/...` (cloud/drift/api.py).

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
        openapi_url=None,  # served below, behind the token unless public_docs
    )
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
    app.add_exception_handler(RequestValidationError, _validation_failed)
    auth = _Auth(secret)

    @app.get(OPENAPI_URL, include_in_schema=False,
             dependencies=[] if public_docs else [Depends(auth)])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_DOCS_PAGE.format(
            title=html.escape(f"{app.title} - docs"), assets=DOCS_ASSETS,
            openapi_url=OPENAPI_URL, needs_token="false" if public_docs else "true",
        ))

    @app.exception_handler(FleetStoreError)
    def _store_failed(request: Request, exc: FleetStoreError) -> JSONResponse:
        logger.error("fleet store error on %s: %s", request.url.path, exc)
        return JSONResponse(status_code=503, content={"detail": "fleet store unavailable"})

    @app.get("/health", tags=["health"], responses=UNAVAILABLE)
    def health(fleet: Store) -> Health:
        """Liveness and readiness (no token needed): 200 when the store can be read."""
        fleet.ping()
        return Health(status="ok", api_version=API_VERSION)

    router = APIRouter(dependencies=[Depends(auth)], responses={**UNAUTHORIZED, **UNAVAILABLE})

    @router.get("/lines", tags=["lines"])
    def list_lines(fleet: Store) -> list[LineView]:
        """Every line ever heard from, with online state, model and sources."""
        return fleet.lines()

    @router.get("/lines/{site}/{line}", tags=["lines"], responses=NOT_FOUND)
    def get_line(fleet: Store, site: SiteParam, line: LineParam) -> LineView:
        """One line; 404 if it never sent a valid message."""
        found = fleet.line(site, line)
        if found is None:
            raise _not_found(site, line)
        return found

    @router.get("/lines/{site}/{line}/metrics", tags=["lines"], responses=NOT_FOUND)
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

    @router.get("/lines/{site}/{line}/report", tags=["lines"], responses=NOT_FOUND)
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
            raise _unprocessable(["query", "bucket_s"], str(e)) from e

    @router.get("/lines/{site}/{line}/model", tags=["lines"], responses=NOT_FOUND)
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
    if registry is not None:
        app.include_router(models_router(registry, store.lines), dependencies=[Depends(auth)],
                           responses={**UNAUTHORIZED, **UNAVAILABLE})

        @app.exception_handler(RegistryError)
        def _registry_failed(request: Request, exc: RegistryError) -> JSONResponse:
            logger.error("model registry error on %s: %s", request.url.path, exc)
            return JSONResponse(status_code=503, content={"detail": "model registry unavailable"})
    for extra in routers:
        app.include_router(extra)
    if release is not None:
        add_release_routes(app, release, store.lines, [Depends(auth)],
                           {**UNAUTHORIZED, **UNAVAILABLE})
    if drift is not None:
        app.include_router(drift_router(drift), dependencies=[Depends(auth)],
                           responses={**UNAUTHORIZED, **UNAVAILABLE})
    return app

"""The panel's FastAPI application factory: routes, static files, and the guards every
request passes (body size limit, same-origin POSTs, security headers).

`create_app(ctx)` builds everything from the context it is given; nothing is created
at import time and nothing is stored on the app for routes to read back.
"""

from __future__ import annotations

import logging
from importlib.resources import files
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.panel.api import api_router
from appliance.panel.auth import Auth
from appliance.panel.context import PanelContext
from appliance.panel.pages import pages_router

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(files("appliance.panel") / "static"))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by Content-Length or while
    streaming (nothing reaches a route, so nothing is half-written)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self._max:
                await self._refuse(send)
                return
        seen = 0
        over = False
        refused = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max:
                    over = True
                    raise BodyTooLarge
            return message

        async def watch(message: Message) -> None:
            # The framework turns a failed body read into its own 400: answer 413.
            nonlocal refused
            if over:
                if not refused:
                    refused = True
                    await self._refuse(send)
                return
            await send(message)

        try:
            await self._app(scope, limited, watch)
        except BodyTooLarge:
            if not refused:
                refused = True
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse({"detail": f"request body over {self._max} bytes"},
                                status_code=413)
        await send({"type": "http.response.start", "status": 413,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class Guard:
    """Refuse a state-changing request from another origin whatever it carries
    (SameSite=Strict cookies and the CSRF token are the other two locks), and add the
    security headers to every response. Plain ASGI (no per-request task)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            headers = dict(scope.get("headers", []))
            origin = headers.get(b"origin")
            if origin is not None and urlsplit(origin.decode("latin-1")).netloc != \
                    headers.get(b"host", b"").decode("latin-1"):
                response = JSONResponse({"detail": "cross-origin request refused"},
                                        status_code=403)
                await response(scope, receive, send)
                return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in self._headers
                                                    if h[0] not in present)]}
            await send(message)

        await self._app(scope, receive, with_headers)


def create_app(ctx: PanelContext) -> FastAPI:
    """The panel application over `ctx`."""
    app = FastAPI(title="lineguard panel", docs_url=None, redoc_url=None, openapi_url=None)
    auth = Auth(ctx)

    app.add_middleware(Guard)
    app.add_middleware(BodyLimit, max_bytes=ctx.cfg.max_body_bytes)
    app.include_router(api_router(ctx, auth))
    app.include_router(pages_router(ctx, auth))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app

"""Login, sessions and CSRF as FastAPI dependencies (the web layer's only auth code).

- `session`: the caller's live session from the HttpOnly cookie, else 401 (API) — pages
  redirect to /login instead (see pages.py);
- `csrf`: `session` plus the session's CSRF token, from the `X-CSRF-Token` header or the
  `csrf_token` form field, else 403; every state-changing route depends on it;
- `engineer`: `csrf` plus the engineer role, else 403.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import HTTPException, Request

from appliance.panel.context import PanelContext
from appliance.panel.sessions import Session

COOKIE = "lineguard_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


def client_ip(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


class Auth:
    """The auth dependencies over one context."""

    def __init__(self, ctx: PanelContext) -> None:
        self._ctx = ctx
        # async although they do no IO: FastAPI runs a sync dependency in its thread pool
        # (a thread hop per request), an async one inline.
        self.session: Callable[[Request], Awaitable[Session]] = self._session_dep
        self.csrf: Callable[[Request], Awaitable[Session]] = self._csrf
        self.engineer: Callable[[Request], Awaitable[Session]] = self._engineer

    def optional(self, request: Request) -> Session | None:
        return self._ctx.sessions.get(request.cookies.get(COOKIE))

    async def _session_dep(self, request: Request) -> Session:
        return self._session(request)

    def _session(self, request: Request) -> Session:
        session = self.optional(request)
        if session is None:
            raise HTTPException(401, "login required (no session, or it expired)")
        return session

    async def _csrf(self, request: Request) -> Session:
        session = self._session(request)
        token = request.headers.get(CSRF_HEADER)
        if token is None and request.headers.get("content-type", "").startswith(
                ("application/x-www-form-urlencoded", "multipart/form-data")):
            value = (await request.form()).get(CSRF_FIELD)
            token = value if isinstance(value, str) else None
        if token is None:
            raise HTTPException(403, f"CSRF token missing: send the {CSRF_HEADER} header")
        if not session.csrf_ok(token):
            raise HTTPException(403, "CSRF token wrong for this session")
        return session

    async def _engineer(self, request: Request) -> Session:
        session = await self._csrf(request)
        if session.role != "engineer":
            raise HTTPException(403, "engineers only")
        return session

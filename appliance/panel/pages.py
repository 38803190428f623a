"""The panel's HTML pages: server-rendered shells (navigation, the user, and the
controls the role may use; an operator's page has no engineer control in it at all),
filled by static/panel.js from the JSON API. No external URL, font or CDN.

No `from __future__ import annotations` here: FastAPI reads the route signatures.
"""

import html
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from appliance.panel.auth import COOKIE, CSRF_FIELD, Auth, client_ip
from appliance.panel.context import PanelContext
from appliance.panel.sessions import Session

logger = logging.getLogger(__name__)

NAV = (("live", "Live"), ("counters", "Counters"), ("gallery", "Failures"),
       ("alarms", "Alarms"), ("model", "Model"))


def _page(title: str, page: str, body: str, session: Session | None) -> str:
    e = html.escape
    nav = ""
    if session is not None:
        links = "".join(
            f'<a href="/{key}" class="{"on" if key == page else ""}">{label}</a>'
            for key, label in NAV)
        nav = (f'<nav>{links}<span class="who">{e(session.user)} ({e(session.role)})</span>'
               f'<form method="post" action="/logout"><input type="hidden" '
               f'name="{CSRF_FIELD}" value="{e(session.csrf_token)}">'
               '<button type="submit">Log out</button></form>'
               '<a href="/alarms" id="alarm-badge" class="badge" hidden></a></nav>')
    csrf = e(session.csrf_token) if session else ""
    role = e(session.role) if session else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · lineguard</title>"
        '<link rel=icon href="data:,"><link rel=stylesheet href="/static/panel.css"></head>'
        f'<body data-page="{page}" data-csrf="{csrf}" data-role="{role}">{nav}'
        f"<main>{body}</main>"
        '<script src="/static/panel.js"></script></body></html>')


BODIES = {
    "live": ('<h1>Live</h1><div id="live" class="live"></div>'
             '<p id="live-empty" class="muted">Waiting for the first frame…</p>'),
    "counters": ('<h1>Counters</h1><div class="cols"><section><h2 id="shift-title">Shift'
                 '</h2><div id="shift"></div></section><section><h2>Last hour</h2>'
                 '<div id="hour"></div></section></div>'
                 '<h2>Throughput (parts/s), last hour</h2><div id="chart-rate" class="chart">'
                 '</div><h2>Latency p50 / p99 (ms), last hour</h2>'
                 '<div id="chart-latency" class="chart"></div>'),
    "gallery": ('<h1>Failures</h1><form id="filters" class="filters">'
                '<label>Class <select name="class"><option value="">all</option></select>'
                '</label><label>Station <select name="station"><option value="">all</option>'
                '</select></label><label>Since <select name="since">'
                '<option value="">any time</option><option value="3600">last hour</option>'
                '<option value="28800">last 8 hours</option>'
                '<option value="86400">last day</option></select></label>'
                '<button type="submit">Show</button></form>'
                '<div id="gallery" class="gallery"></div>'
                '<button id="more" hidden>More</button>'),
    "alarms": ('<h1>Alarms</h1><div id="alarms-current"></div>'
               '<h2>History</h2><div id="alarms-history"></div>'),
}


def _model_body(engineer: bool) -> str:
    controls = ""
    if engineer:
        controls = ('<section id="engineer" class="engineer"><h2>Engineer controls</h2>'
                    '<form id="thresholds-form"><h3>Class thresholds</h3>'
                    '<div id="thresholds"></div><button type="submit">Apply thresholds'
                    '</button></form><div id="rollback-control"><h3>Rollback</h3>'
                    '<p id="rollback-to"></p><button id="rollback" type="button">'
                    'Roll back</button></div><p id="engineer-msg" role="status"></p>'
                    '</section>')
    return ('<h1>Model</h1><div id="model"></div>' + controls +
            '<h2>Activation history</h2><div id="model-history"></div>')


def _frame_body(frame_id: str) -> str:
    return (f'<h1>Frame <span id="frame-id">{html.escape(frame_id)}</span></h1>'
            '<div id="frame" class="frame-detail"><div id="frame-view" class="frame-view">'
            '</div><div id="frame-info"></div></div>'
            '<p class="hint">Drag on the picture to mark a missed defect.</p>'
            '<div id="missed" hidden><label>Class <select id="missed-class"></select></label>'
            '<button id="missed-save" type="button">Save missed defect</button>'
            '<button id="missed-cancel" type="button">Cancel</button></div>'
            '<p id="frame-msg" role="status"></p><h2>Labels</h2><div id="labels"></div>')


def pages_router(ctx: PanelContext, auth: Auth) -> APIRouter:
    router = APIRouter()

    def page(request: Request, name: str, title: str, body: str) -> Response:
        session = auth.optional(request)
        if session is None:
            return RedirectResponse(f"/login?next=/{name}", status_code=303)
        return HTMLResponse(_page(title, name, body, session),
                            headers={"Cache-Control": "no-store"})

    @router.get("/")
    def root() -> Response:
        return RedirectResponse("/live", status_code=303)

    for key, label in NAV:
        if key in BODIES:
            def show(request: Request, key: str = key, label: str = label) -> Response:
                return page(request, key, label, BODIES[key])
            router.add_api_route(f"/{key}", show, methods=["GET"], include_in_schema=False)

    @router.get("/model")
    def model_page(request: Request) -> Response:
        session = auth.optional(request)
        return page(request, "model", "Model",
                    _model_body(session is not None and session.role == "engineer"))

    @router.get("/frame/{frame_id}")
    def frame_page(request: Request, frame_id: str) -> Response:
        return page(request, "frame", f"Frame {frame_id}", _frame_body(frame_id))

    @router.get("/login")
    def login_page(request: Request, next: str = "/live", error: str = "") -> Response:
        target = next if next.startswith("/") and not next.startswith("//") else "/live"
        e = html.escape
        msg = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
        body = ('<h1>lineguard</h1><form method="post" action="/login" class="login">'
                f'{msg}<input type="hidden" name="next" value="{e(target)}">'
                '<label>User <input name="username" autocomplete="username" required '
                'autofocus></label><label>Password <input name="password" type="password" '
                'autocomplete="current-password" required></label>'
                '<button type="submit">Log in</button></form>')
        return HTMLResponse(_page("Log in", "login", body, None))

    @router.post("/login")
    def login(request: Request, username: Annotated[str, Form(max_length=128)],
              password: Annotated[str, Form(max_length=1024)],
              next: Annotated[str, Form(max_length=512)] = "/live") -> Response:
        ip, user_key = client_ip(request), username.lower()
        wait_s = max(ctx.client_limit.retry_after_s(ip), ctx.user_limit.retry_after_s(user_key))
        if wait_s > 0:
            logger.warning("panel login refused (rate limit): user %r from %s", username, ip)
            raise HTTPException(429, "too many login attempts; try again later",
                                headers={"Retry-After": str(max(1, round(wait_s + 0.5)))})
        user = ctx.users.authenticate(username, password)
        if user is None:
            # Failed attempts count; a limited key is refused before the password is
            # even checked, so the right password does not get through either.
            ctx.client_limit.hit(ip)
            ctx.user_limit.hit(user_key)
            logger.warning("panel login failed: user %r from %s", username, ip)
            return RedirectResponse("/login?error=Wrong+user+or+password", status_code=303)
        ctx.user_limit.reset(user_key)
        session = ctx.sessions.create(user.name, user.role)
        logger.info("panel login: %s (%s) from %s", user.name, user.role, ip)
        target = next if next.startswith("/") and not next.startswith("//") else "/live"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, session.id, max_age=int(ctx.cfg.session_lifetime_s),
                            httponly=True, samesite="strict", secure=ctx.cfg.tls is not None,
                            path="/")
        return response

    @router.post("/logout")
    def logout(request: Request,
               session: Annotated[Session, Depends(auth.csrf)]) -> Response:
        ctx.sessions.end(session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    return router

"""The fleet API with FastAPI's TestClient over a real fleet store."""

from __future__ import annotations

import re
import warnings
from datetime import timedelta

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from cloud.api import create_app
from cloud.collector.validate import Delivery, classify
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore, Received, to_ms
from protocol import SizedDetection, encode
from tests.cloud import fleet_helpers as h

with warnings.catch_warnings():
    # Starlette 1.10 prefers httpx2 for its TestClient and warns once, at import, when it
    # falls back to httpx (the dev extra's client); both work.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T = h.T0


@pytest.fixture(scope="module")
def store(module_database_url):
    s = FleetStore(DatabaseConfig(url=module_database_url))
    now_ms = to_ms(T + timedelta(hours=1))
    messages = [
        h.status(sent_at=T, model_version=7),
        h.status(line="line-2", sent_at=T, online=False),
        h.model_report(sent_at=T + timedelta(seconds=1), version=8),
        *[h.metrics(sent_at=T + timedelta(seconds=10 * i)) for i in range(12)],
        h.defect(captured_at=T).model_copy(update={"defects": [  # sizes in mm (v2)
            SizedDetection(class_id=0, class_name="scratches", score=0.9,
                           box_xyxy=(1.0, 2.0, 30.0, 40.0), size_mm_wh=(1.25, 0.5)),
            SizedDetection(class_id=1, class_name="inclusion", score=0.9,
                           box_xyxy=(1.0, 2.0, 30.0, 40.0))]}),
        h.defect(captured_at=T + timedelta(seconds=5), classes=("patches",)),
        h.defect(line="line-2", captured_at=T + timedelta(seconds=9)),
    ]
    _, junk = classify([Delivery("lineguard/plant1/line-1/metrics", b"{oops", 1, 1, now_ms, 1)])
    s.ingest([Received(m, encode(m), now_ms) for m in messages], junk, collector_id="c1")
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(store):
    with TestClient(create_app(store, TOKEN)) as c:
        yield c


PROTECTED = [
    "/lines", "/lines/plant1/line-1", "/lines/plant1/line-1/metrics",
    "/lines/plant1/line-1/model", "/events/defects", "/quarantine", "/collectors",
]


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": f"Bearer {TOKEN}x"}])
def test_everything_but_health_needs_the_token(client, path, headers):
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", PROTECTED)
def test_with_the_token(client, path):
    assert client.get(path, headers=AUTH).status_code == 200


def test_health_needs_no_token(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_lines_and_status(client):
    lines = client.get("/lines", headers=AUTH).json()
    assert [(x["site"], x["line"], x["online"]) for x in lines] == [
        ("plant1", "line-1", True), ("plant1", "line-2", False)]
    one = client.get("/lines/plant1/line-1", headers=AUTH).json()
    assert one["model"]["version"] == 8  # the model report is newer than the status
    assert one["state"] == "online"
    assert client.get("/lines/plant1/nope", headers=AUTH).status_code == 404


def test_metrics_time_series(client):
    url = "/lines/plant1/line-1/metrics"
    series = client.get(url, headers=AUTH).json()
    assert series["site"] == "plant1"
    assert len(series["points"]) == 12
    window = client.get(url, headers=AUTH, params={
        "since": (T + timedelta(seconds=20)).isoformat(),
        "until": (T + timedelta(seconds=50)).isoformat(), "limit": 2}).json()
    assert [p["sent_at"] for p in window["points"]] == [
        "2025-03-14T09:00:40Z", "2025-03-14T09:00:30Z"]
    assert client.get("/lines/plant1/nope/metrics", headers=AUTH).status_code == 404


def test_defect_events_with_filters(client):
    def events(**params: object) -> list[dict]:
        response = client.get("/events/defects", headers=AUTH, params=params)
        assert response.status_code == 200, response.text
        body: list[dict] = response.json()
        return body

    assert len(events()) == 3
    assert len(events(line="line-2")) == 1
    inclusion = events(class_name="inclusion")
    assert len(inclusion) == 1
    assert [d["class_name"] for d in inclusion[0]["defects"]] == ["scratches", "inclusion"]
    assert inclusion[0]["defects"][0]["box_xyxy"] == [1.0, 2.0, 30.0, 40.0]
    # each detection's size on the part plane, mm (None: the station has no scale)
    assert [d["size_mm_wh"] for d in inclusion[0]["defects"]] == [[1.25, 0.5], None]
    assert len(events(since=(T + timedelta(seconds=1)).isoformat(), site="plant1")) == 2
    assert len(events(limit=1)) == 1


def test_current_model(client):
    body = client.get("/lines/plant1/line-1/model", headers=AUTH).json()
    assert body["current"]["version"] == 8
    assert body["update"]["step"] == "shadow"
    assert client.get("/lines/plant1/nope/model", headers=AUTH).status_code == 404


def test_quarantine_and_counters(client):
    body = client.get("/quarantine", headers=AUTH).json()
    assert body["total"] == 1
    assert body["by_reason"] == {"malformed_payload": 1}
    assert body["recent"][0]["payload_preview"] == "{oops"
    (collector,) = client.get("/collectors", headers=AUTH).json()
    assert collector["counters"]["quarantined"] == 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/lines/plant1/line-1/metrics", {"limit": 0}),
        ("/lines/plant1/line-1/metrics", {"limit": 10_001}),
        ("/lines/plant1/line-1/metrics", {"since": "yesterday"}),
        ("/lines/plant1/line-1/metrics", {"since": "2025-03-14T09:00:00"}),  # no offset
        ("/lines/plant1/line-1/metrics", {"since": "2025-03-14T10:00:00Z",
                                          "until": "2025-03-14T09:00:00Z"}),
        ("/lines/Plant1/line-1/metrics", {}),
        ("/lines/plant1/line.1/model", {}),
        ("/events/defects", {"site": "Bad Site"}),
        ("/events/defects", {"class_name": ""}),
        ("/events/defects", {"limit": "many"}),
        ("/quarantine", {"limit": -1}),
    ],
)
def test_bad_parameters_are_422(client, path, params):
    response = client.get(path, headers=AUTH, params=params)
    assert response.status_code == 422, response.text


def test_openapi_documents_the_bearer_scheme(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    schemes = spec["components"]["securitySchemes"]
    assert any(s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    assert "security" not in spec["paths"]["/health"]["get"]
    assert spec["paths"]["/lines"]["get"]["security"]
    metrics = spec["paths"]["/lines/{site}/{line}/metrics"]["get"]
    assert {p["name"] for p in metrics["parameters"]} == {"site", "line", "since", "until",
                                                           "limit"}


def test_a_short_token_is_refused(store):
    with pytest.raises(ValueError, match="16"):
        create_app(store, "short")


def test_an_unreadable_store_is_503(tmp_path):
    s = FleetStore(DatabaseConfig(url=h.sqlite_url(tmp_path / "gone.db")))
    s.close()
    (tmp_path / "gone.db").unlink()
    with TestClient(create_app(s, TOKEN)) as c:
        assert c.get("/health").status_code == 503
        assert c.get("/lines", headers=AUTH).status_code == 503


def test_docs_work_offline_with_assets_served_locally(client):
    """An air-gapped plant network: /docs must not reference a CDN, and every asset it
    references must be served by this app."""
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "cdn" not in html.lower() and "https://" not in html
    assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        got = client.get(asset)
        assert got.status_code == 200, asset
        assert len(got.content) > 100
    assert client.get("/redoc").status_code == 404


def test_the_spec_needs_the_token_unless_public_docs(store, client):
    """Issue 9, defect 9: /openapi.json was open without a token."""
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/openapi.json", headers={"Authorization": "Bearer wrong"}).status_code \
        == 401
    assert client.get("/openapi.json", headers=AUTH).status_code == 200
    page = client.get("/docs")  # the page holds no data; it asks for the token
    assert page.status_code == 200
    assert "requestInterceptor" in page.text
    assert "if (true && !token)" in page.text
    with TestClient(create_app(store, TOKEN, public_docs=True)) as public:
        assert public.get("/openapi.json").status_code == 200
        assert "if (false && !token)" in public.get("/docs").text
        assert public.get("/lines").status_code == 401  # the data still needs the token


def test_the_spec_documents_401_404_and_503(client):
    spec = client.get("/openapi.json", headers=AUTH).json()
    for path, methods in spec["paths"].items():
        responses = methods["get"]["responses"]
        assert "503" in responses, path
        assert ("401" in responses) == (path != "/health"), path
        assert ("404" in responses) == path.startswith("/lines/{site}/{line}"), path


def test_a_422_does_not_echo_the_input(client):
    """A 100 KB parameter used to come back whole in the 422 body (60 KB here: httpx
    refuses longer query strings)."""
    big = "x" * 60_000
    response = client.get("/events/defects", headers=AUTH, params={"class_name": big})
    assert response.status_code == 422
    assert len(response.content) < 1000
    assert "xxxxxxxxxx" not in response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "class_name"]
    assert set(error) == {"loc", "msg", "type"}


@pytest.mark.parametrize("value", ["0.5", "0", "1741942800", "1e9", "2025-03-14"])
def test_times_are_iso_8601_never_numbers(client, value):
    """`until=0.5` passed as a Unix timestamp."""
    response = client.get("/lines/plant1/line-1/metrics", headers=AUTH,
                          params={"until": value})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "until"]
    ok = client.get("/lines/plant1/line-1/metrics", headers=AUTH,
                    params={"until": "2025-03-14T10:00:00+01:00"})
    assert ok.status_code == 200

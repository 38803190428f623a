"""The panel's HTTP API over a real store and uvicorn on 127.0.0.1: every endpoint, with
its bad inputs (unknown ids, malformed bodies, missing or wrong CSRF token, wrong role,
expired session, oversized bodies, login floods) answered with clear 4xx and nothing
half-written."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance.panel.config import LoginLimitConfig, PanelConfig, TlsConfig
from appliance.panel.web import create_app
from appliance.readiness import Readiness
from tests.appliance.panel_rig import (
    ENGINEER,
    OPERATOR,
    Clock,
    PanelRig,
    fail_record,
)

pytestmark = pytest.mark.timeout(120)


T0: dict[str, float] = {}
"""When the module's verdicts were judged: record i at T0 - 30 + i."""


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PanelRig]:
    """One store and server for the module: tests that write use frames of their own."""
    rig = PanelRig(tmp_path_factory.mktemp("panel"))
    rig.add_users()
    now = T0["judged"] = time.time()
    rig.submit([fail_record(i, judged_at=now - 30 + i, station="cam" if i % 3 else "side",
                            classes=("dent",) if i % 2 else ("scratch", "dent"))
                for i in range(1, 31)])
    yield rig
    rig.close()


def labels_in_db(rig: PanelRig, frame_id: str) -> int:
    import sqlite3
    conn = sqlite3.connect(rig.store.path)
    try:
        return int(conn.execute("SELECT count(*) FROM labels WHERE frame_id = ?",
                                (frame_id,)).fetchone()[0])
    finally:
        conn.close()


# ------------------------------------------------------------------ machine endpoints
def test_healthz_readyz_metrics_need_no_login(tmp_path: Path) -> None:
    reasons: list[str] = ["no_model"]
    rig = PanelRig(tmp_path, readiness=lambda: Readiness(not reasons, tuple(reasons)))
    try:
        c = rig.anonymous()
        assert c.get("/healthz").json() == {"status": "alive"}
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["reasons"] == ["no_model", "no_recent_verdict"]
        reasons.clear()
        rig.submit([fail_record(1, judged_at=time.time())])
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["ready"] is True
        m = c.get("/metrics")
        assert m.status_code == 200 and m.text.startswith("lineguard_")
        assert m.headers["content-type"].startswith("text/plain")
    finally:
        rig.close()


# ------------------------------------------------------------------ login and sessions
def test_pages_and_api_need_a_session(rig: PanelRig) -> None:
    c = rig.anonymous()
    for page in ("/live", "/counters", "/gallery", "/alarms", "/model", "/frame/cam:1"):
        r = c.get(page)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    for url in ("/api/live", "/api/counters", "/api/series", "/api/gallery", "/api/alarms",
                "/api/model", "/api/frames/cam:1", "/api/frames/cam:1/image", "/api/session"):
        r = c.get(url)
        assert r.status_code == 401, url
        assert "login required" in r.json()["detail"]
    assert c.post("/api/alarms/1/ack").status_code == 401
    assert c.get("/login").status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(
        rig: PanelRig) -> None:
    c = rig.anonymous()
    r = c.post("/login", data={"username": OPERATOR[0], "password": "wrong-password"})
    assert r.status_code == 303 and "error=" in r.headers["location"]
    r = c.post("/login", data={"username": OPERATOR[0], "password": OPERATOR[1],
                               "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["location"] == "/live"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    session = c.get("/api/session").json()
    assert session["user"] == "olga" and session["role"] == "operator"
    assert c.get("/live").status_code == 200
    # logout is state-changing: CSRF needed
    assert c.post("/logout").status_code == 403
    r = c.post("/logout", data={"csrf_token": session["csrf_token"]})
    assert r.status_code == 303
    assert c.get("/api/session").status_code == 401


def self_signed(directory: Path) -> TlsConfig:
    """A self-signed certificate for 127.0.0.1 (cryptography), PEM files in `directory`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return TlsConfig(cert_file=cert_file, key_file=key_file)


def test_tls_serves_https_and_the_cookie_is_secure(tmp_path: Path) -> None:
    tls = self_signed(tmp_path)
    rig = PanelRig(tmp_path / "store", cfg=PanelConfig(port=0, tls=tls))
    try:
        rig.add_users()
        assert rig.server.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=rig.server.url, verify=False, timeout=10.0) as c:
            r = c.post("/login", data={"username": ENGINEER[0], "password": ENGINEER[1]})
            assert r.status_code == 303
            cookie = r.headers["set-cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie
    finally:
        rig.close()


def test_missing_tls_files_and_a_taken_port_are_config_errors(tmp_path: Path) -> None:
    from appliance.errors import ConfigError
    from appliance.panel.server import PanelServer
    rig = PanelRig(tmp_path)
    try:
        bad = PanelConfig(port=0, tls=TlsConfig(cert_file=tmp_path / "none.pem",
                                                key_file=tmp_path / "none.key"))
        with pytest.raises(ConfigError, match=r"none\.pem"):
            PanelServer(bad, create_app(rig.ctx)).start()
        taken = PanelConfig(port=rig.server.port)
        with pytest.raises(ConfigError, match="cannot listen"):
            PanelServer(taken, create_app(rig.ctx)).start()
    finally:
        rig.close()


def test_a_panel_beyond_loopback_without_tls_is_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    assert PanelConfig().warn_if_exposed() is False
    assert PanelConfig(host="localhost").warn_if_exposed() is False
    with caplog.at_level("WARNING"):
        assert PanelConfig(host="0.0.0.0").warn_if_exposed() is True
    assert "without TLS" in caplog.text
    tls = TlsConfig(cert_file=Path("c"), key_file=Path("k"))
    assert PanelConfig(host="0.0.0.0", tls=tls).warn_if_exposed() is False


def test_an_expired_session_is_refused(tmp_path: Path) -> None:
    clock = Clock(time.time())
    rig = PanelRig(tmp_path, cfg=PanelConfig(port=0, session_lifetime_s=60.0), clock=clock)
    try:
        rig.add_users()
        c = rig.client()
        assert c.get("/api/counters").status_code == 200
        clock.now += 61.0
        r = c.get("/api/counters")
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        assert c.get("/live").status_code == 303
    finally:
        rig.close()


def test_login_attempts_are_limited_per_user_and_per_client(tmp_path: Path) -> None:
    cfg = PanelConfig(port=0, login_limit=LoginLimitConfig(per_client=6, per_user=3,
                                                           window_s=60.0))
    rig = PanelRig(tmp_path, cfg=cfg)
    try:
        rig.add_users()
        c = rig.anonymous()
        for _ in range(3):
            assert c.post("/login", data={"username": "olga", "password": "guess-guess"}
                          ).status_code == 303
        r = c.post("/login", data={"username": "olga", "password": OPERATOR[1]})
        assert r.status_code == 429, "the right password does not skip the limit"
        assert 1 <= int(r.headers["retry-after"]) <= 61
        assert "too many login attempts" in r.json()["detail"]
        # another user from the same client still has attempts, until the client limit
        assert c.post("/login", data={"username": "erik", "password": ENGINEER[1]}
                      ).status_code == 303
        for _ in range(3):  # failures of any user count for the client
            c.post("/login", data={"username": "nobody", "password": "guess-guess"})
        r = c.post("/login", data={"username": "erik", "password": ENGINEER[1]})
        assert r.status_code == 429
    finally:
        rig.close()


def test_malformed_login_forms_are_422(rig: PanelRig) -> None:
    c = rig.anonymous()
    assert c.post("/login", data={"username": "olga"}).status_code == 422
    assert c.post("/login", data={"username": "x" * 500, "password": "p"}).status_code == 422


# ------------------------------------------------------------------ live, counters, series
def test_live_view_gives_the_latest_frame_per_station_with_its_picture(rig: PanelRig) -> None:
    c = rig.client()
    data = c.get("/api/live").json()
    assert set(data["stations"]) == {"cam", "side"}
    cam = data["stations"]["cam"]
    assert cam["frame_id"] == "cam:29" and cam["verdict"] == "fail"
    assert cam["defects"][0]["class_name"] == "dent" and cam["width_px"] == 80
    assert cam["jpeg_b64"].startswith("/9j/")  # a JPEG
    # nothing newer: nothing sent
    again = c.get("/api/live", params={"after": data["seq"]}).json()
    assert again["stations"] == {} and again["seq"] == data["seq"]
    assert c.get("/api/live", params={"after": -1}).status_code == 422


def test_live_stream_sends_each_new_frame_as_an_event(tmp_path: Path) -> None:
    clock = Clock(time.time())
    rig = PanelRig(tmp_path, clock=clock)
    try:
        rig.add_users()
        rig.submit([fail_record(1, judged_at=clock.now)])
        c = rig.client()
        with c.stream("GET", "/api/live/stream") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            events = (json.loads(line[6:]) for line in lines if line.startswith("data: "))
            first = next(events)
            assert first["stations"]["cam"]["frame_id"] == "cam:1"
            rig.live.offer(fail_record(2, judged_at=clock.now))
            second = next(events)
            assert list(second["stations"]) == ["cam"]  # only what is new
            assert second["stations"]["cam"]["frame_id"] == "cam:2"
            assert second["seq"] > first["seq"]
            clock.now += 13 * 3600.0  # the session expires: the stream ends
            assert [line for line in lines if line.startswith("data: ")] == []
        assert rig.anonymous().get("/api/live/stream").status_code == 401
    finally:
        rig.close()


def test_live_encodes_at_most_at_the_live_rate() -> None:
    from appliance.panel.live import LiveFrames
    now = [0.0]
    live = LiveFrames(rate_hz=4.0, mono=lambda: now[0])
    for i in range(10):
        live.offer(fail_record(i, judged_at=100.0 + i))
        for _ in range(5):  # five clients
            frame = live.latest("cam")
            assert frame is not None
        now[0] += 0.0625  # 16 records/s offered, 5 clients reading each
    assert live.encodes == 3  # at t = 0, 0.25 and 0.5 s: at most the live rate
    assert live.latest("nope") is None


def test_counters_cover_the_shift_and_the_last_hour(rig: PanelRig) -> None:
    c = rig.client()
    data = c.get("/api/counters").json()
    for key in ("shift", "last_hour"):
        block = data[key]
        assert block["parts"] == 30 and block["failed"] == 30 and block["passed"] == 0
        assert block["yield_pct"] == 0.0
        assert block["defects_by_class"] == {"dent": 30, "scratch": 15}
    assert data["shift"]["name"] in {"early", "late", "night"}
    series = c.get("/api/series").json()
    assert len(series["points"]) == 60
    assert sum(p["parts"] for p in series["points"]) == 30
    busy = [p for p in series["points"] if p["parts"]]
    assert all(p["p99_ms"] >= p["p50_ms"] > 0 for p in busy)


# ------------------------------------------------------------------ gallery and frames
def test_gallery_filters_and_pages(rig: PanelRig) -> None:
    c = rig.client()
    first = c.get("/api/gallery", params={"limit": 10}).json()
    assert len(first["items"]) == 10 and first["items"][0]["frame_id"] == "side:30"
    second = c.get("/api/gallery", params={"limit": 10, "before": first["next_before"]}).json()
    assert second["items"][0]["id"] < first["items"][-1]["id"]
    ids = {i["frame_id"] for i in first["items"]} | {i["frame_id"] for i in second["items"]}
    assert len(ids) == 20
    scratch = c.get("/api/gallery", params={"class": "scratch", "limit": 200}).json()
    assert len(scratch["items"]) == 15 and all("scratch" in i["classes"]
                                               for i in scratch["items"])
    side = c.get("/api/gallery", params={"station": "side", "limit": 200}).json()
    assert {i["station"] for i in side["items"]} == {"side"} and len(side["items"]) == 10
    recent = c.get("/api/gallery", params={"since": T0["judged"] - 10.5, "limit": 200}).json()
    assert len(recent["items"]) == 11  # i = 20..30
    for bad in ({"limit": 0}, {"limit": 1000}, {"before": "x"}, {"since": -5}):
        assert c.get("/api/gallery", params=bad).status_code == 422, bad


def test_frame_detail_and_image(rig: PanelRig) -> None:
    c = rig.client()
    f = c.get("/api/frames/cam:2").json()
    assert f["verdict"] == "fail" and f["model_version"] == "tiny:1"
    assert f["preprocess_hash"] == "pp-hash-1" and f["has_image"] is True
    assert [d["class_name"] for d in f["defects"]] == ["scratch", "dent"]
    assert f["image_path"] is None, "no server path leaks to the client"
    img = c.get("/api/frames/cam:2/image")
    assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
    assert c.get("/api/frames/cam:999").status_code == 404
    assert "no frame" in c.get("/api/frames/cam:999/image").json()["detail"]


# ------------------------------------------------------------------ feedback (labels)
def test_labels_need_the_csrf_token(rig: PanelRig) -> None:
    c = rig.client()
    body = {"kind": "confirm", "defect_index": 0}
    token = c.headers.pop("X-CSRF-Token")
    r = c.post("/api/frames/cam:4/labels", json=body)
    assert r.status_code == 403 and "CSRF token missing" in r.json()["detail"]
    r = c.post("/api/frames/cam:4/labels", json=body, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403 and "wrong" in r.json()["detail"]
    other = rig.client(ENGINEER)  # another session's token is wrong here too
    r = c.post("/api/frames/cam:4/labels", json=body,
               headers={"X-CSRF-Token": other.headers["X-CSRF-Token"]})
    assert r.status_code == 403
    r = c.post("/api/frames/cam:4/labels", json=body,
               headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
    assert labels_in_db(rig, "cam:4") == 0
    r = c.post("/api/frames/cam:4/labels", json=body, headers={"X-CSRF-Token": token})
    assert r.status_code == 201, r.text
    assert labels_in_db(rig, "cam:4") == 1


def test_confirm_reject_and_missed_labels_and_their_bad_inputs(rig: PanelRig) -> None:
    c = rig.client()
    url = "/api/frames/cam:2/labels"
    assert c.post(url, json={"kind": "confirm", "defect_index": 0}).status_code == 201
    assert c.post(url, json={"kind": "reject", "defect_index": 1}).status_code == 201
    r = c.post(url, json={"kind": "missed", "class_name": "stain",
                          "box_xyxy": [40, 20, 60, 40]})
    assert r.status_code == 201, r.text
    labels = c.get("/api/frames/cam:2").json()["labels"]
    assert [label["kind"] for label in labels] == ["confirm", "reject", "missed"]
    assert labels[0]["author"] == "olga"
    bad = [
        ({"kind": "confirm", "defect_index": 7}, 422),           # no such detection
        ({"kind": "approve", "defect_index": 0}, 422),           # unknown kind
        ({"kind": "confirm", "defect_index": 0, "x": 1}, 422),   # unknown field
        ({"kind": "missed", "class_name": "stain"}, 422),        # no box
        ({"kind": "missed", "class_name": "stain", "box_xyxy": [1, 2, 3]}, 422),
        ({"kind": "missed", "class_name": "stain", "box_xyxy": [50, 50, 10, 10]}, 422),
        ({"kind": "confirm", "defect_index": -1}, 422),
    ]
    for body, status in bad:
        r = c.post(url, json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"]
    assert c.post(url, content=b"{not json", headers={"Content-Type": "application/json"}
                  ).status_code == 422
    r = c.post("/api/frames/cam:999/labels", json={"kind": "confirm", "defect_index": 0})
    assert r.status_code == 404
    assert labels_in_db(rig, "cam:2") == 3


def test_an_oversized_body_is_413_and_writes_nothing(rig: PanelRig) -> None:
    c = rig.client()
    big = json.dumps({"kind": "missed", "class_name": "x" * 200_000,
                      "box_xyxy": [1, 1, 2, 2]})
    r = c.post("/api/frames/cam:8/labels", content=big,
               headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(100):
            yield b" " * 1024
    r = c.post("/api/frames/cam:8/labels", content=chunks(),
               headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert labels_in_db(rig, "cam:8") == 0


# ------------------------------------------------------------------ alarms
def test_alarms_are_listed_and_acknowledged_with_who_and_when(rig: PanelRig) -> None:
    alarm = rig.alarms.raise_alarm("camera_lost", "camera cam lost", station="cam")
    c = rig.client()
    current = c.get("/api/alarms").json()["current"]
    assert [a["code"] for a in current] == ["camera_lost"]
    token = c.headers.pop("X-CSRF-Token")
    assert c.post(f"/api/alarms/{alarm.id}/ack").status_code == 403
    r = c.post(f"/api/alarms/{alarm.id}/ack", headers={"X-CSRF-Token": token})
    assert r.status_code == 200
    acked = r.json()["alarm"]
    assert acked["acked_by"] == "olga" and acked["acked_at_s"] > 0
    r = c.post("/api/alarms/99999/ack", headers={"X-CSRF-Token": token})
    assert r.status_code == 404
    assert c.post("/api/alarms/abc/ack", headers={"X-CSRF-Token": token}).status_code == 422
    history = c.get("/api/alarms", params={"limit": 10}).json()["history"]
    assert history[0]["acked_by"] == "olga"


# ------------------------------------------------------------------ engineer controls
def test_thresholds_are_for_engineers_applied_persisted_and_an_event(rig: PanelRig) -> None:
    body = {"thresholds": {"dent": 0.6}}
    operator = rig.client()
    r = operator.post("/api/thresholds", json=body)
    assert r.status_code == 403 and "engineers only" in r.json()["detail"]
    assert operator.post("/api/rollback").status_code == 403
    assert "thresholds-form" not in operator.get("/model").text
    assert "rollback" not in operator.get("/model").text
    engineer = rig.client(ENGINEER)
    page = engineer.get("/model").text
    assert 'id="thresholds-form"' in page and 'id="rollback"' in page
    r = engineer.post("/api/thresholds", json=body)
    assert r.status_code == 200 and r.json()["overrides"] == {"dent": 0.6}
    assert rig.thresholds.values == {"dent": 0.6}
    assert json.loads((rig.root / "thresholds.json").read_text()) == {"dent": 0.6}
    assert [e.kind for e in rig.events] == ["thresholds_changed"]
    assert rig.events[0].data["user"] == "erik"
    for bad in ({"thresholds": {"dent": 1.5}}, {"thresholds": {"dent": "high"}},
                {"thresholds": {"": 0.5}}, {"thresholds": []}, {"levels": {}}):
        assert engineer.post("/api/thresholds", json=bad).status_code == 422, bad
    assert rig.thresholds.values == {"dent": 0.6}
    assert len(rig.events) == 1


def test_rollback_without_a_previous_bundle_is_409(rig: PanelRig) -> None:
    engineer = rig.client(ENGINEER)
    r = engineer.post("/api/rollback")
    assert r.status_code == 409 and "no previous bundle" in r.json()["detail"]
    model = engineer.get("/api/model").json()
    assert model["rollback_to"] is None and model["active"] is None


def test_a_rollback_control_is_called_with_the_engineer(tmp_path: Path) -> None:
    class Updater:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def previous(self) -> str | None:
            return "tiny:1"

        def rollback(self, by: str) -> str:
            self.calls.append(by)
            return "tiny:1"

    updater = Updater()
    rig = PanelRig(tmp_path, rollback=updater)
    try:
        rig.add_users()
        r = rig.client(ENGINEER).post("/api/rollback")
        assert r.status_code == 200 and r.json()["active"] == "tiny:1"
        assert updater.calls == ["erik"]
    finally:
        rig.close()


def test_static_files_and_security_headers(rig: PanelRig) -> None:
    c = rig.client()
    page = c.get("/live")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "http://" not in page.text and "https://" not in page.text
    for name in ("panel.js", "panel.css"):
        r = c.get(f"/static/{name}")
        assert r.status_code == 200
        assert "http://" not in r.text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in r.text
    assert c.get("/static/../config.py").status_code == 404


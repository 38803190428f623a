"""The panel served by a real appliance on the simulated line (demo bundle): readiness
follows the camera, the engineer's thresholds reach the running judge, the model page
shows the active bundle, /metrics is Prometheus text, and the server stops with the App
(the fixture's teardown)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.appliance.panel_rig import ENGINEER, RunningApp, wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    rig = RunningApp(tmp_path_factory.mktemp("app"))
    yield rig
    rig.stop()
    # the panel stops with the App
    with pytest.raises(httpx.ConnectError):
        httpx.get(rig.url + "/healthz", timeout=2.0)


def ready(c: httpx.Client) -> httpx.Response:
    return c.get("/readyz")


def test_readyz_follows_the_camera(running: RunningApp) -> None:
    c = running.client(None)
    wait_for(lambda: ready(c).status_code == 200, 30.0, "ready")
    running.camera.off()
    off_at = time.monotonic()
    r = wait_for(lambda: (r := ready(c)).status_code == 503 and r, 10.0, "503")
    assert time.monotonic() - off_at < 5.0, "503 within 5 s of the source going away"
    assert "no_recent_verdict" in r.json()["reasons"]
    operator = running.client()
    alarm = wait_for(lambda: [a for a in operator.get("/api/alarms").json()["current"]
                              if a["code"] == "camera_lost"], 10.0, "camera_lost alarm")[0]
    running.camera.on()
    wait_for(lambda: ready(c).status_code == 200, 15.0, "ready again")
    acked = operator.post(f"/api/alarms/{alarm['id']}/ack")
    assert acked.status_code == 200 and acked.json()["alarm"]["acked_by"] == "olga"


def test_metrics_and_the_model_page(running: RunningApp) -> None:
    c = running.client(None)
    text = c.get("/metrics").text
    assert "lineguard_" in text and "_total" in text
    model = running.client().get("/api/model").json()
    active = model["active"]
    assert active["version_id"].startswith("demo") and active["classes"]
    assert set(active["thresholds"]) == set(active["classes"])
    assert any(e["kind"] == "model_change" for e in model["history"])
    assert model["rollback_to"] is None


def test_engineer_thresholds_reach_the_running_judge(running: RunningApp) -> None:
    engineer = running.client(ENGINEER)
    classes = engineer.get("/api/model").json()["active"]["classes"]
    c = running.client()
    wait_for(lambda: any(f["verdict"] == "fail" for f in
                         c.get("/api/live").json()["stations"].values()), 30.0, "a fail")
    r = engineer.post("/api/thresholds", json={"thresholds": dict.fromkeys(classes, 1.0)})
    assert r.status_code == 200
    seq = c.get("/api/live").json()["seq"]
    # no score exceeds 1.0: every part judged from now on passes
    def newer(after: int) -> dict[str, Any]:
        return dict(wait_for(lambda: c.get("/api/live", params={"after": after}
                                           ).json()["stations"], 15.0, "a new frame")["cam"])

    for _ in range(3):
        frame = newer(seq)
        seq = frame["seq"]
    assert frame["verdict"] == "pass" and frame["defects"] == []
    assert (running.cfg.data_dir / "thresholds.json").is_file()
    assert running.app.thresholds.values == dict.fromkeys(classes, 1.0)
    r = engineer.post("/api/thresholds", json={"thresholds": {"no-such-class": 0.5}})
    assert r.status_code == 422 and "unknown class" in r.json()["detail"]
    assert engineer.post("/api/thresholds", json={"thresholds": {}}).status_code == 200


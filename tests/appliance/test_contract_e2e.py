"""The telemetry contract end to end (issue 8 items 1 and 2): a real appliance (the demo
bundle on the simulated line) sends into a real Mosquitto, the real collector stores it
in the fleet store, and the fleet API (TestClient) answers with every documented field
filled: end-to-end latency, queue depths, input rate, model, sources, app_version."""

from __future__ import annotations

import json
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from appliance.app import App
from appliance.config import load_config
from cloud.api import create_app
from protocol import LatencyStage, QueueName
from protocol.app_version import app_version
from tests.appliance.fleet_rig import FleetRig
from tests.mqtt_broker import requires_mosquitto, start_broker

with warnings.catch_warnings():
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(240), requires_mosquitto]

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"
TOKEN = "contract-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LINE_URL = "/lines/plant-a/line-7"
WAIT_S = 60.0


def _wait_for(read: Any, ok: Any, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ok(value) or time.monotonic() >= deadline:
            return value
        time.sleep(0.2)


def _config(tmp_path: Path, port: int) -> Any:
    return load_config(None, {
        "site": "plant-a", "line": "line-7",
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim", "realtime": False,
                                                "seed": 4}}],
        "model": {"bundle": str(DEMO)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block"},
        "telemetry": {"broker": {"port": port}, "metrics_interval_s": 0.5,
                      "status_poll_s": 0.2},
    })


def test_a_real_line_fills_every_documented_field_in_the_fleet_api(tmp_path: Path) -> None:
    with start_broker(tmp_path) as broker:
        cfg = _config(tmp_path, broker.port)
        rig = FleetRig(broker.port, tmp_path)
        rig.start()
        try:
            summary = App(cfg, max_frames=48, require_model=True).run(threading.Event())
            assert summary.frames == 48
            assert rig.wait_count("metrics", 1, timeout_s=WAIT_S) >= 1
            with TestClient(create_app(rig.store, TOKEN)) as client:
                line = _wait_for(lambda: client.get(LINE_URL, headers=AUTH).json(),
                                 lambda v: v.get("state") == "offline")
                points = client.get(f"{LINE_URL}/metrics", headers=AUTH).json()["points"]
                events = client.get("/events/defects", headers=AUTH,
                                    params={"site": "plant-a", "line": "line-7"}).json()
            payloads = [json.loads(r[0]) for r in rig.rows("SELECT payload_json FROM metrics")]
        finally:
            rig.close()

    # status (item 2: the installed version, never null)
    assert app_version() is not None
    assert line["app_version"] == app_version()
    assert line["reason"] == "shutdown" and line["started_at"] is not None
    assert line["model"]["name"] and line["model"]["version"] == 1
    assert set(line["sources"]) == {"cam"}
    # metrics (item 1): every window on the contract's names, the documented ones filled
    assert points
    judged = [p for p in points if p["passed"] + p["failed"] > 0]
    assert judged, points
    for p in judged:
        assert p["end_to_end"] is not None and p["end_to_end"]["p50_ms"] > 0
        assert p["input_fps"] is not None and p["input_fps"] > 0
        assert set(p["queue_depths"]) == {q.value for q in QueueName}
        assert p["sources"] == {"cam": p["sources"]["cam"]}
        assert p["model_name"] and p["model_version"] == 1
        assert p["engine_provider"] == "CPUExecutionProvider"
        assert p["fps"] > 0
    for payload in payloads:
        assert payload["schema"] == "lineguard.metrics/2"
        assert set(payload["latency_ms"]) <= {s.value for s in LatencyStage}
    assert any(set(p["latency_ms"]) == {s.value for s in LatencyStage} for p in payloads)
    assert all(p["disk"] is not None and p["outbox"] is not None for p in payloads)
    # events/defect: end-to-end latency of each failed part
    assert events and all(e["latency_ms"] is not None and e["model"]["version"] == 1
                          for e in events)

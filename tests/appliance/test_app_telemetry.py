"""The App with telemetry configured: a real run on the simulated line with the demo
bundle publishes status, model, metrics and one defect event per failed part to a real
Mosquitto; without a broker it still inspects every part."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from appliance.app import App
from appliance.config import ApplianceConfig, load_config
from protocol import decode
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(180), requires_mosquitto]

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"


def config(tmp_path: Path, port: int, broker: dict[str, Any] | None = None,
           **telemetry: Any) -> ApplianceConfig:
    return load_config(None, {
        "site": "plant-a", "line": "line-7",
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim", "realtime": False,
                                                "seed": 4}}],
        "model": {"bundle": str(DEMO)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block"},
        "telemetry": {"broker": {"port": port, **(broker or {})}, "metrics_interval_s": 0.5,
                      **telemetry},
    })


def fails_in(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute(
            "SELECT frame_id FROM inspections WHERE verdict = 'fail'")}
    finally:
        conn.close()


def test_run_publishes_status_model_metrics_and_every_defect(tmp_path: Path) -> None:
    with start_broker(tmp_path) as broker:
        probe = MqttProbe(broker.port, "monitor")
        probe.connect()
        probe.subscribe("lineguard/plant-a/line-7/#")
        # a poll longer than the run: the model report must not depend on a tick
        cfg = config(tmp_path, broker.port, status_poll_s=30)
        summary = App(cfg, max_frames=24, require_model=True).run(threading.Event())
        assert summary.frames == 24
        offline = probe.received_until("lineguard/plant-a/line-7/status", timeout_s=20)
        seen = list(offline)
        # after the stop: the retained status says offline; collect what is still queued
        while (m := probe.get(1.0)) is not None:
            seen.append(m)
        probe.close()

    kinds: dict[str, list[Any]] = {}
    for m in seen:
        msg = decode(m.topic, m.payload)
        kinds.setdefault(m.topic.rsplit("/", 1)[-1] if "events" not in m.topic
                         else "events/defect", []).append(msg)
    assert kinds["status"], "status published"
    assert kinds["model"][0].current is not None
    assert kinds["model"][0].current.version == 1
    failed = fails_in(cfg.store.path)
    assert failed, "the demo line has defective parts"
    defect_frames = {e.frame_id for e in kinds.get("events/defect", [])}
    assert defect_frames == failed
    assert kinds.get("metrics"), "at least one metrics window"


def test_without_a_broker_every_part_is_still_judged(tmp_path: Path) -> None:
    port = 1  # nothing listens there: telemetry keeps its outbox and retries
    cfg = config(tmp_path, port, broker={"reconnect": {"initial_s": 1, "max_s": 1}})
    summary = App(cfg, max_frames=12, require_model=True).run(threading.Event())
    assert summary.frames == 12
    conn = sqlite3.connect(cfg.store.path)
    try:
        judged = conn.execute("SELECT count(*) FROM inspections").fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM telemetry_outbox").fetchone()[0]
    finally:
        conn.close()
    assert judged == 12
    assert queued >= len(fails_in(cfg.store.path))

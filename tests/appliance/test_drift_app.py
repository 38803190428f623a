"""The App with telemetry and drift on, through a real Mosquitto: its drift windows
are published on `drift` (valid `lineguard.drift/2`, never overlapping), and a cloud
`cmd/alert` shows as the `drift` alarm in its alarm book (the panel's), once."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from appliance.app import App
from appliance.config import load_config
from protocol import decode, encode
from protocol.alerts import AlertCommand
from protocol.drift import DriftSketchV2
from protocol.topics import alert_command_topic
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, pytest.mark.slow, pytest.mark.timeout(240), requires_mosquitto]

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"


def test_windows_go_out_and_a_cloud_alert_becomes_an_alarm(tmp_path: Path) -> None:
    with start_broker(tmp_path) as broker:
        probe = MqttProbe(broker.port, "monitor")
        probe.connect()
        probe.subscribe("lineguard/plant-a/line-7/drift")
        cfg = load_config(None, {
            "site": "plant-a", "line": "line-7", "data_dir": str(tmp_path / "data"),
            "stations": [{"name": "cam", "source": {"kind": "sim", "realtime": True,
                                                    "seed": 4}}],
            "model": {"bundle": str(DEMO)}, "engine": {"intra_op_threads": 1},
            "telemetry": {"broker": {"port": broker.port}, "reconnect_settle_s": 0.1},
            "drift": {"window_frames": 10},
        })
        app = App(cfg, require_model=True)
        app.start()
        try:
            windows: list[DriftSketchV2] = []
            deadline = time.monotonic() + 120
            while len(windows) < 2 and time.monotonic() < deadline:
                m = probe.get(1.0)
                if m is not None and m.topic is not None:
                    msg = decode(m.topic, m.payload)
                    assert isinstance(msg, DriftSketchV2)
                    windows.append(msg)
            assert len(windows) >= 2
            assert windows[0].frame_count == 10 and windows[0].image is not None
            assert windows[1].first_frame_id > windows[0].last_frame_id
            now = datetime.now(UTC)
            alert = AlertCommand(
                msg_id="cd" * 16, site="plant-a", line="line-7", sent_at=now,
                alert_id="drift-00112233aabbccdd", code="drift", severity="warning",
                message="image drift on line-7: roi.sharpness", station="cam",
                channels=["roi.sharpness"], raised_at=now, issued_by="drift-monitor")
            for _ in range(2):  # a redelivery shows once
                assert not probe.publish(alert_command_topic("plant-a", "line-7"),
                                         encode(alert)).is_failure
            assert app.alarms is not None
            deadline = time.monotonic() + 30
            while not [a for a in app.alarms.active() if a.code == "drift"]:
                assert time.monotonic() < deadline, "no drift alarm"
                time.sleep(0.05)
            drift = [a for a in app.alarms.active() if a.code == "drift"]
            assert len(drift) == 1 and drift[0].station == "cam"
            assert "drift-00112233aabbccdd" in drift[0].message
        finally:
            app.stop()
            probe.close()

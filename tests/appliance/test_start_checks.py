"""Issue 8 items 4 and 5: an honest start.

Item 4: `check-config` opens every source once and reports each one's state (a missing
video file is a config error, not "config ok"); `run` on a file or folder that does not
exist exits 2 naming the station and path instead of retrying forever; a stream that is
down at start is retried, with an alarm.
Item 5: a model that cannot load stops the start (exit 2) unless the config allows
starting without one; then the status topic and the store's alarms say so.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from appliance.app import App
from appliance.cli import main
from appliance.config import load_config
from appliance.errors import ConfigError, NoModelError
from models.bundle import Bundle
from protocol import StatusMessage, decode
from tests.appliance.pipeline_helpers import tiny_bundle
from tests.appliance.test_capture_stream import StreamServer
from tests.mqtt_broker import MqttProbe, free_port, requires_mosquitto, start_broker

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundles"))


def write_config(tmp_path: Path, stations: list[dict[str, Any]], **top: Any) -> Path:
    data = {"data_dir": str(tmp_path / "data"), "stations": stations,
            "engine": {"intra_op_threads": 1}, "store": {"flush_interval_ms": 10}, **top}
    path = tmp_path / "lineguard.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def write_video(path: Path, frames: int = 3) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 25.0, (64, 48))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    return path


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT kind, severity, data FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


# -- item 4 ---------------------------------------------------------------------------

def test_check_config_opens_every_source_and_reports_its_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = write_video(tmp_path / "line.avi")
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.zeros((30, 40, 3), np.uint8))
    server = StreamServer()
    server.start()
    try:
        path = write_config(tmp_path, [
            {"name": "vid", "source": {"kind": "video", "path": str(video)}},
            {"name": "dir", "source": {"kind": "folder", "path": str(folder)}},
            {"name": "up", "source": {"kind": "stream", "url": server.url}},
            {"name": "down", "source": {"kind": "stream",
                                        "url": f"http://127.0.0.1:{free_port()}/x.mjpg"}},
            {"name": "cam", "source": {"kind": "camera", "index": 63}},
        ])
        assert main(["check-config", "--config", str(path), "--skip-model",
                     "--source-timeout-ms", "3000"]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "config ok: site site-1, line line-1, 5 station(s)" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("source ")}
    assert f"vid (video {video}): ok, 64x48 frames" in lines["vid"]
    assert f"dir (folder {folder}): ok, 40x30 frames" in lines["dir"]
    assert "up (stream http://127.0.0.1:" in lines["up"] and "ok, " in lines["up"]
    assert "unreachable now, run retries it" in lines["down"]
    assert "cam (camera /dev/video63): unreachable now" in lines["cam"]


def test_check_config_says_a_missing_video_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such.mp4"
    path = write_config(tmp_path, [{"name": "top", "source": {"kind": "video",
                                                              "path": str(missing)}}])
    assert main(["check-config", "--config", str(path), "--skip-model"]) == 2
    captured = capsys.readouterr()
    assert "config ok" not in captured.out
    assert f"station top: video file {missing} does not exist" in captured.err
    # --skip-sources checks the keys only
    assert main(["check-config", "--config", str(path), "--skip-model", "--skip-sources"]) == 0


@pytest.mark.parametrize("kind", ["video", "folder"])
def test_run_on_a_missing_file_or_folder_is_a_config_error(
    tmp_path: Path, bundle: Bundle, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / f"no-such-{kind}"
    path = write_config(tmp_path, [{"name": "side", "source": {"kind": kind,
                                                               "path": str(missing)}}],
                        model={"bundle": str(bundle.root)})
    started = time.monotonic()
    assert main(["run", "--config", str(path), "--frames", "5", "--json"]) == 2
    assert time.monotonic() - started < 60  # not retried until the frame budget
    err = capsys.readouterr().err
    assert "config error: station side:" in err and str(missing) in err
    assert not (tmp_path / "data" / "lineguard.db").exists()  # refused before the store
    cfg = load_config(path)
    with pytest.raises(ConfigError, match="station side"):
        App(cfg).start()


def test_a_stream_down_at_start_is_retried_with_an_alarm(tmp_path: Path,
                                                         bundle: Bundle) -> None:
    url = f"http://127.0.0.1:{free_port()}/stream.mjpg"
    cfg = load_config(write_config(
        tmp_path, [{"name": "top", "source": {"kind": "stream", "url": url,
                                              "open_timeout_ms": 500,
                                              "reconnect": {"initial_s": 0.05,
                                                            "max_s": 0.1}}}],
        model={"bundle": str(bundle.root)}))
    app = App(cfg)
    app.start()
    try:
        pipeline = app.pipeline
        assert pipeline is not None
        source = pipeline.sources[0].source
        wait_for("a few retries", lambda: source.attempts >= 3)
        assert app.stats().stations["top"].state in ("lost", "connecting")
    finally:
        app.stop()
    lost = [(s, d) for k, s, d in events(cfg.store.path)
            if k == "source_state" and '"new": "lost"' in d]
    assert lost and lost[0][0] == "alarm"
    assert len(lost) == 1  # one alarm for the outage, not one per retry


# -- item 5 ---------------------------------------------------------------------------

def test_a_model_that_cannot_load_stops_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, [{"name": "cam", "source": {"kind": "sim",
                                                              "realtime": False}}],
                        model={"bundle": str(tmp_path / "no-such-bundle")})
    assert main(["run", "--config", str(path), "--frames", "5", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no summary of a run that judged nothing
    assert "model error: cannot load model bundle" in captured.err
    assert "model.allow_start_without_model" in captured.err
    with pytest.raises(NoModelError):
        App(load_config(path)).start()
    conn = sqlite3.connect(tmp_path / "data" / "lineguard.db")
    try:
        assert conn.execute("SELECT count(*) FROM inspections").fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.mqtt
@requires_mosquitto
def test_starting_without_a_model_when_allowed_is_loud(tmp_path: Path) -> None:
    with start_broker(tmp_path) as broker:
        probe = MqttProbe(broker.port, "monitor")
        probe.connect()
        probe.subscribe("lineguard/plant-a/line-9/status")
        cfg = load_config(write_config(
            tmp_path, [{"name": "cam", "source": {"kind": "sim", "realtime": False,
                                                  "width_px": 96, "height_px": 64}}],
            site="plant-a", line="line-9",
            model={"bundle": str(tmp_path / "no-such-bundle"),
                   "allow_start_without_model": True},
            telemetry={"broker": {"port": broker.port}, "status_poll_s": 0.2}))
        app = App(cfg, max_frames=5)
        app.start()
        try:
            assert app.readiness().ready is False
            assert app.readiness().reasons == ("no_model",)
            online: StatusMessage | None = None
            deadline = time.monotonic() + 30
            while online is None and time.monotonic() < deadline:
                m = probe.get(1.0)
                if m is not None:
                    msg = decode(m.topic, m.payload)
                    if isinstance(msg, StatusMessage) and msg.state == "online":
                        online = msg
        finally:
            app.stop()
            probe.close()
    assert online is not None, "an online status"
    assert online.model is None and "no_model" in online.alarms
    no_model = [(k, s) for k, s, d in events(cfg.store.path) if '"alarm": "no_model"' in d]
    assert no_model == [("alarm_raised", "alarm")]  # one alarm, one event

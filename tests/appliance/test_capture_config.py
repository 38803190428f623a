"""SourceConfig: the discriminated union, its bounds and messages, and make_source."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from appliance.capture import (
    CameraSource,
    ImageFolderSource,
    SimSourceConfig,
    SimulatedLineSource,
    SourceLost,
    StreamSource,
    VideoFileSource,
    make_resilient_source,
    make_source,
    parse_source_config,
)
from appliance.capture.devices import redact_url
from protocol.backoff import BackoffConfig


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        ({"kind": "sim"}, SimulatedLineSource),
        ({"kind": "video", "path": "/data/line.mp4", "loop": True, "max_fps": 10},
         VideoFileSource),
        ({"kind": "folder", "path": "/data/imgs", "part_id_from_name": True},
         ImageFolderSource),
        ({"kind": "camera", "index": 0, "width_px": 1280, "height_px": 720, "fps": 30},
         CameraSource),
        ({"kind": "stream", "url": "rtsp://10.0.0.5:554/stream1"}, StreamSource),
        ({"kind": "stream", "url": "http://cam.local/video.mjpg"}, StreamSource),
    ],
)
def test_each_kind_builds_its_source(data: dict[str, Any], cls: type) -> None:
    cfg = parse_source_config(data)
    assert cfg.kind == data["kind"]
    assert isinstance(make_source(cfg), cls)


def test_defaults_and_resilient_wrapper() -> None:
    cfg = parse_source_config({"kind": "sim", "station": "press-2",
                               "reconnect": {"max_s": 5}})
    assert isinstance(cfg, SimSourceConfig)
    assert (cfg.width_px, cfg.height_px, cfg.realtime) == (640, 480, True)
    assert cfg.reconnect == BackoffConfig(initial_s=BackoffConfig().initial_s, max_s=5)
    rs = make_resilient_source(cfg, first_seq=10)
    assert rs.station == "press-2"
    assert isinstance(rs.source, SimulatedLineSource)


def test_sim_line_config_carries_drift_and_rate() -> None:
    cfg = SimSourceConfig(seed=4, width_px=320, height_px=240, parts_per_minute=120,
                          drift="brightness=0.2,shift_px=10:0")
    line = cfg.line_config()
    assert (line.seed, line.width_px, line.height_px) == (4, 320, 240)
    assert line.frame_interval_s == pytest.approx(0.5)
    assert line.drift.brightness == pytest.approx(0.2)
    assert line.drift.shift_px == (10.0, 0.0)


def _error_locs(data: dict[str, Any]) -> tuple[list[tuple[str | int, ...]], str]:
    with pytest.raises(ValidationError) as info:
        parse_source_config(data)
    return [e["loc"] for e in info.value.errors()], str(info.value)


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"kind": "sim", "drift": "brightness=5"}, "drift", "brightness"),
        ({"kind": "sim", "drift": "sharpness=1"}, "drift", "not a drift knob"),
        ({"kind": "sim", "fps": 3}, "fps", "Extra inputs"),
        ({"kind": "sim", "width_px": 10}, "width_px", "greater than or equal"),
        ({"kind": "sim", "station": "line 1"}, "station", "pattern"),
        ({"kind": "video"}, "path", "Field required"),
        ({"kind": "folder", "path": "/x", "max_fps": 0}, "max_fps", "greater than"),
        ({"kind": "camera", "index": -1}, "index", "greater than or equal"),
        ({"kind": "stream", "url": "ftp://cam/x"}, "url", "rtsp"),
        ({"kind": "stream", "url": "rtsp:///nohost"}, "url", "with a host"),
    ],
)
def test_bad_config_names_the_field(data: dict[str, Any], field: str, text: str) -> None:
    locs, message = _error_locs(data)
    assert any(field in loc for loc in locs), locs
    assert text in message


def test_unknown_kind_and_backoff_order() -> None:
    locs, message = _error_locs({"kind": "gige"})
    assert "kind" in message or locs
    locs, message = _error_locs({"kind": "sim", "reconnect": {"initial_s": 5, "max_s": 1}})
    assert ("sim", "reconnect") in locs
    assert "max_s (1.0) must be >= initial_s (5.0)" in message
    locs, _ = _error_locs({"kind": "sim", "backoff_initial_s": 5})
    assert ("sim", "backoff_initial_s") in locs  # the old flat keys are refused by name


def test_configs_are_frozen() -> None:
    cfg = SimSourceConfig()
    with pytest.raises(ValidationError):
        cfg.seed = 3  # type: ignore[misc]


def test_redact_url_hides_credentials() -> None:
    assert redact_url("rtsp://admin:secret@10.0.0.5:554/s") == "rtsp://***@10.0.0.5:554/s"
    assert redact_url("http://cam/x.mjpg") == "http://cam/x.mjpg"
    src = StreamSource("rtsp://admin:secret@127.0.0.1:9/s", open_timeout_ms=200)
    with pytest.raises(SourceLost, match=r"\*\*\*@127") as info:
        src.open()
    assert "secret" not in str(info.value)


def test_importing_capture_does_not_load_linesim_or_torch() -> None:
    import subprocess

    code = ("import sys, appliance.capture, appliance.errors; "
            "print(sorted(m for m in ('linesim', 'torch', 'ultralytics') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"

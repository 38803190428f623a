"""The appliance config: defaults without a file, derived store paths, errors that
name the bad key and why, YAML errors with their position, command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import DEMO_BUNDLE, load_config
from appliance.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lineguard.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_no_file_runs_one_simulated_station_with_the_demo_bundle() -> None:
    cfg = load_config(None)
    assert [s.name for s in cfg.stations] == ["station-1"]
    assert cfg.stations[0].source.kind == "sim"
    assert cfg.stations[0].source.station == "station-1"
    assert cfg.model.bundle == DEMO_BUNDLE
    assert cfg.store.path == Path("lineguard-data/lineguard.db")
    assert cfg.store.images.dir == Path("lineguard-data/images")
    assert cfg.pipeline.verdict_deadline_ms is None
    assert cfg.engine.threads() >= 1


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == load_config(None)


def test_full_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
site: plant-7
line: press-2
data_dir: /var/lib/lineguard
stations:
  - name: top
    roi_xywh: [0, 40, 640, 400]
    source: {kind: camera, index: 0}
  - name: side
    source: {kind: stream, url: "rtsp://10.0.0.5:554/s1", read_timeout_ms: 2000}
model: {bundle: /opt/bundles/current, verify_golden: false}
engine: {providers: [cuda, cpu], intra_op_threads: 2, io_binding: "on"}
pipeline: {max_batch: 4, max_wait_ms: 1.5, verdict_deadline_ms: 250, overflow: drop}
store: {batch_max_rows: 500, images: {quota_bytes: 1000000}}
"""))
    assert [s.name for s in cfg.stations] == ["top", "side"]
    assert cfg.stations[0].roi_xywh == (0, 40, 640, 400)
    assert cfg.stations[1].source.station == "side"
    assert cfg.engine.providers == ["cuda", "cpu"] and cfg.engine.threads() == 2
    assert cfg.pipeline.verdict_deadline_ms == 250
    assert cfg.store.path == Path("/var/lib/lineguard/lineguard.db")
    assert cfg.store.batch_max_rows == 500
    assert cfg.store.images.dir == Path("/var/lib/lineguard/images")
    assert cfg.store.images.quota_bytes == 1_000_000
    assert cfg.bundles_dir == Path("/var/lib/lineguard/bundles")


@pytest.mark.parametrize(
    ("text", "messages"),
    [
        ("pipeline: {max_wait_ms: 5000}",
         ["pipeline.max_wait_ms", "less than or equal to 1000"]),
        ("pipeline: {max_wait: 5}", ["pipeline.max_wait", "unknown key"]),
        ("engine: {io_binding: maybe}", ["engine.io_binding", "'auto', 'on' or 'off'"]),
        ("stations: [{name: a, source: {kind: sim, width_px: 10}}]",
         ["stations.0.source.width_px", "greater than or equal to 64"]),
        ("stations: [{name: a, source: {kind: webcam}}]", ["stations.0.source", "webcam"]),
        ("stations: [{name: a, source: {kind: video}}]",
         ["stations.0.source.path", "required key is missing"]),
        ("stations: [{name: a}, {name: a}]", ["stations", "unique", "'a'"]),
        ("stations: [{name: a, source: {kind: sim, station: b}}]",
         ["stations.0", "source.station 'b' differs from the station name 'a'"]),
        ("stations: [{name: a, roi_xywh: [0, 0, 0, 10]}]", ["stations.0", "roi_xywh"]),
        ("stations: [{name: 'bad name'}]", ["stations.0.name", "must be 1 to 64 characters"]),
        ("stations: []", ["stations", "at least 1"]),
        ("store: {queue_max_rows: 0}", ["store.queue_max_rows"]),
        ("pipeline: {restart_backoff: {initial_s: 10, max_s: 1}}",
         ["pipeline.restart_backoff", "max_s (1.0) must be >= initial_s (10.0)"]),
        ("pipeline: {restart_backoff_initial_s: 10}",
         ["pipeline.restart_backoff_initial_s", "unknown key"]),
        ("stations: [{name: a, source: {kind: sim, reconnect: {initial_s: 0}}}]",
         ["stations.0.source.reconnect.initial_s", "greater than 0"]),
        ("tuning: {}", ["tuning", "unknown key"]),
    ],
)
def test_errors_name_the_key_and_why(tmp_path: Path, text: str, messages: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    for expected in messages:
        assert expected in message, message


def test_yaml_errors_give_the_position(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 2, column 7\)"):
        load_config(write(tmp_path, "pipeline:\n  a: b: c\n"))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_merge_into_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {verify_golden: false}\npipeline: {max_batch: 2}\n")
    cfg = load_config(path, {"data_dir": str(tmp_path), "model": {"bundle": "/b"}})
    assert cfg.model.bundle == Path("/b") and cfg.model.verify_golden is False
    assert cfg.pipeline.max_batch == 2
    assert cfg.store.path == tmp_path / "lineguard.db"


def test_an_explicit_store_path_wins_over_data_dir(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "store: {path: /x/db.sqlite}\n"), {"data_dir": "/d"})
    assert cfg.store.path == Path("/x/db.sqlite")
    assert cfg.store.images.dir == Path("/d/images")



@pytest.mark.parametrize(("identity", "missing"), [
    ({}, "site and line must be set when telemetry is on"),
    ({"site": "plant-a"}, "line must be set when telemetry is on"),
    ({"line": "line-7"}, "site must be set when telemetry is on"),
])
def test_telemetry_needs_an_explicit_line_identity(
    tmp_path: Path, identity: dict[str, str], missing: str
) -> None:
    # Issue 8 item 3: two lines left at site-1/line-1 would collide in the fleet.
    with pytest.raises(ConfigError, match=missing) as e:
        load_config(None, {**identity, "telemetry": {"broker": {"host": "mqtt"}}})
    assert "site-1/line-1" in str(e.value)
    cfg = load_config(None, {"site": "plant-a", "line": "line-7", "telemetry": {}})
    assert (cfg.site, cfg.line) == ("plant-a", "line-7")
    # the offline demo (no telemetry, or telemetry switched off) keeps the defaults
    assert (load_config(None).site, load_config(None).line) == ("site-1", "line-1")
    off = load_config(None, {"telemetry": {"enabled": False}})
    assert (off.site, off.line) == ("site-1", "line-1")
    path = tmp_path / "lineguard.yaml"
    path.write_text("telemetry:\n  broker: {host: mqtt}\n", "utf-8")
    with pytest.raises(ConfigError, match="site and line must be set"):
        load_config(path)

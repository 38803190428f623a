"""The App wiring: a run with a frame budget, frame ids that continue across restarts,
a missing model where allowed (uninspected + alarm), hot swap from a .tar bundle, source
overrides."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import ApplianceConfig, load_config
from appliance.errors import ConfigError
from appliance.records import InspectionRecord
from appliance.store import Store
from models.bundle import Bundle, pack_bundle
from tests.appliance.pipeline_helpers import BLACK, WHITE, db_rows, seq_of, tiny_bundle

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle]:
    root = tmp_path_factory.mktemp("bundles")
    return tiny_bundle(root, version=1), tiny_bundle(root, version=2, output_format="end2end")


def config(tmp_path: Path, bundle: Path, **pipeline: Any) -> ApplianceConfig:
    return load_config(None, {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim", "width_px": 96,
                                                "height_px": 64, "realtime": False}}],
        "model": {"bundle": str(bundle)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block", **pipeline},
        "store": {"flush_interval_ms": 10},
    })


def events(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT kind, severity, data FROM events ORDER BY id").fetchall()
    finally:
        conn.close()


def test_run_with_a_frame_budget_then_restart_continues_frame_ids(
    tmp_path: Path, bundles: tuple[Bundle, Bundle]
) -> None:
    cfg = config(tmp_path, bundles[0].root)
    stats_seen: list[int] = []
    summary = App(cfg, max_frames=30).run(
        threading.Event(), on_status=lambda s: stats_seen.append(s.frames),
        status_interval_s=0.05)
    assert summary.stopped_by == "frames"
    assert summary.frames == 30 and summary.store_inspections == 30
    assert sum(summary.verdicts.values()) == 30
    assert summary.model is not None and summary.model["version_id"] == "tiny:1"
    assert summary.providers == ["CPUExecutionProvider"]
    assert summary.stations["cam"]["frames"] == 30
    assert stats_seen
    kinds = [k for k, _, _ in events(cfg.store.path)]
    assert kinds[0] == "appliance_start" and kinds[-1] == "appliance_stop"
    assert "model_change" in kinds

    with Store(cfg.store) as store:
        assert store.next_sequence("cam") == 30
    again = App(cfg, max_frames=20).run(threading.Event())
    assert again.frames == 20 and again.store_inspections == 50
    seqs = sorted(seq_of(r[0]) for r in db_rows(cfg.store.path))
    assert seqs == list(range(50))


def test_a_model_that_cannot_load_means_uninspected_and_an_alarm(tmp_path: Path) -> None:
    # only where the config allows starting without a model (else: test_start_checks.py)
    cfg = config(tmp_path, tmp_path / "no-such-bundle")
    cfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"allow_start_without_model": True})})
    summary = App(cfg, max_frames=10).run(threading.Event())
    assert summary.model is None
    assert summary.verdicts == {"pass": 0, "fail": 0, "uninspected": 10}
    assert summary.uninspected == {"no_model": 10}
    # one alarm, one event: the start raised it (with the bundle and why), the alarm
    # rules found it active and wrote nothing more
    no_model = [(k, s) for k, s, d in events(cfg.store.path) if '"alarm": "no_model"' in d]
    assert no_model == [("alarm_raised", "alarm")]


def test_hot_swap_from_a_tar_bundle_and_source_overrides(
    tmp_path: Path, bundles: tuple[Bundle, Bundle]
) -> None:
    v1, v2 = bundles
    tar = pack_bundle(v2.root, tmp_path / "tiny-v2.tar")
    cfg = config(tmp_path, v1.root)
    app = App(cfg, sources={"cam": ReplaySource([WHITE, BLACK], max_fps=300.0)})
    stop = threading.Event()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(summary=app.run(stop)))
    runner.start()
    try:
        for _ in range(200):
            if app.pipeline is not None and app.pipeline.stats().frames >= 20:
                break
            stop.wait(0.05)
        previous = app.swap_model(tar)
        assert previous is not None and previous.version_id == "tiny:1"
        assert app.stats().model is not None
        stop.wait(0.3)
    finally:
        stop.set()
        runner.join(30)
    summary = result["summary"]
    assert summary.stopped_by == "signal"
    assert summary.model["version_id"] == "tiny:2"
    assert (cfg.bundles_dir / "tiny-v2_tar" / "manifest.json").is_file()
    rows = db_rows(cfg.store.path)
    assert len(rows) == summary.frames
    assert {r[3] for r in rows} == {"tiny:1", "tiny:2"}
    assert all(r[1] != "uninspected" for r in rows)


def test_sources_for_unknown_stations_are_refused(tmp_path: Path,
                                                  bundles: tuple[Bundle, Bundle]) -> None:
    with pytest.raises(ConfigError, match="nope"):
        App(config(tmp_path, bundles[0].root), sources={"nope": ReplaySource([WHITE])})


def test_next_sequence_reads_only_its_station(tmp_path: Path) -> None:
    cfg = config(tmp_path, tmp_path / "no-bundle")
    with Store(cfg.store) as store:
        assert store.next_sequence("cam") == 0
        for frame_id in ("cam:4", "cam:12", "cam:7", "cam-2:99", "cam.b:5", "ca:77"):
            store.submit(InspectionRecord(
                frame_id=frame_id, station=frame_id.split(":")[0], part_id=None,
                captured_at=1.0, judged_at=2.0, verdict="pass", reason=None,
                model_version="tiny:1", preprocess_hash=None, latency_ms={}))
        store.flush()
        assert store.next_sequence("cam") == 13
        assert store.next_sequence("cam-2") == 100
        assert store.next_sequence("ca") == 78
        assert store.next_sequence("other") == 0

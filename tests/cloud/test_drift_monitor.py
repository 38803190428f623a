"""The drift monitor over a real database (SQLite and PostgreSQL): windows stored once,
a reference from the line's first frames, one alert per drift (published, retraining
asked once), acknowledgement, the API routes."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy import Engine
from starlette.exceptions import StarletteDeprecationWarning

from cloud.db import DatabaseConfig, open_engine, upgrade
from cloud.drift.config import DriftConfig
from cloud.drift.monitor import DriftMonitor
from cloud.drift.store import DetectorKey, DriftStore, load_detector
from cloud.fleet import FleetStore
from models.drift.reference import reference_from_signals
from protocol.alerts import AlertCommand
from tests.cloud.drift_helpers import MODEL, T0, frames, sketches

with warnings.catch_warnings():
    # As in test_api.py: Starlette prefers httpx2 for its TestClient and warns at import.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow  # a few hundred windows through the database, twice

CFG = DriftConfig(bootstrap_replicates=60, mmd_permutations=500, line_reference_frames=400)
WINDOW = 20


class Recorder:
    def __init__(self) -> None:
        self.published: list[AlertCommand] = []
        self.retrains: list[tuple[str, str]] = []

    def publish(self, command: AlertCommand) -> bool:
        self.published.append(command)
        return True

    def retrain(self, line: str, reason: str) -> object:
        self.retrains.append((line, reason))
        return None


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    cfg = DatabaseConfig(url=database_url)
    engine = open_engine(cfg)
    upgrade(engine, cfg)
    yield engine
    engine.dispose()


def monitor(engine: Engine, rec: Recorder, references=lambda model: None) -> DriftMonitor:
    return DriftMonitor(engine, CFG, references=references, publish=rec.publish,
                        request_retrain=rec.retrain, clock=lambda: T0 + 3600)


def test_drift_from_line_reference_raises_one_alert(engine: Engine) -> None:
    rec = Recorder()
    mon = monitor(engine, rec)
    # 25 windows x 16 samples = 400 sampled frames make the line's reference.
    quiet = frames(1000, seed=1)
    drifted = frames(1000, seed=2, shift={"roi.log_std": 2.0, "roi.hist3": -2.0})
    alerts = [mon.ingest(m) for m in sketches(np.vstack([quiet, drifted]), window=WINDOW)]
    raised = [a for a in alerts if a is not None]
    assert len(raised) == 1
    alert = raised[0]
    assert {n for n, _ in alert.channels[:2]} == {"roi.log_std", "roi.hist3"}
    assert 900 <= alert.onset_frame_id <= 1100
    # Published to the line once, retraining asked once, both recorded.
    assert [c.alert_id for c in rec.published] == [alert.alert_id]
    cmd = rec.published[0]
    assert (cmd.site, cmd.line, cmd.code, cmd.station) == ("plant1", "line-3", "drift", "cam")
    assert cmd.channels[:2] and set(cmd.channels[:2]) == {"roi.log_std", "roi.hist3"}
    assert len(rec.retrains) == 1 and rec.retrains[0][0] == "plant1/line-3"
    stored = DriftStore(mon.store.engine).alerts("plant1", "line-3")
    assert len(stored) == 1 and stored[0].published and stored[0].retrain_requested
    assert mon.counts["windows"] == 100


def test_no_drift_and_duplicates(engine: Engine) -> None:
    rec = Recorder()
    mon = monitor(engine, rec)
    msgs = sketches(frames(1600, seed=3), window=WINDOW)
    assert [mon.ingest(m) for m in msgs] == [None] * len(msgs)
    # A re-delivered window (same msg_id) and a replay of its frames (new id) change nothing.
    again = msgs[-1].model_copy(update={"msg_id": "f" * 32})
    assert mon.ingest(msgs[-1]) is None and mon.ingest(again) is None
    assert mon.counts["duplicates"] == 2
    assert rec.published == [] and rec.retrains == []


def test_bundle_reference_and_acknowledge(engine: Engine) -> None:
    rec = Recorder()
    ref = reference_from_signals(frames(800, seed=4), "bundle")
    mon = monitor(engine, rec, references=lambda model: ref)
    drifted = sketches(frames(600, seed=5, shift={"bg.luma": 3.0}), window=WINDOW)
    raised = [a for a in (mon.ingest(m) for m in drifted) if a is not None]
    assert len(raised) == 1 and raised[0].channels[0][0] == "bg.luma"
    acked = mon.acknowledge(raised[0].alert_id, "alice")
    assert acked is not None and acked.acknowledged_by == "alice"
    # The drift goes on: after the acknowledgement it is a new alert.
    more = sketches(frames(600, seed=6, shift={"bg.luma": 3.0}), window=WINDOW, first_seq=600)
    assert len([a for a in (mon.ingest(m) for m in more) if a is not None]) == 1
    assert len(rec.retrains) == 2


def test_api_lists_and_acknowledges(engine: Engine) -> None:
    rec = Recorder()
    ref = reference_from_signals(frames(800, seed=4), "bundle")
    mon = monitor(engine, rec, references=lambda model: ref)
    for m in sketches(frames(400, seed=7, shift={"emb0": -3.0}), window=WINDOW):
        mon.ingest(m)
    from cloud.api import create_app

    fleet = FleetStore(DatabaseConfig(url=str(mon.store.engine.url)))
    try:
        app = create_app(fleet, "t" * 16, drift=DriftStore(mon.store.engine))
        client = TestClient(app, headers={"Authorization": "Bearer " + "t" * 16})
        alerts = client.get("/drift/alerts", params={"site": "plant1"}).json()
        assert len(alerts) == 1 and alerts[0]["channels"][0]["name"] == "emb0"
        assert alerts[0]["model_name"] == "demo" and alerts[0]["station"] == "cam"
        alert_id = alerts[0]["alert_id"]
        assert client.get(f"/drift/alerts/{alert_id}").status_code == 200
        assert client.get("/drift/alerts/drift-0000000000000000").status_code == 404
        assert client.get("/drift/alerts/nonsense").status_code == 422
        ack = client.post(f"/drift/alerts/{alert_id}/ack", json={"by": "bob"}).json()
        assert ack["acknowledged_by"] == "bob"
        windows = client.get("/drift/lines/plant1/line-3/windows").json()
        assert len(windows) == 20 and windows[0]["statistic"] is not None
        assert TestClient(app).get("/drift/alerts").status_code == 401
    finally:
        fleet.close()


def _detector_row(mon: DriftMonitor):
    key = DetectorKey("plant1", "line-3", "cam", MODEL.name, MODEL.version)
    with mon.store.engine.connect() as conn:
        return load_detector(conn, key, for_update=False)


def test_a_line_reference_waits_for_what_the_detector_needs(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """200-frame windows need 800 reference frames (four windows' worth), more than the
    configured 400: the monitor waits for them instead of failing on every window."""
    mon = monitor(engine, Recorder())
    msgs = sketches(frames(52 * 200, seed=7), window=200)  # 16 sampled frames a window
    with caplog.at_level(logging.WARNING, logger="cloud.drift.monitor"):
        for m in msgs[:49]:  # 784 sampled frames
            assert mon.ingest(m) is None
    assert "unusable" not in caplog.text
    row = _detector_row(mon)
    assert row is not None and row.baseline_json is None and row.reference_frames == 784
    for m in msgs[49:]:
        assert mon.ingest(m) is None
    row = _detector_row(mon)
    assert row is not None and row.baseline_json is not None
    assert (row.reference_source, row.reference_frames) == ("line", 800)


def test_a_bundle_reference_of_other_signals_is_not_used(engine: Engine) -> None:
    ref = reference_from_signals(frames(800, seed=4), "bundle").model_copy(
        update={"signals_version": "lineguard.drift-signals/1"})
    mon = monitor(engine, Recorder(), references=lambda model: ref)
    assert mon.ingest(sketches(frames(20, seed=8), window=WINDOW)[0]) is None
    row = _detector_row(mon)
    assert row is not None and row.reference_source == "line" and row.baseline_json is None

"""The panel's pure parts as tables: shifts, sessions and the login limiter with an
injected clock, threshold overrides (persisted, applied to a judge, bad files and values
refused), the per-minute series, and the panel config's checks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from datetime import time as dtime
from pathlib import Path

import numpy as np
import pytest

from appliance.config import ConfigError, config_from_dict
from appliance.panel.config import PanelConfig, ShiftConfig
from appliance.panel.sessions import RateLimiter, Sessions
from appliance.panel.shifts import current_shift
from appliance.pipeline.judge import Judge
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.store import panel_queries
from tests.appliance.panel_rig import Clock, fail_record
from tests.appliance.store_rig import open_store

SHIFTS = [ShiftConfig(name="early", start=dtime(6, 0)),
          ShiftConfig(name="late", start=dtime(14, 0)),
          ShiftConfig(name="night", start=dtime(22, 0))]
CET = timezone(timedelta(hours=1))


@pytest.mark.parametrize(("local", "name", "start"), [
    ("2026-03-02 06:00", "early", "2026-03-02 06:00"),
    ("2026-03-02 13:59", "early", "2026-03-02 06:00"),
    ("2026-03-02 14:00", "late", "2026-03-02 14:00"),
    ("2026-03-02 23:30", "night", "2026-03-02 22:00"),
    ("2026-03-03 05:59", "night", "2026-03-02 22:00"),  # past midnight: yesterday's night
])
def test_current_shift(local: str, name: str, start: str) -> None:
    now = datetime.strptime(local, "%Y-%m-%d %H:%M").replace(tzinfo=CET).timestamp()
    expected = datetime.strptime(start, "%Y-%m-%d %H:%M").replace(tzinfo=CET).timestamp()
    assert current_shift(SHIFTS, now, CET) == (name, expected)


def test_one_shift_runs_all_day_and_none_is_an_error() -> None:
    one = [ShiftConfig(name="all", start=dtime(0, 0))]
    now = datetime(2026, 3, 2, 12, tzinfo=UTC).timestamp()
    assert current_shift(one, now, UTC) == ("all", datetime(2026, 3, 2, tzinfo=UTC).timestamp())
    with pytest.raises(ValueError, match="no shifts"):
        current_shift([], now, UTC)


def test_sessions_expire_and_the_oldest_goes_when_full() -> None:
    clock = Clock(1000.0)
    sessions = Sessions(lifetime_s=60.0, max_sessions=2, clock=clock)
    a = sessions.create("olga", "operator")
    b = sessions.create("erik", "engineer")
    assert len(a.id) >= 40 and a.id != b.id and a.csrf_token != b.csrf_token
    assert sessions.get(a.id) == a and sessions.get(None) is None
    assert a.csrf_ok(a.csrf_token) and not a.csrf_ok(b.csrf_token) and not a.csrf_ok(None)
    c = sessions.create("anna", "operator")
    assert sessions.get(a.id) is None and sessions.get(c.id) == c  # a was the oldest
    clock.now += 60.0
    assert sessions.get(b.id) is None and len(sessions) == 1
    sessions.end(c.id)
    assert sessions.get(c.id) is None


def test_the_limiter_is_a_sliding_window() -> None:
    now = [0.0]
    limiter = RateLimiter(limit=2, window_s=10.0, mono=lambda: now[0])
    assert limiter.retry_after_s("ip") == 0.0
    limiter.hit("ip")
    now[0] = 4.0
    limiter.hit("ip")
    assert limiter.retry_after_s("ip") == pytest.approx(6.0)
    assert limiter.retry_after_s("other") == 0.0
    now[0] = 10.5  # the first attempt left the window
    assert limiter.retry_after_s("ip") == 0.0
    limiter.reset("ip")
    assert limiter.retry_after_s("ip") == 0.0


def test_threshold_overrides_persist_and_apply_by_class_name(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    judge = Judge(("dent", "scratch"), np.array([0.25, 0.25], dtype=np.float32))
    overrides = ThresholdOverrides(path)
    assert overrides.apply(judge) is judge and overrides.version == 0
    assert overrides.set({"scratch": 0.8, "gone": 0.1}) == {}
    assert overrides.version == 1
    applied = overrides.apply(judge)
    assert applied.thresholds.tolist() == pytest.approx([0.25, 0.8])
    assert json.loads(path.read_text()) == {"gone": 0.1, "scratch": 0.8}
    assert ThresholdOverrides(path).values == {"gone": 0.1, "scratch": 0.8}  # restart


@pytest.mark.parametrize("values", [{"dent": 1.1}, {"dent": -0.1}, {"dent": float("nan")},
                                    {"": 0.5}, {"dent": True}, {"x" * 65: 0.5}])
def test_bad_threshold_values_are_refused_and_nothing_changes(tmp_path: Path,
                                                              values: dict[str, float]) -> None:
    overrides = ThresholdOverrides(tmp_path / "t.json")
    overrides.set({"dent": 0.5})
    with pytest.raises(ValueError, match="must be"):
        overrides.set(values)
    assert overrides.values == {"dent": 0.5} and overrides.version == 1


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"dent": 7}'])
def test_a_bad_thresholds_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="threshold overrides unreadable"):
        ThresholdOverrides(path)


def test_series_buckets_parts_and_latency(tmp_path: Path) -> None:
    store = open_store(tmp_path, flush_interval_ms=10)
    try:
        for i, at in enumerate([100.0, 110.0, 170.0, 170.5, 299.0]):
            store.submit(fail_record(i, judged_at=at, image=False))
        store.flush()
        from appliance.store.queries import open_reader
        conn = open_reader(store.path)
        try:
            points = panel_queries.series(conn, 100.0, 300.0, 60.0)
            with pytest.raises(ValueError, match="until > since"):
                panel_queries.series(conn, 100.0, 100.0)
            with pytest.raises(ValueError, match="limit"):
                panel_queries.gallery(conn, limit=0)
        finally:
            conn.close()
    finally:
        store.stop()
    assert [p["parts"] for p in points] == [2, 2, 0, 1]
    assert points[0]["p50_ms"] == pytest.approx(20.5) and points[2]["p99_ms"] is None
    assert points[1]["per_s"] == pytest.approx(2 / 60, abs=1e-3)


@pytest.mark.parametrize(("panel", "message"), [
    ({"port": 70000}, "panel.port"),
    ({"shifts": [{"name": "a", "start": "06:00"}, {"name": "b", "start": "06:00"}]},
     "shift start times must differ"),
    ({"shifts": [{"name": "a", "start": "06:00"}, {"name": "a", "start": "07:00"}]},
     "shift names must be unique"),
    ({"shifts": [{"name": "a", "start": "25:00"}]}, "panel.shifts.0.start"),
    ({"shifts": []}, "panel.shifts"),
    ({"live_rate_hz": 0}, "panel.live_rate_hz"),
    ({"hostt": "0.0.0.0"}, "hostt"),
    ({"tls": {"cert_file": "c.pem"}}, "panel.tls.key_file"),
])
def test_bad_panel_config_names_the_key(panel: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        config_from_dict({"panel": panel})


def test_the_panel_is_off_unless_configured() -> None:
    assert config_from_dict({}).panel is None
    cfg = config_from_dict({"panel": {}})
    assert cfg.panel == PanelConfig() and cfg.panel.host == "127.0.0.1"
    assert cfg.thresholds_file == cfg.data_dir / "thresholds.json"

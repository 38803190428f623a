"""Falling behind is an alarm (issue 8 item 12): the pure detector over a table of rates
with an injected clock, the rate sampler, and a real line faster than the machine."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from appliance.app import App
from appliance.config import BehindConfig, load_config
from appliance.pipeline.behind import BehindDetector, Rates, RateSampler
from appliance.telemetry.gauges import gauges_from_stats

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"
CFG = BehindConfig(after_s=10.0, clear_after_s=5.0, rate_margin=0.05,
                   latency_growth_ms_per_s=100.0)


def rates(input_fps: float, judged_fps: float, growth: float | None = 0.0,
          backlog: int = 0) -> Rates:
    return Rates(input_fps=input_fps, judged_fps=judged_fps,
                 latency_growth_ms_per_s=growth, backlog_frames=backlog)


KEEPS_UP = rates(30.0, 30.0)
TOO_FAST = rates(120.0, 40.0, backlog=32)          # frames dropped or queued
HELD_BACK = rates(40.0, 40.0, growth=900.0)        # overflow: block, latency grows

# (seconds since start, rates, active after, change)
TABLE = [
    ("line keeps up", [(0, KEEPS_UP, False, None), (60, KEEPS_UP, False, None)]),
    ("a burst shorter than after_s is no alarm",
     [(0, TOO_FAST, False, None), (9, TOO_FAST, False, None), (10, KEEPS_UP, False, None),
      (15, TOO_FAST, False, None), (24, TOO_FAST, False, None)]),
    ("too fast for after_s raises, catching up for clear_after_s clears",
     [(0, TOO_FAST, False, None), (5, TOO_FAST, False, None), (10, TOO_FAST, True, "raised"),
      (11, TOO_FAST, True, None), (12, KEEPS_UP, True, None), (16, KEEPS_UP, True, None),
      (17, KEEPS_UP, False, "cleared"), (18, KEEPS_UP, False, None)]),
    ("one good second does not clear it",
     [(0, TOO_FAST, False, None), (10, TOO_FAST, True, "raised"), (11, KEEPS_UP, True, None),
      (14, TOO_FAST, True, None), (15, KEEPS_UP, True, None), (19, KEEPS_UP, True, None),
      (20, KEEPS_UP, False, "cleared")]),
    ("latency growing while rates match (held back) raises",
     [(0, HELD_BACK, False, None), (10, HELD_BACK, True, "raised")]),
    ("within the margin is keeping up",
     [(0, rates(41.0, 40.0), False, None), (30, rates(41.0, 40.0), False, None)]),
    ("latency growth unknown, rates match: keeping up",
     [(0, rates(10.0, 10.0, growth=None), False, None),
      (30, rates(10.0, 10.0, growth=None), False, None)]),
    ("an idle line (nothing captured) is not behind",
     [(0, rates(0.0, 0.0), False, None), (30, rates(0.0, 0.0), False, None)]),
]


@pytest.mark.parametrize(("title", "steps"), TABLE, ids=[t for t, _ in TABLE])
def test_detector(title: str, steps: list[tuple[float, Rates, bool, str | None]]) -> None:
    detector = BehindDetector(CFG)
    t0 = 1_700_000_000.0
    for at, r, active, change in steps:
        state, got = detector.update(t0 + at, r)
        assert (state.active, got) == (active, change), (title, at)
        assert (state.input_fps, state.judged_fps) == (round(r.input_fps, 2),
                                                       round(r.judged_fps, 2))
        if state.active:
            assert state.since is not None and state.since <= t0 + at - CFG.after_s
        else:
            assert state.since is None


def test_sampler_measures_over_the_window() -> None:
    sampler = RateSampler(window_s=5.0)
    assert sampler.add(0.0, 0, 0, 10.0, 0) is None  # one reading: no rate yet
    got = None
    for t in range(1, 11):  # 100 frames/s captured, 40 judged, latency +50 ms per s
        got = sampler.add(float(t), 100 * t, 40 * t, 10.0 + 50.0 * t, 60 * t)
    assert got is not None
    assert got.input_fps == pytest.approx(100.0)
    assert got.judged_fps == pytest.approx(40.0)
    assert got.latency_growth_ms_per_s == pytest.approx(50.0)
    assert got.backlog_frames == 600


def _events(db: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(db)
    try:
        return [(str(k), str(d)) for k, d in conn.execute(
            "SELECT kind, data FROM events WHERE data LIKE '%falling_behind%' ORDER BY id")]
    finally:
        conn.close()


def _wait(cond: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(180)
def test_a_line_faster_than_the_machine_raises_and_clears_the_alarm(tmp_path: Path) -> None:
    cfg = load_config(None, {
        "data_dir": str(tmp_path / "data"),
        # 60000 parts a minute, one frame per batch: far more than this machine judges
        "stations": [{"name": "cam", "source": {"kind": "sim", "seed": 1,
                                                "parts_per_minute": 60000,
                                                "width_px": 128, "height_px": 96}}],
        "model": {"bundle": str(DEMO)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"max_batch": 1, "overflow": "drop", "queue_frames": 4,
                     "behind": {"after_s": 0.5, "clear_after_s": 0.5, "window_s": 1.0}},
    })
    app = App(cfg, max_frames=600, require_model=True)
    app.start()
    try:
        assert _wait(lambda: app.stats().behind is not None and app.stats().behind.active,
                     60.0), app.stats()
        stats = app.stats()
        assert stats.behind is not None
        assert stats.behind.input_fps > stats.behind.judged_fps
        line = stats.status_line()
        assert "ALARM falling behind: " in line and "frames/s captured" in line
        assert "falling_behind" in gauges_from_stats(stats).alarms
        # the frame budget runs out: nothing more is captured, the line has caught up
        assert _wait(lambda: not app.stats().behind.active, 120.0), app.stats()  # type: ignore[union-attr]
        assert "falling_behind" not in gauges_from_stats(app.stats()).alarms
    finally:
        app.stop()
    # one alarm, one event each way: the monitor and the alarm rules both see it, the
    # alarm book writes it once
    kinds = [k for k, _ in _events(cfg.store.path)]
    assert kinds == ["alarm_raised", "alarm_resolved"]


def test_the_monitor_stops_with_the_app(tmp_path: Path) -> None:
    cfg = load_config(None, {"data_dir": str(tmp_path / "data"),
                             "stations": [{"name": "cam", "source": {"kind": "sim",
                                                                     "realtime": False}}],
                             "model": {"bundle": str(DEMO)}})
    App(cfg, max_frames=4).run(threading.Event())
    assert not [t for t in threading.enumerate() if t.name == "behind-monitor"]

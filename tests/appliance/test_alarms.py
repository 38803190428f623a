"""The alarm book (one active row per code and station, kept until acknowledged, events
in the same transaction) and the rules (tables of conditions -> alarm codes)."""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from appliance.alarm_rules import (
    EVALUATED_CODES,
    AlarmInputs,
    AlarmMonitor,
    AlarmRulesConfig,
    evaluate,
)
from appliance.alarms import AlarmBook
from appliance.app import App
from appliance.capture.source import SourceRead
from appliance.config import load_config
from appliance.errors import SourceLost, UnknownAlarm
from appliance.store import Store, alarm_rows
from appliance.store.alarm_rows import AlarmChange
from tests.appliance.pipeline_helpers import tiny_bundle
from tests.appliance.store_rig import open_store

T0 = 1_700_000_000.0
MiB = 2**20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path)
    yield s
    s.stop()


def ticking() -> itertools.count[float]:
    return itertools.count(T0, 1.0)


@pytest.fixture
def book(store: Store) -> AlarmBook:
    clock = ticking()
    return AlarmBook(store, clock=lambda: next(clock))


def events(store: Store) -> list[tuple[str, str, dict[str, object]]]:
    conn = sqlite3.connect(str(store.path))
    try:
        rows = conn.execute("SELECT kind, severity, data FROM events WHERE kind LIKE 'alarm_%'"
                            " ORDER BY id").fetchall()
    finally:
        conn.close()
    return [(str(k), str(s), json.loads(d)) for k, s, d in rows]


# ---------------------------------------------------------------------- the book
def test_raise_repeat_clear_acknowledge(store: Store, book: AlarmBook) -> None:
    a = book.raise_alarm("camera_lost", "camera of s1 lost", station="s1", severity="critical")
    assert (a.code, a.station, a.severity, a.count, a.active, a.acked_by) == \
        ("camera_lost", "s1", "critical", 1, True, None)
    again = book.raise_alarm("camera_lost", "still lost", station="s1", severity="critical")
    assert (again.id, again.count, again.message) == (a.id, 2, "still lost")
    other = book.raise_alarm("camera_lost", "camera of s2 lost", station="s2")
    assert other.id != a.id
    assert [x.id for x in book.current()] == [a.id, other.id]  # critical first
    cleared = book.clear("camera_lost", "s1")
    assert cleared is not None and not cleared.active and cleared.cleared_at_s is not None
    assert book.clear("camera_lost", "s1") is None  # nothing active any more
    # cleared but not acknowledged: still shown
    assert a.id in [x.id for x in book.current()]
    acked = book.acknowledge(a.id, "anna")
    assert acked.acked_by == "anna" and acked.acked_at_s is not None
    assert a.id not in [x.id for x in book.current()]
    assert book.acknowledge(a.id, "ben").acked_by == "anna"  # the first one stands
    # an acknowledged alarm that is still active stays on the panel until it clears
    assert book.acknowledge(other.id, "anna").active
    assert other.id in [x.id for x in book.current()]
    # raised again after it cleared: a new occurrence
    fresh = book.raise_alarm("camera_lost", "lost again", station="s1", severity="critical")
    assert fresh.id not in (a.id, other.id) and fresh.count == 1
    assert [x.id for x in book.history(2)] == [fresh.id, other.id]
    assert book.get(a.id).acked_by == "anna"
    kinds = [(k, s, d["alarm_id"]) for k, s, d in events(store)]
    assert kinds == [("alarm_raised", "alarm", a.id), ("alarm_raised", "warning", other.id),
                     ("alarm_resolved", "info", a.id), ("alarm_acknowledged", "info", a.id),
                     ("alarm_acknowledged", "info", other.id),
                     ("alarm_raised", "alarm", fresh.id)]


def test_line_alarm_and_station_alarm_are_distinct(book: AlarmBook) -> None:
    line = book.raise_alarm("drift", "drift on the line")
    station = book.raise_alarm("drift", "drift on s1", station="s1")
    assert line.id != station.id and line.station is None
    assert book.raise_alarm("drift", "again", station="").id == line.id  # "" is the line
    assert book.clear("drift") is not None and book.get(station.id).active


def test_bad_input_is_refused(book: AlarmBook) -> None:
    with pytest.raises(UnknownAlarm, match="no alarm with id 999"):
        book.acknowledge(999, "anna")
    with pytest.raises(UnknownAlarm):
        book.get(999)
    with pytest.raises(ValueError, match="invalid alarm code 'Camera Lost'"):
        book.raise_alarm("Camera Lost", "x")
    with pytest.raises(ValueError, match="invalid alarm severity 'fatal'"):
        book.raise_alarm("camera_lost", "x", severity="fatal")
    a = book.raise_alarm("camera_lost", "x")
    with pytest.raises(ValueError, match="who acknowledges"):
        book.acknowledge(a.id, "")
    assert book.current()[0].acked_by is None


# ---------------------------------------------------------------------- the rules
CFG = AlarmRulesConfig()
BASE = AlarmInputs(sources={"s1": "streaming", "s2": "streaming"}, model_loaded=True,
                   active_provider="CPUExecutionProvider", images_quota_bytes=100 * MiB,
                   free_disk_bytes=10_000 * MiB, min_free_disk_bytes=100 * MiB)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, set()),
        ({"sources": {"s1": "lost", "s2": "streaming"}}, {("camera_lost", "s1")}),
        ({"sources": {"s1": "lost", "s2": "lost"}}, {("camera_lost", "s1"),
                                                     ("camera_lost", "s2")}),
        ({"sources": {"s1": "reconnecting", "s2": "ended"}}, set()),
        ({"model_loaded": False, "active_provider": None}, {("no_model", None)}),
        ({"gpu_fallbacks": 1}, {("engine_cpu_fallback", None)}),
        ({"wanted_provider": "cuda"}, {("engine_cpu_fallback", None)}),
        ({"wanted_provider": "cpu"}, set()),
        ({"wanted_provider": "cuda", "active_provider": "CUDAExecutionProvider"}, set()),
        ({"uninspected_recent": {"dropped": 1}}, {("uninspected_parts", None)}),
        ({"uninspected_recent": {"dropped": 0}}, set()),
        ({"free_disk_bytes": 99 * MiB}, {("disk_low", None)}),
        ({"free_disk_bytes": 140 * MiB}, {("disk_near_quota", None)}),
        ({"free_disk_bytes": 151 * MiB}, set()),
        ({"free_disk_bytes": None}, set()),
        ({"images_protected_bytes": 90 * MiB}, {("disk_near_quota", None)}),
        ({"images_protected_bytes": 89 * MiB}, set()),
        ({"store_unwritable": True}, {("store_unwritable", None)}),
        ({"reserve_released": True}, {("store_reserve_used", None)}),
        ({"falling_behind": "falling behind: 30 frames/s captured, 20 judged"},
         {("falling_behind", None)}),
        ({"broker_connected": False, "broker_down_s": 31.0, "outbox_growth": 5,
          "outbox_depth": 50}, {("broker_offline", None)}),
        ({"broker_connected": False, "broker_down_s": 31.0, "outbox_growth": 0}, set()),
        ({"broker_connected": False, "broker_down_s": 10.0, "outbox_growth": 5}, set()),
        ({"broker_connected": True, "broker_down_s": 0.0, "outbox_growth": 5}, set()),
        ({"broker_connected": None, "outbox_growth": 5}, set()),
    ],
)
def test_rules_table(change: dict[str, object], expected: set[tuple[str, str | None]]) -> None:
    inputs = AlarmInputs(**{**BASE.__dict__, **change})
    found = evaluate(inputs, CFG)
    assert set(found) == expected
    assert {code for code, _ in found} <= set(EVALUATED_CODES)


@pytest.mark.parametrize(
    ("change", "code", "severity", "says"),
    [
        ({"sources": {"s1": "lost"}}, "camera_lost", "critical", "station s1"),
        ({"gpu_fallbacks": 2}, "engine_cpu_fallback", "warning", "after 2 GPU failure"),
        ({"wanted_provider": "tensorrt"}, "engine_cpu_fallback", "warning",
         "although tensorrt is configured"),
        ({"uninspected_recent": {"dropped": 3, "deadline": 2}}, "uninspected_parts",
         "warning", "5 parts uninspected in the last 60 s (deadline 2, dropped 3)"),
        ({"images_protected_bytes": 95 * MiB}, "disk_near_quota", "warning",
         "95 MiB of the 100 MiB image quota"),
        ({"store_unwritable": True}, "store_unwritable", "critical", "cannot commit"),
    ],
)
def test_rule_messages_say_why(change: dict[str, object], code: str, severity: str,
                               says: str) -> None:
    found = evaluate(AlarmInputs(**{**BASE.__dict__, **change}), CFG)
    (key, (sev, message)), = found.items()
    assert key[0] == code and sev == severity and says in message, message


def test_uninspected_threshold_is_configurable() -> None:
    cfg = AlarmRulesConfig(uninspected_min_parts=5)
    few = AlarmInputs(**{**BASE.__dict__, "uninspected_recent": {"dropped": 4}})
    many = AlarmInputs(**{**BASE.__dict__, "uninspected_recent": {"dropped": 5}})
    assert evaluate(few, cfg) == {} and set(evaluate(many, cfg)) == {("uninspected_parts",
                                                                     None)}


# ---------------------------------------------------------------------- the monitor
class Readings:
    """Scripted readings and a controlled monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.inputs: AlarmInputs | None = BASE

    def read(self) -> AlarmInputs | None:
        return self.inputs

    def set(self, **change: object) -> None:
        self.inputs = AlarmInputs(**{**BASE.__dict__, **change})


def test_monitor_raises_on_change_clears_when_over(book: AlarmBook) -> None:
    r = Readings()
    monitor = AlarmMonitor(CFG, book, r.read, monotonic=lambda: r.now)
    assert monitor.poll() == {}
    r.set(sources={"s1": "lost", "s2": "streaming"})
    for _ in range(3):  # a lasting condition is one occurrence, raised once
        r.now += 1
        monitor.poll()
    (alarm,) = book.active()
    assert (alarm.code, alarm.station, alarm.count) == ("camera_lost", "s1", 1)
    r.set()
    r.now += 1
    monitor.poll()
    assert book.active() == [] and [a.id for a in book.current()] == [alarm.id]
    r.inputs = None  # not running: nothing changes
    assert monitor.poll() is None


def test_monitor_counts_uninspected_parts_in_its_window(book: AlarmBook) -> None:
    r = Readings()
    monitor = AlarmMonitor(CFG, book, r.read, monotonic=lambda: r.now)
    r.set(uninspected_total={"dropped": 10})  # before the window: history
    monitor.poll()
    assert book.active() == []
    r.now = 5.0
    r.set(uninspected_total={"dropped": 12, "deadline": 1})
    found = monitor.poll()
    assert found is not None and "3 parts uninspected" in found[("uninspected_parts", None)][1]
    assert [a.code for a in book.active()] == ["uninspected_parts"]
    r.now = 70.0  # a minute without a new uninspected part
    monitor.poll()
    assert book.active() == []


def test_monitor_broker_offline_needs_time_and_a_growing_outbox(book: AlarmBook) -> None:
    r = Readings()
    monitor = AlarmMonitor(CFG, book, r.read, monotonic=lambda: r.now)
    for t, depth in [(0, 10), (10, 10), (40, 10)]:
        r.now = float(t)
        r.set(broker_connected=False, outbox_depth=depth)
        monitor.poll()
    assert book.active() == []  # down 40 s, but nothing waits to go out
    r.now = 45.0
    r.set(broker_connected=False, outbox_depth=20)
    monitor.poll()
    (alarm,) = book.active()
    assert alarm.code == "broker_offline" and "20 messages wait" in alarm.message
    r.now = 46.0
    r.set(broker_connected=True, outbox_depth=20)
    monitor.poll()
    assert book.active() == []


def test_monitor_adopts_and_clears_alarms_left_by_a_previous_run(book: AlarmBook) -> None:
    stale = book.raise_alarm("camera_lost", "lost before the restart", station="s1")
    foreign = book.raise_alarm("drift", "not the rules' business")
    r = Readings()
    AlarmMonitor(CFG, book, r.read, monotonic=lambda: r.now).poll()
    assert [a.id for a in book.active()] == [foreign.id]
    assert not book.get(stale.id).active


def test_one_alarm_is_one_event_whoever_raises_or_ends_it(store: Store,
                                                           book: AlarmBook) -> None:
    # The falling-behind monitor, the store's writer and a failed model load raise their
    # alarm themselves, and the rules see the same conditions: each opening and each
    # ending is still one event (they used to be two: `alarm` and `alarm_raised`).
    r = Readings()
    monitor = AlarmMonitor(CFG, book, r.read, monotonic=lambda: r.now)
    monitor.poll()

    def by_the_store(change: AlarmChange) -> None:
        store.transact(lambda conn: alarm_rows.apply(conn, change), urgent=True).result(5.0)

    # its owner first (with its facts), then the rules
    owned = book.raise_alarm("falling_behind", "30 frames/s captured, 10 judged",
                             data={"input_fps": 30.0}, bump=False)
    r.set(falling_behind="falling behind: 30 frames/s captured")
    r.now += 1
    monitor.poll()
    # the rules first, then the store's writer
    r.set(falling_behind="falling behind: 30 frames/s captured",
          free_disk_bytes=50 * MiB)
    r.now += 1
    monitor.poll()
    by_the_store(AlarmChange(1.0, "disk_low", True, "images stop at the floor"))
    # the store's outage: never raised by the rules (the store raises it once it can)
    r.set(falling_behind="falling behind: 30 frames/s captured",
          free_disk_bytes=50 * MiB, store_unwritable=True)
    r.now += 1
    monitor.poll()
    assert "store_unwritable" not in [a.code for a in book.active()]
    # all over: each ended by its owner and by the rules
    book.clear("falling_behind", message="caught up")
    by_the_store(AlarmChange(2.0, "disk_low", False, "images again"))
    r.set()
    r.now += 1
    monitor.poll()
    assert book.active() == []
    assert book.get(owned.id).count == 1 and book.get(owned.id).message.startswith("30 ")
    for code in ("falling_behind", "disk_low"):
        kinds = [k for k, _, d in events(store) if d.get("alarm") == code]
        assert kinds == ["alarm_raised", "alarm_resolved"], (code, kinds)
    assert [d.get("input_fps") for k, _, d in events(store)
            if d.get("alarm") == "falling_behind" and k == "alarm_raised"] == [30.0]


def test_monitor_survives_a_stopped_store(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    book = AlarmBook(store)
    r = Readings()
    r.set(sources={"s1": "lost"})
    monitor = AlarmMonitor(CFG, book, r.read, monotonic=lambda: r.now)
    store.stop()
    assert monitor.poll() is None  # logged, retried at the next poll


# ---------------------------------------------------------------------- in the App
class Unpluggable:
    """A camera whose cable a test can pull (`unplugged.set()`) and put back."""

    def __init__(self) -> None:
        self.unplugged = threading.Event()
        self.n = 0

    def open(self) -> None:
        if self.unplugged.is_set():
            raise SourceLost("no camera")

    def read(self) -> SourceRead:
        if self.unplugged.is_set():
            raise SourceLost("cable pulled")
        time.sleep(0.01)  # a 100 fps camera
        self.n += 1
        return np.full((64, 96, 3), self.n % 256, np.uint8), None, None

    def close(self) -> None:
        pass


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_app_raises_camera_lost_and_clears_it_when_the_camera_returns(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "bundles")
    cfg = load_config(None, {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim", "reconnect": {
            "initial_s": 0.05, "max_s": 0.1}}}],
        "model": {"bundle": str(bundle.root)},
        "engine": {"intra_op_threads": 1},
        "alarms": {"poll_interval_s": 0.1},
    })
    camera = Unpluggable()
    app = App(cfg, sources={"cam": camera})
    app.start()
    try:
        book = app.alarms
        assert book is not None
        wait_for(lambda: camera.n > 5)
        assert book.active() == []
        camera.unplugged.set()
        wait_for(lambda: [a.code for a in book.active()] == ["camera_lost"])
        (alarm,) = book.current()
        assert alarm.station == "cam" and alarm.severity == "critical"
        camera.unplugged.clear()
        wait_for(lambda: book.active() == [])
        assert [a.id for a in book.current()] == [alarm.id]  # until acknowledged
        book.acknowledge(alarm.id, "anna")
        assert book.current() == []
    finally:
        app.stop()


def test_schema_allows_one_active_row_per_code_and_station(store: Store) -> None:
    conn = sqlite3.connect(str(store.path))
    insert = ("INSERT INTO alarms (code, station, severity, message, raised_at,"
              " last_raised_at, cleared_at) VALUES (?, ?, 'warning', 'm', 0, 0, ?)")
    try:
        conn.execute(insert, ("drift", None, None))
        conn.execute(insert, ("drift", None, 5.0))  # cleared occurrences: any number
        conn.execute(insert, ("drift", "s1", None))
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(insert, ("drift", None, None))
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO alarms (code, severity, message, raised_at,"
                         " last_raised_at, acked_at) VALUES ('x', 'warning', 'm', 0, 0, 1)")
    finally:
        conn.rollback()
        conn.close()

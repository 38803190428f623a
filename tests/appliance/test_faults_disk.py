"""Fault suite, disk: the data directory on a small tmpfs that fills up during a run.

What must hold: images stop first (`disk_low`); a full disk spends the database's reserve
(`store_reserve_used`) so verdicts keep committing; when even that is gone the appliance
says so (`store_unwritable` alarm, `App.readiness()` not ready) and reports no part as
`pass`; when space returns it recovers by itself (commits the backlog, ready again, the
reserve re-created); no committed verdict is lost and no seq is used twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.app import App
from appliance.config import ApplianceConfig, config_from_dict
from appliance.errors import StoreError
from appliance.records import InspectionRecord
from tests.appliance.pipeline_helpers import seq_of

pytestmark = pytest.mark.timeout(240)

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"

MiB = 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs (skips where mount is not permitted)."""
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root and mount(8) to make a small filesystem (tmpfs)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the filesystem is full; returns the bytes written."""
    written = 0
    chunk = b"\xa5" * 65536
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as f:
        for _ in range(64):  # the last, partial chunk
            written += f.write(b"\xa5" * 1024)
    return written


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def committed(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT frame_id, verdict FROM inspections").fetchall())
    finally:
        conn.close()


def disk_config(data_dir: Path) -> ApplianceConfig:
    """The demo model (it judges the simulated parts pass and fail: a mix is what shows
    that no pass is reported while verdicts cannot be stored), images kept above a 2 MiB
    floor, a 1 MiB reserve for the database."""
    return config_from_dict({
        "data_dir": str(data_dir),
        "stations": [{"name": "cam", "source": {"kind": "sim", "width_px": 96,
                                                "height_px": 64, "realtime": True,
                                                "parts_per_minute": 600}}],
        "model": {"bundle": str(DEMO)},
        "engine": {"intra_op_threads": 1},
        "store": {"flush_interval_ms": 20, "reserve_bytes": MiB,
                  "images": {"keep_pass_fraction": 1.0, "min_free_disk_bytes": 2 * MiB,
                             "annotate_fails": False}},
    })


def test_a_full_data_disk_loses_no_verdict_and_recovers_by_itself(
    small_disk: Path,
) -> None:
    cfg = disk_config(small_disk)
    db = cfg.store.path
    verdicts: list[InspectionRecord] = []
    lock = threading.Lock()

    def listen(record: InspectionRecord) -> None:
        with lock:
            verdicts.append(record)

    app = App(cfg, listeners=[listen])
    app.start()
    assert app.store is not None
    store = app.store
    try:
        wait_for("first images and verdicts", lambda: store.stats().images_kept >= 3
                 and len(committed(db)) >= 3)
        assert app.readiness().ready
        before = committed(db)
        assert len(before) >= 3

        # Someone else fills the disk: images stop, the reserve is spent, verdicts go on.
        filler = small_disk / "filler-1"
        fill(filler)
        wait_for("the reserve released", lambda: not store.stats().reserve_held)
        # ... and the disk stays full: the released reserve is taken too.
        fill(small_disk / "filler-2")
        wait_for("the store unwritable", lambda: store.unwritable)
        wait_for("not ready", lambda: "store_unwritable" in app.readiness().reasons)
        with lock:
            mark = len(verdicts)
        wait_for("parts judged while unwritable", lambda: len(verdicts) >= mark + 20)
        with lock:
            during = verdicts[mark:mark + 20]
        assert all(r.verdict != "pass" for r in during)
        assert {r.reason for r in during if r.verdict == "uninspected"} <= {"store_full"}
        assert any(r.reason == "store_full" for r in during)

        # Space returns: the line recovers by itself.
        (small_disk / "filler-2").unlink()
        filler.unlink()
        wait_for("the store commits again", lambda: not store.unwritable)
        wait_for("ready again", lambda: app.readiness().ready)
        wait_for("the reserve back", lambda: store.stats().reserve_held, timeout_s=30)
        with lock:
            mark = len(verdicts)
        wait_for("passes again", lambda: any(
            r.verdict == "pass" for r in verdicts[mark:]))
    finally:
        app.stop()

    after = committed(db)
    assert {k: after.get(k) for k in before} == before  # no committed verdict lost
    seqs = sorted(seq_of(f) for f in after)
    assert seqs == list(range(len(seqs)))  # every frame has one row, none reused
    assert len(after) == len(verdicts)
    conn = sqlite3.connect(db)
    try:
        events = [(k, json.loads(d).get("alarm")) for k, d in
                  conn.execute("SELECT kind, data FROM events ORDER BY id")]
        state = conn.execute("SELECT state FROM run_state").fetchone()[0]
        reasons = dict(conn.execute(
            "SELECT reason, count(*) FROM inspections WHERE verdict = 'uninspected'"
            " GROUP BY reason").fetchall())
    finally:
        conn.close()
    for alarm in ("disk_low", "store_reserve_used", "store_unwritable"):
        assert ("alarm_raised", alarm) in events, events
    assert ("alarm_resolved", "store_unwritable") in events
    assert ("alarm_resolved", "store_reserve_used") in events
    # one alarm, one event: the store and the alarm rules see the same conditions, and
    # the second to raise an active alarm writes nothing
    for alarm in ("store_reserve_used", "store_unwritable"):
        raised = [k for k, a in events if a == alarm and k == "alarm_raised"]
        resolved = [k for k, a in events if a == alarm and k == "alarm_resolved"]
        assert len(raised) == len(resolved) == 1, events
    assert not [k for k, a in events if a is not None and k in ("alarm", "alarm_cleared")]
    assert reasons.get("store_full", 0) >= 20
    assert state == "clean"


def test_a_stop_on_a_full_disk_is_recorded_at_the_next_start(small_disk: Path) -> None:
    cfg = disk_config(small_disk)
    seen: list[str] = []
    app = App(cfg, listeners=[lambda r: seen.append(r.frame_id)])
    app.start()
    assert app.store is not None
    store = app.store
    wait_for("first verdicts", lambda: store.stats().committed >= 5)
    fill(small_disk / "filler-1")
    wait_for("the reserve released", lambda: not store.stats().reserve_held)
    fill(small_disk / "filler-2")
    wait_for("the store unwritable", lambda: store.unwritable)
    first_lost = len(seen)
    wait_for("verdicts that cannot be committed", lambda: len(seen) >= first_lost + 10)
    with pytest.raises(StoreError, match="not committed"):
        app.stop()  # the disk is still full: the store gives up (loudly)
    lost = set(seen)

    for filler in small_disk.glob("filler-*"):
        filler.unlink()
    later: list[str] = []
    again = App(cfg, max_frames=5, listeners=[lambda r: later.append(r.frame_id)])
    summary = again.run(threading.Event())
    assert summary.frames == 5
    assert not lost & set(later)  # the new run numbers after every frame of the old one
    rows = committed(cfg.store.path)
    assert lost <= set(rows)  # every frame of the first run has a row now
    seqs = sorted(seq_of(f) for f in rows)
    assert seqs == list(range(len(seqs)))  # and none was used twice
    conn = sqlite3.connect(cfg.store.path)
    try:
        [(data,)] = conn.execute(
            "SELECT data FROM events WHERE kind = 'unclean_stop'").fetchall()
        crash = conn.execute("SELECT count(*) FROM inspections WHERE reason = 'crash'"
                             ).fetchone()[0]
    finally:
        conn.close()
    assert json.loads(data)["frames"] == crash >= 10

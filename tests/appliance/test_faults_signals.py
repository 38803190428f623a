"""Fault suite, signals: the appliance as a real process under SIGTERM (empty queue, full
queue, during a model swap) and SIGKILL at random moments (a loop of 20 runs, slow).

What must hold: exit 0 on SIGTERM (never SIGABRT), stop within `drain_timeout_s` plus
the store's flush, every captured frame judged or `uninspected: shutdown`; after a kill
the database passes its integrity check, the next start records the frames captured and
never judged as `uninspected: crash` with an `unclean_stop` event, and no seq is reused.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from models.bundle import Bundle
from tests.appliance.pipeline_helpers import seq_of, tiny_bundle

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "models" / "demo" / "bundle"
pytestmark = pytest.mark.timeout(300)

STORE_FLUSH_S = 10.0  # App.stop gives the store this long to commit (Store.stop default)
EXIT_MARGIN_S = 5.0  # interpreter and ONNX Runtime teardown, telemetry: not the drain


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundles"))


def write_config(tmp_path: Path, bundle_root: Path, *, size_px: tuple[int, int] = (96, 64),
                 realtime: bool = False, **pipeline: object) -> Path:
    data = {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim", "width_px": size_px[0],
                                                "height_px": size_px[1],
                                                "realtime": realtime}}],
        "model": {"bundle": str(bundle_root)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block", **pipeline},
        "store": {"flush_interval_ms": 20},
    }
    path = tmp_path / "lineguard.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


class Child:
    """A running appliance process; its stdout lines are read (with arrival times) by a
    thread so the test can wait for them."""

    def __init__(self, argv: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.err = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cv:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cv.notify_all()

    def wait_line(self, predicate: object, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while True:
                for _, line in self.lines:
                    if predicate(line):  # type: ignore[operator]
                        return line
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
                self._cv.wait(0.2)
        self.proc.kill()
        self.finish()
        pytest.fail(f"no expected line; stdout {self.lines[-5:]}, stderr {self.err[-3000:]}")

    def finish(self, timeout_s: float = 120.0) -> tuple[int, float]:
        """Wait for exit: (returncode, monotonic time of exit)."""
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()
        self.proc.wait(timeout_s)
        ended = time.monotonic()
        self._reader.join(10)
        self.proc.stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode, ended


def appliance(config: Path, *extra: str) -> Child:
    return Child([sys.executable, "-m", "lineguard", "appliance", "run", "--config",
                  str(config), *extra])


def rows(db: Path) -> list[tuple[str, str, str | None]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute("SELECT frame_id, verdict, reason FROM inspections").fetchall()
    finally:
        conn.close()


def committed_count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM inspections").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def wait_rows(child: Child, db: Path, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while committed_count(db) < n:
        if child.proc.poll() is not None or time.monotonic() > deadline:
            child.proc.kill()
            child.finish()
            pytest.fail(f"no {n} rows: {child.lines[-5:]} {child.err[-3000:]}")
        time.sleep(0.05)


def sigterm_and_check(child: Child, db: Path, drain_timeout_s: float) -> dict[str, object]:
    """SIGTERM, then: exit 0 within drain + flush, one row per frame (seqs 0..n-1)."""
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    code, ended = child.finish()
    assert code == 0, child.err[-3000:]
    assert "terminate called" not in child.err
    assert ended - sent < drain_timeout_s + STORE_FLUSH_S + EXIT_MARGIN_S, child.err[-2000:]
    summary = json.loads(child.lines[-1][1])
    got = rows(db)
    assert len(got) == summary["frames"]
    assert sorted(seq_of(f) for f, _, _ in got) == list(range(len(got)))
    return summary


def test_sigterm_with_an_empty_queue_exits_0_at_once(tmp_path: Path, bundle: Bundle) -> None:
    cfg = write_config(tmp_path, bundle.root, realtime=True, drain_timeout_s=5)
    db = tmp_path / "data" / "lineguard.db"
    child = appliance(cfg, "--json")
    wait_rows(child, db, 5)
    summary = sigterm_and_check(child, db, 5.0)
    assert summary["stopped_by"] == "signal"
    assert summary["uninspected"].get("shutdown", 0) <= 1  # type: ignore[attr-defined]


def test_sigterm_with_a_full_queue_stops_within_the_drain_timeout(tmp_path: Path) -> None:
    # The demo model at 320 px on one thread is far slower than the simulated line: the
    # queue fills (overflow: block), as in the probe that saw exit 134 with 600 queued.
    # A quarter-second drain budget judges at most a few dozen of the 250+ queued frames
    # (it would take 600 frames/s to judge 150): the rest must be recorded `shutdown`.
    drain_s = 0.25
    cfg = write_config(tmp_path, DEMO, size_px=(128, 96), drain_timeout_s=drain_s,
                       queue_frames=300, max_batch=4)
    db = tmp_path / "data" / "lineguard.db"
    child = appliance(cfg, "--status-interval-s", "0.2")
    child.wait_line(lambda line: " fps | " in line and queue_depth(line) >= 250, timeout_s=120)
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    code, ended = child.finish()
    assert code == 0, child.err[-3000:]
    assert "terminate called" not in child.err
    assert ended - sent < drain_s + STORE_FLUSH_S + EXIT_MARGIN_S, child.err[-2000:]
    got = rows(db)
    shutdown = [f for f, v, r in got if r == "shutdown"]
    assert len(shutdown) >= 100  # the backlog was recorded, not judged after the budget
    assert sorted(seq_of(f) for f, _, _ in got) == list(range(len(got)))
    assert "drain timed out" in child.err


def test_sigterm_during_a_model_swap(tmp_path: Path, bundle: Bundle) -> None:
    other = tiny_bundle(tmp_path / "other", version=2)
    cfg = write_config(tmp_path, bundle.root, drain_timeout_s=2)
    db = tmp_path / "data" / "lineguard.db"
    child = Child([sys.executable, "-m", "tests.appliance.fault_child", str(cfg),
                   str(other.root), str(bundle.root)])
    child.wait_line(lambda line: line == "swapping")
    wait_rows(child, db, 20)
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    code, ended = child.finish()
    assert code == 0, child.err[-3000:]
    assert "terminate called" not in child.err
    assert ended - sent < 2.0 + STORE_FLUSH_S + EXIT_MARGIN_S
    summary = json.loads(child.lines[-1][1])
    got = rows(db)
    assert len(got) == summary["frames"]
    assert sorted(seq_of(f) for f, _, _ in got) == list(range(len(got)))


def queue_depth(line: str) -> int:
    """The batcher's queue depth in a status line."""
    words = line.replace("|", " ").split()
    return int(words[words.index("queue") + 1])


def queued_lower_bound(line: str) -> int:
    """Frames a status line proves were captured: verdicts delivered plus queued."""
    words = line.replace("|", " ").split()
    n = sum(int(words[words.index(k) + 1]) for k in ("pass", "fail", "uninspected"))
    return n + int(words[words.index("queue") + 1])


def marks(db: Path) -> dict[str, tuple[int, int]]:
    conn = sqlite3.connect(db)
    try:
        return {s: (int(a), int(b)) for s, a, b in
                conn.execute("SELECT station, first_seq, high_seq FROM capture_marks")}
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_every_captured_frame_accounted_for(
    tmp_path: Path, bundle: Bundle
) -> None:
    rng = random.Random(9)
    cfg = write_config(tmp_path, bundle.root, queue_frames=200)
    db = tmp_path / "data" / "lineguard.db"
    kills = 20
    for _ in range(kills):
        child = appliance(cfg, "--status-interval-s", "0.05")
        child.wait_line(lambda line: " fps | " in line)
        time.sleep(rng.uniform(0.0, 1.0))  # a random moment of the run, not a wait
        killed = time.monotonic()
        child.proc.send_signal(signal.SIGKILL)
        code, _ = child.finish()
        assert code == -signal.SIGKILL
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
        # Frames a status line printed a few writer batches before the kill were
        # captured: the persisted high-water mark covers them.
        seen = [queued_lower_bound(line) for at, line in child.lines
                if " fps | " in line and at < killed - 0.3]
        if seen and max(seen):
            first, high = marks(db)["cam"]
            assert high >= first + max(seen) - 1
    # One orderly run reconciles the last kill.
    child = appliance(cfg, "--json", "--frames", "5")
    code, _ = child.finish()
    assert code == 0, child.err[-3000:]
    got = rows(db)
    seqs = sorted(seq_of(f) for f, _, _ in got)
    assert seqs == list(range(len(seqs)))  # no seq reused (UNIQUE ids) and no hole
    conn = sqlite3.connect(db)
    try:
        unclean = conn.execute("SELECT data FROM events WHERE kind = 'unclean_stop'").fetchall()
        state = conn.execute("SELECT state FROM run_state").fetchone()[0]
    finally:
        conn.close()
    assert len(unclean) == kills
    crash = sum(1 for _, _, r in got if r == "crash")
    assert crash == sum(json.loads(d)["frames"] for (d,) in unclean) > 0
    assert state == "clean"


CRASHING_STORE = """
import os, sys, time
from pathlib import Path
from appliance.records import InspectionRecord
from appliance.store import Store
from tests.appliance.pipeline_helpers import store_config

store = Store(store_config(Path(sys.argv[1])))
store.start()
now = time.time()
for seq in range(10):  # ten frames captured, five judged and committed
    store.note_captured("cam", seq, now)
for seq in range(5):
    store.submit(InspectionRecord(
        frame_id=f"cam:{seq}", station="cam", part_id=None, captured_at=now, judged_at=now,
        verdict="pass", reason=None, model_version="m:1", preprocess_hash=None,
        latency_ms={}))
store.flush()
os._exit(0)  # dies like a kill: no stop, no clean-stop marker
"""


def test_a_start_after_a_crash_records_the_unjudged_frames(tmp_path: Path) -> None:
    from appliance.store import Store
    from tests.appliance.pipeline_helpers import store_config

    done = subprocess.run([sys.executable, "-c", CRASHING_STORE, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    store = Store(store_config(tmp_path))
    try:
        assert [(g.station, g.first_seq, g.last_seq, g.missing) for g in store.crash_gaps] \
            == [("cam", 5, 9, 5)]
        assert store.next_sequence("cam") == 10  # never re-used
        store.start()
        assert store.uninspected_by_reason() == {"crash": 5}
        [event] = store.events(kinds=["unclean_stop"])
        assert event["severity"] == "alarm"
        assert event["data"]["cam.first_seq"] == 5 and event["data"]["frames"] == 5
    finally:
        store.stop()
    store = Store(store_config(tmp_path))  # stopped cleanly: nothing more to record
    try:
        assert store.crash_gaps == []
    finally:
        store.stop()

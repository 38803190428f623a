"""kill -9 of a process writing through Store leaves a sound database holding every
verdict that was committed before the kill."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from appliance.store import Store
from tests.appliance.test_store_writer import make_cfg

REPO = Path(__file__).resolve().parents[2]

# Writes forever; after each flush prints how many records are committed.
WRITER = r"""
import sys
from pathlib import Path
from appliance.records import DefectRecord, InspectionRecord
from appliance.store import ImageKeepConfig, Store, StoreConfig

root = Path(sys.argv[1])
store = Store(StoreConfig(
    path=root / "store.db", batch_max_rows=128, flush_interval_ms=2,
    images=ImageKeepConfig(dir=root / "images", keep_pass_fraction=0.0, min_free_disk_bytes=0),
))
store.start()
i = 0
while True:
    for _ in range(1000):
        fail = i % 4 == 0
        store.submit(InspectionRecord(
            frame_id=f"k:{i}", station="k", part_id=None, captured_at=float(i),
            judged_at=float(i) + 0.01, verdict="fail" if fail else "pass", reason=None,
            model_version="1", preprocess_hash="h", latency_ms={"total": 5.0},
            defects=(DefectRecord(0, "pit", 0.9, (1.0, 2.0, 3.0, 4.0)),) if fail else (),
        ))
        i += 1
    store.flush()
    print(i, flush=True)
"""


def _read_lines(proc: subprocess.Popen[bytes], want: int, deadline: float) -> bytes:
    """Read stdout until `want` lines or the deadline (never blocks past it)."""
    assert proc.stdout is not None
    buf = b""
    while buf.count(b"\n") < want and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_kill_9_keeps_every_committed_verdict(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        early = _read_lines(proc, want=4, deadline=time.monotonic() + 60)
        assert early.count(b"\n") >= 4 and proc.poll() is None, early
        # the writer keeps going while we kill it: the kill lands mid-stream, usually
        # between a batch's first write to the WAL and its commit
        time.sleep(0.025)
        os.kill(proc.pid, signal.SIGKILL)
        late, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()
    printed = (early + late).decode()
    committed = int(printed[: printed.rindex("\n")].splitlines()[-1])  # last complete line

    conn = sqlite3.connect(str(tmp_path / "store.db"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = conn.execute("SELECT frame_id FROM inspections").fetchall()
        ids = sorted(int(r[0].split(":")[1]) for r in rows)
        defects = conn.execute("SELECT count(*) FROM defects").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM defects WHERE inspection_id NOT IN (SELECT id FROM inspections)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert len(ids) >= committed > 0
    assert ids == list(range(len(ids)))  # commits are in order: a prefix, no gaps, no dups
    assert defects == sum(1 for i in ids if i % 4 == 0) and orphans == 0

    # the appliance starts again on the same file (the dead process's lock is gone)
    with Store(make_cfg(tmp_path)) as store:
        assert store.inspection_count() == len(ids)

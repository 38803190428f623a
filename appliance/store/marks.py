"""The captured high-water mark and the clean-stop marker: what lets a start after a kill
say which frames were captured and never judged.

`CaptureMarks` holds, per station, the first seq this run numbered and the highest seq
captured so far. Sources note every frame here (a dict update under a lock); the store's
writer writes the marks that changed inside each batch's transaction (`dirty` /
`written`), so persisting them costs one small upsert per station per batch, never a
write per frame. The `run_state` row is `running` from open to a complete stop, then
`clean`.

`reconcile` runs when the store opens, on the write connection, before the writer
starts. If the last run did not stop cleanly (killed, crashed, or stopped with records
it could not commit), every seq in a station's marked range `[first_seq, high_seq]`
without an inspection row gets one: `uninspected: crash`, and one `unclean_stop` alarm
event records the ranges. So a restart never reuses a seq a part already had, and the
parts appear in reports as `uninspected: crash`.

Invariants:
- a seq noted before the last committed batch of a killed run is in a marked range;
  one noted after it (within one `flush_interval_ms`) may leave no trace: that window
  is the price of writing per batch instead of per frame;
- after `reconcile`, every station's marked range is covered by inspection rows and the
  marks are cleared for the new run.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from appliance.records import UninspectedReason

logger = logging.getLogger(__name__)

UPSERT_MARK = (
    "INSERT INTO capture_marks (station, first_seq, high_seq, updated_at) VALUES (?, ?, ?, ?)"
    " ON CONFLICT(station) DO UPDATE SET high_seq = max(high_seq, excluded.high_seq),"
    " updated_at = excluded.updated_at"
)
SET_RUN_STATE = (
    "INSERT INTO run_state (id, state, changed_at) VALUES (1, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET state = excluded.state, changed_at = excluded.changed_at"
)
MarkRow = tuple[str, int, int, float]


class CaptureMarks:
    """Per station: (first seq of this run, highest seq captured, when). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marks: dict[str, MarkRow] = {}
        self._dirty: set[str] = set()

    def note(self, station: str, seq: int, at: float) -> bool:
        """Note a captured frame; True if this made the marks dirty (wake the writer)."""
        with self._lock:
            old = self._marks.get(station)
            if old is None:
                self._marks[station] = (station, seq, seq, at)
            elif seq > old[2]:
                self._marks[station] = (station, old[1], seq, at)
            else:
                return False
            was_clean = not self._dirty
            self._dirty.add(station)
            return was_clean

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def changed(self) -> list[MarkRow]:
        """The marks not yet written (for the batch being committed)."""
        with self._lock:
            return [self._marks[s] for s in self._dirty]

    def rows(self) -> list[MarkRow]:
        """Every station's mark of this run."""
        with self._lock:
            return list(self._marks.values())

    def written(self, rows: list[MarkRow]) -> None:
        """These rows committed: clean unless a newer mark arrived meanwhile."""
        with self._lock:
            for row in rows:
                if self._marks.get(row[0]) == row:
                    self._dirty.discard(row[0])


class HighWaterFile:
    """The marks beside the database (`<db>.hwm`), for when the database itself cannot
    take them: a disk full (the writer writes the file on every failed commit, and the
    store at a stop that could not commit everything). The file is allocated once at
    open (`SIZE` bytes) and overwritten in place, so writing it needs no free space."""

    SIZE = 16384

    def __init__(self, path: Path) -> None:
        self.path = path

    def create(self) -> None:
        """Allocate the file if it is missing. Raises OSError."""
        if not self.path.exists() or self.path.stat().st_size < self.SIZE:
            self.path.write_bytes(bytes(self.SIZE))

    def write(self, rows: list[MarkRow]) -> None:
        """Overwrite the file with `rows` (logged, never raised, if it cannot)."""
        data = json.dumps([list(r) for r in rows]).encode()
        if len(data) > self.SIZE:
            logger.error("%s: %d stations do not fit", self.path, len(rows))
            return
        try:
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, data.ljust(self.SIZE, b"\0"), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            logger.error("cannot write the captured high-water marks to %s: %s", self.path, e)

    def read(self) -> list[MarkRow]:
        """The marks in the file ([] if none or unreadable)."""
        if not self.path.exists():
            return []
        try:
            text = self.path.read_bytes().rstrip(b"\0")
            if not text:
                return []
            return [(str(a), int(b), int(c), float(d)) for a, b, c, d in json.loads(text)]
        except (OSError, ValueError, TypeError) as e:
            logger.warning("ignoring the high-water file %s: %s", self.path, e)
            return []

    def clear(self) -> None:
        """Empty it (in place). Raises OSError."""
        if self.path.exists():
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.pwrite(fd, bytes(self.SIZE), 0)
                os.fsync(fd)
            finally:
                os.close(fd)


def merge_marks(*sources: list[MarkRow]) -> list[MarkRow]:
    """One mark per station: the lowest first seq and the highest high seq seen."""
    merged: dict[str, MarkRow] = {}
    for rows in sources:
        for station, first, high, at in rows:
            old = merged.get(station)
            merged[station] = (station, first, high, at) if old is None else (
                station, min(old[1], first), max(old[2], high), max(old[3], at))
    return [merged[k] for k in sorted(merged)]


@dataclass(frozen=True, slots=True)
class CrashGap:
    """A station's frames captured by an unclean run and never judged."""

    station: str
    first_seq: int
    last_seq: int
    missing: int


def _missing_seqs(conn: sqlite3.Connection, station: str, first: int, high: int) -> list[int]:
    have = conn.execute(
        "SELECT count(*) FROM inspections WHERE station = ? AND seq BETWEEN ? AND ?",
        (station, first, high),
    ).fetchone()[0]
    if have == high - first + 1:
        return []
    stored = {int(r[0]) for r in conn.execute(
        "SELECT seq FROM inspections WHERE station = ? AND seq BETWEEN ? AND ?",
        (station, first, high),
    )}
    return [s for s in range(first, high + 1) if s not in stored]


def fill_gaps(conn: sqlite3.Connection, marks: list[MarkRow], now: float, *,
              reason: str) -> list[CrashGap]:
    """Give every seq in the marked ranges without an inspection row one:
    `uninspected: reason`, captured at the mark's time. Returns the gaps filled. Runs on
    `conn` in the caller's transaction (or autocommit). Raises sqlite3.Error."""
    gaps: list[CrashGap] = []
    next_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM inspections").fetchone()[0]) + 1
    for station, first, high, at in marks:
        missing = _missing_seqs(conn, station, int(first), int(high))
        if not missing:
            continue
        conn.executemany(
            "INSERT INTO inspections (id, frame_id, station, captured_at, judged_at,"
            " verdict, reason, defect_count, seq) VALUES (?, ?, ?, ?, ?,"
            " 'uninspected', ?, 0, ?)",
            [(next_id + i, f"{station}:{seq}", station, float(at), now, reason, seq)
             for i, seq in enumerate(missing)],
        )
        next_id += len(missing)
        gaps.append(CrashGap(station, missing[0], missing[-1], len(missing)))
    return gaps


def reconcile(conn: sqlite3.Connection, now: float,
              extra: list[MarkRow] | None = None) -> list[CrashGap]:
    """See the module docstring; `extra` are marks from the high-water file (merged with
    the table's). Runs in one transaction on `conn` (autocommit mode, no transaction
    open); returns the gaps it recorded. Raises sqlite3.Error."""
    gaps: list[CrashGap] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT state FROM run_state WHERE id = 1").fetchone()
        if row is not None and row[0] != "clean":
            marks = [(str(st), int(a), int(b), float(t)) for st, a, b, t in conn.execute(
                "SELECT station, first_seq, high_seq, updated_at FROM capture_marks"
                " ORDER BY station")]
            gaps = fill_gaps(conn, merge_marks(marks, extra or []), now,
                             reason=str(UninspectedReason.CRASH))
            data = {"stations": len(gaps), "frames": sum(g.missing for g in gaps)}
            for g in gaps:
                data[f"{g.station}.first_seq"] = g.first_seq
                data[f"{g.station}.last_seq"] = g.last_seq
                data[f"{g.station}.missing"] = g.missing
            ranges = ", ".join(f"{g.station}:{g.first_seq}..{g.station}:{g.last_seq}"
                               f" ({g.missing})" for g in gaps) or "none"
            conn.execute(
                "INSERT INTO events (at, kind, severity, source, message, data)"
                " VALUES (?, 'unclean_stop', ?, 'store', ?, ?)",
                (now, "alarm" if gaps else "warning",
                 f"the last run did not stop cleanly; frames captured without a verdict, "
                 f"recorded as uninspected: crash: {ranges}",
                 json.dumps(data, allow_nan=False)),
            )
            if gaps:
                logger.error("the last run did not stop cleanly: %s recorded as "
                             "uninspected: crash", ranges)
            else:
                logger.warning("the last run did not stop cleanly; no frame lost its verdict")
        conn.execute("DELETE FROM capture_marks")
        conn.execute(SET_RUN_STATE, ("running", now))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return gaps


def mark_clean(conn: sqlite3.Connection, now: float) -> None:
    """Write the clean-stop marker (every captured frame is committed). Raises
    sqlite3.Error."""
    conn.execute(SET_RUN_STATE, ("clean", now))

"""The upload queue: samples waiting for the cloud, in the store's `upload_queue` table
(through the store's single writer) with their JPEGs in a spool directory.

Invariants:
- A row's JPEG is written (atomically) before its row is committed, and deleted only
  after its row is gone: a row never names a missing file, except after a crash or a
  hand-deleted file, which `recover` finds (the row is dropped and counted).
- Bounded: after an add, at most `max_items` rows and `max_bytes` JPEG bytes are left;
  the oldest rows go first (returned, so the caller reports them). Adding never blocks
  on the bound.
- `sample_id` is UNIQUE: adding a sample id that is queued is a no-op (same sample).
- Sent oldest first (`id`, AUTOINCREMENT).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from appliance.errors import StoreError
from appliance.store import Store
from appliance.store.queries import open_reader
from protocol.atomic import atomic_write_bytes, is_temp_name

logger = logging.getLogger(__name__)

T = TypeVar("T")
WRITE_TIMEOUT_S = 10.0
_COLUMNS = "id, sample_id, frame_id, reason, meta_json, image, bytes, attempts"


@dataclass(frozen=True, slots=True)
class QueuedSample:
    id: int
    sample_id: str
    frame_id: str
    reason: str
    meta_json: str
    image: str
    """File name in the spool directory."""
    bytes: int
    attempts: int


@dataclass(frozen=True, slots=True)
class AddResult:
    added: bool
    """False: the sample id was queued already."""
    dropped: tuple[str, ...]
    """Sample ids dropped (oldest first) to keep within the bound."""
    replaced: int = 0
    """Samples of the same frame removed (`supersede`)."""


def spool_name(sample_id: str) -> str:
    """The JPEG's file name (`:` is not welcome in every file system; `~` is not allowed
    in a sample id, so names stay distinct)."""
    return sample_id.replace(":", "~") + ".jpg"


class UploadQueue:
    """See the module docstring. Thread-safe."""

    def __init__(self, store: Store, spool_dir: Path, *, max_items: int, max_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._dir = spool_dir
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._clock = clock

    @property
    def spool_dir(self) -> Path:
        return self._dir

    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        try:
            conn = open_reader(self._store.path)
            try:
                return [tuple(r) for r in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: reading the upload queue failed: {e}") from e

    def _commit(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._store.transact(work, urgent=True).result(WRITE_TIMEOUT_S)

    def _unlink(self, names: list[str]) -> None:
        for name in names:
            try:
                (self._dir / name).unlink(missing_ok=True)
            except OSError as e:
                logger.warning("cannot delete spooled image %s: %s", name, e)

    def recover(self) -> tuple[int, int]:
        """At start: delete spool files no row names (and temporary files); drop rows
        whose file is missing. Returns (files deleted, rows dropped)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        rows = self._read("SELECT id, image FROM upload_queue")
        names = {str(name) for _, name in rows}
        orphans = [p.name for p in self._dir.iterdir()
                   if p.is_file() and (p.name not in names or is_temp_name(p.name))]
        self._unlink(orphans)
        missing = [int(str(i)) for i, name in rows if not (self._dir / str(name)).is_file()]
        if missing:
            def work(conn: sqlite3.Connection) -> None:
                conn.executemany("DELETE FROM upload_queue WHERE id = ?",
                                 [(i,) for i in missing])
            self._commit(work)
            logger.warning("upload queue: %d sample(s) lost their image; dropped", len(missing))
        return len(orphans), len(missing)

    def add(self, sample_id: str, frame_id: str, reason: str, meta_json: str,
            jpeg: bytes, *, supersede: bool = False) -> AddResult:
        """Spool the JPEG and queue the sample; drop the oldest beyond the bound.
        `supersede`: first remove the frame's other samples still queued (an operator's
        newer labels replace what was not sent yet). Raises StoreError (nothing queued;
        the file is removed), OSError (spool not writable)."""
        name = spool_name(sample_id)
        file = self._dir / name
        existed = file.exists()
        if not existed:
            atomic_write_bytes(file, jpeg)
        now = self._clock()
        max_items, max_bytes = self._max_items, self._max_bytes

        def work(conn: sqlite3.Connection) -> tuple[bool, list[tuple[str, str]], list[str]]:
            replaced: list[str] = []
            if supersede:
                replaced = [str(r[0]) for r in conn.execute(
                    "SELECT image FROM upload_queue WHERE frame_id = ? AND sample_id <> ?",
                    (frame_id, sample_id)).fetchall()]
                conn.execute("DELETE FROM upload_queue WHERE frame_id = ? AND sample_id <> ?",
                             (frame_id, sample_id))
            added = conn.execute(
                "INSERT OR IGNORE INTO upload_queue (sample_id, frame_id, reason, meta_json,"
                " image, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sample_id, frame_id, reason, meta_json, name, len(jpeg), now)).rowcount == 1
            count, total = conn.execute(
                "SELECT count(*), coalesce(sum(bytes), 0) FROM upload_queue").fetchone()
            dropped: list[tuple[str, str]] = []
            if count > max_items or total > max_bytes:
                for _id, sid, image, size in conn.execute(
                        "SELECT id, sample_id, image, bytes FROM upload_queue ORDER BY id"
                ).fetchall():
                    if count <= max_items and total <= max_bytes:
                        break
                    conn.execute("DELETE FROM upload_queue WHERE id = ?", (_id,))
                    dropped.append((str(sid), str(image)))
                    count, total = count - 1, total - int(size)
            return added, dropped, replaced

        try:
            added, dropped, replaced = self._commit(work)
        except StoreError:
            if not existed:
                self._unlink([name])
            raise
        self._unlink([image for _, image in dropped] + replaced)
        return AddResult(added, tuple(sid for sid, _ in dropped), len(replaced))

    def oldest(self) -> QueuedSample | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM upload_queue ORDER BY id LIMIT 1")
        if not rows:
            return None
        i, sid, frame, reason, meta, image, size, attempts = rows[0]
        return QueuedSample(int(str(i)), str(sid), str(frame), str(reason), str(meta),
                            str(image), int(str(size)), int(str(attempts)))

    def image_bytes(self, sample: QueuedSample) -> bytes:
        """Raises OSError when the file is gone."""
        return (self._dir / sample.image).read_bytes()

    def remove(self, sample: QueuedSample) -> None:
        """The cloud has it (or it can never be sent): delete the row, then the file."""
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM upload_queue WHERE id = ?", (sample.id,))
        self._commit(work)
        self._unlink([sample.image])

    def tried(self, sample: QueuedSample, error: str) -> None:
        now = self._clock()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE upload_queue SET attempts = attempts + 1, last_try_at = ?,"
                         " last_error = ? WHERE id = ?", (now, error[:500], sample.id))
        self._commit(work)

    def depth(self) -> tuple[int, int]:
        """(samples, JPEG bytes) waiting."""
        rows = self._read("SELECT count(*), coalesce(sum(bytes), 0) FROM upload_queue")
        return int(str(rows[0][0])), int(str(rows[0][1]))

    def sample_ids(self) -> list[str]:
        """Queued sample ids, oldest first."""
        return [str(r[0]) for r in self._read("SELECT sample_id FROM upload_queue ORDER BY id")]

    def mark(self, name: str) -> int:
        rows = self._read("SELECT value FROM upload_marks WHERE name = ?", (name,))
        return int(str(rows[0][0])) if rows else 0

    def set_mark(self, name: str, value: int) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO upload_marks (name, value) VALUES (?, ?) ON CONFLICT"
                         " (name) DO UPDATE SET value = excluded.value", (name, value))
        self._commit(work)

"""The appliance's local store: verdicts, defects, events and kept images in SQLite.

`Store` wires the pieces: it opens the database (WAL, one write connection), migrates it
(backing it up first), reconciles the image directory with its ledger, and runs the
writer thread and the image keeper's encoder thread. Queries run on their own read-only
connections, one per call, from any thread. Another component that keeps a table in this
file (the telemetry outbox) writes it through `transact`, never on a connection of its
own.

Invariants:
- One process writes a database: `Store` holds an exclusive `flock` on `<db>.lock` from
  construction to `stop` (the OS drops it if the process dies); one thread (the writer's)
  writes it, so SQLite's write lock is never contended and never waited for.
- Every submitted record becomes exactly one `inspections` row, or is reported: a
  duplicate frame id is ignored (the first verdict wins) and counted, see writer.py.
  `submit` never drops a record: on a full queue it blocks, then raises StoreError.
- Committed means durable against a process kill; `flush` returns once everything
  submitted before it has committed. Why: in WAL mode a commit appends the transaction to
  the `-wal` file with write(2) before it returns, so the pages are in the OS's hands and
  survive `kill -9` (the next open replays the WAL). With synchronous=NORMAL the WAL is
  fsynced only at checkpoints, so a power cut or kernel crash can lose the transactions
  committed since the last checkpoint, never corrupt the file; synchronous=FULL (config)
  fsyncs every batch instead.
- Images never make the pipeline wait for JPEG encoding, except a `fail` frame offered
  to a full encoder queue (bounded by `fail_offer_timeout_ms`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from sqlite_utils import Database

from appliance.errors import StoreError
from appliance.records import EventRecord, InspectionRecord
from appliance.store import queries
from appliance.store.config import StoreConfig
from appliance.store.images import FreeDiskBytes, ImageKeeper, disk_free_bytes
from appliance.store.marks import (
    CaptureMarks,
    CrashGap,
    HighWaterFile,
    fill_gaps,
    mark_clean,
    reconcile,
)
from appliance.store.reserve import DiskReserve
from appliance.store.schema.migrations import MigrationResult, migrate
from appliance.store.transaction import Pending, T, Work
from appliance.store.writer import EVENT, INSPECTION, BatchWriter

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters for the panel and telemetry (since this Store was constructed)."""

    submitted: int
    committed: int
    queued: int
    duplicates_ignored: int
    rows_rejected: int
    write_retries: int
    last_error: str | None
    writer_cpu_s: float
    """CPU seconds the writer thread spent writing batches (its load: cpu_s / uptime)."""
    images_queued: int
    images_kept: int
    images_deleted: int
    images_skipped_pass: int
    images_skipped_fail: int
    images_bytes: int
    unwritable: bool
    """Batches fail to commit with the disk reserve spent (see `Store.unwritable`)."""
    reserve_held: bool
    """The database's disk reserve is in place (False: released or not allocated)."""
    images_protected_bytes: int = 0
    """Bytes of kept `fail` and pinned (labelled, not exported) images: when they reach
    the quota, `fail` images start to be evicted (see `ImageKeeper.protected_bytes`)."""


def frame_seq(frame_id: str, station: str) -> int | None:
    """The seq of a frame id `"<station>:<seq>"` (decimal digits), None for another shape
    (stored in `inspections.seq`, see `Store.next_sequence`)."""
    prefix, sep, digits = frame_id.rpartition(":")
    if sep and prefix == station and digits.isascii() and digits.isdigit():
        return int(digits)
    return None


def open_writer_db(path: os.PathLike[str] | str, synchronous: str = "NORMAL") -> Database:
    """The write connection: WAL journal, autocommit driver mode (transactions are
    explicit), usable from the writer thread. Raises sqlite3.Error."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    db = Database(conn, execute_plugins=False, recursive_triggers=False)
    db.enable_wal()
    db.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'FULL' else 'NORMAL'}")
    db.execute("PRAGMA cache_size = -32768")  # 32 MiB: keeps the frame_id index's pages hot
    db.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back to 64 MiB
    return db


class Store:
    """See the module docstring. Raises StoreError from the constructor if the database
    cannot be opened, locked, backed up or migrated."""

    def __init__(
        self,
        cfg: StoreConfig,
        *,
        clock: Callable[[], float] = time.time,
        free_disk_bytes: FreeDiskBytes = disk_free_bytes,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._started = False
        self._stopped = False
        try:
            cfg.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{cfg.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"{cfg.path}: cannot create the store's directory or lock: {e}") from e
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._lock_fd)
            raise StoreError(f"{cfg.path}: another process holds the store open") from e
        db: Database | None = None
        try:
            db = open_writer_db(cfg.path, cfg.synchronous)
            self.migration: MigrationResult = migrate(db, cfg.path, clock=clock)
            self._hwm = HighWaterFile(Path(f"{cfg.path}.hwm"))
            self.crash_gaps: list[CrashGap] = reconcile(db.conn, clock(), self._hwm.read())
            self._hwm.create()
            self._hwm.clear()
            """Frames the last run captured and never judged (recorded at open as
            `uninspected: crash`, see marks.py); empty after a clean stop."""
            self._reserve = DiskReserve(Path(f"{cfg.path}.reserve"), cfg.reserve_bytes)
            if not self._reserve.create():
                logger.error("no room for the database's %d-byte disk reserve on %s",
                             cfg.reserve_bytes, cfg.path.parent)
            self._marks = CaptureMarks()
            self._writer = BatchWriter(
                db,
                batch_max_rows=cfg.batch_max_rows,
                flush_interval_s=cfg.flush_interval_ms / 1000.0,
                queue_max_rows=cfg.queue_max_rows,
                submit_timeout_s=cfg.submit_timeout_ms / 1000.0,
                clock=clock,
                marks=self._marks,
                reserve=self._reserve,
                high_water=self._hwm,
            )
            self._keeper = ImageKeeper(
                cfg.images, post_ops=self._writer.put_ledger, clock=clock,
                free_disk_bytes=free_disk_bytes,
            )
            # images with labels not yet exported are pinned (one pin per label) before the
            # quota is enforced
            self._keeper.preload_pins([row[0] for row in db.execute(
                "SELECT frame_id FROM labels WHERE exported_at IS NULL").fetchall()])
            live = db.execute(
                "SELECT frame_id, path, bytes, verdict, created_at, annotated_path,"
                " annotated_bytes FROM images WHERE deleted_at IS NULL ORDER BY created_at, id"
            ).fetchall()
            self._writer.put_ledger(self._keeper.load(live))
            self._db = db
        except (sqlite3.Error, OSError, StoreError) as e:
            if db is not None:
                db.close()
            self._release_lock()
            if isinstance(e, StoreError):
                raise
            raise StoreError(f"{cfg.path}: cannot open the store: {e}") from e

    @property
    def config(self) -> StoreConfig:
        return self._cfg

    @property
    def path(self) -> Path:
        """The SQLite file (readers may open it read-only; see `queries.open_reader`)."""
        return self._cfg.path

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the writer and image threads. Raises StoreError if already stopped."""
        if self._stopped:
            raise StoreError("a stopped store cannot be restarted; make a new Store")
        if not self._started:
            self._started = True
            self._writer.start()
            self._keeper.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish queued images, commit everything submitted, checkpoint and close.
        Raises StoreError if not everything could be committed in `timeout_s`."""
        if self._stopped:
            return
        if not self._started:
            self.start()  # commit and encode what was queued before start
        self._stopped = True
        deadline = time.monotonic() + timeout_s
        if not self._keeper.stop(max(0.0, deadline - time.monotonic())):
            logger.error("image keeper did not finish its queue in %.1f s", timeout_s)
        complete = self._writer.stop(max(0.1, deadline - time.monotonic()))
        lost = self._writer.submitted - self._writer.committed
        if not complete:  # the next start records what this run could not commit
            self._hwm.write(self._marks.rows())
        try:
            if complete:
                # Every captured frame was sealed and handed to `submit` before this; one
                # whose submit failed (queue full on a full disk) has no row: it gets one
                # now, `uninspected: store_full`. Then the next start has nothing to
                # reconcile.
                gaps = fill_gaps(self._db.conn, self._marks.rows(), self._clock(),
                                 reason="store_full")
                if gaps:
                    logger.error("%d frames had no stored verdict; recorded as "
                                 "uninspected: store_full", sum(g.missing for g in gaps))
                mark_clean(self._db.conn, self._clock())
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if not self._writer.alive:  # never close under a thread still using it
                self._db.close()
        except sqlite3.Error as e:
            logger.warning("closing the store: %s", e)
        finally:
            self._release_lock()
        if not complete:
            raise StoreError(f"store stopped with {lost} records not committed: "
                             f"{self._writer.last_error}")

    def __enter__(self) -> Store:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    # ------------------------------------------------------------------ writing
    def submit(self, record: InspectionRecord) -> None:
        """Queue one verdict (and offer its image to the keeper). Thread-safe; never
        drops: blocks while the queue is full, then raises StoreError."""
        get = record.latency_ms.get
        queue, pre, wait, infer, post, total = (
            get("queue"), get("preprocess"), get("batch_wait"), get("infer"),
            get("postprocess"), get("total"),
        )
        row = (
            record.frame_id,
            record.station,
            record.part_id,
            float(record.captured_at),
            float(record.judged_at),
            record.verdict,
            record.reason,
            record.model_version,
            record.preprocess_hash,
            None if queue is None else float(queue),
            None if pre is None else float(pre),
            None if wait is None else float(wait),
            None if infer is None else float(infer),
            None if post is None else float(post),
            None if total is None else float(total),
            len(record.defects),
            frame_seq(record.frame_id, record.station),
        )
        defects: list[tuple[int, str, float, float, float, float, float, float | None,
                            float | None]] = []
        for d in record.defects:  # a loop: measurably cheaper than a generator here
            x1, y1, x2, y2 = d.box_xyxy
            mm_w, mm_h = d.size_mm_wh if d.size_mm_wh is not None else (None, None)
            defects.append((int(d.class_id), d.class_name, float(d.score),
                            float(x1), float(y1), float(x2), float(y2), mm_w, mm_h))
        self._writer.put((INSPECTION, (row, defects)))
        if record.image_bgr is not None:
            self._keeper.offer(record.frame_id, record.verdict, record.image_bgr,
                               [(d.class_name, d.score, d.box_xyxy) for d in record.defects])

    def note_captured(self, station: str, seq: int, captured_at: float) -> None:
        """A frame was captured (call before it can get a verdict): raises the station's
        captured high-water mark, persisted with the writer's next batch (marks.py).
        Thread-safe and cheap."""
        self._writer.note_captured(station, seq, captured_at)

    def record_event(self, event: EventRecord) -> None:
        """Queue one event. Thread-safe; blocks like `submit` on a full queue."""
        data = json.dumps(dict(event.data), allow_nan=False)
        row = (float(event.at), event.kind, event.severity, event.source, event.message, data)
        self._writer.put((EVENT, row))

    def transact(
        self, work: Work[T], on_done: Callable[[], None] | None = None, *, urgent: bool = False
    ) -> Pending[T]:
        """Run `work(connection)` on the writer thread inside the transaction of its next
        batch; the returned Pending resolves once that committed (see transaction.py for
        the rules `work` must follow). `urgent`: commit that batch at once rather than
        after `flush_interval_ms`. Thread-safe, never blocks. Raises StoreError if the
        store is stopped."""
        return self._writer.put_txn(work, on_done, urgent=urgent)

    def flush(self, timeout_s: float = 10.0) -> None:
        """Return once every record, event and offered image submitted before this call is
        committed. Raises StoreError if the store is not running or on timeout."""
        if not self._started or self._stopped:
            raise StoreError("flush needs a running store")
        deadline = time.monotonic() + timeout_s
        if not self._keeper.wait_handled(timeout_s):
            raise StoreError(f"image keeper still busy after {timeout_s:.1f} s")
        seq = self._writer.submitted
        if not self._writer.wait_committed(seq, max(0.0, deadline - time.monotonic())):
            raise StoreError(
                f"store flush timed out: {seq - self._writer.committed} rows not committed; "
                f"last error: {self._writer.last_error}"
            )

    def stats(self) -> StoreStats:
        """Counters of the writer and the image keeper."""
        w, k = self._writer, self._keeper
        return StoreStats(
            submitted=w.submitted,
            committed=w.committed,
            queued=w.queued,
            duplicates_ignored=w.duplicates,
            rows_rejected=w.rejected,
            write_retries=w.retries,
            last_error=w.last_error,
            writer_cpu_s=w.cpu_s,
            images_queued=k.queued,
            images_kept=k.kept,
            images_deleted=k.deleted,
            images_skipped_pass=k.skipped_pass,
            images_skipped_fail=k.skipped_fail,
            images_bytes=k.used_bytes,
            unwritable=w.outage.unwritable_since is not None,
            reserve_held=self._reserve.held,
            images_protected_bytes=k.protected_bytes,
        )

    def pin_image(self, frame_id: str) -> bool:
        """Add a pin to the frame's kept image (one per label waiting for export): it is
        never evicted while pinned. False if the frame has no kept image (never kept, or
        already evicted). Thread-safe."""
        return self._keeper.pin(frame_id)

    def unpin_images(self, frame_ids: Sequence[str]) -> None:
        """Remove one pin per occurrence of a frame id (see `pin_image`). Thread-safe."""
        self._keeper.unpin(frame_ids)

    def image_pinned(self, frame_id: str) -> bool:
        return self._keeper.is_pinned(frame_id)

    @property
    def unwritable(self) -> bool:
        """True while verdicts cannot be committed (the disk is full with the reserve
        spent): the appliance is then not ready and reports no part as `pass`."""
        return self._writer.outage.unwritable_since is not None

    # ------------------------------------------------------------------ queries
    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = queries.open_reader(self._cfg.path)
        except sqlite3.Error as e:
            raise StoreError(f"{self._cfg.path}: cannot open for reading: {e}") from e
        try:
            yield conn
        except sqlite3.Error as e:
            raise StoreError(f"{self._cfg.path}: query failed: {e}") from e
        finally:
            conn.close()

    def last_sequence(self, station: str) -> int | None:
        """The highest seq among `station`'s committed frame ids (`"<station>:<seq>"`),
        None if it has none; an indexed search, whatever the table's size.
        Raises StoreError."""
        with self._reader() as conn:
            return queries.last_sequence(conn, station)

    def next_sequence(self, station: str) -> int:
        """The seq a restarted `station` numbers its first frame with: one more than its
        highest stored seq, 0 for a new station. Call it before the station's first
        frame is submitted (it sees committed rows only). Raises StoreError."""
        last = self.last_sequence(station)
        # The crash rows written at open (marks.py) cover every seq a killed run marked.
        return 0 if last is None else last + 1

    def inspection_count(self) -> int:
        with self._reader() as conn:
            return queries.inspection_count(conn)

    def counts_by_verdict(
        self, since: float | None = None, until: float | None = None
    ) -> dict[str, int]:
        with self._reader() as conn:
            return queries.counts_by_verdict(conn, since, until)

    def defect_counts_by_class(
        self, since: float | None = None, until: float | None = None
    ) -> dict[str, int]:
        with self._reader() as conn:
            return queries.defect_counts_by_class(conn, since, until)

    def uninspected_by_reason(
        self, since: float | None = None, until: float | None = None
    ) -> dict[str, int]:
        with self._reader() as conn:
            return queries.uninspected_by_reason(conn, since, until)

    def latency_percentiles(
        self,
        stage: str = "total",
        percentiles: Sequence[int] = (50, 95, 99),
        since: float | None = None,
        until: float | None = None,
    ) -> dict[int, float]:
        with self._reader() as conn:
            return queries.latency_percentiles(conn, stage, percentiles, since, until)

    def recent_failures(self, limit: int = 50) -> list[queries.FailureRow]:
        with self._reader() as conn:
            return queries.recent_failures(conn, self._cfg.images.dir, limit)

    def events(
        self,
        since: float | None = None,
        kinds: Sequence[str] | None = None,
        limit: int = 200,
    ) -> list[queries.EventRow]:
        with self._reader() as conn:
            return queries.events(conn, since, kinds, limit)

    def image_usage(self) -> queries.ImageUsage:
        with self._reader() as conn:
            return queries.image_usage(conn)


"""The store's single writer thread: a bounded FIFO of prepared rows, committed in batches.

A batch is up to `batch_max_rows` items, or whatever arrived within `flush_interval_s` of
the oldest waiting item (sooner when someone flushes or stops); each batch is one
transaction of `executemany` inserts.

Invariants:
- After `start`, only the writer thread uses the write connection.
- Items commit in submission order; `committed` counts the items whose transaction has
  committed, so `wait_committed(seq)` returns once everything up to `seq` is on disk
  (durable against a process kill; see StoreConfig.synchronous for power loss).
- No item is dropped: a batch that hits a transient SQLite error (OperationalError: disk
  full, I/O error, busy) is retried with backoff until it commits or `stop` gives up
  (which then reports how many items were not committed); on a full disk the database's
  reserve is released first, and while commits still fail the store is `unwritable`
  (outage.py). A batch that SQLite refuses
  as a whole (a duplicate frame_id, a row it cannot bind) is written row by row in one
  transaction: duplicates are ignored (the first verdict for a frame wins, as a late
  result must never overwrite a deadline verdict), refused rows are logged; both are
  counted and written as `duplicate_inspection` / `store_rejected_row` events.
- Every batch's transaction also writes the captured high-water marks that changed
  (marks.py); dirty marks alone wake the writer, so they are written within one
  `flush_interval_s` even when no verdict is being committed.
- Inspection ids are assigned here (single writer, guarded by the store's lock file), so
  defect rows reference them without a round trip per row.
- Other components write their tables through here too (`put_txn`: a function run in a
  savepoint of the batch's transaction, see transaction.py), so this thread's connection
  is the only one that ever writes the file. Such functions skip the queue: every one
  waiting runs in the next batch (its tables do not depend on the queued records), so
  their latency is one batch however long the queue of records is. They are not items:
  `submitted`, `committed` and `queued` count records, events and ledger operations.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlite_utils import Database

from appliance.errors import StoreError
from appliance.store import alarm_rows
from appliance.store.alarm_rows import AlarmChange
from appliance.store.batch import (
    DELETE_IMAGE,
    EVENT,
    INSERT_DEFECT,
    INSERT_EVENT,
    INSERT_IMAGE,
    INSERT_INSPECTION,
    INSPECTION,
    LEDGER,
    REFUSED,
    Batch,
    Item,
    Row,
    event_row,
    resolve_txns,
)
from appliance.store.images import ImageDeleted, LedgerOp
from appliance.store.marks import UPSERT_MARK, CaptureMarks, HighWaterFile
from appliance.store.outage import DiskOutage
from appliance.store.reserve import DiskReserve
from appliance.store.transaction import Pending, T, Work
from protocol.backoff import Backoff, BackoffConfig

__all__ = ["EVENT", "INSPECTION", "LEDGER", "BatchWriter", "event_row"]

logger = logging.getLogger(__name__)

_RETRY = BackoffConfig(initial_s=0.05, max_s=5.0)
"""A batch SQLite could not commit (busy, disk full, I/O) is tried again this often."""


class BatchWriter:
    """Owns the write connection's thread; see the module docstring for the invariants."""

    def __init__(
        self,
        db: Database,
        *,
        batch_max_rows: int,
        flush_interval_s: float,
        queue_max_rows: int,
        submit_timeout_s: float,
        clock: Callable[[], float] = time.time,
        marks: CaptureMarks | None = None,
        reserve: DiskReserve | None = None,
        high_water: HighWaterFile | None = None,
    ) -> None:
        self._db = db
        self._marks = marks or CaptureMarks()
        self.outage = DiskOutage(reserve, clock=clock)
        self._hwm = high_water
        self._disk_low = False  # images stopped at the free-disk floor (alarm raised)
        self._disk_low_next = False  # what the batch being committed makes it
        self._batch_max = batch_max_rows
        self._interval_s = flush_interval_s
        self._queue_max = queue_max_rows
        self._submit_timeout_s = submit_timeout_s
        self._clock = clock
        row = db.execute("SELECT coalesce(max(id), 0) FROM inspections").fetchone()
        self._next_id = int(row[0]) + 1
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # writer waits: items / flush / stop
        self._not_full = threading.Condition(self._lock)  # producers wait: room
        self._done = threading.Condition(self._lock)  # flushers wait: committed
        self._items: list[Item] = []
        self._first_at = 0.0
        self._submitted = 0
        self._committed = 0
        self._flushers = 0
        self._stopping = False
        self._closed = False
        self._dead: str | None = None
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._txns: list[Pending[Any]] = []  # transaction functions for the next batch
        self._current: list[Pending[Any]] = []  # those of the batch being written
        self._urgent = False  # an urgent transaction waits: cut the batch now
        self.duplicates = 0
        self.rejected = 0
        self.retries = 0
        self.last_error: str | None = None
        self.cpu_s = 0.0  # CPU time of the writer thread spent writing batches

    # ------------------------------------------------------------------ producers
    def put(self, item: Item, *, bounded: bool = True) -> int:
        """Queue one item; returns its sequence number. A bounded put blocks while the
        queue is full, up to `submit_timeout_s`, then raises StoreError; any put raises
        StoreError once the writer is stopped or dead."""
        with self._lock:
            if self._closed or self._dead is not None:
                raise StoreError(f"store is not accepting records ({self._dead or 'stopped'})")
            if bounded and len(self._items) >= self._queue_max:
                deadline = time.monotonic() + self._submit_timeout_s
                while len(self._items) >= self._queue_max:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed or self._dead is not None:
                        raise StoreError(
                            f"store queue full ({len(self._items)} rows) for "
                            f"{self._submit_timeout_s:.1f} s; last error: {self.last_error}"
                        )
                    self._not_full.wait(remaining)
            self._items.append(item)
            self._submitted += 1
            n = len(self._items)
            if n == 1:
                self._first_at = time.monotonic()
                self._ready.notify()
            elif n == self._batch_max:
                self._ready.notify()
            return self._submitted

    def put_ledger(self, ops: Sequence[LedgerOp]) -> None:
        """Queue image-ledger operations (unbounded; the keeper's queue bounds them).
        Logs instead of raising once the writer has stopped."""
        for op in ops:
            try:
                self.put((LEDGER, op), bounded=False)
            except StoreError as e:
                logger.error("image ledger operation for %s lost: %s", op.frame_id, e)

    def put_txn(
        self, work: Work[T], on_done: Callable[[], None] | None = None, *, urgent: bool = False
    ) -> Pending[T]:
        """Queue a function to run in the next batch's transaction (unbounded: its caller
        bounds how many it has outstanding); `urgent` cuts that batch at once instead of
        waiting out `flush_interval_s`. Raises StoreError once stopped or dead."""
        pending = Pending(work, on_done, hurry=self._hurry)
        with self._lock:
            if self._closed or self._dead is not None:
                raise StoreError(f"store is not accepting records ({self._dead or 'stopped'})")
            self._txns.append(pending)
            self._urgent = self._urgent or urgent
            self._ready.notify()
        return pending

    def note_captured(self, station: str, seq: int, at: float) -> None:
        """Note a captured frame for the high-water mark (written with the next batch,
        see marks.py). Cheap: a dict update; wakes the writer only when the marks were
        clean."""
        if self._marks.note(station, seq, at):
            with self._lock:
                self._ready.notify()

    def _hurry(self, timeout_s: float) -> bool:
        with self._lock:
            self._urgent = True
            self._ready.notify()
        return True

    # ------------------------------------------------------------------ state
    @property
    def submitted(self) -> int:
        return self._submitted

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def queued(self) -> int:
        return len(self._items)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_committed(self, seq: int, timeout_s: float) -> bool:
        """Wait until the first `seq` items have committed; False on timeout or if the
        writer is not running."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._flushers += 1
            self._ready.notify()
            try:
                while self._committed < seq:
                    remaining = deadline - time.monotonic()
                    alive = self._thread is not None and self._thread.is_alive()
                    if remaining <= 0 or not alive:
                        return False
                    self._done.wait(min(remaining, 0.5))
            finally:
                self._flushers -= 1
        return True

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Refuse new items, commit everything queued, end the thread. Returns False if it
        did not finish in `timeout_s` (retries are then abandoned)."""
        with self._lock:
            self._closed = True
            self._stopping = True
            self._ready.notify_all()
            self._not_full.notify_all()
        if self._thread is None:
            return not self._items and not self._txns
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self._fail_unwritten("the store stopped before committing it")
            return False
        return self._committed == self._submitted

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            while True:
                batch = self._take()
                if batch is None:
                    return
                items, self._current = batch
                t0 = time.thread_time()
                done = self._write_with_retry(items, self._current)
                self.cpu_s += time.thread_time() - t0
                if done is None:
                    return
                with self._lock:
                    self._committed += len(items)
                    self._done.notify_all()
                self._current = []
                resolve_txns(done)
        except Exception as e:  # a bug: make it loud and stop accepting records
            logger.exception("store writer died")
            with self._lock:
                self._dead = f"writer died: {e!r}"
                self._done.notify_all()
                self._not_full.notify_all()
            self._fail_unwritten(f"the store writer died: {e!r}")

    def _fail_unwritten(self, why: str) -> None:
        """Fail every transaction not committed (the writer has ended)."""
        with self._lock:
            txns, self._txns, self._current = self._current + self._txns, [], []
        for txn in txns:
            txn.fail(StoreError(f"store transaction not committed: {why}"))

    def _take(self) -> tuple[list[Item], list[Pending[Any]]] | None:
        with self._lock:
            while not self._items and not self._txns and not self._marks.dirty:
                if self._stopping:
                    return None
                self._ready.wait(0.5)
            if not self._items:
                self._first_at = time.monotonic()
            deadline = self._first_at + self._interval_s
            while (len(self._items) < self._batch_max and not self._stopping
                   and not self._flushers and not self._urgent):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            if len(self._items) <= self._batch_max:
                batch, self._items = self._items, []
            else:
                batch = self._items[: self._batch_max]
                del self._items[: self._batch_max]
                self._first_at = time.monotonic()
            self._not_full.notify_all()
            txns, self._txns = self._txns, []
            self._urgent = False
            return batch, txns

    def _write_with_retry(self, items: list[Item], txns: list[Pending[Any]]) -> Batch | None:
        """Commit one batch; None if `stop` gave up on it. A full disk first spends the
        reserve, then marks the store unwritable until a commit works (outage.py)."""
        batch = Batch(items, self._next_id, txns)
        backoff = Backoff(_RETRY)
        rowwise = False
        while True:
            try:
                self._commit(batch, rowwise=rowwise)
                self._next_id += len(batch.inspections)
                self._disk_low = self._disk_low_next
                self.outage.committed()
                return batch
            except REFUSED as e:
                if rowwise:
                    raise
                logger.debug("batch refused (%s); writing it row by row", e)
                rowwise = True
            except sqlite3.OperationalError as e:
                self.retries += 1
                self.last_error = str(e)
                if self.outage.failed(e):
                    continue
                if self._hwm is not None:  # the table cannot take the marks now
                    self._hwm.write(self._marks.rows())
                delay_s = backoff.next_delay_s()
                logger.error("store commit failed (%s); retrying in %.2f s", e, delay_s)
                if self._abort.wait(delay_s):
                    logger.error("store gave up on %d uncommitted items", len(items))
                    return None

    def _commit(self, batch: Batch, *, rowwise: bool) -> None:
        conn = self._db.conn
        ids = range(batch.first_id, batch.first_id + len(batch.inspections))
        events = list(batch.events)
        alarms = list(self.outage.pending_alarms)
        with self._db.atomic():
            if not rowwise:
                pairs = list(zip(ids, batch.inspections, strict=True))
                conn.executemany(INSERT_INSPECTION, [(i, *r) for i, (r, _) in pairs])
                conn.executemany(INSERT_DEFECT, [(i, *d) for i, (_, ds) in pairs for d in ds])
            else:
                events += self._insert_rowwise(conn, batch, ids)
            conn.executemany(INSERT_IMAGE, batch.added)
            conn.executemany(
                DELETE_IMAGE, [(d.deleted_at, d.reason, d.frame_id, d.path) for d in batch.deleted]
            )
            image_events, disk_low = self._image_events(batch)
            events += image_events
            conn.executemany(INSERT_EVENT, events)
            for change in alarms + disk_low:
                alarm_rows.apply(conn, change)
            marks = self._marks.changed()
            conn.executemany(UPSERT_MARK, marks)
            batch.outcomes = [self._run_txn(txn) for txn in batch.txns]
        self._marks.written(marks)

    def _run_txn(self, txn: Pending[Any]) -> tuple[bool, Any]:
        """Run one transaction function in a savepoint: (True, value), or (False, why)
        with its writes rolled back. OperationalError fails the whole batch (retried)."""
        try:
            with self._db.atomic():
                return True, txn.work(self._db.conn)
        except sqlite3.OperationalError:
            raise
        except Exception as e:  # the caller's bug or refused rows: fail its work only
            logger.exception("store transaction function failed; its writes are rolled back")
            return False, f"{type(e).__name__}: {e}"

    def _insert_rowwise(
        self, conn: sqlite3.Connection, batch: Batch, ids: range
    ) -> list[Row]:
        duplicates: list[str] = []
        refused: list[tuple[str, str]] = []
        for i, (row, defects) in zip(ids, batch.inspections, strict=True):
            try:
                conn.execute(INSERT_INSPECTION, (i, *row))
            except REFUSED as e:
                if isinstance(e, sqlite3.IntegrityError) and "inspections.frame_id" in str(e):
                    duplicates.append(row[0])
                else:
                    refused.append((row[0], str(e)))
                continue
            for d in defects:
                try:
                    conn.execute(INSERT_DEFECT, (i, *d))
                except REFUSED as e:
                    refused.append((row[0], f"defect: {e}"))
        now = self._clock()
        rows: list[Row] = []
        if duplicates:
            self.duplicates += len(duplicates)
            logger.warning("ignored %d duplicate inspections (first: %s)", len(duplicates),
                           duplicates[0])
            rows.append(event_row(
                now, "duplicate_inspection", "warning", "store",
                f"ignored {len(duplicates)} duplicate inspection records; the first verdict "
                "for a frame id wins",
                {"count": len(duplicates), "first_frame_id": duplicates[0]},
            ))
        if refused:
            self.rejected += len(refused)
            logger.error("store refused %d rows (first: %s: %s)", len(refused), *refused[0])
            rows.append(event_row(
                now, "store_rejected_row", "alarm", "store",
                f"store refused {len(refused)} rows: {refused[0][1]}",
                {"count": len(refused), "first_frame_id": refused[0][0]},
            ))
        return rows

    def _image_events(self, batch: Batch) -> tuple[list[Row], list[AlarmChange]]:
        """The batch's image events, and the `disk_low` alarm raised or ended by it."""
        now = self._clock()
        rows: list[Row] = []
        alarms: list[AlarmChange] = []
        deleted: dict[str, list[ImageDeleted]] = defaultdict(list)
        for d in batch.deleted:
            deleted[d.reason].append(d)
        for reason, ds in sorted(deleted.items()):
            fails = sum(d.verdict == "fail" for d in ds)
            size = sum(d.bytes for d in ds)
            rows.append(event_row(
                now, "image_deleted", "warning" if fails else "info", "store.images",
                f"deleted {len(ds)} images ({size} bytes, {fails} fail): {reason}",
                {"count": len(ds), "bytes": size, "fail_count": fails, "reason": reason},
            ))
        floor_hit = any(s.why == "disk_floor" for s in batch.skipped)
        self._disk_low_next = self._disk_low
        if floor_hit and not self._disk_low:
            self._disk_low_next = True
            alarms.append(AlarmChange(
                now, "disk_low", True,
                "free disk under store.images.min_free_disk_bytes: no images are written "
                "(verdicts still are) until space returns"))
        elif batch.added and self._disk_low:
            self._disk_low_next = False
            alarms.append(AlarmChange(now, "disk_low", False,
                                      "images are written again (free disk above the floor)"))
        skipped = Counter(s.why for s in batch.skipped)
        for why, count in sorted(skipped.items()):
            fails = sum(s.verdict == "fail" for s in batch.skipped if s.why == why)
            first = next(s.frame_id for s in batch.skipped if s.why == why)
            rows.append(event_row(
                now, "image_skipped", "warning" if fails else "info", "store.images",
                f"did not keep {count} images ({fails} fail): {why}",
                {"count": count, "fail_count": fails, "why": why, "first_frame_id": first},
            ))
        return rows, alarms

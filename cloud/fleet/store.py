"""The fleet store: every line's messages, state and quarantined junk, in SQLite.

A thin adapter over sqlite-utils / sqlite3; the SQL is in `cloud.fleet.sql`, the
row mapping in `cloud.fleet.rows`, the reads in `cloud.fleet.queries`.

Invariants:
- A valid message is stored at most once: `messages.msg_id` is the primary key and
  every insert is `ON CONFLICT DO NOTHING`; the kind tables are keyed by msg_id too, so
  this holds even for several collectors writing one database. A message reusing a
  stored msg_id with different content (by `content_digest`) is never stored: it goes
  to the quarantine as `conflicting_duplicate` and is counted there, not as a duplicate.
- `ingest` is one transaction: the batch's messages, line updates, quarantine rows and
  counter increments commit together or not at all. When it returns, the batch is
  durable against a process kill (WAL; synchronous=FULL also against power loss), so
  the caller may acknowledge it to the broker.
- A line's status and model only move forward in time: a late (out-of-order) message
  is logged but does not overwrite a newer state.
- Reads use their own short-lived read-only connection per call (any thread).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from sqlite_utils import Database

from cloud.config import FleetStoreConfig
from cloud.errors import FleetStoreError, StoreRejected, StoreUnavailable
from cloud.fleet import queries, report, sql
from cloud.fleet.rows import (
    CONFLICTING_DUPLICATE,
    MessageRows,
    Received,
    Rejected,
    Row,
    model_update,
    quarantine_row,
    rows_for,
    status_update,
)
from cloud.fleet.views import (
    CollectorCounters,
    DefectEventView,
    LineModelView,
    LineView,
    MetricsPoint,
    QuarantineSummary,
)
from protocol import COMMAND_KINDS, topic_of

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ids per `IN (...)` lookup: well under SQLite's 32766 bound parameters.
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one committed batch did."""

    stored: int
    duplicates: int
    quarantined: int
    """Rejected deliveries plus conflicting duplicates."""
    stored_at_ms: int
    conflicting: int = 0
    """Of `quarantined`: valid messages whose msg_id was stored with other content."""


def _translate(e: sqlite3.Error, what: str) -> FleetStoreError:
    if isinstance(e, sqlite3.IntegrityError | sqlite3.DataError):
        return StoreRejected(f"{what}: {e}")
    if isinstance(e, sqlite3.OperationalError):
        return StoreUnavailable(f"{what}: {e}")
    return FleetStoreError(f"{what}: {e}")


def migrate(
    conn: sqlite3.Connection,
    path: Path,
    now_ms: int,
    migrations: Sequence[tuple[int, Sequence[str]]] = sql.MIGRATIONS,
) -> list[int]:
    """Apply the pending numbered migrations, each in its own transaction; return them.

    An existing database with pending migrations is first copied to
    `<path>.v<N>.bak` (N: its current version). Raises FleetStoreError for a database
    newer than this build; sqlite3.Error as it comes.
    """
    conn.execute(sql.CREATE_MIGRATIONS)
    known = {version for version, _ in migrations}
    applied = {row[0] for row in conn.execute(sql.APPLIED_MIGRATIONS)}
    if applied - known:
        raise FleetStoreError(
            f"{path}: schema version {max(applied)} is newer than this build "
            f"(knows up to {max(known)})"
        )
    pending = [(v, stmts) for v, stmts in migrations if v not in applied]
    if pending and applied:
        backup = path.with_name(f"{path.name}.v{max(applied)}.bak")
        with sqlite3.connect(str(backup)) as target:
            conn.backup(target)
        target.close()
        logger.info("backed up %s to %s before migrating", path, backup)
    done = []
    for version, statements in pending:
        conn.execute(sql.BEGIN_WRITE)
        try:
            # Another process may have migrated while we waited for the write lock.
            if version in {row[0] for row in conn.execute(sql.APPLIED_MIGRATIONS)}:
                conn.execute(sql.ROLLBACK)
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(sql.RECORD_MIGRATION, (version, now_ms))
            conn.execute(sql.COMMIT)
        except BaseException:
            conn.execute(sql.ROLLBACK)
            raise
        done.append(version)
        logger.info("fleet store %s: applied migration %d", path, version)
    return done


class FleetStore:
    """See the module docstring. The constructor opens and migrates the database;
    it raises FleetStoreError if it cannot."""

    def __init__(
        self, cfg: FleetStoreConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._lock = threading.Lock()
        self.path = cfg.path
        try:
            cfg.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(cfg.path), isolation_level=None, check_same_thread=False,
                timeout=cfg.busy_timeout_ms / 1000.0,
            )
        except (OSError, sqlite3.Error) as e:
            raise FleetStoreError(f"{cfg.path}: cannot open the fleet store: {e}") from e
        try:
            self._db = Database(conn, execute_plugins=False, recursive_triggers=False)
            self._db.enable_wal()
            conn.execute(f"PRAGMA synchronous = {cfg.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {int(cfg.wal_autocheckpoint_pages)}")
            self.migrations_applied = migrate(conn, cfg.path, self._now_ms())
        except sqlite3.Error as e:
            conn.close()
            raise _translate(e, f"{cfg.path}: cannot prepare the fleet store") from e
        except FleetStoreError:
            conn.close()
            raise
        self._conn = conn
        self._read_uri = f"{cfg.path.resolve().as_uri()}?mode=ro"

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # ---- writes

    def ingest(
        self,
        received: Sequence[Received],
        rejected: Sequence[Rejected] = (),
        *,
        collector_id: str,
        counters: Mapping[str, int] | None = None,
    ) -> IngestResult:
        """Store a batch in one transaction; return what was new.

        Valid messages already stored (same msg_id, same content) count as duplicates; one
        whose msg_id is stored with different content is quarantined as
        `conflicting_duplicate` (the first one stays); rejected ones go to the quarantine.
        Counter increments (`received`, `stored`, `duplicates`, `quarantined`,
        `quarantined.<reason>`, plus `counters`) commit with the batch.
        Raises StoreUnavailable (transient: retry), StoreRejected (the data: split the
        batch), FleetStoreError (anything else); nothing is committed then.
        """
        stored_at_ms = self._now_ms()
        prepared = [(item, rows_for(item, stored_at_ms)) for item in received]
        keep = self._cfg.quarantine_keep_bytes
        quarantine = [quarantine_row(item, keep) for item in rejected]
        with self._lock:
            try:
                return self._write(prepared, quarantine, rejected, collector_id,
                                   counters or {}, stored_at_ms)
            except sqlite3.Error as e:
                if self._conn.in_transaction:
                    self._conn.execute(sql.ROLLBACK)
                raise _translate(e, f"{self.path}: batch of {len(prepared)} not stored") from e

    def _write(
        self,
        prepared: list[tuple[Received, MessageRows]],
        quarantine: list[Row],
        rejected: Sequence[Rejected],
        collector_id: str,
        extra: Mapping[str, int],
        stored_at_ms: int,
    ) -> IngestResult:
        conn = self._conn
        conn.execute(sql.BEGIN_WRITE)
        # The write lock is held from BEGIN IMMEDIATE, so what is known now stays true
        # until COMMIT. (With PostgreSQL, concurrent collectors could both see an id as
        # new: the ON CONFLICT clauses still store it once; only the counts could be off.)
        known = self._known_ids(conn, [item.message.msg_id for item, _ in prepared])
        new: list[tuple[Received, MessageRows]] = []
        same: list[Received] = []  # new or a redelivery: the line is alive
        conflicting: list[Rejected] = []
        for item, rows in prepared:
            msg_id = item.message.msg_id
            digest = rows.message[-1]
            if msg_id not in known:
                known[msg_id] = digest  # a second copy within the batch is a duplicate too
                new.append((item, rows))
            elif known[msg_id] is not None and known[msg_id] != digest:
                conflicting.append(Rejected(
                    topic_of(item.message), item.payload, CONFLICTING_DUPLICATE,
                    f"msg_id {msg_id} is already stored with different content; "
                    "the first one is kept", item.received_at_ms,
                ))
                continue
            same.append(item)
        if conflicting:
            logger.warning("quarantined %d message(s) reusing a stored msg_id with different "
                           "content (first: %s)", len(conflicting), conflicting[0].detail)
            keep = self._cfg.quarantine_keep_bytes
            quarantine = [*quarantine, *(quarantine_row(item, keep) for item in conflicting)]
            rejected = [*rejected, *conflicting]
        if new:
            conn.executemany(sql.INSERT_MESSAGE, [rows.message for _, rows in new])
        tables: list[tuple[str, list[Row]]] = [
            (sql.INSERT_STATUS, [r.status for _, r in new if r.status]),
            (sql.INSERT_METRICS, [r.metrics for _, r in new if r.metrics]),
            (sql.INSERT_DEFECT_EVENT, [r.defect_event for _, r in new if r.defect_event]),
            (sql.INSERT_DEFECT, [d for _, r in new for d in r.defects]),
            (sql.INSERT_DRIFT, [r.drift for _, r in new if r.drift]),
            (sql.INSERT_MODEL_REPORT, [r.model_report for _, r in new if r.model_report]),
            (sql.UPSERT_QUARANTINE, quarantine),
        ]
        for statement, rows_ in tables:
            if rows_:
                conn.executemany(statement, rows_)
        self._update_lines(conn, same, [item for item, _ in new])
        increments = self._increments(len(same), len(new), rejected, extra)
        conn.executemany(
            sql.ADD_COUNTER,
            [(collector_id, name, value, stored_at_ms) for name, value in increments.items()],
        )
        conn.execute(sql.COMMIT)
        return IngestResult(
            stored=len(new), duplicates=len(same) - len(new), quarantined=len(rejected),
            stored_at_ms=stored_at_ms, conflicting=len(conflicting),
        )

    @staticmethod
    def _known_ids(conn: sqlite3.Connection, ids: list[str]) -> dict[str, object]:
        """msg_id -> stored content digest (None for rows stored before migration 2)."""
        known: dict[str, object] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start:start + _IN_CHUNK]
            query = sql.SELECT_KNOWN_IDS.format(placeholders=", ".join("?" * len(chunk)))
            known.update((row[0], row[1]) for row in conn.execute(query, chunk))
        return known

    @staticmethod
    def _update_lines(
        conn: sqlite3.Connection, valid: list[Received], new: list[Received]
    ) -> None:
        seen: dict[tuple[str, str], tuple[int, int]] = {}
        for item in valid:  # a redelivered duplicate still shows the line is alive
            if item.message.KIND in COMMAND_KINDS:
                continue  # sent *to* the line by the cloud: says nothing about the line
            key = (item.message.site, item.message.line)
            first, last = seen.get(key, (item.received_at_ms, item.received_at_ms))
            seen[key] = (min(first, item.received_at_ms), max(last, item.received_at_ms))
        if seen:
            conn.executemany(sql.TOUCH_LINE, [(*key, a, b) for key, (a, b) in seen.items()])
        # Oldest first, so that within a batch the newest state is written last.
        statuses = sorted(filter(None, map(status_update, new)), key=lambda s: s[0])
        models = sorted(filter(None, map(model_update, new)), key=lambda s: s[0])
        for _, params in statuses:
            conn.execute(sql.UPDATE_LINE_STATUS, params)
        for _, params in models:
            conn.execute(sql.UPDATE_LINE_MODEL, params)

    @staticmethod
    def _increments(
        received: int, stored: int, rejected: Sequence[Rejected], extra: Mapping[str, int]
    ) -> dict[str, int]:
        counts = {
            "received": received + len(rejected),
            "stored": stored,
            "duplicates": received - stored,
            "quarantined": len(rejected),
        }
        for item in rejected:
            key = f"quarantined.{item.reason}"
            counts[key] = counts.get(key, 0) + 1
        for name, value in extra.items():
            counts[name] = counts.get(name, 0) + value
        return {name: value for name, value in counts.items() if value}

    def close(self) -> None:
        """Close the write connection (idempotent)."""
        with self._lock:
            self._conn.close()

    # ---- reads (own connection per call, safe from any thread)

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(
                self._read_uri, uri=True, timeout=self._cfg.busy_timeout_ms / 1000.0
            )
        except sqlite3.Error as e:
            raise _translate(e, f"{self.path}: cannot open for reading") from e
        try:
            yield conn
        except sqlite3.Error as e:
            raise _translate(e, f"{self.path}: read failed") from e
        finally:
            conn.close()

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        with self._reader() as conn:
            return query(conn)

    def ping(self) -> None:
        """Check the database can be read. Raises FleetStoreError."""
        self._read(lambda c: c.execute(sql.PING).fetchall())

    def lines(self) -> list[LineView]:
        """Every line ever heard from. Raises FleetStoreError."""
        return self._read(queries.lines)

    def line(self, site: str, line: str) -> LineView | None:
        """One line, None if unknown. Raises FleetStoreError."""
        return self._read(lambda c: queries.line(c, site, line))

    def metrics(
        self, site: str, line: str, *, since: datetime | None = None,
        until: datetime | None = None, limit: int = 1000,
    ) -> list[MetricsPoint]:
        """A line's metrics, newest first, `since` <= sent_at < `until`."""
        return self._read(lambda c: queries.metrics(c, site, line, since, until, limit))

    def line_report(
        self, site: str, line: str, *, since: datetime | None = None,
        until: datetime | None = None, bucket_s: int = 3600,
    ) -> report.LineReport:
        """A line's parts, verdicts, yield and fails per class per time bucket (see
        cloud.fleet.report). Raises FleetStoreError, report.ReportTooLarge."""
        return self._read(lambda c: report.line_report(
            c, site, line, since=since, until=until, bucket_s=bucket_s))

    def defect_events(
        self, *, site: str | None = None, line: str | None = None,
        class_name: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 100,
    ) -> list[DefectEventView]:
        """Defect events, newest first by capture time, filtered. Raises FleetStoreError."""
        return self._read(lambda c: queries.defect_events(
            c, site=site, line_id=line, class_name=class_name, since=since, until=until,
            limit=limit,
        ))

    def line_model(self, site: str, line: str) -> LineModelView | None:
        """A line's current model and latest update report; None if the line is unknown."""
        return self._read(lambda c: queries.line_model(c, site, line))

    def quarantine(self, limit: int = 50) -> QuarantineSummary:
        """Quarantine counts by reason and the most recent entries."""
        return self._read(lambda c: queries.quarantine(c, limit))

    def counters(self) -> list[CollectorCounters]:
        """Every collector's counters."""
        return self._read(queries.counters)

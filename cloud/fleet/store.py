"""The fleet store: every line's messages, state and quarantined junk, in the cloud
database (cloud.db: an SQLite file, or PostgreSQL).

A thin adapter over SQLAlchemy Core; the statements are in `cloud.fleet.sql`, the tables
in `cloud.fleet.tables` (Alembic branch `fleet`), the row mapping in `cloud.fleet.rows`,
the reads in `cloud.fleet.queries`.

Invariants:
- A valid message is stored at most once: `messages.msg_id` is the primary key and
  every insert is `ON CONFLICT DO NOTHING`; the kind tables are keyed by msg_id too, and
  a kind row is written only for a message whose `messages` row this transaction
  inserted (RETURNING), so this holds for several collectors writing one database. A
  message reusing a stored msg_id with different content (by `content_digest`) is
  never stored: it goes to the quarantine as `conflicting_duplicate` and is counted
  there, not as a duplicate. This also holds when another collector commits the same
  id concurrently (PostgreSQL): an id our insert skipped is looked up again and
  classified by the digest that won.
- `ingest` is one transaction: the batch's messages, line updates, quarantine rows and
  counter increments commit together or not at all. When it returns, the batch is
  durable against a process kill (SQLite WAL, synchronous=FULL also against power loss;
  PostgreSQL's commit), so the caller may acknowledge it to the broker.
- A line's status and model only move forward in time: a late (out-of-order) message
  is logged but does not overwrite a newer state.
- Reads take a pooled connection per call (any thread); on SQLite they never take the
  write lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from cloud.config import FleetStoreConfig
from cloud.db import DatabaseConfig, ensure_schema, open_engine, read_connection
from cloud.errors import CloudError, FleetStoreError, StoreRejected, StoreUnavailable
from cloud.fleet import queries, report, sql, tables
from cloud.fleet.rows import (
    CONFLICTING_DUPLICATE,
    MessageRows,
    Received,
    Rejected,
    Row,
    merge_quarantine,
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


def _translate(e: Exception, what: str, dbapi: Any) -> FleetStoreError:
    """A FleetStoreError for an SQLAlchemy error or a driver's own (PEP 249) one."""
    orig = e.orig if isinstance(e, sa_exc.DBAPIError) else e
    if isinstance(e, sa_exc.IntegrityError | sa_exc.DataError) or isinstance(
            orig, dbapi.IntegrityError | dbapi.DataError):
        return StoreRejected(f"{what}: {orig}")
    if isinstance(e, sa_exc.OperationalError | sa_exc.InterfaceError) or isinstance(
            orig, dbapi.OperationalError | dbapi.InterfaceError) or (
            isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated):
        return StoreUnavailable(f"{what}: {orig}")
    return FleetStoreError(f"{what}: {e}")


class FleetStore:
    """See the module docstring. The constructor opens the database and brings its
    schema up to date (or, with `database.migrate_on_start` off, refuses an old one);
    it raises FleetStoreError if it cannot."""

    def __init__(
        self,
        database: DatabaseConfig,
        cfg: FleetStoreConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        engine: Engine | None = None,
    ) -> None:
        """The store on `database`, its schema brought up to date (`ensure_schema`).
        With `engine` (the process's one engine, from `cloud.db.open_database`, which
        already brought the schema up to date) the store uses it and leaves it open on
        `close`: its owner disposes of it. Raises FleetStoreError."""
        self._cfg = cfg or FleetStoreConfig()
        self._clock = clock
        self._lock = threading.Lock()
        self.url = database.url
        self._where = make_url(database.url).render_as_string(hide_password=True)
        self._owns_engine = engine is None
        if engine is not None:
            self._engine: Engine = engine
            self._writes = sql.Writes(engine.dialect)
            self._dbapi: Any = engine.dialect.loaded_dbapi
            self.migrations_applied: list[str] = []
            return
        try:
            self._engine = open_engine(database)
        except (OSError, sa_exc.SQLAlchemyError) as e:
            raise FleetStoreError(f"{self._where}: cannot open the fleet store: {e}") from e
        self._writes = sql.Writes(self._engine.dialect)
        self._dbapi = self._engine.dialect.loaded_dbapi  # PEP 249 errors of writes
        try:
            self.migrations_applied = ensure_schema(self._engine, database)
        except sa_exc.SQLAlchemyError as e:
            self._engine.dispose()
            raise _translate(e, f"{self._where}: cannot prepare the fleet store",
                             self._dbapi) from e
        except CloudError as e:
            self._engine.dispose()
            if isinstance(e, FleetStoreError):
                raise
            raise FleetStoreError(str(e)) from e

    @property
    def engine(self) -> Engine:
        """The store's engine (tests and tools read through it)."""
        return self._engine

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
        with self._lock:
            try:
                with self._engine.begin() as conn:
                    return self._write(conn, prepared, rejected, collector_id,
                                       counters or {}, stored_at_ms)
            except (sa_exc.SQLAlchemyError, self._dbapi.Error) as e:
                raise _translate(e, f"{self._where}: batch of {len(prepared)} not stored",
                                 self._dbapi) from e

    def _write(
        self,
        conn: Connection,
        prepared: list[tuple[Received, MessageRows]],
        rejected: Sequence[Rejected],
        collector_id: str,
        extra: Mapping[str, int],
        stored_at_ms: int,
    ) -> IngestResult:
        # On SQLite the write lock is held from BEGIN IMMEDIATE, so what is known now
        # stays true until COMMIT. On PostgreSQL another collector may commit one of
        # these ids meanwhile: the insert's RETURNING tells, and `_settle` re-reads.
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
                conflicting.append(_conflict(item))
                continue
            same.append(item)
        if new:
            new = self._insert_messages(conn, new, same, conflicting)
        if conflicting:
            logger.warning("quarantined %d message(s) reusing a stored msg_id with different "
                           "content (first: %s)", len(conflicting), conflicting[0].detail)
            rejected = [*rejected, *conflicting]
        keep = self._cfg.quarantine_keep_bytes
        quarantine = merge_quarantine([quarantine_row(item, keep) for item in rejected])
        w = self._writes
        kinds: list[tuple[Table, list[Row]]] = [
            (tables.status_events, [r.status for _, r in new if r.status]),
            (tables.metrics, [r.metrics for _, r in new if r.metrics]),
            (tables.defect_events, [r.defect_event for _, r in new if r.defect_event]),
            (tables.defects, [d for _, r in new for d in r.defects]),
            (tables.drift_sketches, [r.drift for _, r in new if r.drift]),
            (tables.model_reports, [r.model_report for _, r in new if r.model_report]),
        ]
        for table, rows_ in kinds:
            w.kinds[table.name].run_rows(conn, table, rows_)
        w.quarantine.run_rows(conn, tables.quarantine, quarantine)
        self._update_lines(conn, same, [item for item, _ in new])
        increments = self._increments(len(same), len(new), rejected, extra)
        w.counters.run_rows(conn, tables.counters, [
            (collector_id, name, value, stored_at_ms) for name, value in increments.items()
        ])
        return IngestResult(
            stored=len(new), duplicates=len(same) - len(new), quarantined=len(rejected),
            stored_at_ms=stored_at_ms, conflicting=len(conflicting),
        )

    def _insert_messages(
        self, conn: Connection, new: list[tuple[Received, MessageRows]],
        same: list[Received], conflicting: list[Rejected],
    ) -> list[tuple[Received, MessageRows]]:
        """Insert the `messages` rows of `new`; return those this transaction stored.
        An id another writer committed first moves to `same` (same content) or to
        `conflicting` (other content)."""
        rows_ = [rows.message for _, rows in new]
        if self._writes.is_sqlite:
            # BEGIN IMMEDIATE: no other writer since `_known_ids`, every one is new.
            self._writes.messages.run_rows(conn, tables.messages, rows_)
            return new
        # In msg_id order: two writers inserting overlapping ids wait on each other in
        # one order (no deadlock).
        rows_.sort(key=lambda row: str(row[0]))
        inserted = set(conn.execute(self._writes.messages_returning,
                                    sql.row_params(tables.messages, rows_)).scalars())
        if len(inserted) == len(new):
            return new
        lost = [(item, rows) for item, rows in new if item.message.msg_id not in inserted]
        winners = self._known_ids(conn, [item.message.msg_id for item, _ in lost])
        for item, rows in lost:
            digest = winners.get(item.message.msg_id)
            if digest is not None and digest != rows.message[-1]:
                same.remove(item)
                conflicting.append(_conflict(item))
        logger.info("%d message(s) of this batch were stored by another writer first",
                    len(lost))
        return [(item, rows) for item, rows in new if item.message.msg_id in inserted]

    def _known_ids(self, conn: Connection, ids: list[str]) -> dict[str, object]:
        """msg_id -> stored content digest (None for rows stored before the digest)."""
        known: dict[str, object] = {}
        for start in range(0, len(ids), sql.KNOWN_IDS_MAX):
            chunk = ids[start:start + sql.KNOWN_IDS_MAX]
            known.update((row[0], row[1]) for row in self._writes.known_ids(conn, chunk))
        return known

    def _update_lines(self, conn: Connection, valid: list[Received],
                      new: list[Received]) -> None:
        seen: dict[tuple[str, str], tuple[int, int]] = {}
        for item in valid:  # a redelivered duplicate still shows the line is alive
            if item.message.KIND in COMMAND_KINDS:
                continue  # sent *to* the line by the cloud: says nothing about the line
            key = (item.message.site, item.message.line)
            first, last = seen.get(key, (item.received_at_ms, item.received_at_ms))
            seen[key] = (min(first, item.received_at_ms), max(last, item.received_at_ms))
        if seen:
            # In key order: concurrent writers lock the lines rows in one order (no
            # deadlock on PostgreSQL); every line updated below is locked here first.
            self._writes.touch_lines.run(conn, [
                {"site": site, "line": line, "first_seen_at_ms": a, "last_seen_at_ms": b}
                for (site, line), (a, b) in sorted(seen.items())
            ])
        # Oldest first, so that within a batch the newest state is written last.
        statuses = sorted(filter(None, map(status_update, new)), key=lambda s: s[0])
        models = sorted(filter(None, map(model_update, new)), key=lambda s: s[0])
        self._writes.update_status.run_tuples(conn, sql.STATUS_KEYS, [p for _, p in statuses])
        self._writes.update_model.run_tuples(conn, sql.MODEL_KEYS, [p for _, p in models])

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
        """Close the database connections (idempotent); a borrowed engine (see
        `__init__`) is left to its owner."""
        if not self._owns_engine:
            return
        with self._lock:
            self._engine.dispose()

    # ---- reads (a pooled connection per call, safe from any thread)

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        try:
            with read_connection(self._engine) as conn:
                yield conn
        except sa_exc.SQLAlchemyError as e:
            raise _translate(e, f"{self._where}: read failed", self._dbapi) from e

    def _read(self, query: Callable[[Connection], T]) -> T:
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


def _conflict(item: Received) -> Rejected:
    return Rejected(
        topic_of(item.message), item.payload, CONFLICTING_DUPLICATE,
        f"msg_id {item.message.msg_id} is already stored with different content; "
        "the first one is kept", item.received_at_ms,
    )

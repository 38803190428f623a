"""Every statement of the fleet store, as SQLAlchemy Core constructs (one place).

Portable to SQLite and PostgreSQL: de-duplication is `INSERT ... ON CONFLICT DO
NOTHING`, upserts are `ON CONFLICT DO UPDATE SET ... excluded.*` (both through
`cloud.db.insert_for`), and "the larger of" is a CASE (SQLite's two-argument MAX is
PostgreSQL's GREATEST). Writes run in one transaction per batch; `Writes` builds and
compiles them once per store (the collector's hot path: see `Compiled`).

Parameter names: a row of a table is a dict of its column names (`row_params`);
where-clause parameters of the line updates are prefixed `b_` (SQLAlchemy reserves a
column's own name for its SET value in an executemany UPDATE).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeAlias

from sqlalchemy import (
    Connection,
    Dialect,
    Insert,
    Select,
    Table,
    Text,
    Update,
    and_,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
)

from cloud.db import insert_for
from cloud.fleet.rows import Row
from cloud.fleet.tables import (
    counters,
    defect_events,
    defects,
    drift_sketches,
    lines,
    messages,
    metrics,
    model_reports,
    quarantine,
    status_events,
)

# A SELECT of any columns (SQLAlchemy 2.1 types a Select by its columns' types).
AnySelect: TypeAlias = Select[*tuple[Any, ...]]
Params = dict[str, object]


def row_params(table: Table, rows: Sequence[Row]) -> list[Params]:
    """Rows (tuples in the table's column order, as cloud.fleet.rows makes them) as
    executemany parameters."""
    keys = table.c.keys()
    return [dict(zip(keys, row, strict=True)) for row in rows]


# ---- writes

class Compiled:
    """A write statement compiled once for one dialect and run as the driver's own
    executemany, on the connection of the caller's transaction: the collector's hot
    path skips SQLAlchemy's per-statement and per-row work (every value the fleet store
    writes is an int, float, str or None, which both drivers take as is). Errors come
    as the driver's (PEP 249) exceptions. `column_keys`: the columns it writes (None:
    every column of the table)."""

    def __init__(self, stmt: Insert | Update | AnySelect, dialect: Dialect,
                 column_keys: Sequence[str] | None = None) -> None:
        compiled = stmt.compile(dialect=dialect,
                                column_keys=list(column_keys) if column_keys else None)
        self.text = str(compiled)
        self.order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None)

    def _executemany(self, conn: Connection, params: Sequence[object]) -> None:
        cursor = _cursor(conn)
        try:
            cursor.executemany(self.text, params)
        finally:
            cursor.close()

    def fetch(self, conn: Connection, params: Params) -> list[tuple[Any, ...]]:
        """Run a SELECT once; its rows."""
        cursor = _cursor(conn)
        try:
            args = params if self.order is None else tuple(params[k] for k in self.order)
            cursor.execute(self.text, args)
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def run(self, conn: Connection, params: Sequence[Params]) -> None:
        """Execute for every parameter dict (nothing for none)."""
        if not params:
            return
        if self.order is None:
            self._executemany(conn, params)
        else:
            order = self.order
            self._executemany(conn, [tuple(p[k] for k in order) for p in params])

    def run_rows(self, conn: Connection, table: Table, rows: Sequence[Row]) -> None:
        """Execute for `rows` of `table` (tuples in its column order)."""
        self.run_tuples(conn, tuple(table.c.keys()), rows)

    def run_tuples(self, conn: Connection, keys: Sequence[str], rows: Sequence[Row]) -> None:
        """Execute for `rows`: tuples of the parameters named by `keys`, in that order."""
        if not rows:
            return
        if self.order is not None and self.order == tuple(keys):
            self._executemany(conn, rows)  # positional, same order: as they are
        else:
            self.run(conn, [dict(zip(keys, row, strict=True)) for row in rows])


def _cursor(conn: Connection) -> Any:
    dbapi_connection = conn.connection.dbapi_connection
    if dbapi_connection is None:
        raise RuntimeError("the connection is closed")
    return dbapi_connection.cursor()


# Ids per msg_id lookup: a power of two, well under SQLite's 32766 bound parameters.
KNOWN_IDS_MAX: Final = 512

KIND_TABLES: Final = (status_events, metrics, defect_events, defects, drift_sketches,
                      model_reports)

STATUS_KEYS: Final = ("online", "state", "reason", "status_at_ms", "status_msg_id",
                      "app_version", "started_at_ms", "sources_json", "alarms_json",
                      "b_site", "b_line", "b_at")
MODEL_KEYS: Final = ("model_name", "model_version", "model_label", "model_at_ms",
                     "b_site", "b_line", "b_at")


def _larger(new: Any, old: Any) -> Any:
    return case((new > old, new), else_=old)


def _smaller(new: Any, old: Any) -> Any:
    return case((new < old, new), else_=old)


def _line_is(at_column: Any) -> Any:
    return and_(
        lines.c.site == bindparam("b_site"), lines.c.line == bindparam("b_line"),
        or_(at_column.is_(None), at_column <= bindparam("b_at")),
    )


class Writes:
    """Every write of an ingest, built and compiled once for a dialect."""

    def __init__(self, dialect: Dialect) -> None:
        def insert(table: Table) -> Any:
            return insert_for(dialect, table)

        self._dialect = dialect
        self._known: dict[int, Compiled] = {}
        self.is_sqlite = dialect.name == "sqlite"
        # A kind row, skipped when its key is stored already.
        self.kinds = {t.name: Compiled(insert(t).on_conflict_do_nothing(), dialect)
                      for t in KIND_TABLES}
        new_message = insert(messages).on_conflict_do_nothing(
            index_elements=[messages.c.msg_id])
        self.messages = Compiled(new_message, dialect)
        # The same, RETURNING the ids it stored (run through SQLAlchemy: a RETURNING
        # executemany is driver-specific).
        self.messages_returning: Insert = new_message.returning(messages.c.msg_id)
        # A new line, or an existing one's first/last seen widened.
        stmt = insert(lines)
        self.touch_lines = Compiled(stmt.on_conflict_do_update(
            index_elements=[lines.c.site, lines.c.line],
            set_={
                "first_seen_at_ms": _smaller(stmt.excluded.first_seen_at_ms,
                                             lines.c.first_seen_at_ms),
                "last_seen_at_ms": _larger(stmt.excluded.last_seen_at_ms,
                                           lines.c.last_seen_at_ms),
            },
        ), dialect, ["site", "line", "first_seen_at_ms", "last_seen_at_ms"])
        # Applied only if newer than what the line shows (a late outbox message never
        # wins). Parameters: STATUS_KEYS / MODEL_KEYS (rows.status_update / model_update).
        self.update_status = Compiled(
            lines.update().where(_line_is(lines.c.status_at_ms)), dialect,
            [k for k in STATUS_KEYS if not k.startswith("b_")])
        self.update_model = Compiled(
            lines.update().where(_line_is(lines.c.model_at_ms)), dialect,
            [k for k in MODEL_KEYS if not k.startswith("b_")])
        # A repeat of quarantined junk adds to times_seen and moves last seen.
        stmt = insert(quarantine)
        self.quarantine = Compiled(stmt.on_conflict_do_update(
            index_elements=[quarantine.c.quarantine_id],
            set_={
                "times_seen": quarantine.c.times_seen + stmt.excluded.times_seen,
                "last_received_at_ms": _larger(stmt.excluded.last_received_at_ms,
                                               quarantine.c.last_received_at_ms),
            },
        ), dialect)
        # A collector's counters: adds `value`.
        stmt = insert(counters)
        self.counters = Compiled(stmt.on_conflict_do_update(
            index_elements=[counters.c.collector_id, counters.c.name],
            set_={"value": counters.c.value + stmt.excluded.value,
                  "updated_at_ms": stmt.excluded.updated_at_ms},
        ), dialect)


    def known_ids(self, conn: Connection, ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """(msg_id, content digest) of those of `ids` (at most KNOWN_IDS_MAX, at least
        one) already stored. The list is padded with its last id to a power of two, so
        a handful of statements are ever compiled."""
        size = max(16, 1 << (len(ids) - 1).bit_length())
        if size > KNOWN_IDS_MAX:
            raise ValueError(f"at most {KNOWN_IDS_MAX} ids per lookup")
        known = self._known.get(size)
        if known is None:
            params = [bindparam(f"id{i}", type_=Text) for i in range(size)]
            known = self._known[size] = Compiled(
                select(messages.c.msg_id, messages.c.content_sha256)
                .where(messages.c.msg_id.in_(params)), self._dialect)
        padded = [*ids, *([ids[-1]] * (size - len(ids)))]
        return known.fetch(conn, {f"id{i}": msg_id for i, msg_id in enumerate(padded)})


# ---- reads

PING: Final = select(lines.c.site).limit(1)

_LINE_COLUMNS: Final = (
    lines.c.site, lines.c.line, lines.c.first_seen_at_ms, lines.c.last_seen_at_ms,
    lines.c.online, lines.c.state, lines.c.reason, lines.c.status_at_ms,
    lines.c.app_version, lines.c.started_at_ms, lines.c.sources_json, lines.c.alarms_json,
    lines.c.model_name, lines.c.model_version, lines.c.model_label, lines.c.model_at_ms,
)

SELECT_LINES: Final = select(*_LINE_COLUMNS).order_by(lines.c.site, lines.c.line)


def select_line(site: str, line: str) -> AnySelect:
    return select(*_LINE_COLUMNS).where(lines.c.site == site, lines.c.line == line)


def select_metrics(site: str, line: str, since_ms: int, until_ms: int,
                   limit: int) -> AnySelect:
    """A line's metrics, newest first, since inclusive, until exclusive."""
    m = metrics.c
    return (select(m.msg_id, m.sent_at_ms, m.received_at_ms, m.window_s, m.fps, m.passed,
                   m.failed, m.uninspected, m.defects, m.e2e_p50_ms, m.e2e_p95_ms,
                   m.e2e_p99_ms, m.engine_provider, m.model_name, m.model_version,
                   m.outbox_depth, m.payload_json)
            .where(m.site == site, m.line == line, m.sent_at_ms >= since_ms,
                   m.sent_at_ms < until_ms)
            .order_by(m.sent_at_ms.desc(), m.msg_id.desc())
            .limit(limit))


def select_report_rows(site: str, line: str, since_ms: int,
                       until_ms: int) -> AnySelect:
    """The columns a line report sums, oldest first."""
    m = metrics.c
    return (select(m.sent_at_ms, m.passed, m.failed, m.uninspected, m.payload_json)
            .where(m.site == site, m.line == line, m.sent_at_ms >= since_ms,
                   m.sent_at_ms < until_ms)
            .order_by(m.sent_at_ms))


def select_defect_events(
    *, since_ms: int, until_ms: int, site: str | None, line: str | None,
    class_name: str | None, limit: int,
) -> AnySelect:
    """Defect events, newest first by capture time (since inclusive, until exclusive);
    `class_name`: events with at least one detection of that class."""
    e = defect_events.c
    query = (select(e.msg_id, e.site, e.line, e.sent_at_ms, e.received_at_ms,
                    e.captured_at_ms, e.part_id, e.frame_id, e.station, e.model_name,
                    e.model_version, e.model_label, e.image_w, e.image_h, e.latency_ms)
             .where(e.captured_at_ms >= since_ms, e.captured_at_ms < until_ms))
    if site is not None:
        query = query.where(e.site == site)
    if line is not None:
        query = query.where(e.line == line)
    if class_name is not None:
        query = query.where(exists().where(defects.c.msg_id == e.msg_id,
                                           defects.c.class_name == class_name))
    return query.order_by(e.captured_at_ms.desc(), e.msg_id.desc()).limit(limit)


def select_defects_of(ids: Sequence[str]) -> AnySelect:
    d = defects.c
    return (select(d.msg_id, d.idx, d.class_id, d.class_name, d.score, d.x1, d.y1, d.x2,
                   d.y2, d.width_mm, d.height_mm)
            .where(d.msg_id.in_(ids)).order_by(d.msg_id, d.idx))


def select_latest_model_report(site: str, line: str) -> AnySelect:
    r = model_reports.c
    return (select(r.msg_id, r.sent_at_ms, r.current_name, r.current_version,
                   r.current_label, r.previous_name, r.previous_version, r.previous_label,
                   r.payload_json)
            .where(r.site == site, r.line == line)
            .order_by(r.sent_at_ms.desc(), r.msg_id.desc())
            .limit(1))


SELECT_QUARANTINE_BY_REASON: Final = (
    select(quarantine.c.reason, func.sum(quarantine.c.times_seen), func.count())
    .group_by(quarantine.c.reason).order_by(quarantine.c.reason))


def select_quarantine_recent(limit: int) -> AnySelect:
    q = quarantine.c
    return (select(q.quarantine_id, q.topic, q.reason, q.detail, q.payload_bytes,
                   q.payload_b64, q.first_received_at_ms, q.last_received_at_ms,
                   q.times_seen)
            .order_by(q.last_received_at_ms.desc(), q.quarantine_id)
            .limit(limit))


SELECT_COUNTERS: Final = (
    select(counters.c.collector_id, counters.c.name, counters.c.value,
           counters.c.updated_at_ms)
    .order_by(counters.c.collector_id, counters.c.name))

"""The telemetry outbox: MQTT messages kept in the appliance database until the broker
acknowledges them.

The table (`telemetry_outbox`) is created by the store's migration v3 and lives in the
store's SQLite file. The store is the one writer of that file: this module never writes
on a connection of its own; every write (new messages, deletes of acknowledged rows,
attempt counts) is a function handed to the store's writer thread (`Store.transact`),
committed in the transaction of its next batch. Reads (the depth at start, the backlog)
use a read-only connection (WAL: they never wait for the writer, and see committed rows
only).

Why the store's writer and not a file and writer thread of its own: measured with
bench/outbox.py (AMD EPYC, 2 threads, SQLite 3.40.1, a machine shared with other work;
best of 3, 30,000 verdicts submitted as fast as they go, the outbox at 1,000 messages/s
beside them, each write deleting the previous one's rows as acknowledgements do):

    layout          verdicts/s  CPU us/verdict  outbox alone: enqueue/s  ack-delete/s
    store's writer      28,219              20                   29,908        26,687
    own file+writer     18,907              26                   25,689        25,010
    2nd connection      19,230              28                   18,650        22,699
    (before; one write failed "database is locked" after its 2 s busy timeout)

One writer thread fewer on a 2-core machine, and an outbox write rides in a verdict
batch's transaction instead of committing one of its own. Its own file would win only at
an outbox flooding as fast as it goes (7,554 vs 4,991 messages/s, while verdicts fell to
15,058/s against 33,273/s), far beyond what a line publishes. Outbox writes skip the
store's record queue (writer.py), so their latency is one batch however far the verdicts
queue up.

Invariants:
- A message is written here before it is published; its row is deleted only when the
  broker acknowledged it, or when the bound evicts it (then it is counted as dropped).
- Rows are sent in `id` order (oldest first); ids are never reused (AUTOINCREMENT), so a
  late acknowledgement can never delete a newer row.
- `msg_id` is unique: a message handed over twice is stored once.
- The bound (`plan_admission`): at `max_rows` the oldest `metrics` rows are evicted to make
  room; with no `metrics` left a new `metrics` message is refused; events, model reports
  and drift sketches are never evicted and are refused only beyond `hard_max_rows` (the
  disk's safety net). Every eviction and refusal is counted by kind.
- At most one write is outstanding at a time (`begin_write` .. `finish_write`): its
  function is computed from the depth at `begin_write` and changes no Python state (the
  store may run it twice); `finish_write` applies its result once it has committed.
- One thread uses an `Outbox` (the publisher's worker); `depth` may be read from any.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Protocol

from appliance.errors import StoreError
from appliance.store.queries import open_reader
from appliance.store.transaction import Pending, T, Work
from appliance.telemetry.errors import OutboxUnavailable, TelemetryError

logger = logging.getLogger(__name__)

TABLE: Final = "telemetry_outbox"
DROPPABLE_KINDS: Final = frozenset({"metrics"})
"""Kinds the bound may evict or refuse first: each `metrics` window is a summary that the
next windows and the local store make up for; events and model reports are history."""

_COLUMNS = "id, kind, topic, payload, qos, retain, msg_id, created_at, attempts"
_INSERT = (
    f"INSERT INTO {TABLE} (kind, topic, payload, qos, retain, msg_id, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (msg_id) DO NOTHING"
)
_DELETE = f"DELETE FROM {TABLE} WHERE id = ? RETURNING kind"
_EVICT = (
    f"DELETE FROM {TABLE} WHERE id IN (SELECT id FROM {TABLE} WHERE kind = 'metrics'"
    " ORDER BY id LIMIT ?) RETURNING id"
)
_MARK_SENT = f"UPDATE {TABLE} SET attempts = attempts + 1, last_sent_at = ? WHERE id = ?"


class OutboxDatabase(Protocol):
    """The database the outbox table lives in, and its one writer (`Store` fits)."""

    @property
    def path(self) -> Path: ...

    def transact(
        self, work: Work[T], on_done: Callable[[], None] | None = None, *, urgent: bool = False
    ) -> Pending[T]: ...


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to persist: `kind` is the protocol topic kind (`metrics`,
    `events/defect`, `model`, `drift`); `created_at` is unix seconds."""

    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    msg_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A persisted message; `attempts` counts how often it was handed to the broker."""

    id: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool
    msg_id: str
    created_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class Admission:
    """What the bound decides for a batch: `admit[i]` for the i-th new message, how many
    of the oldest `metrics` rows to evict, and the losses by kind (evicted + refused)."""

    admit: tuple[bool, ...]
    evict_metrics: int
    dropped: Mapping[str, int]


def plan_admission(
    depth: int, metrics_depth: int, kinds: Sequence[str], max_rows: int, hard_max_rows: int
) -> Admission:
    """Apply the bound to new messages of `kinds` (in order) arriving at an outbox of
    `depth` rows, `metrics_depth` of them `metrics`. Pure; see the module docstring."""
    total, evictable, evict = depth, metrics_depth, 0
    admit: list[bool] = []
    dropped: Counter[str] = Counter()
    for kind in kinds:
        droppable = kind in DROPPABLE_KINDS
        if total < max_rows:
            admit.append(True)
            total += 1
        elif evictable > 0:  # full: the oldest metrics row makes room
            evict += 1
            evictable -= 1
            dropped["metrics"] += 1
            admit.append(True)
        elif not droppable and total < hard_max_rows:
            admit.append(True)
            total += 1
        else:
            admit.append(False)
            dropped[kind] += 1
            continue
        if droppable:
            evictable += 1
    return Admission(tuple(admit), evict, dict(dropped))


@dataclass
class WriteResult:
    """What one outbox write did; `depth_delta` (rows by kind) is applied to the outbox's
    counters by `finish_write`."""

    admitted: list[OutboxRow] = field(default_factory=list)
    evicted_ids: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    deleted: int = 0
    depth_delta: dict[str, int] = field(default_factory=dict)


def _apply(
    conn: sqlite3.Connection,
    *,
    new: Sequence[NewMessage],
    acked_ids: Sequence[int],
    sent_ids: Sequence[int],
    now: float,
    depth: int,
    metrics_depth: int,
    max_rows: int,
    hard_max_rows: int,
) -> WriteResult:
    """The write itself, on the store's writer thread inside its transaction: delete the
    acknowledged rows, admit `new` under the bound, count the attempts of `sent_ids`.
    Changes nothing but the database (it may run twice)."""
    result = WriteResult()
    by_kind: Counter[str] = Counter()
    for row_id in acked_ids:
        gone = conn.execute(_DELETE, (row_id,)).fetchone()
        if gone is not None:
            by_kind[str(gone[0])] -= 1
            result.deleted += 1
    plan = plan_admission(depth - result.deleted, metrics_depth + by_kind["metrics"],
                          [m.kind for m in new], max_rows, hard_max_rows)
    result.dropped = dict(plan.dropped)
    for m, admit in zip(new, plan.admit, strict=True):
        if not admit:
            continue
        cur = conn.execute(
            _INSERT, (m.kind, m.topic, m.payload, m.qos, int(m.retain), m.msg_id, m.created_at)
        )
        if cur.rowcount != 1 or cur.lastrowid is None:
            result.duplicates += 1
            continue
        by_kind[m.kind] += 1
        result.admitted.append(OutboxRow(
            cur.lastrowid, m.kind, m.topic, m.payload, m.qos, m.retain, m.msg_id,
            m.created_at, 0,
        ))
    if plan.evict_metrics:
        evicted = [int(r[0]) for r in conn.execute(_EVICT, (plan.evict_metrics,))]
        result.evicted_ids = evicted
        by_kind["metrics"] -= len(evicted)
        gone = set(evicted)
        result.admitted = [r for r in result.admitted if r.id not in gone]
    if sent_ids:
        conn.executemany(_MARK_SENT, [(now, i) for i in sent_ids])
    result.depth_delta = {k: n for k, n in by_kind.items() if n}
    return result


class Outbox:
    """See the module docstring. Raises TelemetryError if the database cannot be read or
    has no outbox table (the store migrates it; open the `Store` first)."""

    def __init__(
        self,
        db: OutboxDatabase,
        *,
        max_rows: int,
        hard_max_rows: int,
        busy_timeout_ms: int = 2000,
        urgent: bool = True,
    ) -> None:
        if hard_max_rows < max_rows:
            raise ValueError("hard_max_rows must be >= max_rows")
        self.path = db.path
        self._db = db
        self._max_rows = max_rows
        self._hard_max_rows = hard_max_rows
        self._urgent = urgent
        self._writing: Pending[WriteResult] | None = None
        try:
            self._conn = open_reader(self.path, busy_timeout_ms / 1000.0)
        except sqlite3.Error as e:
            raise TelemetryError(f"{self.path}: cannot open the telemetry outbox: {e}") from e
        try:
            found = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
            ).fetchone()
            if found is None:
                raise TelemetryError(
                    f"{self.path}: no {TABLE} table; open the store first (it migrates the "
                    "database)"
                )
            rows = self._conn.execute(f"SELECT kind, count(*) FROM {TABLE} GROUP BY kind")
            self._by_kind: Counter[str] = Counter({str(k): int(n) for k, n in rows})
        except sqlite3.Error as e:
            self._conn.close()
            raise TelemetryError(f"{self.path}: cannot open the telemetry outbox: {e}") from e
        except TelemetryError:
            self._conn.close()
            raise
        self.depth = sum(self._by_kind.values())

    @property
    def depth_by_kind(self) -> dict[str, int]:
        """Rows waiting for an acknowledgement, by kind."""
        return {k: n for k, n in self._by_kind.items() if n}

    @property
    def writing(self) -> bool:
        """A write has begun and not been finished."""
        return self._writing is not None

    def begin_write(
        self,
        new: Sequence[NewMessage],
        *,
        acked_ids: Sequence[int] = (),
        sent_ids: Sequence[int] = (),
        now: float = 0.0,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        """Hand one write to the store's writer (never blocks): delete the acknowledged
        rows, admit `new` under the bound, count one more attempt for `sent_ids` (handed
        to the broker at `now`). `on_done` runs on the writer thread once its outcome is
        known; then call `finish_write`. Raises OutboxUnavailable (nothing was handed
        over) if the store is stopped, TelemetryError if a write is outstanding."""
        if self._writing is not None:
            raise TelemetryError("an outbox write is outstanding; finish it first")
        work = partial(
            _apply, new=tuple(new), acked_ids=tuple(acked_ids), sent_ids=tuple(sent_ids),
            now=now, depth=self.depth, metrics_depth=self._by_kind["metrics"],
            max_rows=self._max_rows, hard_max_rows=self._hard_max_rows,
        )
        try:
            self._writing = self._db.transact(work, on_done, urgent=self._urgent)
        except StoreError as e:
            raise OutboxUnavailable(f"{self.path}: outbox write refused: {e}") from e

    def write_done(self) -> bool:
        """The outstanding write's outcome is known (or none is outstanding)."""
        return self._writing is None or self._writing.done()

    def finish_write(self, timeout_s: float = 0.0) -> WriteResult:
        """The outstanding write's result once committed (waiting up to `timeout_s`),
        applied to `depth`. Raises OutboxUnavailable if it was rolled back (nothing was
        written; retry later) or its outcome is not known in time (it stays outstanding),
        TelemetryError if no write is outstanding."""
        pending = self._writing
        if pending is None:
            raise TelemetryError("no outbox write is outstanding")
        if not pending.done() and timeout_s <= 0:
            raise OutboxUnavailable(f"{self.path}: outbox write not committed yet")
        try:
            result = pending.result(timeout_s)
        except StoreError as e:
            if pending.done():
                self._writing = None
            raise OutboxUnavailable(f"{self.path}: outbox write failed: {e}") from e
        self._writing = None
        self._by_kind.update(result.depth_delta)
        self.depth = sum(self._by_kind.values())
        return result

    def write(
        self,
        new: Sequence[NewMessage],
        *,
        acked_ids: Sequence[int] = (),
        sent_ids: Sequence[int] = (),
        now: float = 0.0,
        timeout_s: float = 10.0,
    ) -> WriteResult:
        """`begin_write` and `finish_write`, waiting up to `timeout_s` for the commit.
        Raises OutboxUnavailable."""
        self.begin_write(new, acked_ids=acked_ids, sent_ids=sent_ids, now=now)
        return self.finish_write(timeout_s)

    def backlog(self, after_id: int, upto_id: int, limit: int) -> list[OutboxRow]:
        """Committed rows with `after_id < id <= upto_id`, oldest first, at most `limit`.
        Raises OutboxUnavailable."""
        try:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, upto_id, limit),
            ).fetchall()
        except sqlite3.Error as e:
            raise OutboxUnavailable(f"{self.path}: outbox read failed: {e}") from e
        return [
            OutboxRow(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]), bool(r[5]),
                      str(r[6]), float(r[7]), int(r[8]))
            for r in rows
        ]

    def max_id(self) -> int:
        """The newest committed row's id (0 when empty). Raises OutboxUnavailable."""
        try:
            row = self._conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()
        except sqlite3.Error as e:
            raise OutboxUnavailable(f"{self.path}: outbox read failed: {e}") from e
        return int(row[0])

    def close(self) -> None:
        """Close the read connection (idempotent). A write still outstanding commits or
        rolls back in the store on its own."""
        try:
            self._conn.close()
        except sqlite3.Error as e:
            logger.warning("closing the outbox: %s", e)

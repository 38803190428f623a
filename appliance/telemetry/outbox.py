"""The telemetry outbox: MQTT messages kept in the appliance database until the broker
acknowledges them.

The table (`telemetry_outbox`) is created by the store's migration v3; this module only
reads and writes it, on its own connection to the same SQLite file (WAL): the store's
writer thread and this one each hold the write lock for one short transaction at a time,
so neither waits longer than the other's transaction.

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
- One thread uses an `Outbox` (the publisher's worker); `depth` may be read from any.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

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
    """What one `Outbox.write` transaction did."""

    admitted: list[OutboxRow] = field(default_factory=list)
    evicted_ids: list[int] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    deleted: int = 0


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False,
        timeout=busy_timeout_ms / 1000.0,
    )
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: a commit survives a process kill
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    if found is None:
        conn.close()
        raise TelemetryError(
            f"{path}: no {TABLE} table; open the store first (it migrates the database)"
        )
    return conn


class Outbox:
    """See the module docstring. Raises TelemetryError if the database cannot be opened
    or has no outbox table (the store migrates it; open the `Store` first)."""

    def __init__(
        self, path: Path, *, max_rows: int, hard_max_rows: int, busy_timeout_ms: int = 2000
    ) -> None:
        if hard_max_rows < max_rows:
            raise ValueError("hard_max_rows must be >= max_rows")
        self.path = path
        self._max_rows = max_rows
        self._hard_max_rows = hard_max_rows
        try:
            self._conn = _connect(path, busy_timeout_ms)
            rows = self._conn.execute(f"SELECT kind, count(*) FROM {TABLE} GROUP BY kind")
            self._by_kind: Counter[str] = Counter({str(k): int(n) for k, n in rows})
        except sqlite3.Error as e:
            raise TelemetryError(f"{path}: cannot open the telemetry outbox: {e}") from e
        self.depth = sum(self._by_kind.values())

    @property
    def depth_by_kind(self) -> dict[str, int]:
        """Rows waiting for an acknowledgement, by kind."""
        return {k: n for k, n in self._by_kind.items() if n}

    def write(
        self,
        new: Sequence[NewMessage],
        *,
        acked_ids: Sequence[int] = (),
        sent_ids: Sequence[int] = (),
        now: float = 0.0,
    ) -> WriteResult:
        """One transaction: delete the acknowledged rows, admit `new` under the bound,
        and count one more attempt for `sent_ids` (handed to the broker at `now`).

        Raises OutboxUnavailable (nothing was written; retry later) if SQLite is busy
        past the timeout, the disk is full or an I/O error occurs.
        """
        result = WriteResult()
        by_kind: Counter[str] = Counter()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row_id in acked_ids:
                    gone = conn.execute(_DELETE, (row_id,)).fetchone()
                    if gone is not None:
                        by_kind[str(gone[0])] -= 1
                        result.deleted += 1
                depth = self.depth - result.deleted
                metrics_depth = self._by_kind["metrics"] + by_kind["metrics"]
                plan = plan_admission(depth, metrics_depth, [m.kind for m in new],
                                      self._max_rows, self._hard_max_rows)
                result.dropped = dict(plan.dropped)
                for message, admit in zip(new, plan.admit, strict=True):
                    if admit:
                        self._insert(conn, message, result, by_kind)
                if plan.evict_metrics:
                    evicted = [int(r[0]) for r in conn.execute(_EVICT, (plan.evict_metrics,))]
                    result.evicted_ids = evicted
                    by_kind["metrics"] -= len(evicted)
                if sent_ids:
                    conn.executemany(_MARK_SENT, [(now, i) for i in sent_ids])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise OutboxUnavailable(f"{self.path}: outbox write failed: {e}") from e
        self._by_kind.update(by_kind)
        self.depth = sum(self._by_kind.values())
        if result.evicted_ids:
            gone = set(result.evicted_ids)
            result.admitted = [r for r in result.admitted if r.id not in gone]
        return result

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, m: NewMessage, result: WriteResult, by_kind: Counter[str]
    ) -> None:
        cur = conn.execute(
            _INSERT, (m.kind, m.topic, m.payload, m.qos, int(m.retain), m.msg_id, m.created_at)
        )
        if cur.rowcount != 1 or cur.lastrowid is None:
            result.duplicates += 1
            return
        by_kind[m.kind] += 1
        result.admitted.append(OutboxRow(
            cur.lastrowid, m.kind, m.topic, m.payload, m.qos, m.retain, m.msg_id,
            m.created_at, 0,
        ))

    def backlog(self, after_id: int, upto_id: int, limit: int) -> list[OutboxRow]:
        """Rows with `after_id < id <= upto_id`, oldest first, at most `limit`.
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
        """The newest row's id (0 when empty). Raises OutboxUnavailable."""
        try:
            row = self._conn.execute(f"SELECT coalesce(max(id), 0) FROM {TABLE}").fetchone()
        except sqlite3.Error as e:
            raise OutboxUnavailable(f"{self.path}: outbox read failed: {e}") from e
        return int(row[0])

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self._conn.close()
        except sqlite3.Error as e:
            logger.warning("closing the outbox: %s", e)

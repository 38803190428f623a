"""The alarms table's writes, in one place: opening, bumping and ending an alarm row
together with its one event, inside a transaction the caller holds. The alarm book
(appliance/alarms.py) runs them through the store's writer; the writer itself runs them
for the alarms the store raises (a full disk, images stopped at the free-disk floor),
which cannot wait for a book that writes through that same writer.

Invariants (with the partial unique index `alarms_active`, migrations.py):
- at most one active row per (code, station); raising an alarm that is already active
  never writes an event (it bumps `count`, or with `bump=False` leaves the row as is);
- every opening is one `alarm_raised` event and every ending one `alarm_resolved`
  event, written in the same transaction as the row: one alarm, one event each way,
  whichever component raised or ended it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import StoreError
from appliance.store.batch import INSERT_EVENT, event_row

COLUMNS = ("id, code, severity, station, message, raised_at, cleared_at, acked_at, acked_by,"
           " count, last_raised_at")

AlarmData = Mapping[str, str | int | float | bool | None]
"""More facts for the alarm's event (`data`), JSON scalars."""


def raise_row(conn: sqlite3.Connection, now: float, code: str, message: str, *,
              station: str | None, severity: str, data: AlarmData | None = None,
              bump: bool = True) -> tuple[tuple[Any, ...], bool]:
    """Open the alarm `code` at `station` (None: the line) with its `alarm_raised` event,
    or, while one is active, bump its count and take the new message and severity
    (`bump=False`: leave it as it is). Returns (the row, whether it was opened)."""
    row = active_row(conn, code, station)
    if row is not None:
        if bump:
            conn.execute("UPDATE alarms SET count = count + 1, last_raised_at = ?,"
                         " message = ?, severity = ? WHERE id = ?",
                         (now, message, severity, row[0]))
        return row_by_id(conn, int(row[0])), False
    new_id = conn.execute(
        "INSERT INTO alarms (code, station, severity, message, raised_at,"
        " last_raised_at) VALUES (?, ?, ?, ?, ?, ?)",
        (code, station, severity, message, now, now)).lastrowid
    conn.execute(INSERT_EVENT, event_row(
        now, "alarm_raised", "alarm" if severity == "critical" else "warning",
        station or "alarms", message,
        {**(data or {}), "alarm": code, "alarm_id": new_id, "station": station}))
    return row_by_id(conn, new_id), True


def clear_row(conn: sqlite3.Connection, now: float, code: str, station: str | None, *,
              message: str | None = None,
              data: AlarmData | None = None) -> tuple[Any, ...] | None:
    """End the active alarm `code` at `station` with its `alarm_resolved` event
    (`message`: what the event says, else "<code> is over"); None if none is active."""
    row = active_row(conn, code, station)
    if row is None:
        return None
    conn.execute("UPDATE alarms SET cleared_at = ? WHERE id = ?", (now, row[0]))
    conn.execute(INSERT_EVENT, event_row(
        now, "alarm_resolved", "info", station or "alarms",
        message or f"{code}{f' ({station})' if station else ''} is over",
        {**(data or {}), "alarm": code, "alarm_id": int(row[0]), "station": station,
         "duration_s": round(now - float(row[5]), 3)}))
    return row_by_id(conn, int(row[0]))


@dataclass(frozen=True, slots=True)
class AlarmChange:
    """An alarm the store's writer raises (`raised`) or ends with the batch it commits
    (see `apply`)."""

    at: float
    code: str
    raised: bool
    message: str
    severity: str = "warning"
    data: AlarmData = field(default_factory=dict)


def apply(conn: sqlite3.Connection, change: AlarmChange) -> None:
    """Write `change` (`raise_row` without bumping, or `clear_row`) in `conn`'s
    transaction. Store-raised alarms are line alarms (no station)."""
    if change.raised:
        raise_row(conn, change.at, change.code, change.message, station=None,
                  severity=change.severity, data=change.data, bump=False)
    else:
        clear_row(conn, change.at, change.code, None, message=change.message,
                  data=change.data)


def active_row(conn: sqlite3.Connection, code: str,
               station: str | None) -> tuple[Any, ...] | None:
    row = conn.execute(
        f"SELECT {COLUMNS} FROM alarms WHERE code = ? AND coalesce(station, '') = ?"
        " AND cleared_at IS NULL", (code, station or "")).fetchone()
    return None if row is None else tuple(row)


def row_by_id_or_none(conn: sqlite3.Connection, alarm_id: int) -> tuple[Any, ...] | None:
    row = conn.execute(f"SELECT {COLUMNS} FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
    return None if row is None else tuple(row)


def row_by_id(conn: sqlite3.Connection, alarm_id: int | None) -> tuple[Any, ...]:
    row = row_by_id_or_none(conn, int(alarm_id or 0))
    if row is None:  # written in this very transaction: cannot happen
        raise StoreError(f"alarm {alarm_id} vanished inside its transaction")
    return row

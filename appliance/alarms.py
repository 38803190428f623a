"""The alarm book: every alarm the operator must see, in the store's `alarms` table, kept
on the panel until someone acknowledges it.

An alarm is identified by its code and station (None: the whole line). `raise_alarm`
opens an occurrence, or, while one is active, bumps its `count` (no duplicate row);
`clear` ends it (`cleared_at`); `acknowledge` records who saw it and when. `current`
lists what the panel shows: active alarms, and cleared ones not yet acknowledged.

Invariants:
- At most one active row per (code, station) (a partial unique index, migrations.py).
- Every opening, clearing and acknowledgement is also an event (`alarm_raised`,
  `alarm_resolved`, `alarm_acknowledged`, `data.alarm` the code, `data.alarm_id` the
  row), written in the same transaction as the row: the two never disagree.
- Writes go through the store's single writer (`Store.transact`); reads use their own
  read-only connection. Every method waits for its commit (at most WRITE_TIMEOUT_S).
- One alarm, one event each way: raising an active alarm writes no event. The rows and
  their events are written by appliance/store/alarm_rows.py, which the store's writer
  also runs for the alarms it raises itself (full disk, free-disk floor).
- The book is generic: the rules evaluator (alarm_rules.py), the falling-behind monitor,
  a model that cannot load at start, drift alerts and update or rollback events all
  raise through `raise_alarm`.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from appliance.errors import StoreError, UnknownAlarm
from appliance.store import Store
from appliance.store.alarm_rows import (
    COLUMNS,
    AlarmData,
    clear_row,
    raise_row,
    row_by_id,
    row_by_id_or_none,
)
from appliance.store.batch import INSERT_EVENT, event_row
from appliance.store.queries import open_reader

logger = logging.getLogger(__name__)

AlarmSeverity = Literal["warning", "critical"]
ALARM_SEVERITIES: tuple[AlarmSeverity, ...] = get_args(AlarmSeverity)
CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_MESSAGE_CHARS = 1000
MAX_ACTOR_CHARS = 64
WRITE_TIMEOUT_S = 10.0

_COLUMNS = COLUMNS


@dataclass(frozen=True, slots=True)
class Alarm:
    """One occurrence of an alarm. Times are unix seconds."""

    id: int
    code: str
    severity: AlarmSeverity
    station: str | None
    message: str
    raised_at_s: float
    cleared_at_s: float | None
    acked_at_s: float | None
    acked_by: str | None
    count: int = 1
    """How often it was raised while active (1: once)."""
    last_raised_at_s: float | None = None

    @property
    def active(self) -> bool:
        """The condition still holds (not cleared)."""
        return self.cleared_at_s is None

    @property
    def acknowledged(self) -> bool:
        return self.acked_at_s is not None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.active}


def _severity(value: object) -> AlarmSeverity:
    return "critical" if value == "critical" else "warning"


def _alarm(row: tuple[Any, ...]) -> Alarm:
    (id_, code, severity, station, message, raised, cleared, acked, by, count,
     last) = row
    return Alarm(int(id_), str(code), _severity(severity), station, str(message),
                 float(raised), cleared, acked, by, int(count), float(last))


def check_code(code: str) -> str:
    """`code` if valid (lowercase letters, digits, `_`, starting with a letter, at most 64
    characters: it is also an MQTT status alarm name); raises ValueError."""
    if not CODE_RE.fullmatch(code):
        raise ValueError(f"invalid alarm code {code!r}: lowercase letters, digits and '_', "
                         "starting with a letter, at most 64 characters")
    return code


class AlarmBook:
    """See the module docstring. Thread-safe (each call is one store transaction)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    # ------------------------------------------------------------------ reads
    def _read(self, sql: str, params: tuple[object, ...] = ()) -> list[Alarm]:
        try:
            conn = open_reader(self._store.path)
            try:
                return [_alarm(r) for r in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: reading alarms failed: {e}") from e

    def current(self) -> list[Alarm]:
        """What the panel shows: active alarms and cleared ones not yet acknowledged,
        critical first, then newest first."""
        return self._read(
            f"SELECT {_COLUMNS} FROM alarms WHERE cleared_at IS NULL OR acked_at IS NULL"
            " ORDER BY severity = 'critical' DESC, raised_at DESC, id DESC")

    def active(self) -> list[Alarm]:
        """Alarms whose condition still holds (acknowledged or not)."""
        return self._read(f"SELECT {_COLUMNS} FROM alarms WHERE cleared_at IS NULL"
                          " ORDER BY raised_at DESC, id DESC")

    def history(self, limit: int = 100) -> list[Alarm]:
        """The latest `limit` occurrences, newest first."""
        return self._read(f"SELECT {_COLUMNS} FROM alarms ORDER BY raised_at DESC, id DESC"
                          " LIMIT ?", (max(0, int(limit)),))

    def get(self, alarm_id: int) -> Alarm:
        """Raises UnknownAlarm."""
        rows = self._read(f"SELECT {_COLUMNS} FROM alarms WHERE id = ?", (int(alarm_id),))
        if not rows:
            raise UnknownAlarm(f"no alarm with id {alarm_id}")
        return rows[0]

    # ------------------------------------------------------------------ writes
    def raise_alarm(self, code: str, message: str, station: str | None = None,
                    severity: str = "warning", *, data: AlarmData | None = None,
                    bump: bool = True) -> Alarm:
        """Open an alarm, or bump the count (and take the new message and severity) of
        the active one with this code and station; `bump=False` leaves an active one as
        it is (a second component seeing a condition its owner already raised). `data`:
        more facts for the `alarm_raised` event. Raises ValueError (bad code or
        severity), StoreError."""
        check_code(code)
        station = station or None
        if severity not in ALARM_SEVERITIES:
            raise ValueError(f"invalid alarm severity {severity!r}: expected one of "
                             f"{', '.join(ALARM_SEVERITIES)}")
        message = message[:MAX_MESSAGE_CHARS]
        now = self._clock()

        def work(conn: sqlite3.Connection) -> tuple[tuple[Any, ...], bool]:
            return raise_row(conn, now, code, message, station=station, severity=severity,
                             data=data, bump=bump)

        row, opened = self._commit(work)
        alarm = _alarm(row)
        if opened:
            logger.warning("alarm %s%s raised: %s", code,
                           f" ({station})" if station else "", message)
        return alarm

    def clear(self, code: str, station: str | None = None, *, message: str | None = None,
              data: AlarmData | None = None) -> Alarm | None:
        """End the active alarm with this code and station (it stays on the panel until
        acknowledged); None if none was active. `message` and `data`: what the
        `alarm_resolved` event says. Raises StoreError."""
        station = station or None
        now = self._clock()

        def work(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            return clear_row(conn, now, code, station, message=message, data=data)

        row = self._commit(work)
        if row is None:
            return None
        logger.info("alarm %s%s cleared", code, f" ({station})" if station else "")
        return _alarm(row)

    def acknowledge(self, alarm_id: int, by: str) -> Alarm:
        """Record that `by` has seen the alarm (the first acknowledgement stands; a
        repeat returns it unchanged). Raises UnknownAlarm, ValueError (empty `by`),
        StoreError."""
        if not by or len(by) > MAX_ACTOR_CHARS:
            raise ValueError(f"who acknowledges must be 1 to {MAX_ACTOR_CHARS} characters")
        now = self._clock()

        def work(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            row = row_by_id_or_none(conn, int(alarm_id))
            if row is None or row[7] is not None:
                return row
            conn.execute("UPDATE alarms SET acked_at = ?, acked_by = ? WHERE id = ?",
                         (now, by, alarm_id))
            conn.execute(INSERT_EVENT, event_row(
                now, "alarm_acknowledged", "info", row[3] or "alarms",
                f"{row[1]} acknowledged by {by}",
                {"alarm": str(row[1]), "alarm_id": int(alarm_id), "by": by}))
            return row_by_id(conn, int(alarm_id))

        row = self._commit(work)
        if row is None:
            raise UnknownAlarm(f"no alarm with id {alarm_id}")
        return _alarm(row)

    def _commit(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._store.transact(work, urgent=True).result(WRITE_TIMEOUT_S)

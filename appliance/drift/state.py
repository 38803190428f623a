"""The open drift windows in the appliance store (`drift_windows`, one row per station):
written through the store's one writer (`Store.transact`), read once at start."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from appliance.drift.window import DriftWindow, WindowState
from appliance.errors import StoreError
from appliance.store import Store
from appliance.store.queries import open_reader

logger = logging.getLogger(__name__)

UPSERT = ("INSERT INTO drift_windows (station, state, updated_at) VALUES (?, ?, ?)"
          " ON CONFLICT (station) DO UPDATE SET state = excluded.state,"
          " updated_at = excluded.updated_at")


class WindowStateStore:
    """Saves and loads the open windows of every station."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    def load(self) -> dict[str, WindowState]:
        """Every station's saved window; an unreadable row is logged and skipped.
        Raises StoreError when the database cannot be read."""
        try:
            conn = open_reader(self._store.path)
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: cannot open for reading: {e}") from e
        try:
            rows = conn.execute("SELECT station, state FROM drift_windows").fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: drift windows: {e}") from e
        finally:
            conn.close()
        out: dict[str, WindowState] = {}
        for station, text in rows:
            try:
                out[str(station)] = DriftWindow.state_from_json(str(text))
            except ValueError as e:
                logger.warning("drift window of station %s not resumed: %s", station, e)
        return out

    def save(self, station: str, state_json: str, *, urgent: bool = False) -> None:
        """Queue the write (committed with the writer's next batch). Raises StoreError
        when the store is stopped."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(UPSERT, (station, state_json, now))

        self._store.transact(work, urgent=urgent)

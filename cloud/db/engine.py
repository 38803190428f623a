"""Opening the cloud database: one Engine per process, with SQLite set up for many
writers (WAL, busy timeout, `BEGIN IMMEDIATE` so a read-then-write transaction takes
the write lock at its start) and PostgreSQL with a small pool.

Reads that never write should use `read_connection`: on SQLite it begins a plain
(deferred) transaction, so readers never wait for, or block, the writers' lock.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from cloud.db.config import DatabaseConfig

logger = logging.getLogger(__name__)

_READ_ONLY: Final = "lineguard_read_only"


def sqlite_path(config: DatabaseConfig) -> Path | None:
    """The database file of an SQLite URL, else None."""
    url = make_url(config.url)
    if url.drivername != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def open_engine(config: DatabaseConfig) -> Engine:
    """An Engine for `config.url`. Creates the SQLite file's folder. Connecting happens
    lazily; a bad host or a missing database shows on first use as
    `sqlalchemy.exc.OperationalError`."""
    url = make_url(config.url)
    if url.drivername == "sqlite":
        path = sqlite_path(config)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": config.busy_timeout_ms / 1000.0,
                          "check_same_thread": False},
        )
        _setup_sqlite(engine, config)
        return engine
    return create_engine(url, pool_size=config.pool_size, pool_pre_ping=True)


def read_connection(engine: Engine) -> Connection:
    """A connection for reads only (use it as a context manager). On SQLite its
    transactions are deferred (a snapshot, no write lock); elsewhere it is a plain
    connection."""
    return engine.connect().execution_options(**{_READ_ONLY: True})


def _setup_sqlite(engine: Engine, config: DatabaseConfig) -> None:
    # pysqlite's own transaction handling is off (isolation_level=None) so that
    # SQLAlchemy's `begin` event can issue BEGIN IMMEDIATE itself; see SQLAlchemy's
    # "Serializable isolation / Savepoints / Transactional DDL" notes for pysqlite.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={config.synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}")
            cursor.execute(f"PRAGMA wal_autocheckpoint={int(config.wal_autocheckpoint_pages)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

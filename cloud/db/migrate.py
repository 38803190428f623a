"""Alembic migrations of the cloud database, run from code (no alembic.ini).

`upgrade` brings every component's branch to its head. Before it migrates an SQLite
file that already holds a schema, it copies the file with SQLite's online backup API to
`<file>.bak-<revisions>-<UTC timestamp>` (`unversioned` for a file with tables but
no revision: a fleet store of 0.1); PostgreSQL is backed up by its operator
(pg_dump), which `lineguard cloud db upgrade` reminds of.

Invariants:
- Several processes may open one database at once (collectors, the API): `upgrade`
  runs in one transaction holding the database's write lock (SQLite: BEGIN IMMEDIATE;
  PostgreSQL: a transaction-scoped advisory lock) and reads the current revisions
  under it, so exactly one of them migrates and the others find nothing to do.
- A database at a revision this build does not know (a newer build migrated it) is
  never touched: `upgrade` and `ensure_schema` raise MigrationError.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.engine import make_url

from cloud.db.config import DatabaseConfig
from cloud.db.engine import read_connection, sqlite_path
from cloud.errors import CloudError

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).with_name("migrations")

# pg_advisory_xact_lock key of "migrating the lineguard cloud database" (any constant).
_PG_MIGRATION_LOCK: Final = 0x6C67_636C_6F75_6401

UPGRADE_COMMAND: Final = "lineguard cloud db upgrade --config <cloud.yaml>"


class MigrationError(CloudError):
    """The database cannot be brought to this build's schema."""


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    return cfg


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def head_revisions() -> set[str]:
    """The head revision of every branch this build knows."""
    return set(_script().get_heads())


def _current(conn: Connection) -> set[str]:
    return set(MigrationContext.configure(conn).get_current_heads())


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty: a new database)."""
    with read_connection(engine) as conn:
        return _current(conn)


def _unknown(script: ScriptDirectory, current: set[str]) -> set[str]:
    unknown = set()
    for rev in current:
        try:
            found = script.get_revision(rev)
        except (CommandError, RevisionError):
            found = None
        if found is None:
            unknown.add(rev)
    return unknown


def _refuse_unknown(script: ScriptDirectory, current: set[str]) -> None:
    unknown = _unknown(script, current)
    if unknown:
        raise MigrationError(
            f"the database is at revision(s) {', '.join(sorted(unknown))} that this build "
            "does not know: a newer lineguard migrated it; run that version (or restore "
            "the backup taken before its migration)"
        )


def pending_revisions(engine: Engine) -> set[str]:
    """The branch heads the database still lacks (empty: up to date).
    Raises MigrationError for a revision this build does not know."""
    script = _script()
    current = current_revisions(engine)
    _refuse_unknown(script, current)
    return _pending(script, current)


def _pending(script: ScriptDirectory, current: set[str]) -> set[str]:
    # A head is applied when the database is at it; `current` holds one revision per
    # applied branch (alembic's version table), so an older revision of a branch
    # leaves that branch's head pending.
    return set(script.get_heads()) - current


def upgrade(engine: Engine, config: DatabaseConfig | None = None) -> list[str]:
    """Apply every pending migration; return the branch heads that were pending.

    Raises MigrationError for a database at a revision this build does not know
    (a newer build migrated it). An SQLite file with a schema is backed up first
    (when `config` is given). Other processes opening the database meanwhile wait for
    the lock and then find it migrated.
    """
    script = _script()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                         {"key": _PG_MIGRATION_LOCK})
        current = _current(conn)  # under the lock: no one else is migrating now
        _refuse_unknown(script, current)
        pending = _pending(script, current)
        if not pending:
            return []
        if config is not None and (current or inspect(conn).get_table_names()):
            _backup_sqlite(config, current)  # a schema (maybe one of 0.1, unversioned)
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    logger.info("cloud database migrated from %s to %s",
                ", ".join(sorted(current)) or "empty", ", ".join(sorted(script.get_heads())))
    return sorted(pending)


def ensure_schema(engine: Engine, config: DatabaseConfig) -> list[str]:
    """What a process does when it opens the database: migrate it when
    `config.migrate_on_start`, else refuse an out-of-date schema, naming the command
    that migrates. Returns the heads applied. Raises MigrationError."""
    if config.migrate_on_start:
        return upgrade(engine, config)
    pending = pending_revisions(engine)
    if pending:
        where = make_url(config.url).render_as_string(hide_password=True)
        raise MigrationError(
            f"the cloud database {where} needs migrating ({', '.join(sorted(pending))} "
            f"pending) and database.migrate_on_start is false: run `{UPGRADE_COMMAND}`"
        )
    return []


def _backup_sqlite(config: DatabaseConfig, current: set[str]) -> None:
    path = sqlite_path(config)
    if path is None or not path.exists():
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    tag = "-".join(sorted(current))[:60] or "unversioned"
    backup = path.with_name(f"{path.name}.bak-{tag}-{stamp}")
    source = sqlite3.connect(str(path))
    try:
        target = sqlite3.connect(str(backup))
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    logger.info("backed up %s to %s before migrating", path, backup)


class DatabaseUnavailable(CloudError):
    """The cloud database cannot be reached or opened."""


def open_database(config: DatabaseConfig) -> Engine:
    """The one way a cloud process opens the database: an Engine on `config.url`, its
    schema brought up to date (`ensure_schema`: migrated when `migrate_on_start`, else
    refused while behind). The caller disposes of it.

    Raises MigrationError (schema behind or newer than this build) or DatabaseUnavailable
    (cannot connect: the message names the database, never its password)."""
    from sqlalchemy.exc import SQLAlchemyError

    from cloud.db.engine import open_engine

    engine = open_engine(config)
    try:
        ensure_schema(engine, config)
    except SQLAlchemyError as e:
        engine.dispose()
        where = make_url(config.url).render_as_string(hide_password=True)
        raise DatabaseUnavailable(
            f"cannot open the cloud database {where}: {str(e).splitlines()[0]}") from e
    except BaseException:
        engine.dispose()
        raise
    return engine

"""Alembic migrations of the cloud database, run from code (no alembic.ini).

`upgrade` brings every component's branch to its head. Before it migrates an SQLite
file that already holds a schema, it copies the file with SQLite's online backup API to
`<file>.bak-<revisions>-<UTC timestamp>`; PostgreSQL is backed up by its operator
(pg_dump), which `lineguard cloud db upgrade` reminds of.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from cloud.db.config import DatabaseConfig
from cloud.db.engine import sqlite_path
from cloud.errors import CloudError

logger = logging.getLogger(__name__)

SCRIPT_LOCATION = Path(__file__).with_name("migrations")


class MigrationError(CloudError):
    """The database cannot be brought to this build's schema."""


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    return cfg


def head_revisions() -> set[str]:
    """The head revision of every branch this build knows."""
    return set(ScriptDirectory.from_config(_alembic_config()).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty: a new database)."""
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def upgrade(engine: Engine, config: DatabaseConfig | None = None) -> list[str]:
    """Apply every pending migration; return the revisions that were pending.

    Raises MigrationError for a database at a revision this build does not know
    (a newer build migrated it). An SQLite file with a schema is backed up first.
    """
    script = ScriptDirectory.from_config(_alembic_config())
    current = current_revisions(engine)
    unknown = {rev for rev in current if script.get_revision(rev) is None} if current else set()
    if unknown:
        raise MigrationError(
            f"the database is at revision(s) {sorted(unknown)} that this build does not "
            "know; it was migrated by a newer lineguard"
        )
    heads = set(script.get_heads())
    if current >= heads:
        return []
    pending = sorted(heads - current)
    if current and config is not None:
        _backup_sqlite(config, current)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    logger.info("cloud database migrated to %s", ", ".join(sorted(heads)))
    return pending


def _backup_sqlite(config: DatabaseConfig, current: set[str]) -> None:
    path = sqlite_path(config)
    if path is None or not path.exists():
        return
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = path.with_name(f"{path.name}.bak-{'-'.join(sorted(current))[:60]}-{stamp}")
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

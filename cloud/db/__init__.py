"""The cloud database: one SQLAlchemy 2 Core engine and Alembic migrations.

Every cloud component that persists (fleet store, dataset index, model registry,
releases and rollouts, drift) uses this layer, on an SQLite file by default (embedded,
nothing to start) or PostgreSQL when the config gives a `postgresql+psycopg://` URL.

Each component owns its tables and its own Alembic branch (a branch label naming the
component, e.g. `fleet`, `datasets`), so components migrate independently and
`upgrade` applies every branch's head. Tables of one component never hold foreign keys
into another's; they refer to each other by natural keys (site, line, model, version).
Upserts go through `insert_for` (the dialect's INSERT ... ON CONFLICT).
"""

from cloud.db.config import DatabaseConfig
from cloud.db.engine import open_engine, read_connection
from cloud.db.migrate import (
    DatabaseUnavailable,
    MigrationError,
    current_revisions,
    ensure_schema,
    head_revisions,
    open_database,
    pending_revisions,
    upgrade,
)
from cloud.db.upsert import insert_for

__all__ = [
    "DatabaseConfig",
    "DatabaseUnavailable",
    "MigrationError",
    "current_revisions",
    "ensure_schema",
    "head_revisions",
    "insert_for",
    "open_database",
    "open_engine",
    "pending_revisions",
    "read_connection",
    "upgrade",
]

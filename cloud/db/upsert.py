"""`INSERT ... ON CONFLICT` for the two dialects the cloud database runs on.

SQLAlchemy's generic `insert()` has no ON CONFLICT; SQLite's and PostgreSQL's dialect
inserts both have `on_conflict_do_nothing` / `on_conflict_do_update` and `.excluded`,
with the same signatures. `insert_for` picks the one of the connection's dialect.
"""

from __future__ import annotations

from typing import TypeAlias

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

DialectInsert: TypeAlias = sqlite.Insert | postgresql.Insert


def insert_for(conn: Connection, table: Table) -> DialectInsert:
    """An INSERT into `table` with ON CONFLICT support for `conn`'s dialect.

    Raises ValueError for a dialect other than SQLite or PostgreSQL."""
    name = conn.dialect.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"unsupported database dialect {name!r}")

"""`INSERT ... ON CONFLICT` for the two dialects the cloud database runs on.

SQLAlchemy's generic `insert()` has no ON CONFLICT; SQLite's and PostgreSQL's dialect
inserts both have `on_conflict_do_nothing` / `on_conflict_do_update` and `.excluded`,
with the same signatures. `insert_for` picks the one of the connection's dialect.
"""

from __future__ import annotations

from typing import TypeAlias

from sqlalchemy import Connection, Dialect, Table
from sqlalchemy.dialects import postgresql, sqlite

DialectInsert: TypeAlias = sqlite.Insert | postgresql.Insert


def insert_for(bind: Connection | Dialect, table: Table) -> DialectInsert:
    """An INSERT into `table` with ON CONFLICT support for the dialect of `bind` (a
    connection, or the dialect itself).

    Raises ValueError for a dialect other than SQLite or PostgreSQL."""
    name = bind.dialect.name if isinstance(bind, Connection) else bind.name
    if name == "sqlite":
        return sqlite.insert(table)
    if name == "postgresql":
        return postgresql.insert(table)
    raise ValueError(f"unsupported database dialect {name!r}")

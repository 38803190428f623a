"""`database:` in the cloud config: where the cloud database lives."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

SUPPORTED_DRIVERS = ("sqlite", "postgresql+psycopg")


class DatabaseConfig(BaseModel):
    """The cloud database.

    `url`: an SQLAlchemy URL, `sqlite:///relative/path.db`, `sqlite:////abs/path.db` or
    `postgresql+psycopg://user@host:5432/dbname` (a password is better given by
    `password_file` or the libpq environment than in the URL).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = "sqlite:///lineguard-cloud.db"
    # SQLite only: how long a writer waits for another process's write lock.
    busy_timeout_ms: int = Field(30_000, ge=0, le=600_000)
    # SQLite only. NORMAL: a commit survives a process kill (WAL); FULL: also a power cut.
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    # SQLite only: WAL pages (4 KiB) between automatic checkpoints.
    wal_autocheckpoint_pages: int = Field(10_000, ge=100, le=1_000_000)
    # PostgreSQL only: connections kept open per process.
    pool_size: int = Field(5, ge=1, le=100)
    # Apply pending migrations when a process opens the database (off: refuse to start
    # and say which command migrates).
    migrate_on_start: bool = True

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except ArgumentError as e:
            raise ValueError(
                f"not a database URL ({e}); e.g. sqlite:///lineguard-cloud.db or "
                "postgresql+psycopg://lineguard@db.example:5432/lineguard") from None
        if url.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"unsupported database driver {url.drivername!r}; use one of "
                + ", ".join(f"{d}://" for d in SUPPORTED_DRIVERS)
            )
        if url.drivername == "sqlite" and not url.database:
            raise ValueError("an SQLite URL needs a file path (sqlite:///path/to/file.db)")
        if url.drivername != "sqlite" and not url.database:
            raise ValueError("a PostgreSQL URL needs a database name "
                             "(postgresql+psycopg://user@host:5432/dbname)")
        if url.query and url.drivername == "sqlite":
            raise ValueError("an SQLite URL takes no query parameters; set busy_timeout_ms, "
                             "synchronous and wal_autocheckpoint_pages as keys")
        return value

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).drivername == "sqlite"

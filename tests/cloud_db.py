"""The cloud database under test: an SQLite file, and a real PostgreSQL database.

`database_url` is parametrised over both back ends: every cloud test that touches the
database runs twice. PostgreSQL is the server this machine kind runs on 127.0.0.1:5432
(trust auth; `.ci/run` starts it when it is not running); each test gets a database of
its own, created here and dropped afterwards, so tests never see each other's rows.
`LINEGUARD_TEST_POSTGRES` overrides the admin URL (a libpq conninfo or URL naming a
database that may create databases).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

ADMIN_CONNINFO = os.environ.get(
    "LINEGUARD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _admin() -> object:
    import psycopg

    try:
        return psycopg.connect(ADMIN_CONNINFO, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as e:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_CONNINFO} ({e}); start it "
            "(`.ci/run` does: pg_ctlcluster 15 main start) or set LINEGUARD_TEST_POSTGRES"
        )


@contextlib.contextmanager
def _postgres_database() -> Iterator[str]:
    import psycopg
    from psycopg import sql

    name = f"lg_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = _admin()
    assert isinstance(admin, psycopg.Connection)
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        base = psycopg.conninfo.conninfo_to_dict(ADMIN_CONNINFO)
        user = base.get("user", "postgres")
        host = base.get("host", "127.0.0.1")
        port = base.get("port", 5432)
        yield f"postgresql+psycopg://{user}@{host}:{port}/{name}"
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for one test; its SQLAlchemy URL."""
    with _postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty cloud database: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cloud.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`database_url` shared by a module's tests (for read-only tests over one fixture
    data set: the data is written once per back end)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('clouddb') / 'cloud.db'}"
        return
    with _postgres_database() as url:
        yield url

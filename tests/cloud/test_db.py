"""The cloud database layer (cloud/db) on SQLite and PostgreSQL: fresh and repeated
upgrades, concurrent openers, the SQLite backup before a migration, refusal of a newer
revision, `migrate_on_start: false`, the `lineguard cloud db` commands, bad URLs."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect

from cloud import cli
from cloud.db import (
    DatabaseConfig,
    MigrationError,
    current_revisions,
    ensure_schema,
    head_revisions,
    open_engine,
    pending_revisions,
    upgrade,
)
from cloud.db import migrate as db_migrate
from cloud.fleet import tables as fleet_tables

FLEET_HEAD = next(r for r in head_revisions() if r.startswith("fleet_"))

EXTRA_REVISION = f'''
import sqlalchemy as sa
from alembic import op

revision = "fleet_9001"
down_revision = "{FLEET_HEAD}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("test_extra", sa.Column("x", sa.Integer(), primary_key=True))
'''


def config(url: str, **more: object) -> DatabaseConfig:
    return DatabaseConfig.model_validate({"url": url, **more})


def test_fresh_upgrade_creates_every_table_and_a_rerun_does_nothing(database_url):
    cfg = config(database_url)
    engine = open_engine(cfg)
    try:
        assert current_revisions(engine) == set()
        assert pending_revisions(engine) == head_revisions()
        assert set(upgrade(engine, cfg)) == head_revisions()
        assert current_revisions(engine) == head_revisions()
        assert set(fleet_tables.metadata.tables) <= set(inspect(engine).get_table_names())
        assert upgrade(engine, cfg) == []
        assert ensure_schema(engine, cfg) == []
    finally:
        engine.dispose()


def test_concurrent_openers_migrate_once(database_url):
    """Collectors and the API start together on a new database: one migrates (under the
    database's lock), the others wait and find nothing to do."""
    cfg = config(database_url)
    engines = [open_engine(cfg) for _ in range(3)]
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def run(engine) -> None:
        start.wait(timeout=30)
        try:
            results.append(upgrade(engine, cfg))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for engine in engines:
        engine.dispose()
    assert errors == []
    assert sorted(map(len, results)) == [0, 0, len(head_revisions())]


def test_migrate_on_start_off_refuses_an_old_schema_and_names_the_command(database_url):
    cfg = config(database_url, migrate_on_start=False)
    engine = open_engine(cfg)
    try:
        with pytest.raises(MigrationError, match="lineguard cloud db upgrade"):
            ensure_schema(engine, cfg)
        assert current_revisions(engine) == set()  # nothing was touched
        upgrade(engine, cfg)
        assert ensure_schema(engine, cfg) == []
    finally:
        engine.dispose()


@pytest.fixture
def newer_build(tmp_path, monkeypatch) -> Path:
    """This build's migrations plus one more revision on the fleet branch."""
    location = tmp_path / "migrations"
    shutil.copytree(db_migrate.SCRIPT_LOCATION, location,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / "fleet_9001_extra.py").write_text(EXTRA_REVISION, "utf-8")
    monkeypatch.setattr(db_migrate, "SCRIPT_LOCATION", location)
    return location


def test_sqlite_is_backed_up_before_a_migration_and_a_newer_revision_is_refused(
        tmp_path, newer_build, monkeypatch):
    path = tmp_path / "cloud.db"
    cfg = config(f"sqlite:///{path}")
    engine = open_engine(cfg)
    try:
        monkeypatch.setattr(db_migrate, "SCRIPT_LOCATION", db_migrate.Path(
            db_migrate.__file__).with_name("migrations"))
        upgrade(engine, cfg)  # this build
        assert list(tmp_path.glob("cloud.db.bak-*")) == []  # a new file: nothing to keep
        monkeypatch.setattr(db_migrate, "SCRIPT_LOCATION", newer_build)
        assert upgrade(engine, cfg) == ["fleet_9001"]  # the newer build
        (backup,) = tmp_path.glob(f"cloud.db.bak-*{FLEET_HEAD}-*")
        tables = {row[0] for row in sqlite3.connect(backup).execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "messages" in tables and "test_extra" not in tables
        monkeypatch.undo()  # this build again, on a database the newer one migrated
        with pytest.raises(MigrationError, match=r"fleet_9001.*newer lineguard"):
            upgrade(engine, cfg)
        with pytest.raises(MigrationError, match="fleet_9001"):
            pending_revisions(engine)
        # untouched: the fleet branch at the newer revision, the others at their heads
        assert current_revisions(engine) == head_revisions() - {FLEET_HEAD} | {"fleet_9001"}
    finally:
        engine.dispose()


def test_postgresql_newer_revision_is_refused(postgres_url, newer_build, monkeypatch):
    cfg = config(postgres_url)
    engine = open_engine(cfg)
    try:
        assert "fleet_9001" in upgrade(engine, cfg)
        monkeypatch.undo()
        with pytest.raises(MigrationError, match="fleet_9001"):
            upgrade(engine, cfg)
    finally:
        engine.dispose()


def test_db_commands(tmp_path, database_url, capsys):
    path = tmp_path / "cloud.yaml"
    path.write_text(f"database: {{url: '{database_url}', migrate_on_start: false}}\n",
                    "utf-8")
    assert cli.main(["db", "current", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert "never migrated" in out and "lineguard cloud db upgrade" in out
    assert cli.main(["db", "upgrade", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "migrated to" in out and all(h in out for h in head_revisions())
    assert cli.main(["db", "upgrade", "--config", str(path)]) == 0
    assert "already up to date" in capsys.readouterr().out
    assert cli.main(["db", "current", "--config", str(path)]) == 0
    assert "up to date" in capsys.readouterr().out


def test_a_process_refuses_an_old_schema_without_migrate_on_start(tmp_path, capsys):
    path = tmp_path / "cloud.yaml"
    path.write_text(f"database: {{url: 'sqlite:///{tmp_path / 'cloud.db'}', "
                    "migrate_on_start: false}\napi: {token: 0123456789abcdef}\n", "utf-8")
    assert cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "migrate_on_start is false" in err and "lineguard cloud db upgrade" in err


def test_an_unreachable_postgresql_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "cloud.yaml"
    path.write_text("database: {url: 'postgresql+psycopg://nobody@127.0.0.1:1/none'}\n",
                    "utf-8")
    assert cli.main(["db", "current", "--config", str(path)]) == 2
    assert "cannot use the cloud database" in capsys.readouterr().err


@pytest.mark.parametrize(("url", "why"), [
    ("", "not a database URL"),
    ("fleet.db", "not a database URL"),
    ("mysql+pymysql://u@h/db", "unsupported database driver 'mysql\\+pymysql'"),
    ("postgresql://u@h/db", "use one of sqlite://, postgresql\\+psycopg://"),
    ("postgresql+psycopg2://u@h/db", "unsupported database driver"),
    ("postgresql+psycopg://u@h", "needs a database name"),
    ("sqlite://", "needs a file path"),
    ("sqlite:///x.db?timeout=5", "no query parameters"),
])
def test_bad_urls_are_refused_with_the_reason(url, why):
    with pytest.raises(ValidationError, match=why):
        DatabaseConfig(url=url)


def test_good_urls():
    assert DatabaseConfig().is_sqlite
    assert DatabaseConfig(url="sqlite:////var/lib/lineguard-cloud/fleet.db").is_sqlite
    assert not DatabaseConfig(url="postgresql+psycopg://lg@db:5432/lineguard").is_sqlite

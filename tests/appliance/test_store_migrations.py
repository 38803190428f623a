"""Numbered migrations: fresh files, upgrades from v1 with a backup, refusals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlite_utils import Database

from appliance.errors import StoreError
from appliance.store import Store
from appliance.store.schema.migrations import MIGRATIONS, migrate, schema_version
from appliance.store.store import open_writer_db
from tests.appliance.test_store_writer import db_rows, make_cfg, rec

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def _create_v1_file(path: Path) -> None:
    db = open_writer_db(path)
    assert migrate(db, path, migrations=MIGRATIONS[:1]).to_version == 1
    db.execute(
        "INSERT INTO inspections (id, frame_id, station, captured_at, judged_at, verdict,"
        " total_ms, defect_count) VALUES (1, 'old:1', 'old', 1.0, 2.0, 'fail', 7.5, 1)"
    )
    db.execute(
        "INSERT INTO defects (inspection_id, class_id, class_name, score, x1_px, y1_px,"
        " x2_px, y2_px) VALUES (1, 0, 'pit', 0.9, 1, 2, 3, 4)"
    )
    db.execute(
        "INSERT INTO events (at, kind, severity, source, message) VALUES"
        " (1.0, 'alarm', 'alarm', 'engine', 'old alarm')"
    )
    db.close()


def test_fresh_database_is_created_at_the_latest_version_without_backup(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    store = Store(cfg, clock=lambda: NOW)
    assert (store.migration.from_version, store.migration.to_version) == (0, len(MIGRATIONS))
    assert store.migration.backup_path is None
    store.stop()
    assert db_rows(cfg.path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert not list(tmp_path.glob("*.bak-*"))


def test_v1_file_is_backed_up_then_migrated_to_current(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    _create_v1_file(cfg.path)
    with Store(cfg, clock=lambda: NOW) as store:
        backup = store.migration.backup_path
        assert store.migration.from_version == 1
        assert store.migration.to_version == len(MIGRATIONS) > 1
        assert backup == tmp_path / "store.db.bak-v1-20260101T000000Z"
        # old rows survive and new ones can be written next to them
        store.submit(rec(5, "fail", n_defects=1))
        store.flush()
        assert store.inspection_count() == 2
        assert store.defect_counts_by_class() == {"pit": 1, "scratch": 1}
        assert [e["message"] for e in store.events()] == ["old alarm"]
        assert store.image_usage()["live_count"] == 0  # the v2 table exists
        assert store.next_sequence("old") == 2  # v4 filled `seq` of the rows it found
        assert store.next_sequence("s1") == 6
    assert backup is not None and backup.exists()
    assert db_rows(backup, "PRAGMA user_version") == [(1,)]
    assert db_rows(backup, "SELECT frame_id FROM inspections") == [("old:1",)]
    assert db_rows(backup, "PRAGMA integrity_check") == [("ok",)]
    assert "images" not in {r[0] for r in db_rows(backup, "SELECT name FROM sqlite_master")}
    assert db_rows(cfg.path, "PRAGMA integrity_check") == [("ok",)]


def test_a_new_migration_is_one_function(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    with Store(cfg) as store:
        store.submit(rec(1))

    def _v3_outbox(db: Database) -> None:
        db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT, payload TEXT)")

    db = open_writer_db(cfg.path)
    result = migrate(db, cfg.path, clock=lambda: NOW, migrations=(*MIGRATIONS, _v3_outbox))
    assert (result.from_version, result.to_version) == (len(MIGRATIONS), len(MIGRATIONS) + 1)
    assert result.backup_path is not None and result.backup_path.exists()
    assert "outbox" in db.table_names()
    db.close()
    # this software does not know v3: it refuses the file instead of guessing
    with pytest.raises(StoreError, match="newer than this software"):
        Store(cfg)
    Store(cfg.model_copy(update={"path": result.backup_path})).stop()  # the backup opens


def test_failed_migration_rolls_back_and_keeps_the_version(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    Store(cfg).stop()

    def _v3_broken(db: Database) -> None:
        db.execute("CREATE TABLE half (x)")
        db.execute("INSERT INTO no_such_table VALUES (1)")

    db = open_writer_db(cfg.path)
    with pytest.raises(StoreError, match="_v3_broken"):
        migrate(db, cfg.path, migrations=(*MIGRATIONS, _v3_broken))
    assert schema_version(db) == len(MIGRATIONS)
    assert "half" not in db.table_names()
    db.close()


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    conn = sqlite3.connect(str(cfg.path))
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="no schema version"):
        Store(cfg)

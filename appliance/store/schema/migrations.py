"""Numbered schema migrations of the appliance database.

The schema version is SQLite's `PRAGMA user_version`: version N means that the first N
functions of MIGRATIONS have been applied. `migrate` applies the missing ones in order,
each in its own transaction together with the new user_version, so a crash leaves the
file at a whole version. Before touching an existing non-empty database it copies the
file with SQLite's online backup API to `<db>.bak-v<old>-<UTC timestamp>`.

Adding a migration is a one-function change: write

    def _v3_outbox(db: Database) -> None:
        db.execute("CREATE TABLE outbox (...)")
        db.execute("CREATE INDEX ...")

and append it to MIGRATIONS. Never edit or reorder a migration that has shipped; a
database newer than this code (user_version > len(MIGRATIONS)) is refused.

Performance note: write CHECKs as `a = 'x' OR a = 'y'`, not `a IN (...)`; SQLite
evaluates an IN list several times slower, and the writer pays it on every row.

Invariants: tables and columns hold times as unix seconds (REAL), latencies as ms,
defect boxes as xyxy original-frame pixels (x1_px, y1_px, x2_px, y2_px).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database

from appliance.errors import StoreError
from protocol.atomic import atomic_path

logger = logging.getLogger(__name__)

Migration = Callable[[Database], None]


def _v1_inspections_defects_events(db: Database) -> None:
    """Verdicts, their defects and the event log."""
    db.execute(
        """CREATE TABLE inspections (
            id INTEGER PRIMARY KEY,
            frame_id TEXT NOT NULL UNIQUE,
            station TEXT NOT NULL,
            part_id TEXT,
            captured_at REAL NOT NULL,
            judged_at REAL NOT NULL,
            verdict TEXT NOT NULL
                CHECK (verdict = 'pass' OR verdict = 'fail' OR verdict = 'uninspected'),
            reason TEXT CHECK ((verdict = 'uninspected') = (reason IS NOT NULL)),
            model_version TEXT,
            preprocess_hash TEXT,
            queue_ms REAL,
            preprocess_ms REAL,
            batch_wait_ms REAL,
            infer_ms REAL,
            postprocess_ms REAL,
            total_ms REAL,
            defect_count INTEGER NOT NULL DEFAULT 0
        )"""
    )
    db.execute("CREATE INDEX inspections_judged_at ON inspections (judged_at)")
    # recent failures without scanning the passes; partial, so a pass costs no entry here
    db.execute(
        "CREATE INDEX inspections_fail_judged_at ON inspections (judged_at) WHERE verdict = 'fail'"
    )
    db.execute(
        """CREATE TABLE defects (
            id INTEGER PRIMARY KEY,
            inspection_id INTEGER NOT NULL REFERENCES inspections (id),
            class_id INTEGER NOT NULL,
            class_name TEXT NOT NULL,
            score REAL NOT NULL,
            x1_px REAL NOT NULL,
            y1_px REAL NOT NULL,
            x2_px REAL NOT NULL,
            y2_px REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX defects_inspection_id ON defects (inspection_id)")
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            severity TEXT NOT NULL
                CHECK (severity = 'info' OR severity = 'warning' OR severity = 'alarm'),
            source TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX events_at ON events (at)")
    db.execute("CREATE INDEX events_kind_at ON events (kind, at)")


def _v2_images(db: Database) -> None:
    """The image ledger: every kept JPEG, and when and why it was deleted."""
    db.execute(
        """CREATE TABLE images (
            id INTEGER PRIMARY KEY,
            frame_id TEXT NOT NULL,
            path TEXT NOT NULL,
            bytes INTEGER NOT NULL CHECK (bytes >= 0),
            verdict TEXT NOT NULL,
            created_at REAL NOT NULL,
            deleted_at REAL,
            delete_reason TEXT,
            CHECK ((deleted_at IS NULL) = (delete_reason IS NULL))
        )"""
    )
    db.execute("CREATE INDEX images_frame_id ON images (frame_id)")
    db.execute(
        "CREATE INDEX images_live_created_at ON images (created_at) WHERE deleted_at IS NULL"
    )


def _v3_telemetry_outbox(db: Database) -> None:
    """The telemetry outbox (appliance.telemetry.outbox): every MQTT message waiting for
    the broker's acknowledgement, sent in `id` order (AUTOINCREMENT: an id is never
    reused, so a late acknowledgement can never delete a newer row)."""
    db.execute(
        """CREATE TABLE telemetry_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            qos INTEGER NOT NULL CHECK (qos = 0 OR qos = 1 OR qos = 2),
            retain INTEGER NOT NULL CHECK (retain = 0 OR retain = 1),
            msg_id TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_sent_at REAL
        )"""
    )
    # the bound evicts the oldest `metrics` rows first
    db.execute("CREATE INDEX telemetry_outbox_kind_id ON telemetry_outbox (kind, id)")


def _v4_inspections_seq(db: Database) -> None:
    """`seq`: the number in a frame id `"<station>:<seq>"` (NULL for ids of another
    shape), indexed with the station, so a station's highest seq (the next one after a
    restart) is one index search instead of a scan of its newest rows. A plain column,
    filled by the writer, not an index on an expression over frame_id: measured, the
    expression index cost 2-5 us of writer CPU per inspection, this one about 0.5."""
    db.execute("ALTER TABLE inspections ADD COLUMN seq INTEGER")
    db.execute(
        "UPDATE inspections SET seq = CAST(substr(frame_id, length(station) + 2) AS INTEGER)"
        " WHERE substr(frame_id, 1, length(station) + 1) = station || ':'"
        " AND length(frame_id) > length(station) + 1"
        " AND ltrim(substr(frame_id, length(station) + 2), '0123456789') = ''"
    )
    db.execute("CREATE INDEX inspections_station_seq ON inspections (station, seq)")


def _v5_annotated_images_part_index(db: Database) -> None:
    """The annotated copy of a kept image (`annotated_path`, `annotated_bytes`: one
    ledger entry with its original, see images.py), and an index on `part_id` so that
    `lineguard appliance show PART` finds a part's verdicts without a scan (partial:
    frames without a part id cost no entry)."""
    db.execute("ALTER TABLE images ADD COLUMN annotated_path TEXT")
    db.execute("ALTER TABLE images ADD COLUMN annotated_bytes INTEGER NOT NULL DEFAULT 0"
               " CHECK (annotated_bytes >= 0)")
    db.execute("CREATE INDEX inspections_part_id ON inspections (part_id)"
               " WHERE part_id IS NOT NULL")


def _v6_capture_marks_run_state(db: Database) -> None:
    """`capture_marks`: per station, the first seq this run numbered and the highest seq
    captured so far (the captured high-water mark, written by the writer once per batch,
    see marks.py); `run_state`: one row saying whether the last run stopped cleanly (the
    clean-stop marker). Together they let a start after a kill record the frames that
    were captured and never judged (`uninspected: crash`)."""
    db.execute(
        """CREATE TABLE capture_marks (
            station TEXT PRIMARY KEY,
            first_seq INTEGER NOT NULL,
            high_seq INTEGER NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE run_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            state TEXT NOT NULL CHECK (state = 'running' OR state = 'clean'),
            changed_at REAL NOT NULL
        )"""
    )


def _v7_users_alarms_labels(db: Database) -> None:
    """The operator panel's tables (appliance/users.py, alarms.py, labels.py).

    `users`: panel accounts, an argon2id hash per name. `alarms`: one row per occurrence
    of an alarm (code, station); at most one *active* row (`cleared_at` NULL) per code and
    station (a partial unique index: a repeat bumps `count`); a row stays on the panel
    until acknowledged (`acked_at`, `acked_by`). `labels`: operator feedback on a kept
    frame, tied to the model version and preprocessing hash that judged it: `confirm` or
    `reject` name a stored defect by its index (0-based, defects in id order), `missed`
    gives a class and an xyxy box in original pixels; `exported_at` NULL means not yet
    exported, and the frame's image is then pinned (never evicted, images.py)."""
    db.execute(
        """CREATE TABLE users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role = 'operator' OR role = 'engineer'),
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE alarms (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            code TEXT NOT NULL,
            station TEXT,
            severity TEXT NOT NULL CHECK (severity = 'warning' OR severity = 'critical'),
            message TEXT NOT NULL,
            raised_at REAL NOT NULL,
            last_raised_at REAL NOT NULL,
            count INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1),
            cleared_at REAL,
            acked_at REAL,
            acked_by TEXT,
            CHECK ((acked_at IS NULL) = (acked_by IS NULL))
        )"""
    )
    db.execute("CREATE UNIQUE INDEX alarms_active ON alarms (code, coalesce(station, ''))"
               " WHERE cleared_at IS NULL")
    db.execute("CREATE INDEX alarms_unacked ON alarms (raised_at) WHERE acked_at IS NULL")
    db.execute("CREATE INDEX alarms_raised_at ON alarms (raised_at)")
    db.execute(
        """CREATE TABLE labels (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            frame_id TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind = 'confirm' OR kind = 'reject' OR kind = 'missed'),
            defect_index INTEGER CHECK (defect_index >= 0),
            class_name TEXT,
            x1_px REAL,
            y1_px REAL,
            x2_px REAL,
            y2_px REAL,
            author TEXT NOT NULL,
            created_at REAL NOT NULL,
            model_version TEXT,
            preprocess_hash TEXT,
            exported_at REAL,
            CHECK ((kind = 'missed') = (defect_index IS NULL)),
            CHECK (kind <> 'missed' OR (class_name IS NOT NULL AND x1_px IS NOT NULL
                   AND y1_px IS NOT NULL AND x2_px IS NOT NULL AND y2_px IS NOT NULL))
        )"""
    )
    db.execute("CREATE INDEX labels_frame_id ON labels (frame_id)")
    db.execute("CREATE INDEX labels_pending ON labels (frame_id) WHERE exported_at IS NULL")


def _v8_drift_windows(db: Database) -> None:
    """`drift_windows`: per station, the open drift window (JSON, appliance/drift/
    window.py), saved every few frames and at stop so a restart resumes it."""
    db.execute(
        """CREATE TABLE drift_windows (
            station TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )


def _v9_uploads(db: Database) -> None:
    """The sample upload queue (appliance/uploads/): frames sampled for labelling, each
    waiting for the cloud's 200/201. `sample_id` is the idempotency key sent on every
    try; `image` names the JPEG in the uploads spool directory (kept until the row is
    gone); sent oldest first (`id`, AUTOINCREMENT: never reused). `upload_marks`: named
    integers of the uploader (the highest operator label id already sampled)."""
    db.execute(
        """CREATE TABLE upload_queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sample_id TEXT NOT NULL UNIQUE,
            frame_id TEXT NOT NULL,
            reason TEXT NOT NULL CHECK (reason = 'random' OR reason = 'near_threshold'
                OR reason = 'rare_class' OR reason = 'operator'),
            meta_json TEXT NOT NULL,
            image TEXT NOT NULL,
            bytes INTEGER NOT NULL CHECK (bytes >= 0),
            created_at REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_try_at REAL,
            last_error TEXT
        )"""
    )
    db.execute(
        """CREATE TABLE upload_marks (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        )"""
    )


def _v10_defect_sizes_mm(db: Database) -> None:
    """A defect's box size on the part plane in mm (`width_mm`, `height_mm`), from the
    station's calibrated scale; NULL where the station has none (and for older rows)."""
    db.execute("ALTER TABLE defects ADD COLUMN width_mm REAL CHECK (width_mm >= 0)")
    db.execute("ALTER TABLE defects ADD COLUMN height_mm REAL CHECK (height_mm >= 0)")


MIGRATIONS: tuple[Migration, ...] = (
    _v1_inspections_defects_events,
    _v2_images,
    _v3_telemetry_outbox,
    _v4_inspections_seq,
    _v5_annotated_images_part_index,
    _v6_capture_marks_run_state,
    _v7_users_alarms_labels,
    _v8_drift_windows,
    _v9_uploads,
    _v10_defect_sizes_mm,
)


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What `migrate` did: versions before and after, and the backup it made (if any)."""

    from_version: int
    to_version: int
    backup_path: Path | None


def schema_version(db: Database) -> int:
    """The database's `PRAGMA user_version`."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def backup_database(conn: sqlite3.Connection, dest: Path) -> None:
    """Copy the database behind `conn` (WAL content included) to `dest`, atomically.

    Raises sqlite3.Error or OSError.
    """
    with atomic_path(dest) as tmp:
        target = sqlite3.connect(str(tmp))
        try:
            conn.backup(target)
        finally:
            target.close()


def _backup_path(path: Path, version: int, now_s: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_s))
    candidate = path.with_name(f"{path.name}.bak-v{version}-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.bak-v{version}-{stamp}-{n}")
    return candidate


def migrate(
    db: Database,
    path: Path,
    *,
    clock: Callable[[], float] = time.time,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> MigrationResult:
    """Bring the database at `path` (open as `db`, no transaction open) to the latest
    version, backing it up first if it already holds data.

    Raises StoreError if the database is newer than `migrations`, holds tables but no
    schema version (not ours), or a backup or migration fails (the failed migration is
    rolled back; earlier ones stay committed).
    """
    current = schema_version(db)
    target = len(migrations)
    if current > target:
        raise StoreError(
            f"{path}: database schema v{current} is newer than this software (v{target}); "
            "restore a matching backup or upgrade the software"
        )
    if current == target:
        return MigrationResult(current, current, None)
    tables = db.table_names()
    if current == 0 and tables:
        raise StoreError(f"{path}: has tables {tables[:5]} but no schema version; not a store")
    backup: Path | None = None
    if tables:
        backup = _backup_path(path, current, clock())
        try:
            backup_database(db.conn, backup)
        except (sqlite3.Error, OSError) as e:
            raise StoreError(f"{path}: backup to {backup} before migrating failed: {e}") from e
        logger.info("backed up %s (schema v%d) to %s", path, current, backup)
    for version in range(current + 1, target + 1):
        step = migrations[version - 1]
        try:
            with db.atomic():
                step(db)
                db.execute(f"PRAGMA user_version = {version:d}")
        except sqlite3.Error as e:
            name = getattr(step, "__name__", repr(step))
            raise StoreError(f"{path}: migration to v{version} ({name}) failed: {e}") from e
        logger.info("migrated %s to schema v%d (%s)", path, version, step.__name__)
    return MigrationResult(current, target, backup)

"""Every SQL statement of the fleet store, in one place.

Portable on purpose, so PostgreSQL (or TimescaleDB) can follow SQLite:
- types are ones both take: TEXT, INTEGER, BIGINT, DOUBLE PRECISION; no BLOB (quarantined
  payloads are kept as base64 TEXT), no AUTOINCREMENT (keys are message ids or hashes);
- times are BIGINT milliseconds since the Unix epoch, UTC, in columns named `*_ms`;
- JSON is TEXT (a PostgreSQL migration may turn it into JSONB);
- de-duplication is `INSERT ... ON CONFLICT (...) DO NOTHING`, upserts are
  `ON CONFLICT (...) DO UPDATE SET ... excluded.*`, and "the larger of" is a CASE
  (SQLite's two-argument MAX is PostgreSQL's GREATEST);
- placeholders are qmark (`?`); a psycopg adapter swaps them for `%s`. The only
  SQLite-only statement is `BEGIN_WRITE` (`BEGIN IMMEDIATE`: take the write lock at the
  start, so the duplicate check and the insert see the same database; PostgreSQL: BEGIN).
Migrations are numbered; a database records the ones applied in `schema_migrations`.
"""

from __future__ import annotations

from typing import Final

BEGIN_WRITE: Final = "BEGIN IMMEDIATE"
COMMIT: Final = "COMMIT"
ROLLBACK: Final = "ROLLBACK"
PING: Final = "SELECT 1 FROM schema_migrations LIMIT 1"

CREATE_MIGRATIONS: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at_ms BIGINT NOT NULL
)"""

APPLIED_MIGRATIONS: Final = "SELECT version FROM schema_migrations ORDER BY version"
RECORD_MIGRATION: Final = "INSERT INTO schema_migrations (version, applied_at_ms) VALUES (?, ?)"

# Migration 1: the initial schema. Each entry is a list of statements run in one transaction.
_V1: Final = [
    # One row per line ever heard from. online/state/reason/... come from the newest
    # `status` (by status_at_ms: the payload's sent_at, or the receive time for a last
    # will, whose sent_at is when it was registered); model_* from the newest `status`
    # carrying a model or `model` report (by sent_at).
    """CREATE TABLE lines (
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        first_seen_at_ms BIGINT NOT NULL,
        last_seen_at_ms BIGINT NOT NULL,
        online INTEGER CHECK (online IN (0, 1)),
        state TEXT,
        reason TEXT,
        status_at_ms BIGINT,
        status_msg_id TEXT,
        app_version TEXT,
        started_at_ms BIGINT,
        sources_json TEXT,
        alarms_json TEXT,
        model_name TEXT,
        model_version BIGINT,
        model_label TEXT,
        model_at_ms BIGINT,
        PRIMARY KEY (site, line)
    )""",
    # Every valid message once: the de-duplication log (kind = topic kind, e.g. metrics).
    """CREATE TABLE messages (
        msg_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        schema_id TEXT NOT NULL,
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        sent_at_ms BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        stored_at_ms BIGINT NOT NULL
    )""",
    # no index on messages: it is the de-duplication log, read by msg_id only
    """CREATE TABLE status_events (
        msg_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        sent_at_ms BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        payload_json TEXT NOT NULL
    )""",
    "CREATE INDEX status_events_line_sent ON status_events (site, line, sent_at_ms)",
    """CREATE TABLE metrics (
        msg_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        sent_at_ms BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        window_s DOUBLE PRECISION NOT NULL,
        fps DOUBLE PRECISION NOT NULL,
        passed BIGINT NOT NULL,
        failed BIGINT NOT NULL,
        uninspected BIGINT NOT NULL,
        defects BIGINT NOT NULL,
        e2e_p50_ms DOUBLE PRECISION,
        e2e_p95_ms DOUBLE PRECISION,
        e2e_p99_ms DOUBLE PRECISION,
        engine_provider TEXT,
        model_name TEXT,
        model_version BIGINT,
        outbox_depth BIGINT,
        payload_json TEXT NOT NULL
    )""",
    "CREATE INDEX metrics_line_sent ON metrics (site, line, sent_at_ms)",
    """CREATE TABLE defect_events (
        msg_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        sent_at_ms BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        captured_at_ms BIGINT NOT NULL,
        part_id TEXT,
        frame_id TEXT NOT NULL,
        station TEXT,
        model_name TEXT NOT NULL,
        model_version BIGINT NOT NULL,
        model_label TEXT,
        image_w INTEGER NOT NULL,
        image_h INTEGER NOT NULL,
        latency_ms DOUBLE PRECISION,
        defect_count INTEGER NOT NULL
    )""",
    "CREATE INDEX defect_events_line_captured ON defect_events (site, line, captured_at_ms)",
    "CREATE INDEX defect_events_captured ON defect_events (captured_at_ms)",
    # The detections of a defect event, one row each; box in original image pixels.
    """CREATE TABLE defects (
        msg_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        class_id INTEGER NOT NULL,
        class_name TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        x1 DOUBLE PRECISION NOT NULL,
        y1 DOUBLE PRECISION NOT NULL,
        x2 DOUBLE PRECISION NOT NULL,
        y2 DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (msg_id, idx)
    )""",
    "CREATE INDEX defects_class ON defects (class_name, msg_id)",
    """CREATE TABLE drift_sketches (
        msg_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        sent_at_ms BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        window_start_ms BIGINT NOT NULL,
        window_end_ms BIGINT NOT NULL,
        station TEXT,
        frame_count BIGINT NOT NULL,
        ref_model_name TEXT,
        ref_model_version BIGINT,
        payload_json TEXT NOT NULL
    )""",
    "CREATE INDEX drift_sketches_line_end ON drift_sketches (site, line, window_end_ms)",
    """CREATE TABLE model_reports (
        msg_id TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        line TEXT NOT NULL,
        sent_at_ms BIGINT NOT NULL,
        received_at_ms BIGINT NOT NULL,
        current_name TEXT,
        current_version BIGINT,
        current_label TEXT,
        previous_name TEXT,
        previous_version BIGINT,
        previous_label TEXT,
        update_id TEXT,
        update_step TEXT,
        update_state TEXT,
        payload_json TEXT NOT NULL
    )""",
    "CREATE INDEX model_reports_line_sent ON model_reports (site, line, sent_at_ms)",
    # Payloads that failed validation, one row per distinct (topic, payload): the id is
    # the sha256 of both, so a flood of the same junk is one row with times_seen.
    """CREATE TABLE quarantine (
        quarantine_id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL,
        payload_bytes BIGINT NOT NULL,
        payload_b64 TEXT NOT NULL,
        first_received_at_ms BIGINT NOT NULL,
        last_received_at_ms BIGINT NOT NULL,
        times_seen BIGINT NOT NULL
    )""",
    "CREATE INDEX quarantine_last ON quarantine (last_received_at_ms)",
    # Per collector instance (client id), so several collectors never clobber each other.
    """CREATE TABLE counters (
        collector_id TEXT NOT NULL,
        name TEXT NOT NULL,
        value BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        PRIMARY KEY (collector_id, name)
    )""",
]

# Migration 2: the content digest of every stored message, so that a second message with
# the same msg_id and different content is told apart from a redelivery (and
# quarantined as `conflicting_duplicate`). NULL for rows stored before: those compare as
# plain duplicates.
_V2: Final = ["ALTER TABLE messages ADD COLUMN content_sha256 TEXT"]

MIGRATIONS: Final[tuple[tuple[int, list[str]], ...]] = ((1, _V1), (2, _V2))

# ---- writes (one transaction per batch)

# Which of a batch's ids are stored already; the caller appends the IN list's placeholders.
SELECT_KNOWN_IDS: Final = (
    "SELECT msg_id, content_sha256 FROM messages WHERE msg_id IN ({placeholders})")

INSERT_MESSAGE: Final = """
INSERT INTO messages (msg_id, kind, schema_id, site, line, sent_at_ms, received_at_ms,
                      stored_at_ms, content_sha256)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id) DO NOTHING"""

INSERT_STATUS: Final = """
INSERT INTO status_events (msg_id, site, line, sent_at_ms, received_at_ms, state, reason,
                           payload_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id) DO NOTHING"""

INSERT_METRICS: Final = """
INSERT INTO metrics (msg_id, site, line, sent_at_ms, received_at_ms, window_s, fps, passed,
                     failed, uninspected, defects, e2e_p50_ms, e2e_p95_ms, e2e_p99_ms,
                     engine_provider, model_name, model_version, outbox_depth, payload_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id) DO NOTHING"""

INSERT_DEFECT_EVENT: Final = """
INSERT INTO defect_events (msg_id, site, line, sent_at_ms, received_at_ms, captured_at_ms,
                           part_id, frame_id, station, model_name, model_version,
                           model_label, image_w, image_h, latency_ms, defect_count)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id) DO NOTHING"""

INSERT_DEFECT: Final = """
INSERT INTO defects (msg_id, idx, class_id, class_name, score, x1, y1, x2, y2)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id, idx) DO NOTHING"""

INSERT_DRIFT: Final = """
INSERT INTO drift_sketches (msg_id, site, line, sent_at_ms, received_at_ms, window_start_ms,
                            window_end_ms, station, frame_count, ref_model_name,
                            ref_model_version, payload_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id) DO NOTHING"""

INSERT_MODEL_REPORT: Final = """
INSERT INTO model_reports (msg_id, site, line, sent_at_ms, received_at_ms, current_name,
                           current_version, current_label, previous_name, previous_version,
                           previous_label, update_id, update_step, update_state, payload_json)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (msg_id) DO NOTHING"""

# (site, line, first_seen_at_ms, last_seen_at_ms)
TOUCH_LINE: Final = """
INSERT INTO lines (site, line, first_seen_at_ms, last_seen_at_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (site, line) DO UPDATE SET
    first_seen_at_ms = CASE WHEN excluded.first_seen_at_ms < lines.first_seen_at_ms
                            THEN excluded.first_seen_at_ms ELSE lines.first_seen_at_ms END,
    last_seen_at_ms = CASE WHEN excluded.last_seen_at_ms > lines.last_seen_at_ms
                           THEN excluded.last_seen_at_ms ELSE lines.last_seen_at_ms END"""

# Applied only if newer than what the line shows (a late outbox message never wins).
# (online, state, reason, status_at_ms, status_msg_id, app_version, started_at_ms,
#  sources_json, alarms_json, site, line, status_at_ms)
UPDATE_LINE_STATUS: Final = """
UPDATE lines SET online = ?, state = ?, reason = ?, status_at_ms = ?, status_msg_id = ?,
                 app_version = ?, started_at_ms = ?, sources_json = ?, alarms_json = ?
WHERE site = ? AND line = ? AND (status_at_ms IS NULL OR status_at_ms <= ?)"""

# (model_name, model_version, model_label, model_at_ms, site, line, model_at_ms)
UPDATE_LINE_MODEL: Final = """
UPDATE lines SET model_name = ?, model_version = ?, model_label = ?, model_at_ms = ?
WHERE site = ? AND line = ? AND (model_at_ms IS NULL OR model_at_ms <= ?)"""

# (quarantine_id, topic, reason, detail, payload_bytes, payload_b64, first, last, 1)
UPSERT_QUARANTINE: Final = """
INSERT INTO quarantine (quarantine_id, topic, reason, detail, payload_bytes, payload_b64,
                        first_received_at_ms, last_received_at_ms, times_seen)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (quarantine_id) DO UPDATE SET
    times_seen = quarantine.times_seen + excluded.times_seen,
    last_received_at_ms = CASE WHEN excluded.last_received_at_ms > quarantine.last_received_at_ms
                               THEN excluded.last_received_at_ms
                               ELSE quarantine.last_received_at_ms END"""

# (collector_id, name, increment, updated_at_ms)
ADD_COUNTER: Final = """
INSERT INTO counters (collector_id, name, value, updated_at_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (collector_id, name) DO UPDATE SET
    value = counters.value + excluded.value,
    updated_at_ms = excluded.updated_at_ms"""

# ---- reads

_LINE_COLUMNS: Final = """site, line, first_seen_at_ms, last_seen_at_ms, online, state, reason,
    status_at_ms, app_version, started_at_ms, sources_json, alarms_json, model_name,
    model_version, model_label, model_at_ms"""

SELECT_LINES: Final = f"SELECT {_LINE_COLUMNS} FROM lines ORDER BY site, line"
SELECT_LINE: Final = f"SELECT {_LINE_COLUMNS} FROM lines WHERE site = ? AND line = ?"

# (site, line, since_ms, until_ms, limit): newest first, since inclusive, until exclusive.
SELECT_METRICS: Final = """
SELECT msg_id, sent_at_ms, received_at_ms, window_s, fps, passed, failed, uninspected,
       defects, e2e_p50_ms, e2e_p95_ms, e2e_p99_ms, engine_provider, model_name,
       model_version, outbox_depth, payload_json
FROM metrics
WHERE site = ? AND line = ? AND sent_at_ms >= ? AND sent_at_ms < ?
ORDER BY sent_at_ms DESC, msg_id DESC
LIMIT ?"""

_DEFECT_EVENTS_HEAD: Final = """
SELECT e.msg_id, e.site, e.line, e.sent_at_ms, e.received_at_ms, e.captured_at_ms, e.part_id,
       e.frame_id, e.station, e.model_name, e.model_version, e.model_label, e.image_w,
       e.image_h, e.latency_ms
FROM defect_events e
WHERE e.captured_at_ms >= ? AND e.captured_at_ms < ?"""
_BY_SITE: Final = " AND e.site = ?"
_BY_LINE: Final = " AND e.line = ?"
_BY_CLASS: Final = (
    " AND EXISTS (SELECT 1 FROM defects d WHERE d.msg_id = e.msg_id AND d.class_name = ?)"
)
_DEFECT_EVENTS_TAIL: Final = " ORDER BY e.captured_at_ms DESC, e.msg_id DESC LIMIT ?"


def select_defect_events(*, by_site: bool, by_line: bool, by_class: bool) -> str:
    """Defect events, newest first by capture time (since inclusive, until exclusive).

    Parameters, in order: since_ms, until_ms, then site, line, class_name for each filter
    that is on, then limit. (Optional filters are separate fragments rather than
    `? IS NULL OR ...`, which PostgreSQL cannot type.)
    """
    return (
        _DEFECT_EVENTS_HEAD
        + (_BY_SITE if by_site else "")
        + (_BY_LINE if by_line else "")
        + (_BY_CLASS if by_class else "")
        + _DEFECT_EVENTS_TAIL
    )


# The detections of several events: the caller appends the IN list's placeholders.
SELECT_DEFECTS_OF: Final = """
SELECT msg_id, idx, class_id, class_name, score, x1, y1, x2, y2
FROM defects WHERE msg_id IN ({placeholders}) ORDER BY msg_id, idx"""

SELECT_LATEST_MODEL_REPORT: Final = """
SELECT msg_id, sent_at_ms, current_name, current_version, current_label, previous_name,
       previous_version, previous_label, payload_json
FROM model_reports WHERE site = ? AND line = ?
ORDER BY sent_at_ms DESC, msg_id DESC
LIMIT 1"""

SELECT_QUARANTINE_BY_REASON: Final = """
SELECT reason, SUM(times_seen), COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"""

SELECT_QUARANTINE_RECENT: Final = """
SELECT quarantine_id, topic, reason, detail, payload_bytes, payload_b64,
       first_received_at_ms, last_received_at_ms, times_seen
FROM quarantine
ORDER BY last_received_at_ms DESC, quarantine_id
LIMIT ?"""

SELECT_COUNTERS: Final = """
SELECT collector_id, name, value, updated_at_ms FROM counters ORDER BY collector_id, name"""

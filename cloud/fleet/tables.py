"""The fleet store's tables (SQLAlchemy Core), created by the Alembic branch `fleet`
(cloud/db/migrations/versions/fleet_*.py; the migration spells its own columns, this
module is what the code reads and writes).

Portable on purpose (SQLite and PostgreSQL): times are BIGINT milliseconds since the
Unix epoch, UTC, in columns named `*_ms`; JSON is TEXT; no BLOB (quarantined payloads
are kept as base64 TEXT); no autoincrement (keys are message ids or hashes);
de-duplication is `INSERT ... ON CONFLICT DO NOTHING` (cloud.db.insert_for).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)

metadata = MetaData()

# DOUBLE PRECISION on both back ends (SQLite: REAL).
Double = Float(precision=53).with_variant(Float(), "sqlite")


def _head() -> list[Column[object]]:
    """The columns every per-kind table starts with."""
    return [
        Column("msg_id", Text, primary_key=True),
        Column("site", Text, nullable=False),
        Column("line", Text, nullable=False),
        Column("sent_at_ms", BigInteger, nullable=False),
        Column("received_at_ms", BigInteger, nullable=False),
    ]


# One row per line ever heard from. online/state/reason/... come from the newest
# `status` (by status_at_ms: the payload's sent_at, or the receive time for a last will,
# whose sent_at is when it was registered); model_* from the newest `status` carrying a
# model or `model` report (by sent_at).
lines = Table(
    "lines", metadata,
    Column("site", Text, nullable=False),
    Column("line", Text, nullable=False),
    Column("first_seen_at_ms", BigInteger, nullable=False),
    Column("last_seen_at_ms", BigInteger, nullable=False),
    Column("online", Integer, CheckConstraint("online IN (0, 1)")),
    Column("state", Text),
    Column("reason", Text),
    Column("status_at_ms", BigInteger),
    Column("status_msg_id", Text),
    Column("app_version", Text),
    Column("started_at_ms", BigInteger),
    Column("sources_json", Text),
    Column("alarms_json", Text),
    Column("model_name", Text),
    Column("model_version", BigInteger),
    Column("model_label", Text),
    Column("model_at_ms", BigInteger),
    PrimaryKeyConstraint("site", "line"),
)

# Every valid message once: the de-duplication log (kind = topic kind, e.g. metrics),
# read by msg_id only. content_sha256: NULL for rows stored before it existed (those
# compare as plain duplicates).
messages = Table(
    "messages", metadata,
    Column("msg_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("schema_id", Text, nullable=False),
    Column("site", Text, nullable=False),
    Column("line", Text, nullable=False),
    Column("sent_at_ms", BigInteger, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("stored_at_ms", BigInteger, nullable=False),
    Column("content_sha256", Text),
)

status_events = Table(
    "status_events", metadata, *_head(),
    Column("state", Text, nullable=False),
    Column("reason", Text),
    Column("payload_json", Text, nullable=False),
    Index("status_events_line_sent", "site", "line", "sent_at_ms"),
)

metrics = Table(
    "metrics", metadata, *_head(),
    Column("window_s", Double, nullable=False),
    Column("fps", Double, nullable=False),
    Column("passed", BigInteger, nullable=False),
    Column("failed", BigInteger, nullable=False),
    Column("uninspected", BigInteger, nullable=False),
    Column("defects", BigInteger, nullable=False),
    Column("e2e_p50_ms", Double),
    Column("e2e_p95_ms", Double),
    Column("e2e_p99_ms", Double),
    Column("engine_provider", Text),
    Column("model_name", Text),
    Column("model_version", BigInteger),
    Column("outbox_depth", BigInteger),
    Column("payload_json", Text, nullable=False),
    Index("metrics_line_sent", "site", "line", "sent_at_ms"),
)

defect_events = Table(
    "defect_events", metadata, *_head(),
    Column("captured_at_ms", BigInteger, nullable=False),
    Column("part_id", Text),
    Column("frame_id", Text, nullable=False),
    Column("station", Text),
    Column("model_name", Text, nullable=False),
    Column("model_version", BigInteger, nullable=False),
    Column("model_label", Text),
    Column("image_w", Integer, nullable=False),
    Column("image_h", Integer, nullable=False),
    Column("latency_ms", Double),
    Column("defect_count", Integer, nullable=False),
    Index("defect_events_line_captured", "site", "line", "captured_at_ms"),
    Index("defect_events_captured", "captured_at_ms"),
)

# The detections of a defect event, one row each; box in original image pixels, size on
# the part plane in mm (`events/defect/2`; NULL: the station has no scale, or a v1 event).
defects = Table(
    "defects", metadata,
    Column("msg_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("class_id", Integer, nullable=False),
    Column("class_name", Text, nullable=False),
    Column("score", Double, nullable=False),
    Column("x1", Double, nullable=False),
    Column("y1", Double, nullable=False),
    Column("x2", Double, nullable=False),
    Column("y2", Double, nullable=False),
    Column("width_mm", Double),
    Column("height_mm", Double),
    PrimaryKeyConstraint("msg_id", "idx"),
    Index("defects_class", "class_name", "msg_id"),
)

drift_sketches = Table(
    "drift_sketches", metadata, *_head(),
    Column("window_start_ms", BigInteger, nullable=False),
    Column("window_end_ms", BigInteger, nullable=False),
    Column("station", Text),
    Column("frame_count", BigInteger, nullable=False),
    Column("ref_model_name", Text),
    Column("ref_model_version", BigInteger),
    Column("payload_json", Text, nullable=False),
    Index("drift_sketches_line_end", "site", "line", "window_end_ms"),
)

model_reports = Table(
    "model_reports", metadata, *_head(),
    Column("current_name", Text),
    Column("current_version", BigInteger),
    Column("current_label", Text),
    Column("previous_name", Text),
    Column("previous_version", BigInteger),
    Column("previous_label", Text),
    Column("update_id", Text),
    Column("update_step", Text),
    Column("update_state", Text),
    Column("payload_json", Text, nullable=False),
    Index("model_reports_line_sent", "site", "line", "sent_at_ms"),
)

# Payloads that failed validation, one row per distinct (topic, payload): the id is the
# sha256 of both, so a flood of the same junk is one row with times_seen.
quarantine = Table(
    "quarantine", metadata,
    Column("quarantine_id", Text, primary_key=True),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload_bytes", BigInteger, nullable=False),
    Column("payload_b64", Text, nullable=False),
    Column("first_received_at_ms", BigInteger, nullable=False),
    Column("last_received_at_ms", BigInteger, nullable=False),
    Column("times_seen", BigInteger, nullable=False),
    Index("quarantine_last", "last_received_at_ms"),
)

# Per collector instance (client id), so several collectors never clobber each other.
counters = Table(
    "counters", metadata,
    Column("collector_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("value", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("collector_id", "name"),
)

"""fleet: the initial schema (the fleet store's SQLite migrations 1 and 2 of 0.1).

An SQLite fleet store made by lineguard 0.1 (its own `schema_migrations` table) is
adopted as it is: its tables are this schema; a version 1 file gets the
`messages.content_sha256` column of version 2. (`upgrade` backed the file up first.)

Revision ID: fleet_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "fleet_0001"
down_revision = None
branch_labels = ("fleet",)
depends_on = None

DOUBLE = sa.Float(precision=53).with_variant(sa.Float(), "sqlite")


def _adopt_legacy() -> bool:
    """True when this is a 0.1 SQLite fleet store (now brought to this schema)."""
    bind = op.get_bind()
    names = set(sa.inspect(bind).get_table_names())
    if "schema_migrations" not in names or "messages" not in names:
        return False
    columns = {c["name"] for c in sa.inspect(bind).get_columns("messages")}
    if "content_sha256" not in columns:
        op.add_column("messages", sa.Column("content_sha256", sa.Text()))
    op.drop_table("schema_migrations")
    return True


def upgrade() -> None:
    if _adopt_legacy():
        return
    op.create_table(
        "counters",
        sa.Column("collector_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("collector_id", "name"),
    )
    op.create_table(
        "defect_events",
        sa.Column("msg_id", sa.Text(), primary_key=True),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("captured_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("part_id", sa.Text()),
        sa.Column("frame_id", sa.Text(), nullable=False),
        sa.Column("station", sa.Text()),
        sa.Column("model_name", sa.Text(), nullable=False),
        sa.Column("model_version", sa.BigInteger(), nullable=False),
        sa.Column("model_label", sa.Text()),
        sa.Column("image_w", sa.Integer(), nullable=False),
        sa.Column("image_h", sa.Integer(), nullable=False),
        sa.Column("latency_ms", DOUBLE),
        sa.Column("defect_count", sa.Integer(), nullable=False),
    )
    op.create_index("defect_events_captured", "defect_events", ["captured_at_ms"])
    op.create_index(
        "defect_events_line_captured", "defect_events", ["site", "line", "captured_at_ms"]
    )
    op.create_table(
        "defects",
        sa.Column("msg_id", sa.Text(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.Text(), nullable=False),
        sa.Column("score", DOUBLE, nullable=False),
        sa.Column("x1", DOUBLE, nullable=False),
        sa.Column("y1", DOUBLE, nullable=False),
        sa.Column("x2", DOUBLE, nullable=False),
        sa.Column("y2", DOUBLE, nullable=False),
        sa.PrimaryKeyConstraint("msg_id", "idx"),
    )
    op.create_index("defects_class", "defects", ["class_name", "msg_id"])
    op.create_table(
        "drift_sketches",
        sa.Column("msg_id", sa.Text(), primary_key=True),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("window_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("window_end_ms", sa.BigInteger(), nullable=False),
        sa.Column("station", sa.Text()),
        sa.Column("frame_count", sa.BigInteger(), nullable=False),
        sa.Column("ref_model_name", sa.Text()),
        sa.Column("ref_model_version", sa.BigInteger()),
        sa.Column("payload_json", sa.Text(), nullable=False),
    )
    op.create_index("drift_sketches_line_end", "drift_sketches", ["site", "line", "window_end_ms"])
    op.create_table(
        "lines",
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("first_seen_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("online", sa.Integer(), sa.CheckConstraint("online IN (0, 1)")),
        sa.Column("state", sa.Text()),
        sa.Column("reason", sa.Text()),
        sa.Column("status_at_ms", sa.BigInteger()),
        sa.Column("status_msg_id", sa.Text()),
        sa.Column("app_version", sa.Text()),
        sa.Column("started_at_ms", sa.BigInteger()),
        sa.Column("sources_json", sa.Text()),
        sa.Column("alarms_json", sa.Text()),
        sa.Column("model_name", sa.Text()),
        sa.Column("model_version", sa.BigInteger()),
        sa.Column("model_label", sa.Text()),
        sa.Column("model_at_ms", sa.BigInteger()),
        sa.PrimaryKeyConstraint("site", "line"),
    )
    op.create_table(
        "messages",
        sa.Column("msg_id", sa.Text(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("schema_id", sa.Text(), nullable=False),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("stored_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("content_sha256", sa.Text()),
    )
    op.create_table(
        "metrics",
        sa.Column("msg_id", sa.Text(), primary_key=True),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("window_s", DOUBLE, nullable=False),
        sa.Column("fps", DOUBLE, nullable=False),
        sa.Column("passed", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("uninspected", sa.BigInteger(), nullable=False),
        sa.Column("defects", sa.BigInteger(), nullable=False),
        sa.Column("e2e_p50_ms", DOUBLE),
        sa.Column("e2e_p95_ms", DOUBLE),
        sa.Column("e2e_p99_ms", DOUBLE),
        sa.Column("engine_provider", sa.Text()),
        sa.Column("model_name", sa.Text()),
        sa.Column("model_version", sa.BigInteger()),
        sa.Column("outbox_depth", sa.BigInteger()),
        sa.Column("payload_json", sa.Text(), nullable=False),
    )
    op.create_index("metrics_line_sent", "metrics", ["site", "line", "sent_at_ms"])
    op.create_table(
        "model_reports",
        sa.Column("msg_id", sa.Text(), primary_key=True),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("current_name", sa.Text()),
        sa.Column("current_version", sa.BigInteger()),
        sa.Column("current_label", sa.Text()),
        sa.Column("previous_name", sa.Text()),
        sa.Column("previous_version", sa.BigInteger()),
        sa.Column("previous_label", sa.Text()),
        sa.Column("update_id", sa.Text()),
        sa.Column("update_step", sa.Text()),
        sa.Column("update_state", sa.Text()),
        sa.Column("payload_json", sa.Text(), nullable=False),
    )
    op.create_index("model_reports_line_sent", "model_reports", ["site", "line", "sent_at_ms"])
    op.create_table(
        "quarantine",
        sa.Column("quarantine_id", sa.Text(), primary_key=True),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload_bytes", sa.BigInteger(), nullable=False),
        sa.Column("payload_b64", sa.Text(), nullable=False),
        sa.Column("first_received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("times_seen", sa.BigInteger(), nullable=False),
    )
    op.create_index("quarantine_last", "quarantine", ["last_received_at_ms"])
    op.create_table(
        "status_events",
        sa.Column("msg_id", sa.Text(), primary_key=True),
        sa.Column("site", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("sent_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("payload_json", sa.Text(), nullable=False),
    )
    op.create_index("status_events_line_sent", "status_events", ["site", "line", "sent_at_ms"])

"""drift: windows, detectors, alerts

Revision ID: drift_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "drift_0001"
down_revision = None
branch_labels = ("drift",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_windows",
        sa.Column("msg_id", sa.String(32), primary_key=True),
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("line", sa.String(63), nullable=False),
        sa.Column("station", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.BigInteger, nullable=False),
        sa.Column("first_frame_id", sa.BigInteger, nullable=False),
        sa.Column("last_frame_id", sa.BigInteger, nullable=False),
        sa.Column("frame_count", sa.Integer, nullable=False),
        sa.Column("window_start_ms", sa.BigInteger, nullable=False),
        sa.Column("window_end_ms", sa.BigInteger, nullable=False),
        sa.Column("received_at_ms", sa.BigInteger, nullable=False),
        sa.Column("image_json", sa.Text, nullable=True),
        sa.Column("output_json", sa.Text, nullable=True),
        sa.Column("statistic", sa.Float, nullable=True),
    )
    op.create_index("drift_windows_key", "drift_windows",
                    ["site", "line", "station", "model_name", "model_version", "last_frame_id"])
    op.create_table(
        "drift_detectors",
        sa.Column("site", sa.String(63), primary_key=True),
        sa.Column("line", sa.String(63), primary_key=True),
        sa.Column("station", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.BigInteger, primary_key=True),
        sa.Column("reference_source", sa.String(16), nullable=False),
        sa.Column("reference_frames", sa.Integer, nullable=False),
        sa.Column("baseline_json", sa.Text, nullable=True),
        sa.Column("state_json", sa.Text, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "drift_alerts",
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("line", sa.String(63), nullable=False),
        sa.Column("station", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.BigInteger, nullable=False),
        sa.Column("channels_json", sa.Text, nullable=False),
        sa.Column("onset_frame_id", sa.BigInteger, nullable=False),
        sa.Column("onset_at_ms", sa.BigInteger, nullable=False),
        sa.Column("raised_at_ms", sa.BigInteger, nullable=False),
        sa.Column("statistic", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("mmd_p_value", sa.Float, nullable=False),
        sa.Column("published", sa.Boolean, nullable=False),
        sa.Column("retrain_requested", sa.Boolean, nullable=False),
        sa.Column("acknowledged_at_ms", sa.BigInteger, nullable=True),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
    )
    op.create_index("drift_alerts_line", "drift_alerts", ["site", "line", "raised_at_ms"])


def downgrade() -> None:
    op.drop_table("drift_alerts")
    op.drop_table("drift_detectors")
    op.drop_index("drift_windows_key", "drift_windows")
    op.drop_table("drift_windows")

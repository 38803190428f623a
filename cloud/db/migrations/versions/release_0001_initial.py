"""release: published releases, signed line assignments, rollouts, their steps, events.

Revision ID: release_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "release_0001"
down_revision = None
branch_labels = ("release",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_releases",
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("label", sa.Text, nullable=True),
        sa.Column("target_path", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=False),
        sa.Column("released_by", sa.Text, nullable=False),
        sa.Column("released_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("model", "version", name="release_releases_pk"),
    )
    op.create_table(
        "release_assignments",
        sa.Column("site", sa.Text, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("bundle_target", sa.Text, nullable=False),
        sa.Column("rollout_id", sa.Text, nullable=True),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("issued_by", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("issued_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("site", "line", "sequence", name="release_assignments_pk"),
    )
    op.create_table(
        "release_rollouts",
        sa.Column("rollout_id", sa.Text, primary_key=True),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("stages_json", sa.Text, nullable=False),
        sa.Column("stage_index", sa.Integer, nullable=False),
        sa.Column("stage_started_at_ms", sa.BigInteger, nullable=False),
        sa.Column("previous_json", sa.Text, nullable=False),
        sa.Column("health_window_s", sa.Integer, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.CheckConstraint("state IN ('active', 'completed', 'halted')",
                           name="release_rollouts_state"),
    )
    op.create_index("release_rollouts_state_idx", "release_rollouts", ["state"])
    op.create_table(
        "release_rollout_steps",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("site", sa.Text, nullable=True),
        sa.Column("line", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("release_rollout_steps_rollout_idx", "release_rollout_steps",
                    ["rollout_id", "id"])
    op.create_table(
        "release_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("version", sa.BigInteger, nullable=True),
        sa.Column("site", sa.Text, nullable=True),
        sa.Column("line", sa.Text, nullable=True),
        sa.Column("rollout_id", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("release_events_at_idx", "release_events", ["at_ms"])

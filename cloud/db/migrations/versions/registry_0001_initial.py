"""registry: models (state, lineage, gate outcome) and their state history.

Revision ID: registry_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None
branch_labels = ("registry",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("content_sha256", sa.Text, nullable=False),
        sa.Column("has_weights", sa.Boolean, nullable=False),
        sa.Column("gate_passed", sa.Boolean, nullable=True),
        sa.Column("parent_name", sa.Text, nullable=True),
        sa.Column("parent_version", sa.BigInteger, nullable=True),
        sa.Column("dataset_ref", sa.Text, nullable=True),
        sa.Column("dataset_fingerprint", sa.Text, nullable=True),
        sa.Column("holdout_ref", sa.Text, nullable=True),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("state_changed_at_ms", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("name", "version", name="registry_models_pk"),
        sa.CheckConstraint("state IN ('candidate', 'refused', 'approved', 'released')",
                           name="registry_models_state"),
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("from_state", sa.Text, nullable=True),
        sa.Column("to_state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("by", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("registry_events_model", "registry_events", ["name", "version", "id"])


def downgrade() -> None:
    op.drop_index("registry_events_model", "registry_events")
    op.drop_table("registry_events")
    op.drop_table("registry_models")

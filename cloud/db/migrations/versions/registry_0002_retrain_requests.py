"""registry: retraining requests (drift, schedule) and their state.

Revision ID: registry_0002
Revises: registry_0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "registry_0002"
down_revision = "registry_0001"
branch_labels = None
depends_on = None

OPEN = sa.text("state IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "retrain_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("site", sa.Text, nullable=False),
        sa.Column("line", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("requested_at_ms", sa.BigInteger, nullable=False),
        sa.Column("started_at_ms", sa.BigInteger, nullable=True),
        sa.Column("finished_at_ms", sa.BigInteger, nullable=True),
        sa.Column("parent_name", sa.Text, nullable=True),
        sa.Column("parent_version", sa.BigInteger, nullable=True),
        sa.Column("dataset_ref", sa.Text, nullable=True),
        sa.Column("candidate_name", sa.Text, nullable=True),
        sa.Column("candidate_version", sa.BigInteger, nullable=True),
        sa.Column("outcome", sa.Text, nullable=True),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed')",
                           name="retrain_requests_state"),
    )
    # At most one open (queued or running) request per line, even with two writers.
    op.create_index("retrain_requests_one_open", "retrain_requests", ["site", "line"],
                    unique=True, sqlite_where=OPEN, postgresql_where=OPEN)
    op.create_index("retrain_requests_line", "retrain_requests",
                    ["site", "line", "requested_at_ms"])


def downgrade() -> None:
    op.drop_index("retrain_requests_line", "retrain_requests")
    op.drop_index("retrain_requests_one_open", "retrain_requests")
    op.drop_table("retrain_requests")

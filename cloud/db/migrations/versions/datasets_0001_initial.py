"""datasets: images, immutable versions and their items, line tokens, the sample inbox.

Revision ID: datasets_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "datasets_0001"
down_revision = None
branch_labels = ("datasets",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_images",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("ext", sa.String(8), nullable=False),
        sa.Column("width_px", sa.Integer, nullable=False),
        sa.Column("height_px", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("classes_json", sa.Text, nullable=False),
        sa.Column("counts_json", sa.Text, nullable=False),
        sa.Column("parents_json", sa.Text, nullable=False),
        sa.Column("split_rule", sa.String(32), nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("name", "number", name="uq_dataset_versions_name_number"),
        sa.UniqueConstraint("name", "fingerprint", name="uq_dataset_versions_name_fingerprint"),
    )
    op.create_index("ix_dataset_versions_fingerprint", "dataset_versions", ["fingerprint"])
    op.create_table(
        "dataset_items",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("dataset_versions.id"),
                  primary_key=True),
        sa.Column("image_sha256", sa.String(64), primary_key=True),
        sa.Column("split", sa.String(8), nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
    )
    op.create_index("ix_dataset_items_image", "dataset_items", ["image_sha256"])
    op.create_table(
        "line_tokens",
        sa.Column("site", sa.String(64), primary_key=True),
        sa.Column("line", sa.String(64), primary_key=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "line_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("line", sa.String(64), nullable=False),
        sa.Column("sample_id", sa.String(64), nullable=False),
        sa.Column("frame_id", sa.String(128), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(64), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("body_json", sa.Text, nullable=False),
        sa.Column("labelled", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("accepted_into", sa.String(140), nullable=True),
        sa.UniqueConstraint("site", "line", "sample_id", name="uq_line_samples_line_sample"),
    )
    op.create_index("ix_line_samples_inbox", "line_samples", ["site", "line", "state"])

"""The dataset component's tables (Alembic branch `datasets`).

- `dataset_images`: one row per image object (content hash, file type, size).
- `dataset_versions`: one row per immutable version: `name`, `number` (1, 2, ... per
  name), `fingerprint` (sha256 of the canonical listing, see `cloud.datasets.content`),
  classes, counts, parents, source.
- `dataset_items`: the (image, split, labels) rows of a version.
- `line_tokens`: per-line upload tokens, only their sha256.
- `line_samples`: the per-line inbox of uploaded samples; (site, line, sample_id) is
  unique, which makes a repeated upload a no-op.

No foreign keys into other components; inside this component items refer to versions
by id. JSON columns are TEXT holding canonical JSON (portable across SQLite and
PostgreSQL, and what the fingerprint is computed over anyway).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql, sqlite

metadata = MetaData()
_BATCH_ROWS = 500  # rows per multi-row INSERT (SQLite allows 32766 bound parameters)

dataset_images = Table(
    "dataset_images", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("ext", String(8), nullable=False),
    Column("width_px", Integer, nullable=False),
    Column("height_px", Integer, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
)

dataset_versions = Table(
    "dataset_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("number", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("classes_json", Text, nullable=False),
    Column("counts_json", Text, nullable=False),
    Column("parents_json", Text, nullable=False),
    Column("split_rule", String(32), nullable=False),
    Column("source", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("name", "number", name="uq_dataset_versions_name_number"),
    UniqueConstraint("name", "fingerprint", name="uq_dataset_versions_name_fingerprint"),
)
Index("ix_dataset_versions_fingerprint", dataset_versions.c.fingerprint)

dataset_items = Table(
    "dataset_items", metadata,
    Column("version_id", Integer, ForeignKey("dataset_versions.id"), primary_key=True),
    Column("image_sha256", String(64), primary_key=True),
    Column("split", String(8), nullable=False),
    Column("labels", Text, nullable=False),
)
Index("ix_dataset_items_image", dataset_items.c.image_sha256)

line_tokens = Table(
    "line_tokens", metadata,
    Column("site", String(64), primary_key=True),
    Column("line", String(64), primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

line_samples = Table(
    "line_samples", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", String(64), nullable=False),
    Column("line", String(64), nullable=False),
    Column("sample_id", String(64), nullable=False),
    Column("frame_id", String(128), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("image_sha256", String(64), nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("body_json", Text, nullable=False),
    Column("labelled", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("accepted_into", String(140), nullable=True),
    UniqueConstraint("site", "line", "sample_id", name="uq_line_samples_line_sample"),
)
Index("ix_line_samples_inbox", line_samples.c.site, line_samples.c.line, line_samples.c.state)


def insert_ignoring_duplicates(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL; the rows inserted."""
    if not rows:
        return 0
    dialect = conn.dialect.name
    if dialect == "postgresql":
        stmt: Any = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing()
    else:  # pragma: no cover - DatabaseConfig admits only these two
        raise ValueError(f"unsupported database dialect {dialect!r}")
    total = 0
    for start in range(0, len(rows), _BATCH_ROWS):  # one statement per batch: its rowcount
        total += int(conn.execute(stmt.values(rows[start:start + _BATCH_ROWS])).rowcount)
    return total

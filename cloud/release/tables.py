"""Release and rollout tables (Alembic branch `release`, cloud/db/migrations/versions/
release_*.py). Times are UTC milliseconds since the epoch (BIGINT); no foreign keys
into other components (models and lines are named by natural keys). JSON columns are
Text holding JSON written and read here only."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, PrimaryKeyConstraint, Table, Text

metadata = MetaData()

releases = Table(
    "release_releases",
    metadata,
    Column("model", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("label", Text, nullable=True),
    Column("target_path", Text, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("length", BigInteger, nullable=False),
    Column("released_by", Text, nullable=False),
    Column("released_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("model", "version", name="release_releases_pk"),
)

assignments = Table(
    "release_assignments",
    metadata,
    Column("site", Text, nullable=False),
    Column("line", Text, nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("model", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("bundle_target", Text, nullable=False),
    Column("rollout_id", Text, nullable=True),
    Column("stage", Text, nullable=False),
    Column("issued_by", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("issued_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("site", "line", "sequence", name="release_assignments_pk"),
)

rollouts = Table(
    "release_rollouts",
    metadata,
    Column("rollout_id", Text, primary_key=True),
    Column("model", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    # active, completed, halted
    Column("state", Text, nullable=False),
    # JSON: list of stages, each a list of "site/line"; stage 0 is the canaries.
    Column("stages_json", Text, nullable=False),
    Column("stage_index", Integer, nullable=False),
    Column("stage_started_at_ms", BigInteger, nullable=False),
    # JSON: {"site/line": {"model": ..., "version": ...} or null}: what each line was
    # assigned before this rollout (where a halt sends it back).
    Column("previous_json", Text, nullable=False),
    Column("health_window_s", Integer, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("reason", Text, nullable=True),
)

rollout_steps = Table(
    "release_rollout_steps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rollout_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("site", Text, nullable=True),
    Column("line", Text, nullable=True),
    Column("detail", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

events = Table(
    "release_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", Text, nullable=False),
    Column("model", Text, nullable=True),
    Column("version", BigInteger, nullable=True),
    Column("site", Text, nullable=True),
    Column("line", Text, nullable=True),
    Column("rollout_id", Text, nullable=True),
    Column("detail", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

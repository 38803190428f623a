"""The registry's tables (Alembic branch `registry`, cloud/db/migrations/versions/
registry_*.py). Times are UTC milliseconds since the epoch (BIGINT), as in the fleet
store; no foreign keys into other components (models refer to datasets by ref)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
)

metadata = MetaData()

models = Table(
    "registry_models",
    metadata,
    Column("name", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("label", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("source", Text, nullable=False),
    # sha256 over the bundle's manifest.json and the weights: what "same content" means.
    Column("content_sha256", Text, nullable=False),
    Column("has_weights", Boolean, nullable=False),
    Column("gate_passed", Boolean, nullable=True),
    Column("parent_name", Text, nullable=True),
    Column("parent_version", BigInteger, nullable=True),
    Column("dataset_ref", Text, nullable=True),
    Column("dataset_fingerprint", Text, nullable=True),
    Column("holdout_ref", Text, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("state_changed_at_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("name", "version", name="registry_models_pk"),
)

events = Table(
    "registry_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", Text, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("from_state", Text, nullable=True),
    Column("to_state", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("by", Text, nullable=False),
    Column("at_ms", BigInteger, nullable=False),
)

retrain_requests = Table(
    "retrain_requests",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site", Text, nullable=False),
    Column("line", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("requested_at_ms", BigInteger, nullable=False),
    Column("started_at_ms", BigInteger, nullable=True),
    Column("finished_at_ms", BigInteger, nullable=True),
    Column("parent_name", Text, nullable=True),
    Column("parent_version", BigInteger, nullable=True),
    Column("dataset_ref", Text, nullable=True),
    Column("candidate_name", Text, nullable=True),
    Column("candidate_version", BigInteger, nullable=True),
    Column("outcome", Text, nullable=True),
)

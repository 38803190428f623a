"""The cloud database: one SQLAlchemy 2 Core engine and Alembic migrations.

Every cloud component that persists (fleet store, dataset index, model registry,
releases and rollouts, drift) uses this layer, on an SQLite file by default (embedded,
nothing to start) or PostgreSQL when the config gives a `postgresql+psycopg://` URL.

Each component owns its tables and its own Alembic branch (a branch label naming the
component, e.g. `fleet`, `datasets`), so components migrate independently and
`upgrade` applies every branch's head. Tables of one component never hold foreign keys
into another's; they refer to each other by natural keys (site, line, model, version).
"""

from cloud.db.config import DatabaseConfig
from cloud.db.engine import open_engine
from cloud.db.migrate import current_revisions, upgrade

__all__ = ["DatabaseConfig", "current_revisions", "open_engine", "upgrade"]

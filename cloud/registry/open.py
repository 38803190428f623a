"""Opening the registry from config: the cloud database (migrated on start when the
config says so) and the files root."""

from __future__ import annotations

from sqlalchemy.exc import SQLAlchemyError

from cloud.db import DatabaseConfig, current_revisions, open_engine, upgrade
from cloud.db.migrate import head_revisions
from cloud.registry.config import RegistryConfig
from cloud.registry.errors import RegistryError
from cloud.registry.store import ModelRegistry


def open_registry(database: DatabaseConfig, config: RegistryConfig) -> ModelRegistry:
    """The registry over `database` (migrated first when `migrate_on_start`).
    Raises RegistryError when the database cannot be reached or is not migrated."""
    engine = open_engine(database)
    try:
        if database.migrate_on_start:
            upgrade(engine, database)
        elif not current_revisions(engine) >= head_revisions():
            raise RegistryError("the cloud database is not migrated; run "
                                "`lineguard cloud db upgrade` first")
    except SQLAlchemyError as e:
        engine.dispose()
        raise RegistryError(f"cannot open the cloud database: {e}") from e
    return ModelRegistry(engine, config.root)

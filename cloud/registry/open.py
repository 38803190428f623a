"""Opening the registry from config: the cloud database (migrated on start when the
config says so) and the files root."""

from __future__ import annotations

from sqlalchemy import Engine

from cloud.db import DatabaseConfig, open_database
from cloud.errors import CloudError
from cloud.registry.config import RegistryConfig
from cloud.registry.errors import RegistryError
from cloud.registry.store import ModelRegistry


def open_registry(database: DatabaseConfig, config: RegistryConfig, *,
                  engine: Engine | None = None) -> ModelRegistry:
    """The registry over `database` (migrated first when `migrate_on_start`), or over
    `engine` when given (the process's one engine, opened by `cloud.db.open_database`;
    its owner disposes of it). Raises RegistryError when the database cannot be reached
    or is not migrated."""
    if engine is not None:
        return ModelRegistry(engine, config.root)
    try:
        engine = open_database(database)
    except CloudError as e:
        raise RegistryError(str(e)) from e
    return ModelRegistry(engine, config.root)

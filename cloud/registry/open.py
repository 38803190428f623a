"""Opening the registry from config: the cloud database (migrated on start when the
config says so) and the files root."""

from __future__ import annotations

from cloud.db import DatabaseConfig, open_database
from cloud.errors import CloudError
from cloud.registry.config import RegistryConfig
from cloud.registry.errors import RegistryError
from cloud.registry.store import ModelRegistry


def open_registry(database: DatabaseConfig, config: RegistryConfig) -> ModelRegistry:
    """The registry over `database` (migrated first when `migrate_on_start`).
    Raises RegistryError when the database cannot be reached or is not migrated."""
    try:
        engine = open_database(database)
    except CloudError as e:
        raise RegistryError(str(e)) from e
    return ModelRegistry(engine, config.root)

"""A running appliance `Store` for tests that need its database and its writer (the
telemetry outbox writes through it).

    store = open_store(tmp_path)        # tmp_path/lineguard.db, migrated and started
    ...
    store.stop()
"""

from __future__ import annotations

from pathlib import Path

from appliance.store import ImageKeepConfig, Store, StoreConfig

DB_NAME = "lineguard.db"


def store_config(directory: Path, **overrides: object) -> StoreConfig:
    """A store at `directory/lineguard.db`, images beside it, no free-disk floor."""
    base: dict[str, object] = {
        "path": directory / DB_NAME,
        "images": ImageKeepConfig(dir=directory / "images", min_free_disk_bytes=0),
    }
    base.update(overrides)
    return StoreConfig.model_validate(base)


def open_store(directory: Path, **overrides: object) -> Store:
    """A started Store (see `store_config`); the caller stops it."""
    store = Store(store_config(directory, **overrides))
    store.start()
    return store

"""Wiring the dataset index into the cloud's processes: the database engine (migrated
per `database.migrate_on_start`) and the upload router for `lineguard cloud serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cloud.db import DatabaseConfig, current_revisions, open_engine, upgrade
from cloud.db.migrate import head_revisions
from cloud.errors import CloudError, ConfigError

if TYPE_CHECKING:
    from fastapi import APIRouter

    from cloud.config import CloudConfig
    from cloud.datasets.index import DatasetIndex


def database_config(cfg: CloudConfig) -> DatabaseConfig:
    """The config's `database:` section."""
    return cfg.database


def open_database(cfg: CloudConfig) -> Engine:
    """An engine on the cloud database, migrated to this build's schema if
    `migrate_on_start`; otherwise ConfigError when it is behind."""
    db = database_config(cfg)
    engine = open_engine(db)
    try:
        if db.migrate_on_start:
            upgrade(engine, db)
        elif not current_revisions(engine) >= head_revisions():
            raise ConfigError("the cloud database needs migrating: run `lineguard cloud db "
                              "upgrade` (database.migrate_on_start is off)")
    except SQLAlchemyError as e:
        engine.dispose()
        raise CloudError(f"cannot open the cloud database: {str(e).splitlines()[0]}") from e
    except CloudError:
        engine.dispose()
        raise
    return engine


def open_index(cfg: CloudConfig, engine: Engine | None = None) -> DatasetIndex:
    """The dataset index of a cloud config (on `engine`, or a newly opened one: the
    caller disposes of `index.engine`)."""
    from cloud.datasets.index import DatasetIndex

    return DatasetIndex(engine if engine is not None else open_database(cfg),
                        cfg.datasets.root, val_fraction=cfg.datasets.val_fraction)


def upload_router(cfg: CloudConfig, engine: Engine) -> APIRouter:
    """`POST /lines/{site}/{line}/samples` over the config's dataset root and `engine`."""
    from cloud.api.uploads import samples_router
    from cloud.datasets.inbox import SampleInbox

    inbox = SampleInbox(open_index(cfg, engine), max_pixels=cfg.datasets.upload_max_pixels)
    return samples_router(inbox, max_body_bytes=cfg.datasets.upload_max_bytes)

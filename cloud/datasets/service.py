"""Wiring the dataset index into the cloud's processes: the database engine (migrated
per `database.migrate_on_start`) and the upload router for `lineguard cloud serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine

from cloud.db import open_database as open_cloud_database

if TYPE_CHECKING:
    from fastapi import APIRouter

    from cloud.config import CloudConfig
    from cloud.datasets.index import DatasetIndex


def open_database(cfg: CloudConfig) -> Engine:
    """An engine on the config's cloud database (cloud.db.open_database: migrated per
    `database.migrate_on_start`). Raises a CloudError."""
    return open_cloud_database(cfg.database)


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

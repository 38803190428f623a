"""Opening the release side from the cloud config: the database (migrated on start when
the config says so), the repository with its signers, the release records."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from cloud.db import DatabaseConfig
from cloud.db import open_database as open_cloud_database
from cloud.errors import CloudError
from cloud.release.config import ReleaseConfig
from cloud.release.errors import ReleaseError
from cloud.release.keys import SignerPool, read_signers_file
from cloud.release.repository import Repository
from cloud.release.store import ReleaseStore


def signer_pool(config: ReleaseConfig) -> SignerPool:
    """`signers_file` merged with the inline `signers` (inline wins). Raises ReleaseError."""
    uris = read_signers_file(config.signers_file) if config.signers_file else {}
    uris.update(config.signers)
    return SignerPool(uris)


def open_repository(config: ReleaseConfig) -> Repository:
    """The repository at `repository_dir` with the configured signers (nothing is read
    until used). Raises ReleaseError for an unreadable signers file."""
    return Repository(config.repository_dir, signer_pool(config), config.expiry,
                      refresh_when_left_fraction=config.refresh_when_left_fraction)


def open_database(database: DatabaseConfig) -> Engine:
    """The cloud database (cloud.db.open_database). Raises ReleaseError."""
    try:
        return open_cloud_database(database)
    except CloudError as e:
        raise ReleaseError(str(e)) from e


@dataclass
class ReleaseSide:
    engine: Engine
    repo: Repository
    store: ReleaseStore
    owns_engine: bool = True
    """False: the engine was lent (`open_release(..., engine=...)`); its owner disposes."""

    def close(self) -> None:
        if self.owns_engine:
            self.engine.dispose()


def open_release(database: DatabaseConfig, config: ReleaseConfig, *,
                 engine: Engine | None = None) -> ReleaseSide:
    """Database, repository and release records together; on `engine` when given (the
    process's one engine, left open by `close`), else on a newly opened one. Raises
    ReleaseError."""
    repo = open_repository(config)
    if engine is not None:
        return ReleaseSide(engine, repo, ReleaseStore(engine), owns_engine=False)
    engine = open_database(database)
    return ReleaseSide(engine, repo, ReleaseStore(engine))

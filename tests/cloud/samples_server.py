"""A process serving only the sample upload endpoint over a given database URL and
dataset root, for tests that kill and restart the server (`lineguard cloud serve` takes
its database from the config; this takes any URL, PostgreSQL included).

    python -m tests.cloud.samples_server DATABASE_URL DATASET_ROOT PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from cloud.api.uploads import samples_router
from cloud.datasets.inbox import SampleInbox
from cloud.datasets.index import DatasetIndex
from cloud.db import DatabaseConfig, open_engine, upgrade


def main(argv: list[str]) -> int:
    url, root, port = argv[0], Path(argv[1]), int(argv[2])
    config = DatabaseConfig(url=url)
    engine = open_engine(config)
    upgrade(engine, config)
    app = FastAPI()
    inbox = SampleInbox(DatasetIndex(engine, root), max_pixels=1_000_000)
    app.include_router(samples_router(inbox, max_body_bytes=1024 * 1024))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

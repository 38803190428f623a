"""Suite-wide fixtures."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

# `database_url` / `postgres_url`: the cloud database on SQLite and on PostgreSQL
pytest_plugins = ["tests.cloud_db"]


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """CLI tests run `main()` in-process, and the CLIs configure the root logger with a
    handler on the `sys.stdout` of that moment (pytest's capture, closed after the test).
    Put the root logger back, so that later log records from background threads do not
    end in "Logging error ... I/O operation on closed file"."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)

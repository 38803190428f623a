"""Atomic, durable file writes: the one implementation every package uses.

A reader sees either the old file or the whole new one, never a torn write, and the
new content survives a power cut once the call returns: the data goes to a temporary
file in the same directory, is fsynced, renamed over the target with `os.replace`,
and the directory is fsynced so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename or create inside it is durable (no-op where
    directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path` for binary writing; on a clean exit it is
    fsynced and renamed over `path`, on an exception it is removed and `path` is left
    as it was. Raises OSError from the filesystem."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, atomically and durably. Raises OSError."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` encoded as UTF-8, atomically and durably. Raises OSError."""
    atomic_write_bytes(path, text.encode("utf-8"))

"""Atomic, durable file writes: the one implementation every package uses.

A reader sees either the old file or the whole new one, never a torn write, and the
new content survives a power cut once the call returns: the data goes to a temporary
file in the same directory, is fsynced, renamed over the target with `os.replace`,
and the directory is fsynced so the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of `atomic_writer`'s temporary files (a crash can leave
    them behind; a directory's owner may delete them at start)."""
    return name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)


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


def _create_temp_beside(path: Path) -> Path:
    """Create an empty temporary file beside `path`, named so `is_temp_name` knows it.
    Its mode is 0666 less the umask, like any new file (mkstemp's 0600 would make
    bundles, images and schemas unreadable to other users)."""
    for _ in range(100):
        tmp = path.with_name(f"{_TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield the path of a new, empty temporary file beside `path`, for writers that
    need a path rather than a file object (an SQLite backup, an external tool). On a
    clean exit it is fsynced and renamed over `path` and the directory is fsynced; on
    an exception it is removed and `path` is left as it was. Raises OSError."""
    path = Path(path)
    tmp = _create_temp_beside(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file beside `path` for binary writing; on a clean exit it is
    fsynced and renamed over `path` (and the directory fsynced), on an exception it is
    removed and `path` is left as it was. Raises OSError from the filesystem."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        yield fh


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, atomically and durably. Raises OSError."""
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` encoded as UTF-8, atomically and durably. Raises OSError."""
    atomic_write_bytes(path, text.encode("utf-8"))

"""Disk headroom kept for the verdict database: a pre-allocated reserve file.

Verdicts outrank images: the image keeper stops writing below its free-disk floor
(`store.images.min_free_disk_bytes`, an alarm) long before the database cannot grow.
If the disk fills anyway (another process, logs, a floor set too low), the writer's next
commit fails with SQLITE_FULL; it then releases this reserve (`release`), which gives the
database `reserve_bytes` to keep committing verdicts while someone frees space. Once the
disk has room again (`reserve_bytes` plus `restore_margin_bytes` free), the writer
re-creates it (`restore_if_room`, at most every `check_interval_s`).

Invariants: the file is either absent or fully allocated (a partial allocation is
removed); only the store's writer thread calls `release` / `restore_if_room` after
`Store.start`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _allocate(path: Path, size: int) -> None:
    """Create `path` with `size` bytes allocated on disk. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: write zeros instead
                raise
            zeros = bytes(_CHUNK)
            left = size
            while left > 0:
                left -= os.write(fd, zeros[: min(left, _CHUNK)])
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskReserve:
    """The reserve file at `path` (see the module docstring). `size_bytes` 0 disables it."""

    def __init__(
        self,
        path: Path,
        size_bytes: int,
        *,
        free_disk_bytes: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free,
        check_interval_s: float = 5.0,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self._free = free_disk_bytes
        self._interval_s = check_interval_s
        self._mono = mono
        self._next_check = 0.0
        self.releases = 0

    @property
    def held(self) -> bool:
        """True while the reserve file exists (the headroom is kept)."""
        return self.size_bytes > 0 and self.path.exists()

    def create(self) -> bool:
        """Allocate the reserve if it is missing. False (and nothing left behind) if the
        disk has no room for it."""
        if self.size_bytes <= 0:
            return True
        try:
            if self.path.stat().st_size == self.size_bytes:
                return True
        except FileNotFoundError:
            pass
        except OSError as e:
            logger.warning("cannot read the store's disk reserve %s: %s", self.path, e)
        try:
            _allocate(self.path, self.size_bytes)
        except OSError as e:
            logger.warning("cannot allocate the store's disk reserve %s (%d bytes): %s",
                           self.path, self.size_bytes, e)
            self.path.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> int:
        """Delete the reserve; returns the bytes given back (0 if none was held)."""
        if not self.held:
            return 0
        try:
            self.path.unlink()
        except OSError as e:
            logger.error("cannot release the store's disk reserve %s: %s", self.path, e)
            return 0
        self.releases += 1
        self._next_check = self._mono() + self._interval_s
        return self.size_bytes

    def restore_if_room(self, margin_bytes: int) -> bool:
        """Re-create a released reserve when `size_bytes + margin_bytes` are free (checked
        at most every `check_interval_s`). True if it was re-created now."""
        if self.size_bytes <= 0 or self.held:
            return False
        now = self._mono()
        if now < self._next_check:
            return False
        self._next_check = now + self._interval_s
        try:
            if self._free(self.path.parent) < self.size_bytes + margin_bytes:
                return False
        except OSError:
            return False
        return self.create()

"""The content-addressed image store on disk: `<root>/objects/<sha256[:2]>/<sha256>.<ext>`.

Invariants: an object's name is the sha256 of its bytes; it is written atomically
(temporary file, fsync, rename; protocol/atomic.py) and made read-only, so a
materialised dataset may hard-link it; writing an object that exists is a no-op. An
object on disk without a database row (a crash between the two) is harmless: `orphans`
lists them for `lineguard cloud dataset gc`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from cloud.datasets.errors import ObjectStoreError
from protocol.atomic import atomic_writer, is_temp_name

_CHUNK = 1 << 20


class ObjectStore:
    """Images by content hash under `root/objects`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"

    def path(self, sha256: str, ext: str) -> Path:
        """Where the object lives (whether or not it exists)."""
        return self.objects / sha256[:2] / f"{sha256}.{ext}"

    def put_bytes(self, data: bytes, sha256: str, ext: str) -> Path:
        """Store `data` (whose sha256 the caller computed) unless it is there; its path.
        Raises ObjectStoreError (I/O error)."""
        target = self.path(sha256, ext)
        if target.is_file():
            return target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(target) as fh:
                fh.write(data)
            os.chmod(target, 0o444)
        except OSError as e:
            raise ObjectStoreError(f"cannot write object {target}: {e}") from e
        return target

    def put_file(self, source: Path, sha256: str, ext: str) -> Path:
        """Copy `source` into the store, checking while copying that its bytes still hash
        to `sha256`. Raises ObjectStoreError (I/O error, or the file changed)."""
        target = self.path(sha256, ext)
        if target.is_file():
            return target
        digest = hashlib.sha256()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(target) as out, source.open("rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != sha256:
                    raise ObjectStoreError(f"{source} changed while it was being imported")
            os.chmod(target, 0o444)
        except OSError as e:
            raise ObjectStoreError(f"cannot copy {source} to {target}: {e}") from e
        return target

    def link_or_copy(self, sha256: str, ext: str, dest: Path) -> None:
        """Put the object at `dest`: a hard link where the filesystem allows, else a
        copy. Raises ObjectStoreError (missing object, I/O error)."""
        source = self.path(sha256, ext)
        if not source.is_file():
            raise ObjectStoreError(f"object {source} is missing from the store")
        try:
            os.link(source, dest)
        except OSError:
            try:
                shutil.copyfile(source, dest)
            except OSError as e:
                raise ObjectStoreError(f"cannot copy {source} to {dest}: {e}") from e

    def all_objects(self) -> Iterator[tuple[str, Path]]:
        """(sha256, path) of every object on disk (temporary files excluded)."""
        if not self.objects.is_dir():
            return
        for folder in sorted(self.objects.iterdir()):
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.is_file() and not is_temp_name(path.name):
                    yield path.name.split(".", 1)[0], path

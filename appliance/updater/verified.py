"""Verified bundles on this machine: unpacked from a TUF-verified tar into a versioned
directory, with a record of what was verified.

    <cache_dir>/bundles/<name>-<version>-<sha12>/   the unpacked bundle (never modified)
    <cache_dir>/verified/<name>-<version>-<sha12>.json   its `BundleRef` (tar sha256,
                                                          tree sha256)

Invariants:
- a directory gets a record only after its tar was verified by TUF and it was unpacked
  by `models.bundle.unpack_bundle` (path escapes, links, unlisted files refused);
- a bundle is opened only through a `BundleRef` whose tree digest matches the
  directory's files now: a bundle copied into `bundles/` by hand has no record, and one
  changed after it was verified no longer matches; both are refused.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from appliance.updater.errors import UpdateRejected
from appliance.updater.state import BundleRef
from models.bundle import Bundle, file_sha256, load_bundle, unpack_bundle
from models.errors import ModelError
from protocol.atomic import atomic_write_text

logger = logging.getLogger(__name__)


def tree_sha256(root: Path) -> str:
    """Digest of a directory: sha256 over each regular file's relative path and sha256,
    in sorted order. Raises UpdateRejected for a link or anything but files and dirs."""
    digest = hashlib.sha256()
    root = Path(root)
    entries: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise UpdateRejected(f"{path}: a link inside a bundle directory")
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_file():
                raise UpdateRejected(f"{path}: not a regular file")
            entries.append(path.relative_to(root).as_posix())
    for rel in sorted(entries):
        digest.update(f"{rel}\0{file_sha256(root / rel)}\n".encode())
    return digest.hexdigest()


class BundleCache:
    """The verified bundles under `cache_dir` (see the module docstring)."""

    def __init__(self, cache_dir: Path, *, max_unpacked_bytes: int) -> None:
        self.bundles_dir = Path(cache_dir) / "bundles"
        self.records_dir = Path(cache_dir) / "verified"
        self._max_unpacked_bytes = max_unpacked_bytes

    def install(self, tar_path: Path, *, name: str, version: int, tar_sha256: str,
                sequence: int | None) -> BundleRef:
        """Unpack a TUF-verified tar into its versioned directory and record it.
        Raises UpdateRejected (unsafe or inconsistent archive, a manifest that does not
        name this bundle)."""
        key = f"{name}-{version}-{tar_sha256[:12]}"
        dest = self.bundles_dir / key
        record = self.records_dir / f"{key}.json"
        if record.is_file():
            ref = BundleRef.model_validate_json(record.read_bytes())
            try:
                self.open(ref)
                return ref
            except UpdateRejected as e:
                logger.warning("cached bundle %s no longer verifies (%s); unpacking again",
                               key, e)
                record.unlink()
        if dest.exists():
            shutil.rmtree(dest)  # left by a crash before its record was written
        self.bundles_dir.mkdir(parents=True, exist_ok=True)
        try:
            unpack_bundle(tar_path, dest, max_total_bytes=self._max_unpacked_bytes)
            bundle = load_bundle(dest)
        except ModelError as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise UpdateRejected(f"bundle {name}:{version}: {e}") from e
        if (bundle.manifest.name, bundle.manifest.version) != (name, version):
            shutil.rmtree(dest, ignore_errors=True)
            raise UpdateRejected(
                f"bundle tar assigned as {name}:{version} holds "
                f"{bundle.manifest.name}:{bundle.manifest.version}")
        ref = BundleRef(version_id=f"{name}:{version}", path=str(dest),
                        tree_sha256=tree_sha256(dest), tar_sha256=tar_sha256,
                        sequence=sequence)
        self.records_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, ref.model_dump_json(indent=2))
        return ref

    def adopt(self, bundle_dir: Path) -> BundleRef:
        """A ref for the configured bundle (trusted by configuration, not by TUF), so
        that it can be rolled back to like a downloaded one. Raises UpdateRejected."""
        try:
            bundle = load_bundle(Path(bundle_dir))
        except ModelError as e:
            raise UpdateRejected(f"configured bundle {bundle_dir}: {e}") from e
        m = bundle.manifest
        return BundleRef(version_id=f"{m.name}:{m.version}", path=str(Path(bundle_dir).resolve()),
                         tree_sha256=tree_sha256(bundle.root))

    def open(self, ref: BundleRef) -> Bundle:
        """Load the bundle `ref` names after checking its directory still has the
        verified content. Raises UpdateRejected."""
        root = Path(ref.path)
        if not root.is_dir():
            raise UpdateRejected(f"bundle {ref.version_id}: {root} is gone")
        found = tree_sha256(root)
        if found != ref.tree_sha256:
            raise UpdateRejected(
                f"bundle {ref.version_id}: {root} differs from what was verified "
                f"(tree {found[:12]}..., verified {ref.tree_sha256[:12]}...)")
        try:
            bundle = load_bundle(root)
        except ModelError as e:
            raise UpdateRejected(f"bundle {ref.version_id}: {e}") from e
        m = bundle.manifest
        if f"{m.name}:{m.version}" != ref.version_id:
            raise UpdateRejected(f"bundle {ref.version_id}: {root} holds {m.name}:{m.version}")
        return bundle

    def recorded(self) -> list[BundleRef]:
        """Every bundle with a verification record (newest version last)."""
        refs = []
        if self.records_dir.is_dir():
            for path in sorted(self.records_dir.glob("*.json")):
                try:
                    refs.append(BundleRef.model_validate_json(path.read_bytes()))
                except ValueError:
                    logger.warning("unreadable verification record %s; ignored", path)
        return sorted(refs, key=lambda r: (r.version_id.split(":")[0],
                                           int(r.version_id.rsplit(":", 1)[1])))

    def find(self, version_id_or_version: str) -> BundleRef | None:
        """The recorded bundle `"<name>:<version>"` or `"<version>"`, if any."""
        for ref in reversed(self.recorded()):
            if version_id_or_version in (ref.version_id, ref.version_id.rsplit(":", 1)[1]):
                return ref
        return None

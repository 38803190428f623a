"""Model bundles on disk: load with integrity checks, write atomically, pack to and
unpack from one tar safely.

A bundle directory holds ``manifest.json`` and exactly the files its ``files`` map
lists, each with a matching sha256; anything else is an integrity error. Archives
are validated member by member *before* anything is written, and extraction is done
by hand (no ``extractall``): only regular files and directories, no absolute paths,
no ``..``, no links or devices, bounded sizes, no duplicates. The archive's manifest is
read (in memory) and parsed first, so a member it does not list is refused before a
byte is written; the listed members are extracted into a temporary directory beside
the destination (same disk), which is removed on any refusal and renamed into place
only when everything was written.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pydantic import ValidationError

from models.errors import BundleIntegrityError, ManifestError, ModelError, UnsafeArchiveError
from models.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    check_relative_path,
    format_validation_error,
    parse_manifest,
)
from protocol.atomic import atomic_write_bytes, atomic_writer

__all__ = [
    "DEFAULT_MAX_UNPACKED_BYTES",
    "GOLDEN_DIR",
    "MANIFEST",
    "MODEL",
    "Bundle",
    "file_sha256",
    "load_bundle",
    "open_bundle",
    "pack_bundle",
    "unpack_bundle",
    "write_bundle",
]

logger = logging.getLogger(__name__)

MANIFEST = MANIFEST_NAME
MODEL = "model.onnx"
GOLDEN_DIR = "golden"
MiB = 1024 * 1024
_MAX_MEMBERS = 10_000
DEFAULT_MAX_UNPACKED_BYTES = 1024 * MiB
"""The default bound on a bundle archive's unpacked size (bytes); the appliance's
`model.max_unpacked_bytes` refers to this value."""
_CHUNK_BYTES = 1 * MiB


@dataclass(frozen=True)
class Bundle:
    """A loaded (and, unless asked otherwise, verified) bundle directory."""

    root: Path
    manifest: Manifest

    @property
    def model_path(self) -> Path:
        return self.root / MODEL

    def path_of(self, name: str) -> Path:
        """Absolute path of a bundle file listed in the manifest."""
        return self.root / check_relative_path(name)


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file's bytes (streamed in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_bundle(path: Path, *, verify_files: bool = True) -> Bundle:
    """Load a bundle directory: parse the manifest and check that every listed file
    exists as a regular file (not a link) with the listed sha256, and that there is
    no unlisted file. `verify_files=False` skips the hashing (existence still checked).

    Raises ManifestError (manifest missing/invalid), BundleIntegrityError naming the
    file (missing, sha256 mismatch, unlisted, link), ModelError (not a directory).
    """
    root = Path(path)
    if not root.exists():
        raise BundleIntegrityError(f"bundle not found: {root}")
    if not root.is_dir():
        raise ModelError(f"{root} is not a bundle directory (for a .tar use open_bundle)")
    manifest = parse_manifest(root / MANIFEST)
    if MODEL not in manifest.files:
        raise BundleIntegrityError(f"{root}: manifest does not list {MODEL}")
    for name, expected in sorted(manifest.files.items()):
        file_path = root / name
        if file_path.is_symlink():
            raise BundleIntegrityError(f"{name}: is a symbolic link (not allowed in a bundle)")
        if not file_path.is_file():
            raise BundleIntegrityError(f"{name}: listed in the manifest but missing from {root}")
        if verify_files:
            found = file_sha256(file_path)
            if found != expected:
                raise BundleIntegrityError(
                    f"{name}: sha256 mismatch: file has {found[:16]}..., manifest lists "
                    f"{expected[:16]}... (file changed or corrupt)"
                )
    listed = set(manifest.files) | {MANIFEST}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            rel = (Path(dirpath) / filename).relative_to(root).as_posix()
            if rel not in listed:
                raise BundleIntegrityError(f"{rel}: file in {root} is not listed in the manifest")
    return Bundle(root=root, manifest=manifest)


def open_bundle(
    path: Path, work_dir: Path, *, max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES
) -> Bundle:
    """Load a bundle from a directory, or from a ``.tar``/``.tar.gz`` which is first
    unpacked safely into `work_dir` (which must not exist or be empty; it is left empty
    if the bundle is refused), at most `max_unpacked_bytes` in all.

    Raises what `load_bundle` and `unpack_bundle` raise.
    """
    source = Path(path)
    if source.is_dir():
        return load_bundle(source)
    if not source.exists():
        raise BundleIntegrityError(f"bundle not found: {source}")
    work = Path(work_dir)
    existed = work.exists()
    root = unpack_bundle(source, work, max_total_bytes=max_unpacked_bytes)
    try:
        if not (root / MANIFEST).exists():
            # Also accept archives made with a single top-level folder (tar -C parent dir).
            children = [p for p in root.iterdir()]
            if len(children) == 1 and (children[0] / MANIFEST).is_file():
                root = children[0]
        return load_bundle(root)
    except ModelError:
        # A refused bundle leaves nothing behind.
        if existed:
            _empty_dir(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise


def _prepare_empty_dir(path: Path, what: str) -> None:
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{what} {path} exists and is not a directory")
        if any(path.iterdir()):
            raise ModelError(f"{what} {path} is not empty")
    path.mkdir(parents=True, exist_ok=True)


def write_bundle(
    out_dir: Path, manifest_without_files: Manifest, files: Mapping[str, Path]
) -> Bundle:
    """Create a bundle in `out_dir` (must not exist or be empty): copy `files`
    (bundle-relative name -> source path; must include ``model.onnx``), compute
    their sha256, write the manifest atomically, then load and verify it.

    Raises ModelError (bad name, missing source, non-empty out_dir), ManifestError.
    """
    out = Path(out_dir)
    if MODEL not in files:
        raise ModelError(f"write_bundle: files must include {MODEL}")
    for name, source in files.items():
        try:
            check_relative_path(name)
        except ValueError as exc:
            raise ModelError(f"write_bundle: {exc}") from None
        if not Path(source).is_file():
            raise ModelError(f"write_bundle: source for {name} not found: {source}")
    _prepare_empty_dir(out, "bundle directory")
    digests: dict[str, str] = {}
    for name, source in sorted(files.items()):
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        with target.open("rb") as fh:
            os.fsync(fh.fileno())
        digests[name] = file_sha256(target)
    data = manifest_without_files.model_dump(mode="json")
    data["files"] = digests
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"manifest: {format_validation_error(exc)}") from None
    atomic_write_bytes(out / MANIFEST, manifest.to_json().encode("utf-8"))
    logger.info("wrote bundle %s v%d to %s", manifest.name, manifest.version, out)
    return load_bundle(out)


@contextmanager
def _tar_writer(fileobj: IO[bytes], gz: bool) -> Iterator[tarfile.TarFile]:
    if gz:
        # gzip header mtime 0 and no file name, so equal bundles give equal bytes.
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=fileobj, mtime=0) as zipped,
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            yield tar
    else:
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            yield tar


def pack_bundle(bundle_dir: Path, tar_path: Path) -> Path:
    """Verify the bundle in `bundle_dir` and pack it into one deterministic tar
    (gzip if the name ends in .gz/.tgz): members sorted, regular files only, mode 0644,
    mtime 0, uid/gid 0. Written atomically. Returns `tar_path`."""
    bundle = load_bundle(Path(bundle_dir))
    tar_path = Path(tar_path)
    gz = tar_path.name.endswith((".gz", ".tgz"))
    names = sorted([MANIFEST, *bundle.manifest.files])
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(tar_path) as raw, _tar_writer(raw, gz) as tar:
        for name in names:
            source = bundle.root / name
            info = tarfile.TarInfo(name)
            info.size = source.stat().st_size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with source.open("rb") as fh:
                tar.addfile(info, fh)
    return tar_path


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"unsupported member type {member.type!r}"


def _validate_members(
    tar: tarfile.TarFile, max_member_bytes: int, max_total_bytes: int
) -> list[tuple[str, tarfile.TarInfo]]:
    """All members checked before anything is written; returns (normalised name, info)."""
    seen: set[str] = set()
    total = 0
    checked: list[tuple[str, tarfile.TarInfo]] = []
    members = tar.getmembers()
    if len(members) > _MAX_MEMBERS:
        raise UnsafeArchiveError(f"archive has {len(members)} members (limit {_MAX_MEMBERS})")
    for member in members:
        raw = member.name
        name = raw[2:] if raw.startswith("./") else raw
        name = name.rstrip("/") if member.isdir() else name
        if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
            raise UnsafeArchiveError(f"archive member {raw!r}: absolute path")
        if ".." in raw.replace("\\", "/").split("/"):
            raise UnsafeArchiveError(f"archive member {raw!r}: path escapes with '..'")
        if not (member.isreg() or member.isdir()):
            raise UnsafeArchiveError(f"archive member {raw!r}: {_member_kind(member)}")
        if member.isdir() and name in {"", "."}:
            continue
        try:
            check_relative_path(name, allow_manifest=True)
        except ValueError as exc:
            raise UnsafeArchiveError(f"archive member {raw!r}: {exc}") from None
        if name in seen:
            raise UnsafeArchiveError(f"archive member {raw!r}: duplicate name")
        seen.add(name)
        if member.size > max_member_bytes:
            raise UnsafeArchiveError(
                f"archive member {raw!r}: {member.size} bytes exceeds the limit "
                f"{max_member_bytes} bytes"
            )
        total += member.size
        if total > max_total_bytes:
            raise UnsafeArchiveError(
                f"archive member {raw!r}: archive content exceeds {max_total_bytes} bytes"
            )
        checked.append((name, member))
    return checked


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if member.size > limit:
        raise ManifestError(f"archive member {member.name!r}: larger than {limit} bytes")
    fh = tar.extractfile(member)
    if fh is None:
        raise UnsafeArchiveError(f"archive member {member.name!r}: unreadable")
    with fh:
        data = fh.read(limit + 1)
    if len(data) != member.size:
        raise BundleIntegrityError(f"archive member {member.name!r}: truncated")
    return data


def _check_against_manifest(
    tar: tarfile.TarFile, members: list[tuple[str, tarfile.TarInfo]]
) -> None:
    """Parse the archive's manifest (``manifest.json`` at the top or in its one top-level
    folder) from memory and refuse any file it does not list, or a listed one that is
    missing, before anything is written."""
    files = {name: info for name, info in members if not info.isdir()}
    prefix = ""
    if MANIFEST not in files:
        tops = {name.split("/", 1)[0] for name in files}
        if len(tops) == 1 and f"{next(iter(tops))}/{MANIFEST}" in files:
            prefix = f"{next(iter(tops))}/"
        else:
            raise BundleIntegrityError(f"archive has no {MANIFEST} (not a model bundle)")
    text = _read_member(tar, files[prefix + MANIFEST], MAX_MANIFEST_BYTES)
    try:
        manifest = parse_manifest(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{MANIFEST}: not UTF-8 text") from None
    listed = {prefix + name for name in manifest.files} | {prefix + MANIFEST}
    for name, info in members:
        if info.isdir():
            if not any(item.startswith(name + "/") for item in listed):
                raise BundleIntegrityError(
                    f"archive member {info.name!r}: folder not in the manifest")
        elif name not in listed:
            raise BundleIntegrityError(
                f"archive member {info.name!r}: not listed in the manifest")
    for name in sorted(listed - set(files)):
        raise BundleIntegrityError(
            f"{name.removeprefix(prefix)}: listed in the manifest but missing from the archive")


def unpack_bundle(
    tar_path: Path,
    dest: Path,
    *,
    max_member_bytes: int = 512 * MiB,
    max_total_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
) -> Path:
    """Unpack a bundle tar (plain or gzip) into `dest` (must not exist or be empty).

    Every member is validated first; rejects absolute paths, ``..``, symlinks,
    hard links, devices and FIFOs, members over `max_member_bytes`, archives over
    `max_total_bytes` (bytes, uncompressed) and duplicate names with
    UnsafeArchiveError naming the member; then the manifest inside is parsed and a
    member it does not list (or a listed file the archive lacks) raises
    BundleIntegrityError (ManifestError for a bad manifest). A missing or unreadable
    archive raises BundleIntegrityError. Members are written into a temporary folder
    beside `dest`, renamed to `dest` at the end; on failure it is removed and nothing
    is left in `dest`. Returns `dest`.
    """
    source, dest = Path(tar_path), Path(dest)
    if not source.is_file():
        raise BundleIntegrityError(f"bundle archive not found: {source}")
    try:
        tar = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleIntegrityError(f"{source}: not a readable tar archive ({exc})") from None
    with tar:
        try:
            members = _validate_members(tar, max_member_bytes, max_total_bytes)
            _check_against_manifest(tar, members)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleIntegrityError(f"{source}: corrupt tar archive ({exc})") from None
        existed = dest.exists()
        _prepare_empty_dir(dest, "unpack destination")
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            _extract(tar, members, partial)
            dest.rmdir()  # empty (checked above); the finished folder takes its place
            os.replace(partial, dest)
        except (tarfile.TarError, OSError, EOFError, ModelError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if existed:
                dest.mkdir(exist_ok=True)
            else:
                with contextlib.suppress(OSError):  # made here: leave no empty folder
                    dest.rmdir()
            if isinstance(exc, ModelError):
                raise
            raise BundleIntegrityError(f"{source}: extraction failed ({exc})") from None
    return dest


def _empty_dir(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _extract(tar: tarfile.TarFile, members: list[tuple[str, tarfile.TarInfo]], dest: Path) -> None:
    root = dest.resolve()
    for name, member in members:
        target = (dest / name).resolve()
        if root not in target.parents:
            raise UnsafeArchiveError(f"archive member {member.name!r}: resolves outside {dest}")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        fh = tar.extractfile(member)
        if fh is None:
            raise UnsafeArchiveError(f"archive member {member.name!r}: unreadable")
        with fh, target.open("xb") as out:
            remaining = member.size
            while remaining > 0:
                chunk = fh.read(min(_CHUNK_BYTES, remaining))
                if not chunk:
                    raise BundleIntegrityError(f"archive member {member.name!r}: truncated")
                out.write(chunk)
                remaining -= len(chunk)

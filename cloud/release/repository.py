"""The TUF repository: a directory any static HTTP server (or CDN) can serve.

Layout (python-tuf's ngclient with consistent snapshots reads exactly this)::

    metadata/1.root.json, 2.root.json, ...   every root version, kept forever
    metadata/<N>.targets.json, <N>.bundles.json, <N>.deploy.json, <N>.snapshot.json
    metadata/timestamp.json                  the only unversioned file
    targets/bundles/<model>/<version>/<sha256>.<model>-<version>.tar
    targets/deploy/<site>/<sha256>.<line>.json

Roles: root, targets, snapshot, timestamp; targets delegates `bundles` (paths
`bundles/*/*/*`) and `deploy` (paths `deploy/*/*.json`), both terminating.

Invariants:
- A write publishes in this order: target files (content-addressed, so a new one never
  replaces an old one), then the new versioned role files, then the new
  `<N>.snapshot.json`, and `timestamp.json` last with one `os.replace`. Until that rename
  clients see the previous repository, whole and valid; a crash before it leaves only
  unreferenced files, which the next write overwrites.
- One writer at a time: every write holds an exclusive `flock` on `.lock` in the
  repository directory (the rollout controller and an engineer's CLI may both sign);
  `locked()` lets a caller hold it across a read and the write that depends on it.
- Every role version only moves forward; signed metadata is verified against its
  delegator before it is written (a missing signer fails before anything is written).
- Custom target fields are strings and integers only (canonical JSON has no floats).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import Key
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError, SerializationError

from cloud.release.config import RoleExpiry
from cloud.release.errors import ReleaseError, SigningError
from cloud.release.keys import SignerPool
from protocol.assignment import BUNDLE_TARGET_PATTERN, DEPLOY_TARGET_PATTERN
from protocol.atomic import atomic_path, atomic_write_bytes

logger = logging.getLogger(__name__)

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
DELEGATED_PATHS: Mapping[str, str] = {"bundles": BUNDLE_TARGET_PATTERN,
                                      "deploy": DEPLOY_TARGET_PATTERN}
ONLINE_ROLES = ("timestamp", "snapshot", "bundles", "deploy")
_ROOT_FILE = re.compile(r"^([1-9][0-9]*)\.root\.json$")
# A target path: relative, '/'-separated names of safe characters, no '.' or '..'.
_TARGET_PATH = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*/)*[A-Za-z0-9_][A-Za-z0-9._-]*$")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _custom_ok(value: object) -> bool:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return True
    if isinstance(value, list):
        return all(_custom_ok(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _custom_ok(v) for k, v in value.items())
    return False


@dataclass
class RepoState:
    root: Metadata[Root]
    targets: Metadata[Targets]
    bundles: Metadata[Targets]
    deploy: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]

    def delegated(self, role: str) -> Metadata[Targets]:
        md = {"targets": self.targets, "bundles": self.bundles, "deploy": self.deploy}[role]
        return md


@dataclass(frozen=True)
class RoleStatus:
    """One role's newest published metadata."""

    role: str
    version: int
    expires: datetime
    keyids: tuple[str, ...]
    threshold: int


class Repository:
    """See the module docstring. `signers` gives the keys a write needs; `clock` is the
    time new expiries count from (tests pass a fixed one)."""

    def __init__(self, root_dir: Path, signers: SignerPool, expiry: RoleExpiry,
                 *, clock: Clock = utc_now, refresh_when_left_fraction: float = 0.5) -> None:
        self.refresh_when_left_fraction = refresh_when_left_fraction
        self.root_dir = Path(root_dir)
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"
        self.signers = signers
        self.expiry = expiry
        self._clock = clock
        self._thread_lock = threading.RLock()
        self._depth = 0

    # ---- reading

    def now(self) -> datetime:
        return self._clock().astimezone(UTC).replace(microsecond=0)

    def expires_for(self, role: str) -> datetime:
        e = self.expiry
        lifetime = {
            "root": timedelta(days=e.root_days), "targets": timedelta(days=e.targets_days),
            "bundles": timedelta(days=e.bundles_days), "deploy": timedelta(days=e.deploy_days),
            "snapshot": timedelta(days=e.snapshot_days),
            "timestamp": timedelta(hours=e.timestamp_hours),
        }[role]
        return self.now() + lifetime

    def lifetime(self, role: str) -> timedelta:
        """How long a newly signed version of `role` stays valid."""
        return self.expires_for(role) - self.now()

    def _read(self, name: str) -> Metadata[Any]:
        path = self.metadata_dir / name
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as e:
            raise ReleaseError(f"{path} is missing: not a TUF repository "
                               "(run `lineguard cloud release init`)") from e
        except (OSError, DeserializationError) as e:
            raise ReleaseError(f"cannot read {path}: {e}") from e

    def root_versions(self) -> list[int]:
        """Every root version on disk, ascending."""
        try:
            names = [p.name for p in self.metadata_dir.iterdir()]
        except OSError as e:
            raise ReleaseError(f"cannot list {self.metadata_dir}: {e}") from e
        return sorted(int(m.group(1)) for n in names if (m := _ROOT_FILE.match(n)))

    def load_state(self) -> RepoState:
        versions = self.root_versions()
        if not versions:
            raise ReleaseError(f"{self.metadata_dir} holds no root metadata")
        timestamp: Metadata[Timestamp] = self._read("timestamp.json")
        snap_version = timestamp.signed.snapshot_meta.version
        snapshot: Metadata[Snapshot] = self._read(f"{snap_version}.snapshot.json")
        meta = snapshot.signed.meta

        def role(name: str) -> Metadata[Targets]:
            return self._read(f"{meta[f'{name}.json'].version}.{name}.json")

        return RepoState(root=self._read(f"{versions[-1]}.root.json"), targets=role("targets"),
                      bundles=role("bundles"), deploy=role("deploy"), snapshot=snapshot,
                      timestamp=timestamp)

    def trusted_root(self) -> bytes:
        """The bytes of `1.root.json`: what a client is provisioned with (`bootstrap=`)."""
        try:
            return (self.metadata_dir / "1.root.json").read_bytes()
        except OSError as e:
            raise ReleaseError(f"cannot read {self.metadata_dir / '1.root.json'}: {e}") from e

    def status(self) -> list[RoleStatus]:
        """Every role's newest version, expiry and keys."""
        state = self.load_state()
        out = []
        for name in TOP_ROLES:
            md: Metadata[Any] = getattr(state, name)
            role = state.root.signed.roles[name]
            out.append(RoleStatus(name, md.signed.version, md.signed.expires,
                                  tuple(role.keyids), role.threshold))
        for name in DELEGATED_PATHS:
            delegated = self._delegated_role(state, name)
            md = state.delegated(name)
            out.append(RoleStatus(name, md.signed.version, md.signed.expires,
                                  tuple(delegated.keyids), delegated.threshold))
        return out

    def public_key(self, keyid: str) -> Key:
        """The public key `keyid` as root or targets lists it. Raises ReleaseError."""
        state = self.load_state()
        delegations = state.targets.signed.delegations
        keys = {**(delegations.keys if delegations else {}), **state.root.signed.keys}
        if keyid not in keys:
            raise ReleaseError(f"no key {keyid} in root or targets")
        return keys[keyid]

    def targets_of(self, role: str) -> dict[str, TargetFile]:
        """The targets `bundles` or `deploy` signs now, by path."""
        if role not in DELEGATED_PATHS:
            raise ReleaseError(f"unknown delegated role {role!r}")
        return dict(self.load_state().delegated(role).signed.targets)

    def target_file(self, info: TargetFile) -> Path:
        """Where a signed target's bytes sit (hash-prefixed name)."""
        return self._target_path(info.path, info.hashes["sha256"])

    def _target_path(self, target_path: str, sha256: str) -> Path:
        directory, _, name = target_path.rpartition("/")
        return self.targets_dir / directory / f"{sha256}.{name}"

    @staticmethod
    def _delegated_role(state: RepoState, role: str) -> DelegatedRole:
        delegations = state.targets.signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise ReleaseError(f"targets delegates no role {role!r}")
        return delegations.roles[role]

    # ---- signing

    def _role_keys(self, state: RepoState, role: str) -> tuple[list[Key], int]:
        if role in TOP_ROLES:
            r: Role = state.root.signed.roles[role]
            keys = state.root.signed.keys
        else:
            r = self._delegated_role(state, role)
            delegations = state.targets.signed.delegations
            assert delegations is not None
            keys = delegations.keys
        return [keys[k] for k in r.keyids], r.threshold

    def sign_role(self, md: Metadata[Any], role: str, state: RepoState,
              extra_keys: tuple[Key, ...] = ()) -> None:
        """Sign with every available key of `role` (and `extra_keys`, e.g. a key being
        rotated out, so that clients on the old root still accept it). Raises
        SigningError unless the role's threshold is met."""
        keys, threshold = self._role_keys(state, role)
        md.signatures.clear()
        signed = 0
        for key in keys:
            if not self.signers.has(key.keyid):
                continue
            self._sign_with(md, key, role)
            signed += 1
        for key in extra_keys:
            if self.signers.has(key.keyid) and key.keyid not in md.signatures:
                self._sign_with(md, key, role)
        if signed < threshold:
            raise SigningError(
                f"cannot sign {role}: signers for {signed} of its keys, threshold "
                f"{threshold} (keys {', '.join(k.keyid[:16] for k in keys)}); add them to "
                "release.signers or the signers file")

    def _sign_with(self, md: Metadata[Any], key: Key, role: str) -> None:
        signer = self.signers.get(key, role)
        try:
            md.sign(signer, append=True)
        except UnsignedMetadataError as e:
            raise SigningError(f"signing {role} with key {key.keyid[:16]} failed: {e}") from e

    def sign_root(self, md: Metadata[Root], trusting: list[Root]) -> None:
        """Sign a root with every available key of itself and of the roots it must
        satisfy; check each one's threshold. Raises SigningError."""
        md.signatures.clear()
        needed: dict[str, Key] = {}
        for root in [md.signed, *trusting]:
            for keyid in root.roles["root"].keyids:
                needed[keyid] = root.keys[keyid]
        for key in needed.values():
            if self.signers.has(key.keyid):
                self._sign_with(md, key, "root")
        for root in [md.signed, *trusting]:
            result = root.get_verification_result("root", md.signed_bytes, md.signatures)
            if not result.verified:
                raise SigningError(
                    f"cannot sign root version {md.signed.version}: it needs "
                    f"{result.threshold} signature(s) of root version {root.version}'s keys "
                    f"and has {len(result.signed)}; add their signers")

    # ---- writing

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository's write lock (re-entrant within this object): a caller
        that reads the repository and then writes based on what it read (the next
        assignment sequence) holds it across both. Raises ReleaseError."""
        with self._thread_lock:
            if self._depth > 0:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            lock_path = self.root_dir / ".lock"
            try:
                fh = lock_path.open("a")
            except OSError as e:
                raise ReleaseError(f"cannot open the lock file {lock_path}: {e}") from e
            with fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _write_meta(self, name: str, data: bytes) -> None:
        """Write one metadata file atomically (the seam a crash test breaks)."""
        try:
            atomic_write_bytes(self.metadata_dir / name, data)
        except OSError as e:
            raise ReleaseError(f"cannot write {self.metadata_dir / name}: {e}") from e

    def write_versioned(self, md: Metadata[Any], role: str) -> bytes:
        try:
            data = md.to_bytes()
        except SerializationError as e:
            raise ReleaseError(f"cannot serialise {role}: {e}") from e
        self._write_meta(f"{md.signed.version}.{role}.json", data)
        return data

    def write_timestamp(self, state: RepoState, snapshot_bytes: bytes, *, bump: bool = True,
                         extra_keys: tuple[Key, ...] = ()) -> None:
        ts = state.timestamp.signed
        if bump:
            ts.version += 1
        ts.expires = self.expires_for("timestamp")
        ts.snapshot_meta = MetaFile(
            state.snapshot.signed.version, length=len(snapshot_bytes),
            hashes={"sha256": hashlib.sha256(snapshot_bytes).hexdigest()})
        self.sign_role(state.timestamp, "timestamp", state, extra_keys)
        self._write_meta("timestamp.json", state.timestamp.to_bytes())

    def publish_state(self, state: RepoState, changed: set[str],
                 extra_keys: Mapping[str, tuple[Key, ...]] | None = None) -> None:
        """Bump, sign and write each changed targets role, then snapshot, then timestamp
        (see the invariants). Every versioned file is signed before the first write."""
        extra = extra_keys or {}
        snap = state.snapshot.signed
        to_write: list[tuple[Metadata[Any], str]] = []
        for role in ("targets", "bundles", "deploy"):
            if role not in changed:
                continue
            md = state.delegated(role)
            md.signed.version += 1
            md.signed.expires = self.expires_for(role)
            self.sign_role(md, role, state, extra.get(role, ()))
            snap.meta[f"{role}.json"] = MetaFile(md.signed.version)
            to_write.append((md, role))
        snap.version += 1
        snap.expires = self.expires_for("snapshot")
        self.sign_role(state.snapshot, "snapshot", state, extra.get("snapshot", ()))
        for md, role in to_write:
            self.write_versioned(md, role)
        snapshot_bytes = self.write_versioned(state.snapshot, "snapshot")
        self.write_timestamp(state, snapshot_bytes, extra_keys=extra.get("timestamp", ()))

    def store_target(self, target_path: str, source: Path | bytes) -> TargetFile:
        if not _TARGET_PATH.match(target_path):
            raise ReleaseError(f"not a safe target path: {target_path!r}")
        try:
            if isinstance(source, bytes):
                info = TargetFile.from_data(target_path, source, ["sha256"])
            else:
                info = TargetFile.from_file(target_path, str(source), ["sha256"])
            dest = self._target_path(target_path, info.hashes["sha256"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                with atomic_path(dest) as tmp:
                    if isinstance(source, bytes):
                        tmp.write_bytes(source)
                    else:
                        shutil.copyfile(source, tmp)
        except OSError as e:
            raise ReleaseError(f"cannot store target {target_path}: {e}") from e
        return info

    def add_target(self, role: str, target_path: str, source: Path | bytes,
                   custom: Mapping[str, object] | None = None) -> TargetFile:
        """Sign `source` (a file or bytes) as `target_path` by `role` (`bundles` or
        `deploy`) and publish: the role, snapshot and timestamp get new versions.
        Raises ReleaseError (bad path for the role, floats in `custom`, IO),
        SigningError."""
        if role not in DELEGATED_PATHS:
            raise ReleaseError(f"targets are signed by bundles or deploy, not {role!r}")
        if not _TARGET_PATH.match(target_path):
            raise ReleaseError(f"not a safe target path: {target_path!r}")
        if custom is not None and not _custom_ok(dict(custom)):
            raise ReleaseError("custom target fields must be strings, integers, booleans, "
                               "lists or objects of those: canonical JSON has no floats")
        with self.locked():
            state = self.load_state()
            if not self._delegated_role(state, role).is_delegated_path(target_path):
                raise ReleaseError(f"{target_path} is outside the {role} role's paths "
                                   f"({DELEGATED_PATHS[role]})")
            info = self.store_target(target_path, source)
            if custom is not None:
                info.unrecognized_fields["custom"] = dict(custom)
            state.delegated(role).signed.targets[target_path] = info
            self.publish_state(state, {role})
        logger.info("published %s (%d bytes, sha256 %s) signed by %s", target_path,
                    info.length, info.hashes["sha256"][:16], role)
        return info

    def refresh(self, *, force: bool = False) -> list[str]:
        """Re-sign the online roles (timestamp, snapshot, bundles, deploy) that have less
        than `refresh_when_left_fraction` of their lifetime left (all with `force`).
        Returns the roles re-signed; logs a warning for root or targets close to expiry
        (they are signed offline). Raises ReleaseError, SigningError."""
        with self.locked():
            state = self.load_state()
            now = self.now()
            due = {role for role in ONLINE_ROLES
                   if force or self._due(getattr(state, role).signed.expires, now, role)}
            for role in ("root", "targets"):
                md: Metadata[Any] = getattr(state, role)
                if self._due(md.signed.expires, now, role):
                    logger.warning("the %s metadata expires at %s: sign a new version "
                                   "offline (docs/releases.md)", role,
                                   md.signed.expires.isoformat())
            if not due:
                return []
            self.publish_state(state, due & {"bundles", "deploy"})
        return sorted(due | {"snapshot", "timestamp"})

    def _due(self, expires: datetime, now: datetime, role: str) -> bool:
        left = (expires - now).total_seconds()
        return left < self.lifetime(role).total_seconds() * self.refresh_when_left_fraction

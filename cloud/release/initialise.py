"""`lineguard cloud release init DIR`: new keys and the first version of every role."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud.release.config import RoleExpiry
from cloud.release.keys import (
    NewKey,
    SignerPool,
    generate_key,
    key_on_disk_warning,
    write_signers_file,
)
from cloud.release.repository import DELEGATED_PATHS, TOP_ROLES, Clock, Repository, utc_now


@dataclass(frozen=True)
class InitResult:
    repository: Repository
    keys: tuple[NewKey, ...]
    signers_file: Path
    warnings: tuple[str, ...]


def init_repository(repo_dir: Path, keys_dir: Path, expiry: RoleExpiry,
                    *, clock: Clock = utc_now) -> InitResult:
    """Generate one ed25519 key per role into `keys_dir` (with `signers.json`, key id ->
    `file2:` URI) and write version 1 of every role into `repo_dir`. Returns a loud
    warning for every private key on disk, for the caller to show. Raises ReleaseError
    (the repository exists, IO)."""
    keys = tuple(generate_key(role, keys_dir) for role in (*TOP_ROLES, *DELEGATED_PATHS))
    signers = {k.key.keyid: k.uri for k in keys}
    signers_file = keys_dir / "signers.json"
    write_signers_file(signers_file, signers)
    pool = SignerPool(signers, warn_offline_on_disk=False)  # init warns once, below
    repo = Repository.create(repo_dir, {k.role: k.key for k in keys}, pool, expiry,
                             clock=clock)
    warnings = tuple(key_on_disk_warning(k.role, k.path) for k in keys)
    return InitResult(repo, keys, signers_file, warnings)

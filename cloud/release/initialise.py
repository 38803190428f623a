"""`lineguard cloud release init DIR`: new keys and the first version of every role."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from securesystemslib.signer import Key
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

from cloud.release.config import RoleExpiry
from cloud.release.errors import ReleaseError
from cloud.release.keys import (
    NewKey,
    SignerPool,
    generate_key,
    key_on_disk_warning,
    write_signers_file,
)
from cloud.release.repository import (
    DELEGATED_PATHS,
    TOP_ROLES,
    Clock,
    Repository,
    RepoState,
    utc_now,
)


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
    repo = create_repository(repo_dir, {k.role: k.key for k in keys}, pool, expiry,
                             clock=clock)
    warnings = tuple(key_on_disk_warning(k.role, k.path) for k in keys)
    return InitResult(repo, keys, signers_file, warnings)


def create_repository(root_dir: Path, role_keys: Mapping[str, Key], signers: SignerPool,
                      expiry: RoleExpiry, *, clock: Clock = utc_now) -> Repository:
    """Write the first version of every role into an empty `root_dir` (one key per
    role, threshold 1, consistent snapshots). Raises ReleaseError."""
    missing = [r for r in (*TOP_ROLES, *DELEGATED_PATHS) if r not in role_keys]
    if missing:
        raise ReleaseError(f"no key for role(s) {', '.join(missing)}")
    root_dir = Path(root_dir)
    if (root_dir / "metadata").exists() and any((root_dir / "metadata").iterdir()):
        raise ReleaseError(f"{root_dir} already holds a TUF repository")
    repo = Repository(root_dir, signers, expiry, clock=clock)
    now = repo.now()
    root = Root(expires=now + timedelta(days=expiry.root_days), consistent_snapshot=True)
    for role in TOP_ROLES:
        root.add_key(role_keys[role], role)
    targets = Targets(expires=now + timedelta(days=expiry.targets_days))
    targets.delegations = Delegations(keys={}, roles={})
    for role, pattern in DELEGATED_PATHS.items():
        assert targets.delegations.roles is not None
        targets.delegations.roles[role] = DelegatedRole(
            role, [], 1, terminating=True, paths=[pattern])
        targets.add_key(role_keys[role], role)
    state = RepoState(
        root=Metadata(root), targets=Metadata(targets),
        bundles=Metadata(Targets(expires=now + timedelta(days=expiry.bundles_days))),
        deploy=Metadata(Targets(expires=now + timedelta(days=expiry.deploy_days))),
        snapshot=Metadata(Snapshot(expires=now)),
        timestamp=Metadata(Timestamp(expires=now)),
    )
    try:
        repo.metadata_dir.mkdir(parents=True, exist_ok=True)
        repo.targets_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReleaseError(f"cannot create {root_dir}: {e}") from e
    with repo.locked():
        repo.sign_root(state.root, [state.root.signed])
        # Version 1 of every targets role; snapshot and timestamp get version 1 too.
        for role in ("targets", "bundles", "deploy"):
            md = state.delegated(role)
            repo.sign_role(md, role, state)
            state.snapshot.signed.meta[f"{role}.json"] = MetaFile(md.signed.version)
        repo.write_versioned(state.root, "root")
        for role in ("targets", "bundles", "deploy"):
            repo.write_versioned(state.delegated(role), role)
        state.snapshot.signed.expires = repo.expires_for("snapshot")
        repo.sign_role(state.snapshot, "snapshot", state)
        snapshot_bytes = repo.write_versioned(state.snapshot, "snapshot")
        repo.write_timestamp(state, snapshot_bytes, bump=False)
    return repo

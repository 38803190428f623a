"""Key rotation: `lineguard cloud release rotate-root --revoke KEYID` for top-level
roles, `release rotate-key ROLE` for the delegated roles (`bundles`, `deploy`).

A new root version replaces each revoked key by a newly generated one in every top-level
role that listed it. The new root is signed by a threshold of the old root's keys and of
its own (so a client holding root N follows to N+1), then the roles whose keys changed
get new versions signed by the new keys (and by the old one too when it is still at
hand, so a client that has not fetched the new root yet keeps accepting them) and the
new root is written last. After that a client refuses anything the revoked key signs.

A delegated role's keys are listed by targets: rotating one signs a new targets version
(with the offline targets key) naming the new key, and a new version of the role.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import Key
from tuf.api.metadata import Metadata, Root

from cloud.release.errors import ReleaseError
from cloud.release.keys import NewKey, generate_key, read_signers_file, write_signers_file
from cloud.release.repository import DELEGATED_PATHS, TOP_ROLES, Repository

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RotationResult:
    # The new version of root (rotate_root) or of targets (rotate_delegated_key).
    version: int
    revoked: tuple[str, ...]
    new_keys: tuple[NewKey, ...]


def rotate_root(repo: Repository, revoke: Sequence[str], keys_dir: Path,
                signers_file: Path | None = None) -> RotationResult:
    """Replace the keys `revoke` (key ids, or unique prefixes of at least 8 hex digits)
    in root by new ed25519 keys written to `keys_dir`, and publish root N+1. The new
    keys' signers are added to `repo.signers` and to `signers_file` if given (the
    revoked ones are removed from it). Raises ReleaseError, SigningError."""
    if not revoke:
        raise ReleaseError("name at least one key to revoke (--revoke KEYID)")
    new_keys: list[NewKey] = []
    with repo.locked():
        state = repo.load_state()
        old_root: Root = copy.deepcopy(state.root.signed)
        new_root: Root = copy.deepcopy(old_root)
        new_root.version += 1
        new_root.expires = repo.expires_for("root")
        old_keys: dict[str, tuple[Key, ...]] = {}
        revoked: list[str] = []
        for wanted in revoke:
            keyid = _resolve(old_root, wanted)
            revoked.append(keyid)
            roles = [r for r in TOP_ROLES if keyid in new_root.roles[r].keyids]
            for role in roles:
                fresh = generate_key(role, keys_dir)
                repo.signers.add(fresh.key.keyid, fresh.uri)
                new_root.revoke_key(keyid, role)
                new_root.add_key(fresh.key, role)
                old_keys[role] = (*old_keys.get(role, ()), old_root.keys[keyid])
                new_keys.append(fresh)
        state.root = Metadata(new_root)
        repo.sign_root(state.root, [old_root])
        changed = set(old_keys) - {"root"}
        if changed:
            repo.publish_state(state, changed & {"targets"}, extra_keys=old_keys)
        repo.write_versioned(state.root, "root")
        if signers_file is not None:
            uris = read_signers_file(signers_file)
            uris.update({k.key.keyid: k.uri for k in new_keys})
            write_signers_file(signers_file, {
                k: v for k, v in uris.items() if k not in revoked})
    logger.info("root version %d published; revoked %s", new_root.version,
                ", ".join(k[:16] for k in revoked))
    return RotationResult(new_root.version, tuple(revoked), tuple(new_keys))


def _resolve(root: Root, wanted: str) -> str:
    if len(wanted) < 8:
        raise ReleaseError(f"key id {wanted!r}: give at least 8 hex digits")
    matches = [k for k in root.keys if k.startswith(wanted.lower())]
    if len(matches) != 1:
        raise ReleaseError(f"key id {wanted!r} matches {len(matches)} keys of root version "
                           f"{root.version} (known: {', '.join(k[:16] for k in root.keys)})")
    return matches[0]


def rotate_delegated_key(repo: Repository, role: str, keys_dir: Path,
                         signers_file: Path | None = None) -> RotationResult:
    """Replace every key of the delegated role `role` (`bundles` or `deploy`) by one new
    ed25519 key: targets (signed with the offline targets key, which must be at hand)
    and the role get new versions. Returns the targets version. Raises ReleaseError,
    SigningError."""
    if role not in DELEGATED_PATHS:
        raise ReleaseError(f"{role!r} is not a delegated role ({', '.join(DELEGATED_PATHS)})")
    with repo.locked():
        state = repo.load_state()
        delegations = state.targets.signed.delegations
        if delegations is None or delegations.roles is None or role not in delegations.roles:
            raise ReleaseError(f"targets delegates no role {role!r}")
        revoked = tuple(delegations.roles[role].keyids)
        fresh = generate_key(role, keys_dir)
        repo.signers.add(fresh.key.keyid, fresh.uri)
        for keyid in revoked:
            state.targets.signed.revoke_key(keyid, role)
        state.targets.signed.add_key(fresh.key, role)
        repo.publish_state(state, {"targets", role})
        if signers_file is not None:
            uris = read_signers_file(signers_file)
            uris[fresh.key.keyid] = fresh.uri
            write_signers_file(signers_file, {k: v for k, v in uris.items() if k not in revoked})
    logger.info("%s key rotated (targets version %d); revoked %s", role,
                state.targets.signed.version, ", ".join(k[:16] for k in revoked))
    return RotationResult(state.targets.signed.version, revoked, (fresh,))

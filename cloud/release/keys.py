"""Signing keys: made by `release init` / `rotate-root`, used through securesystemslib's
`Signer` interface so that a KMS or HSM signer replaces a key file by configuration.

A key is named by its TUF key id; which role it signs for is what root (top-level roles)
and targets (delegated roles `bundles`, `deploy`) say. The signers map gives each key id
a private key URI; `file2:<path>` is a PEM key on disk, anything else goes to whatever
`securesystemslib.signer.SIGNER_FOR_URI_SCHEME` knows (gcpkms, awskms, azurekms, hsm...).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Key, Signer

from cloud.release.errors import ReleaseError, SigningError
from protocol.atomic import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

# Roles whose keys should never sit on an online machine.
OFFLINE_ROLES = ("root", "targets")


@dataclass(frozen=True)
class NewKey:
    """A key just generated into a file."""

    role: str
    key: Key
    path: Path

    @property
    def uri(self) -> str:
        return f"file2:{self.path.resolve()}"


def key_on_disk_warning(role: str, path: Path) -> str:
    """The loud warning for a private key that sits on disk."""
    advice = (" Move it offline (an air-gapped machine, a hardware token or a KMS) and keep "
              "only its public key here; see docs/releases.md." if role in OFFLINE_ROLES
              else " Anyone who can read this file can sign for the role; restrict it "
              "(mode 0600, one service account) or use a KMS/HSM signer.")
    return f"WARNING: the private {role} key is on disk at {path}.{advice}"


def generate_key(role: str, keys_dir: Path) -> NewKey:
    """A new ed25519 key for `role`, written to `keys_dir/<role>-<keyid[:16]>.pem`
    (PKCS#8 PEM, mode 0600). Raises ReleaseError."""
    signer = CryptoSigner.generate_ed25519()
    key = signer.public_key
    path = keys_dir / f"{role}-{key.keyid[:16]}.pem"
    try:
        keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(keys_dir, 0o700)
        atomic_write_bytes(path, signer.private_bytes)
        os.chmod(path, 0o600)
    except OSError as e:
        raise ReleaseError(f"cannot write the {role} key to {path}: {e}") from e
    return NewKey(role=role, key=key, path=path)


def read_signers_file(path: Path) -> dict[str, str]:
    """The key id -> URI map of a signers file (missing file: empty). Raises ReleaseError."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ReleaseError(f"cannot read the signers file {path}: {e}") from e
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ReleaseError(f"{path}: expected a JSON object of key id -> private key URI")
    return dict(data)


def write_signers_file(path: Path, signers: Mapping[str, str]) -> None:
    """Replace the signers file atomically (mode 0600). Raises ReleaseError."""
    try:
        atomic_write_text(path, json.dumps(dict(sorted(signers.items())), indent=2) + "\n")
        os.chmod(path, 0o600)
    except OSError as e:
        raise ReleaseError(f"cannot write the signers file {path}: {e}") from e


class SignerPool:
    """Loads a signer for a key on first use (only the keys a command needs)."""

    def __init__(self, uris: Mapping[str, str], *, warn_offline_on_disk: bool = True) -> None:
        self._warn = warn_offline_on_disk
        self._uris = dict(uris)
        self._loaded: dict[str, Signer] = {}

    def has(self, keyid: str) -> bool:
        return keyid in self._uris

    def add(self, keyid: str, uri: str) -> None:
        self._uris[keyid] = uri

    def get(self, key: Key, role: str) -> Signer:
        """The signer for `key`. Raises SigningError (no URI for it, or it cannot load)."""
        if key.keyid in self._loaded:
            return self._loaded[key.keyid]
        uri = self._uris.get(key.keyid)
        if uri is None:
            raise SigningError(f"no signer configured for {role} key {key.keyid}")
        if self._warn and uri.startswith(f"{CryptoSigner.SCHEME}:") and role in OFFLINE_ROLES:
            logger.warning("%s", key_on_disk_warning(role, Path(uri.split(":", 1)[1])))
        # Any backend (file, KMS, HSM) may fail in its own way: translate at this seam.
        try:
            signer = Signer.from_priv_key_uri(uri, key)
        except Exception as e:
            raise SigningError(f"cannot load the signer for {role} key {key.keyid} "
                               f"({uri.split(':', 1)[0]}): {e}") from e
        self._loaded[key.keyid] = signer
        return signer

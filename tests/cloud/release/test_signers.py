"""A KMS or HSM signer replaces a key file by configuration: any securesystemslib signer
registered for a URI scheme signs through the same `signers` mapping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from securesystemslib.signer import (
    SIGNER_FOR_URI_SCHEME,
    CryptoSigner,
    Key,
    SecretsHandler,
    Signature,
    Signer,
)

from cloud.release.config import ReleaseConfig
from cloud.release.errors import SigningError
from cloud.release.keys import read_signers_file
from cloud.release.open import open_repository
from tests.cloud.release.tuf_helpers import Line, new_repository, serve_directory


class VaultSigner(Signer):
    """Stands in for a KMS: the private key never appears in the configuration, only
    `vault:<name>`; this one keeps it in memory and counts what it signs."""

    SCHEME = "vault"
    keys: ClassVar[dict[str, CryptoSigner]] = {}
    signed: ClassVar[list[str]] = []

    def __init__(self, name: str, public_key: Key) -> None:
        self._name = name
        self._public_key = public_key

    @classmethod
    def from_priv_key_uri(cls, priv_key_uri: str, public_key: Key,
                          secrets_handler: SecretsHandler | None = None) -> VaultSigner:
        name = priv_key_uri.split(":", 1)[1]
        if name not in cls.keys:
            raise ValueError(f"the vault has no key {name}")
        return cls(name, public_key)

    @property
    def public_key(self) -> Key:
        return self._public_key

    def sign(self, payload: bytes) -> Signature:
        self.signed.append(self._name)
        return self.keys[self._name].sign(payload)


@pytest.fixture
def vault() -> Iterator[type[VaultSigner]]:
    SIGNER_FOR_URI_SCHEME[VaultSigner.SCHEME] = VaultSigner
    yield VaultSigner
    del SIGNER_FOR_URI_SCHEME[VaultSigner.SCHEME]
    VaultSigner.keys.clear()
    VaultSigner.signed.clear()


def test_deploy_key_in_a_vault(vault: type[VaultSigner], tmp_path: Path) -> None:
    repo, keys_dir = new_repository(tmp_path)
    deploy_keyid = next(s for s in repo.status() if s.role == "deploy").keyids[0]
    # Move the deploy key into the "vault" and out of the signers file.
    pem = next(keys_dir.glob(f"deploy-{deploy_keyid[:16]}.pem"))
    signers = read_signers_file(keys_dir / "signers.json")
    vault.keys["deploy-1"] = CryptoSigner.from_priv_key_uri(
        signers.pop(deploy_keyid), repo.public_key(deploy_keyid))
    pem.unlink()
    cfg = ReleaseConfig(repository_dir=repo.root_dir,
                        signers={**signers, deploy_keyid: "vault:deploy-1"})
    configured = open_repository(cfg)
    configured.add_target("deploy", "deploy/plant1/line-1.json", b'{"sequence": 1}',
                          {"sequence": 1})
    assert vault.signed == ["deploy-1"]
    with serve_directory(repo.root_dir) as url:
        line = Line(url, tmp_path / "line", repo.trusted_root())
        assert line.fetch("deploy/plant1/line-1.json") == b'{"sequence": 1}'
    wrong = ReleaseConfig(repository_dir=repo.root_dir,
                          signers={**signers, deploy_keyid: "vault:missing"})
    with pytest.raises(SigningError, match="the vault has no key missing"):
        open_repository(wrong).add_target("deploy", "deploy/plant1/line-1.json", b"{}")

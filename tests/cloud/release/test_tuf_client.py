"""The repository as a line sees it: real files over HTTP on 127.0.0.1, python-tuf's
ngclient with a new Updater per check. Each attack is refused in its own test."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, Timestamp

from cloud.release.config import RoleExpiry
from cloud.release.errors import ReleaseError, SigningError
from cloud.release.keys import SignerPool
from cloud.release.repository import Repository
from cloud.release.rotation import rotate_delegated_key, rotate_root
from tests.cloud.release.tuf_helpers import Line, new_repository, reopen, serve_directory

BUNDLE = "bundles/demo/1/demo-1.tar"
DEPLOY = "deploy/plant1/line-1.json"


def _assignment(sequence: int, version: int = 1) -> bytes:
    return json.dumps({"sequence": sequence, "model": "demo", "version": version}).encode()


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    repo, _ = new_repository(tmp_path)
    repo.add_target("bundles", BUNDLE, b"bundle bytes " * 1000, {"model": "demo", "version": 1})
    repo.add_target("deploy", DEPLOY, _assignment(1), {"sequence": 1})
    return repo


@pytest.fixture
def line(repo: Repository, tmp_path: Path) -> Line:
    return Line("", tmp_path / "line", repo.trusted_root())


def test_bundle_and_assignment_verify_and_download(repo: Repository, line: Line) -> None:
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        assert json.loads(line.fetch(DEPLOY))["sequence"] == 1
        assert line.fetch(BUNDLE) == b"bundle bytes " * 1000
        # A later assignment arrives on the next check (a new Updater).
        repo.add_target("deploy", DEPLOY, _assignment(2), {"sequence": 2})
        assert json.loads(line.fetch(DEPLOY))["sequence"] == 2


def test_tampered_bundle_is_refused(repo: Repository, line: Line) -> None:
    path = repo.target_file(repo.targets_of("bundles")[BUNDLE])
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF  # same length, other bytes
    path.write_bytes(bytes(data))
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        with pytest.raises(LengthOrHashMismatchError):
            line.fetch(BUNDLE)


def test_tampered_assignment_is_refused(repo: Repository, line: Line) -> None:
    path = repo.target_file(repo.targets_of("deploy")[DEPLOY])
    path.write_bytes(path.read_bytes().replace(b'"version": 1', b'"version": 7'))
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        with pytest.raises(LengthOrHashMismatchError):
            line.fetch(DEPLOY)


def test_replayed_old_assignment_is_refused(repo: Repository, line: Line) -> None:
    old_timestamp = (repo.metadata_dir / "timestamp.json").read_bytes()
    repo.add_target("deploy", DEPLOY, _assignment(2, version=2), {"sequence": 2})
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        assert json.loads(line.fetch(DEPLOY))["version"] == 2
        # An attacker (or a stale mirror) serves the older, validly signed repository.
        (repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)
        with pytest.raises(BadVersionNumberError):
            line.fetch(DEPLOY)


def test_expired_timestamp_is_refused(repo: Repository, line: Line, tmp_path: Path) -> None:
    # The repository's own signer, but a clock two days back: a frozen (stale) timestamp.
    past = Repository(repo.root_dir, repo.signers, RoleExpiry(timestamp_hours=24),
                      clock=lambda: datetime.now(UTC) - timedelta(days=2))
    past.refresh(force=True)
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        with pytest.raises(ExpiredMetadataError):
            line.fetch(DEPLOY)


def test_root_rotation_is_followed_and_the_revoked_key_refused(
        repo: Repository, line: Line, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    old_keyid = next(s for s in repo.status() if s.role == "timestamp").keyids[0]
    old_pem = next(keys_dir.glob(f"timestamp-{old_keyid[:16]}.pem"))
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        line.fetch(DEPLOY)
        result = rotate_root(repo, [old_keyid[:12]], keys_dir, keys_dir / "signers.json")
        assert result.version == 2 and result.revoked == (old_keyid,)
        # The line still holds root 1 and follows to root 2 on its next check.
        assert json.loads(line.fetch(DEPLOY))["sequence"] == 1
        trusted = Metadata.from_file(str(line.home / "metadata" / "root.json"))
        assert trusted.signed.version == 2
        assert old_keyid not in trusted.signed.roles["timestamp"].keyids
        # Whoever still holds the revoked key signs a newer timestamp: refused.
        md: Metadata[Timestamp] = Metadata.from_file(str(repo.metadata_dir / "timestamp.json"))
        md.signed.version += 1
        key = trusted.signed.keys.get(old_keyid) or Metadata.from_bytes(
            repo.trusted_root()).signed.keys[old_keyid]
        md.sign(Signer.from_priv_key_uri(f"file2:{old_pem}", key))
        (repo.metadata_dir / "timestamp.json").write_bytes(md.to_bytes())
        with pytest.raises(UnsignedMetadataError):
            line.fetch(DEPLOY)
    # The repository keeps working with the new key (from the updated signers file).
    reopen(repo, keys_dir).refresh(force=True)


def test_a_new_line_bootstrapped_with_root_1_follows_every_rotation(
        repo: Repository, line: Line, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    for role in ("root", "snapshot"):
        keyid = next(s for s in reopen(repo, keys_dir).status() if s.role == role).keyids[0]
        rotate_root(reopen(repo, keys_dir), [keyid], keys_dir, keys_dir / "signers.json")
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        assert json.loads(line.fetch(DEPLOY))["sequence"] == 1
    trusted = Metadata.from_file(str(line.home / "metadata" / "root.json"))
    assert trusted.signed.version == 3


def test_bundle_listed_by_deploy_but_not_by_bundles_is_refused(
        repo: Repository, line: Line) -> None:
    # The deploy key's holder signs a bundle of its own: `bundles` alone may list them.
    rogue = "bundles/demo/9/demo-9.tar"
    with repo.locked():
        state = repo.load_state()
        info = repo.store_target(rogue, b"rogue model")
        state.deploy.signed.targets[rogue] = info
        repo.publish_state(state, {"deploy"})
    assert repo.target_file(info).exists()
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        with pytest.raises(LookupError):
            line.fetch(rogue)


def test_target_longer_than_signed_is_refused(repo: Repository, line: Line) -> None:
    path = repo.target_file(repo.targets_of("bundles")[BUNDLE])
    with path.open("ab") as fh:
        fh.write(b"\0" * 100_000)  # endless data, cut short
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        with pytest.raises(DownloadLengthMismatchError):
            line.fetch(BUNDLE)


def test_crash_before_the_timestamp_leaves_the_previous_repository(
        repo: Repository, line: Line, monkeypatch: pytest.MonkeyPatch) -> None:
    write = Repository._write_meta

    def crash_at_timestamp(self: Repository, name: str, data: bytes) -> None:
        if name == "timestamp.json":
            raise ReleaseError("simulated crash before the timestamp")
        write(self, name, data)

    monkeypatch.setattr(Repository, "_write_meta", crash_at_timestamp)
    with pytest.raises(ReleaseError, match="simulated crash"):
        repo.add_target("deploy", DEPLOY, _assignment(2, version=2), {"sequence": 2})
    monkeypatch.undo()
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        assert json.loads(line.fetch(DEPLOY))["sequence"] == 1
        repo.add_target("deploy", DEPLOY, _assignment(2, version=2), {"sequence": 2})
        assert json.loads(line.fetch(DEPLOY))["sequence"] == 2


def test_missing_signer_fails_before_anything_is_written(repo: Repository) -> None:
    before = sorted(p.name for p in repo.metadata_dir.iterdir())
    no_keys = Repository(repo.root_dir, SignerPool({}), repo.expiry)
    with pytest.raises(SigningError, match="cannot sign deploy"):
        no_keys.add_target("deploy", DEPLOY, _assignment(2), {"sequence": 2})
    assert sorted(p.name for p in repo.metadata_dir.iterdir()) == before


@pytest.mark.parametrize(("role", "path", "custom", "error"), [
    ("deploy", "bundles/demo/2/demo-2.tar", None, "outside the deploy role's paths"),
    ("bundles", "deploy/plant1/line-1.json", None, "outside the bundles role's paths"),
    ("bundles", "bundles/demo/2/x/demo-2.tar", None, "outside the bundles role's paths"),
    ("deploy", "deploy/../../etc/passwd.json", None, "not a safe target path"),
    ("deploy", "deploy/plant1/line-1.json", {"rate": 0.5}, "no floats"),
    ("targets", "deploy/plant1/line-1.json", None, "signed by bundles or deploy"),
])
def test_bad_targets_are_refused(repo: Repository, role: str, path: str,
                                 custom: dict[str, object] | None, error: str) -> None:
    with pytest.raises(ReleaseError, match=error):
        repo.add_target(role, path, b"x", custom)


def test_generated_keys_are_private_files(tmp_path: Path) -> None:
    _, keys_dir = new_repository(tmp_path)
    for pem in keys_dir.glob("*.pem"):
        assert pem.stat().st_mode & 0o077 == 0
        assert isinstance(CryptoSigner.private_bytes, property)


def test_deploy_key_rotation_is_followed_and_the_old_key_refused(
        repo: Repository, tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    old_keyid = next(s for s in repo.status() if s.role == "deploy").keyids[0]
    old_key = repo.public_key(old_keyid)
    old_pem = next(keys_dir.glob(f"deploy-{old_keyid[:16]}.pem"))
    result = rotate_delegated_key(repo, "deploy", keys_dir, keys_dir / "signers.json")
    assert result.revoked == (old_keyid,) and result.version == 2
    repo = reopen(repo, keys_dir)
    repo.add_target("deploy", DEPLOY, _assignment(2), {"sequence": 2})
    with serve_directory(repo.root_dir) as url:
        assert json.loads(Line(url, tmp_path / "a", repo.trusted_root()).fetch(DEPLOY))[
            "sequence"] == 2
        # The current deploy metadata, re-signed by the old key alone: refused.
        version = next(s for s in repo.status() if s.role == "deploy").version
        path = repo.metadata_dir / f"{version}.deploy.json"
        md = Metadata.from_file(str(path))
        md.sign(Signer.from_priv_key_uri(f"file2:{old_pem}", old_key))
        path.write_bytes(md.to_bytes())
        with pytest.raises(UnsignedMetadataError):
            Line(url, tmp_path / "b", repo.trusted_root()).fetch(DEPLOY)

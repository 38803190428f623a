"""A real TUF repository for the update tests, built with python-tuf's Metadata API in the
layout of the contract (protocol/assignment.py): top-level roles, delegated `bundles`
(`bundles/*/*/*`) and `deploy` (`deploy/*/*.json`), consistent snapshots with
hash-prefixed target files, served over HTTP on 127.0.0.1.

Until the release helper's cloud repository is merged, this stands in for it; the client
code under test (appliance/updater/repository.py) is the same either way.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (  # type: ignore[attr-defined]
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from protocol.assignment import (
    BUNDLE_TARGET_PATTERN,
    DEPLOY_TARGET_PATTERN,
    Assignment,
    bundle_target_path,
    deploy_target_path,
)

_EXPIRES = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)


class TufTestRepo:
    """Roles, keys and files of one repository under `root/` (metadata/, targets/)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.metadata_dir = root / "metadata"
        self.targets_dir = root / "targets"
        self.metadata_dir.mkdir(parents=True)
        self.targets_dir.mkdir(parents=True)
        self.signers: dict[str, Signer] = {
            r: CryptoSigner.generate_ed25519()
            for r in ("root", "timestamp", "snapshot", "targets", "bundles", "deploy")}
        root_md = Metadata(Root(expires=_EXPIRES, consistent_snapshot=True))
        for role in ("root", "timestamp", "snapshot", "targets"):
            root_md.signed.add_key(self.signers[role].public_key, role)
        self.md: dict[str, Metadata[Any]] = {
            "root": root_md,
            "timestamp": Metadata(Timestamp(expires=_EXPIRES)),
            "snapshot": Metadata(Snapshot(expires=_EXPIRES)),
            "targets": Metadata(Targets(expires=_EXPIRES)),
            "bundles": Metadata(Targets(expires=_EXPIRES)),
            "deploy": Metadata(Targets(expires=_EXPIRES)),
        }
        keys = {self.signers[r].public_key.keyid: self.signers[r].public_key
                for r in ("bundles", "deploy")}
        roles = {
            "bundles": DelegatedRole("bundles", [self.signers["bundles"].public_key.keyid], 1,
                                     True, [BUNDLE_TARGET_PATTERN]),
            "deploy": DelegatedRole("deploy", [self.signers["deploy"].public_key.keyid], 1,
                                    True, [DEPLOY_TARGET_PATTERN]),
        }
        self.md["targets"].signed.delegations = Delegations(keys=keys, roles=roles)
        self._sign_write("root", versioned=True)
        self.publish(bump=False)

    @property
    def trusted_root(self) -> bytes:
        return (self.metadata_dir / "1.root.json").read_bytes()

    def _sign_write(self, role: str, *, versioned: bool, signer: Signer | None = None) -> None:
        md = self.md[role]
        md.signatures.clear()
        md.sign(signer or self.signers[role])
        name = f"{md.signed.version}.{role}.json" if versioned else f"{role}.json"
        md.to_file(str(self.metadata_dir / name), JSONSerializer(compact=False))

    def add_target(self, role: str, path: str, data: bytes) -> TargetFile:
        """Store `data` as target `path` (hash-prefixed) listed by `role`."""
        info = TargetFile.from_data(path, data, ["sha256"])
        self.md[role].signed.targets[path] = info
        dirname, _, base = path.rpartition("/")
        out = self.targets_dir / dirname / f"{info.hashes['sha256']}.{base}"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        return info

    def add_bundle(self, tar: Path, model: str, version: int) -> TargetFile:
        return self.add_target("bundles", bundle_target_path(model, version), tar.read_bytes())

    def assign(self, site: str, line: str, model: str, version: int, sequence: int, *,
               stage: str = "canary", tar: Path | None = None) -> Assignment:
        data = tar.read_bytes() if tar is not None else None
        info = self.md["bundles"].signed.targets[bundle_target_path(model, version)]
        assignment = Assignment.model_validate({
            "schema": "lineguard.assignment/1", "site": site, "line": line,
            "sequence": sequence, "model": model, "version": version,
            "bundle_target": bundle_target_path(model, version),
            "bundle_sha256": hashlib.sha256(data).hexdigest() if data else
            info.hashes["sha256"], "bundle_length": len(data) if data else info.length,
            "stage": stage, "issued_at": datetime.now(UTC), "issued_by": "test"})
        body = assignment.model_dump_json(by_alias=True).encode()
        self.add_target("deploy", deploy_target_path(site, line), body)
        return assignment

    def publish(self, *, bump: bool = True, deploy_signer: Signer | None = None) -> None:
        """Sign and write a new version of every role (snapshot lists them, timestamp
        the snapshot). `deploy_signer` signs `deploy` with another key (an attack)."""
        snapshot = self.md["snapshot"].signed
        for role in ("bundles", "deploy", "targets"):
            if bump:
                self.md[role].signed.version += 1
            self._sign_write(role, versioned=True,
                             signer=deploy_signer if role == "deploy" else None)
            snapshot.meta[f"{role}.json"] = MetaFile(version=self.md[role].signed.version)
        if bump:
            snapshot.version += 1
        self._sign_write("snapshot", versioned=True)
        ts = self.md["timestamp"].signed
        ts.snapshot_meta = MetaFile(version=snapshot.version)
        if bump:
            ts.version += 1
        self._sign_write("timestamp", versioned=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(directory: Path) -> Iterator[str]:
    """Serve `directory` over HTTP on 127.0.0.1 (a free port); yields the base URL."""
    def handler(*args: Any, **kwargs: Any) -> _Quiet:
        return _Quiet(*args, directory=str(directory), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

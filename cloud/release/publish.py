"""Publishing a registry model as a signed bundle, and signing a line's assignment.

`publish_release`: only an approved registry entry (the gate passed it; or an engineer
vouched for it on import) is packed (models/bundle.py `pack_bundle`), signed by
`bundles` as `bundles/<model>/<version>/<model>-<version>.tar`, recorded, and moved to
`released`.

`assign_line`: signs `deploy/<site>/<line>.json` (protocol/assignment.py) naming a
released bundle, with the next per-line sequence: one more than the highest the cloud
database or the repository has seen, so a rollback is a new assignment, never a replay.
The same fields sit in the target's `custom` (strings and integers only).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from cloud.registry import ModelRegistry, RegistryError
from cloud.release.errors import PublishRejected, ReleaseError
from cloud.release.repository import Repository
from cloud.release.store import AssignmentView, ReleaseStore, ReleaseView, ms_to_dt
from models.bundle import load_bundle, pack_bundle
from models.errors import ModelError
from protocol.assignment import (
    Assignment,
    AssignmentStage,
    bundle_target_path,
    deploy_target_path,
)
from protocol.errors import ProtocolError
from protocol.topics import validate_id

logger = logging.getLogger(__name__)

PUBLISHABLE_STATES = ("approved", "released")


def publish_release(repo: Repository, registry: ModelRegistry, store: ReleaseStore,
                    model: str, version: int, *, by: str) -> ReleaseView:
    """Sign `model@version` from the registry into the repository (see the module
    docstring). Publishing a released model again returns its record. Raises
    PublishRejected (unknown, gate not passed, refused, manifest mismatch),
    ReleaseError, SigningError."""
    existing = store.release(model, version)
    if existing is not None:
        return existing
    try:
        entry = registry.get(model, version)
    except RegistryError as e:
        raise PublishRejected(f"{model}@{version}: {e}") from e
    # Approved means the gate passed it, or an engineer vouched for an imported
    # production model when registering it; a refused gate is final either way.
    if entry.gate_passed is False or entry.state not in PUBLISHABLE_STATES:
        why = ("its gate refused it" if entry.gate_passed is False
               else f"it is {entry.state}"
               + (" (the gate has not passed it)" if entry.state == "candidate" else ""))
        raise PublishRejected(f"{model}@{version} cannot be published: {why}; only an "
                              "approved model is released")
    target = bundle_target_path(model, version)
    with tempfile.TemporaryDirectory(prefix="lineguard-publish-") as work:
        try:
            bundle = load_bundle(entry.bundle_dir)
            if (bundle.manifest.name, bundle.manifest.version) != (model, version):
                raise PublishRejected(
                    f"the registry's bundle for {model}@{version} says "
                    f"{bundle.manifest.name}@{bundle.manifest.version} in its manifest")
            tar = pack_bundle(entry.bundle_dir, Path(work) / f"{model}-{version}.tar")
        except ModelError as e:
            raise PublishRejected(f"{model}@{version}: the bundle fails verification: {e}") from e
        info = repo.add_target("bundles", target, tar, custom={
            "model": model, "version": version, "label": bundle.manifest.label})
    record = ReleaseView(model=model, version=version, label=bundle.manifest.label,
                         target_path=target, sha256=info.hashes["sha256"], length=info.length,
                         released_by=by, released_at=ms_to_dt(store.clock_ms()))
    store.record_release(record)
    if entry.state != "released":
        try:
            registry.set_state(model, version, "released", reason="published", by=by)
        except RegistryError as e:
            raise ReleaseError(f"{model}@{version} is published but the registry could not "
                               f"mark it released: {e}") from e
    return record


def assign_line(repo: Repository, store: ReleaseStore, site: str, line: str, model: str,
                version: int, *, stage: AssignmentStage, by: str,
                rollout_id: str | None = None, reason: str | None = None) -> Assignment:
    """Sign a new assignment of `site/line` to the released `model@version` and record
    it. Raises PublishRejected (bad site/line, not released), ReleaseError, SigningError."""
    try:
        validate_id(site, "site")
        validate_id(line, "line")
    except ProtocolError as e:
        raise PublishRejected(str(e)) from e
    bundle_target = bundle_target_path(model, version)
    deploy_path = deploy_target_path(site, line)
    # Under the repository lock from reading the current sequence to signing the next.
    with repo.locked():
        bundle = repo.targets_of("bundles").get(bundle_target)
        if bundle is None:
            raise PublishRejected(f"{model}@{version} is not released (no signed bundle "
                                  f"{bundle_target}); publish it first")
        signed_now = repo.targets_of("deploy").get(deploy_path)
        repo_sequence = int(signed_now.custom.get("sequence", 0)) if signed_now else 0
        sequence = max(store.last_sequence(site, line), repo_sequence) + 1
        issued_at = ms_to_dt(store.clock_ms())
        assignment = Assignment(
            site=site, line=line, sequence=sequence, model=model, version=version,
            bundle_target=bundle_target, bundle_sha256=bundle.hashes["sha256"],
            bundle_length=bundle.length, rollout_id=rollout_id, stage=stage,
            issued_at=issued_at, issued_by=by, reason=reason)
        body = assignment.model_dump_json(by_alias=True).encode("utf-8")
        repo.add_target("deploy", deploy_path, body,
                        custom=assignment.model_dump(mode="json", by_alias=True))
        store.record_assignment(AssignmentView(
            site=site, line=line, sequence=sequence, model=model, version=version,
            bundle_target=bundle_target, rollout_id=rollout_id, stage=stage, issued_by=by,
            reason=reason, issued_at=issued_at))
    logger.info("assigned %s/%s to %s@%d (sequence %d, %s)", site, line, model, version,
                sequence, stage)
    return assignment

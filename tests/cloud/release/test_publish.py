"""Publishing a registry model and signing assignments, on SQLite and PostgreSQL, checked
by a line's TUF client over HTTP."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.registry import ModelRegistry
from cloud.registry.gate_report import Check, GateReport
from cloud.release.errors import PublishRejected
from cloud.release.publish import assign_line, publish_release
from cloud.release.repository import Repository
from cloud.release.store import ReleaseStore
from protocol.assignment import Assignment, bundle_target_path, deploy_target_path
from tests.cloud.registry.helpers import DEMO_BUNDLE, demo_copy, migrated_engine
from tests.cloud.release.tuf_helpers import Line, new_repository, serve_directory


def gate(passed: bool) -> GateReport:
    return GateReport(
        model="demo@2", parent="demo@1", passed=passed, reasons=[] if passed else ["worse"],
        checks=[Check(rule="mAP50", passed=passed, detail="0.80 vs 0.82")], sets=[],
        latency_batch1_ms=5.0, latency_budget_ms=50.0, measured_on="test cpu, 2 threads",
        settings={"map50_tolerance": 0.01}, created_at=datetime.now(UTC))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def registry(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, tmp_path / "registry")


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return new_repository(tmp_path)[0]


def test_published_bundle_and_assignment_verify_and_download(
        engine: Engine, registry: ModelRegistry, repo: Repository, tmp_path: Path) -> None:
    store = ReleaseStore(engine)
    registry.add(demo_copy(tmp_path / "b2", version=2).root, source="retrain")
    registry.record_gate("demo", 2, gate(True))
    release = publish_release(repo, registry, store, "demo", 2, by="alice")
    assert registry.get("demo", 2).state == "released"
    assert release.target_path == bundle_target_path("demo", 2)
    assert publish_release(repo, registry, store, "demo", 2, by="alice") == release
    a1 = assign_line(repo, store, "plant1", "line-1", "demo", 2, stage="manual", by="alice")
    a2 = assign_line(repo, store, "plant1", "line-1", "demo", 2, stage="manual", by="bob")
    assert (a1.sequence, a2.sequence) == (1, 2)
    line = Line("", tmp_path / "line", repo.trusted_root())
    with serve_directory(repo.root_dir) as url:
        line.base_url = url
        got = Assignment.model_validate_json(line.fetch(deploy_target_path("plant1", "line-1")))
        assert got == a2
        tar_bytes = line.fetch(got.bundle_target)
    assert len(tar_bytes) == got.bundle_length == release.length
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = tar.getnames()
        manifest = tar.extractfile("manifest.json")
        assert manifest is not None
        assert json.loads(manifest.read())["version"] == 2
    assert "model.onnx" in names
    custom = repo.targets_of("deploy")[deploy_target_path("plant1", "line-1")].custom
    assert custom["sequence"] == 2 and custom["bundle_sha256"] == release.sha256
    assert [e.kind for e in store.events()][:3] == ["assigned", "assigned", "released"]
    assert store.current_assignment("plant1", "line-1") is not None


@pytest.mark.parametrize(("how", "error"), [
    ("candidate", "it is candidate"),
    ("refused", "its gate refused it"),
    ("unknown", "no model demo@1"),
])
def test_only_an_approved_model_is_published(
        engine: Engine, registry: ModelRegistry, repo: Repository, how: str,
        error: str) -> None:
    if how != "unknown":
        registry.add(DEMO_BUNDLE, source="retrain")
    if how == "refused":
        registry.record_gate("demo", 1, gate(False))
    with pytest.raises(PublishRejected, match=error):
        publish_release(repo, registry, ReleaseStore(engine), "demo", 1, by="alice")
    assert repo.targets_of("bundles") == {}


def test_assignment_needs_a_released_bundle_and_a_valid_line(
        engine: Engine, repo: Repository) -> None:
    store = ReleaseStore(engine)
    with pytest.raises(PublishRejected, match="not released"):
        assign_line(repo, store, "plant1", "line-1", "demo", 3, stage="manual", by="alice")
    with pytest.raises(PublishRejected, match="line"):
        assign_line(repo, store, "plant1", "line/1", "demo", 3, stage="manual", by="alice")
    assert repo.targets_of("deploy") == {}


def test_concurrent_assigners_never_reuse_a_sequence(engine: Engine, repo: Repository) -> None:
    repo.add_target("bundles", bundle_target_path("demo", 1), b"bundle", {"version": 1})
    store = ReleaseStore(engine)
    # Two writers with their own Repository objects, as two processes would have.
    writers = [Repository(repo.root_dir, repo.signers, repo.expiry) for _ in range(2)]
    errors: list[BaseException] = []

    def assign(writer: Repository) -> None:
        try:
            for _ in range(3):
                assign_line(writer, store, "plant1", "line-1", "demo", 1, stage="manual",
                            by="t")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=assign, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert sorted(a.sequence for a in store.assignments("plant1", "line-1")) == [1, 2, 3, 4, 5, 6]
    assert repo.targets_of("deploy")[deploy_target_path("plant1", "line-1")].custom[
        "sequence"] == 6

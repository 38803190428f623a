"""The model registry on SQLite and PostgreSQL: registering, duplicates, states."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.registry import (
    DatasetUse,
    DuplicateModel,
    GateReport,
    ModelRef,
    ModelRegistry,
    ModelState,
    RegistryError,
    RegistryLineage,
    StateTransitionRefused,
    UnknownModel,
)
from cloud.registry.gate_report import Check
from models.bundle import load_bundle
from tests.cloud.registry.helpers import DEMO_BUNDLE, DEMO_WEIGHTS, demo_copy, migrated_engine


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = migrated_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def registry(engine: Engine, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(engine, tmp_path / "registry")


def _report(passed: bool, reasons: list[str] | None = None) -> GateReport:
    return GateReport(
        model="demo@2", parent="demo@1", passed=passed, reasons=reasons or [],
        checks=[Check(rule="mAP50", passed=passed, detail="0.80 vs 0.82")], sets=[],
        latency_batch1_ms=5.0, latency_budget_ms=50.0, measured_on="test cpu, 2 threads",
        settings={"map50_tolerance": 0.01}, created_at=datetime.now(UTC))


def test_add_copies_the_bundle_and_weights(registry: ModelRegistry) -> None:
    entry = registry.add(DEMO_BUNDLE, weights=DEMO_WEIGHTS, state="approved",
                         source="import: demo", lineage=RegistryLineage(holdout="linesim@1"))
    assert (entry.name, entry.version, entry.state) == ("demo", 1, "approved")
    assert entry.bundle_dir == registry.root / "demo" / "1" / "bundle"
    assert load_bundle(entry.bundle_dir).manifest.label == "linesim-yolo11pico-256"
    assert entry.weights_path is not None
    assert entry.weights_path.read_bytes() == DEMO_WEIGHTS.read_bytes()
    assert entry.gate_passed is None and entry.gate_report_path is None
    assert entry.holdout == "linesim@1"
    assert registry.get("demo", 1) == entry
    assert registry.list() == [entry]
    assert [(h.from_state, h.to_state) for h in registry.history("demo", 1)] == [
        (None, "approved")]
    assert not list((registry.root / "demo").glob(".staging-*"))


def test_same_content_again_is_the_same_entry(registry: ModelRegistry) -> None:
    first = registry.add(DEMO_BUNDLE, weights=DEMO_WEIGHTS, source="import")
    assert registry.add(DEMO_BUNDLE, weights=DEMO_WEIGHTS, source="import") == first
    assert len(registry.history("demo", 1)) == 1


def test_duplicate_with_other_content_is_refused(registry: ModelRegistry,
                                                 tmp_path: Path) -> None:
    registry.add(DEMO_BUNDLE, weights=DEMO_WEIGHTS, source="import")
    with pytest.raises(DuplicateModel, match="demo@1 is already registered"):
        registry.add(DEMO_BUNDLE, source="import")  # no weights: other content
    other = demo_copy(tmp_path / "other", label="something-else")
    with pytest.raises(DuplicateModel):
        registry.add(other.root, weights=DEMO_WEIGHTS, source="import")
    assert registry.get("demo", 1).label == "linesim-yolo11pico-256"


def test_bad_inputs_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not a valid bundle"):
        registry.add(tmp_path / "nope", source="x")
    with pytest.raises(RegistryError, match="no such file"):
        registry.add(DEMO_BUNDLE, weights=tmp_path / "missing.pt", source="x")
    with pytest.raises(RegistryError, match="candidate or approved"):
        registry.add(DEMO_BUNDLE, state="released", source="x")
    with pytest.raises(UnknownModel, match="no model demo@7"):
        registry.get("demo", 7)
    with pytest.raises(UnknownModel):
        registry.history("demo", 7)
    assert registry.list() == []
    assert not (registry.root / "demo" / "1").exists()


def test_lineage_and_versions(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.add(DEMO_BUNDLE, weights=DEMO_WEIGHTS, source="import", state="approved")
    assert registry.next_version("demo") == 2
    assert registry.next_version("other") == 1
    child = demo_copy(tmp_path / "child", version=2, label="child")
    lineage = RegistryLineage(parent=ModelRef("demo", 1),
                              dataset=DatasetUse("ribbed@1", "ab" * 32), holdout="ribbed@1")
    entry = registry.add(child.root, weights=DEMO_WEIGHTS, lineage=lineage, source="retrain")
    assert entry.parent == ModelRef("demo", 1) and str(entry.parent) == "demo@1"
    assert entry.dataset == DatasetUse("ribbed@1", "ab" * 32)
    assert [e.version for e in registry.list("demo")] == [1, 2]
    assert registry.list("nothing") == []


def test_gate_pass_approves_and_stores_the_report(registry: ModelRegistry) -> None:
    registry.add(DEMO_BUNDLE, source="retrain")
    entry = registry.record_gate("demo", 1, _report(True))
    assert entry.state == "approved" and entry.gate_passed is True
    assert entry.gate_report_path is not None
    assert GateReport.model_validate_json(entry.gate_report_path.read_text()).passed
    page = (entry.gate_report_path.parent / "report.html").read_text()
    assert "PASSED" in page and "<img" not in page
    assert registry.history("demo", 1)[-1].reason == "gate passed"
    entry = registry.set_state("demo", 1, "released", reason="published", by="release")
    assert entry.state == "released"


def test_gate_pass_without_auto_approval_waits_for_an_engineer(
        registry: ModelRegistry) -> None:
    registry.add(DEMO_BUNDLE, source="retrain")
    entry = registry.record_gate("demo", 1, _report(True), approve=False)
    assert entry.state == "candidate" and entry.gate_passed is True
    entry = registry.set_state("demo", 1, "approved", reason="looks right", by="ana")
    assert entry.state == "approved"
    assert registry.history("demo", 1)[-1].by == "ana"


def test_a_refused_model_never_becomes_approved(registry: ModelRegistry) -> None:
    registry.add(DEMO_BUNDLE, source="retrain")
    entry = registry.record_gate("demo", 1, _report(False, ["mAP50 fell 0.30"]))
    assert entry.state == "refused" and entry.gate_passed is False
    hist = registry.history("demo", 1)
    assert hist[-1].to_state == "refused" and "mAP50 fell 0.30" in hist[-1].reason
    states: list[ModelState] = ["approved", "released", "candidate"]
    for state in states:
        with pytest.raises(StateTransitionRefused):
            registry.set_state("demo", 1, state, reason="please", by="ana")
    with pytest.raises(StateTransitionRefused, match="only a candidate"):
        registry.record_gate("demo", 1, _report(True))
    assert registry.get("demo", 1).state == "refused"


def test_approval_needs_a_passed_gate(registry: ModelRegistry) -> None:
    registry.add(DEMO_BUNDLE, source="retrain")
    with pytest.raises(StateTransitionRefused, match="gate has not passed"):
        registry.set_state("demo", 1, "approved", reason="trust me", by="ana")
    with pytest.raises(StateTransitionRefused, match="cannot become released"):
        registry.set_state("demo", 1, "released", reason="ship", by="ana")
    with pytest.raises(StateTransitionRefused, match="needs a reason"):
        registry.set_state("demo", 1, "refused", reason=" ", by="ana")
    with pytest.raises(StateTransitionRefused, match="unknown state"):
        registry.set_state("demo", 1, "shipped", reason="x", by="ana")  # type: ignore[arg-type]
    with pytest.raises(UnknownModel):
        registry.set_state("demo", 9, "refused", reason="x", by="ana")


@pytest.mark.parametrize("text", ["demo", "demo@", "demo@0", "@1", "demo@x", "a b@1"])
def test_model_ref_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="MODEL@VERSION"):
        ModelRef.parse(text)


def test_model_ref_parse() -> None:
    assert ModelRef.parse("demo@12") == ModelRef("demo", 12)
    assert ModelRef.parse("my.model-x@3") == ModelRef("my.model-x", 3)

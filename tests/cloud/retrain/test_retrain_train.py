"""Real fine-tuning (Ultralytics on the CPU, a few epochs on a few dozen linesim parts):
a fine-tune on the new `ribbed` variant beats its parent on the ribbed holdout and
passes the gate; one trained on shuffled class labels is refused and never approved.

The parent is the demo detector's weights served at the test's 160 px (the demo bundle
itself serves at 320 px; a 160 px parent keeps training and serving at one scale, which
these few epochs need).

Three epochs on 48 parts teach the ribbed surface (the holdout's mAP50 about doubles)
but cost the parent's plate and disc parts dearly (mAP50 0.67 -> 0.41 measured here;
more epochs with more replay of the old variants would be needed), and the gate rightly
refuses that on the parent's holdout. So the passing fine-tune is registered from a
parent without a holdout (the gate judges it on the ribbed held-out split), and the
parent's holdout is exercised by the refusal of the shuffled-label candidate."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cloud.registry import ModelRef, ModelRegistry, RegistryLineage, StateTransitionRefused
from cloud.retrain.config import GateConfig, TrainingDefaults
from cloud.retrain.pipeline import LOG_NAME, retrain
from linesim.config import LineConfig
from linesim.dataset import export_yolo
from models.bundle import load_bundle
from tests.cloud.registry.helpers import DEMO_WEIGHTS, migrated_engine

# Minutes on a busy 2-core machine (seconds per epoch alone); the suite default is 600 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

IMGSZ = 160
TRAINING = TrainingDefaults(epochs=3, imgsz=IMGSZ, batch=16, lr0=0.0005, warmup_epochs=0.0,
                            optimizer="AdamW", seed=0)
GATE = GateConfig(map50_tolerance=0.05, max_recall_drop=0.2, min_instances_for_recall=10,
                  latency_budget_ms=2000.0, latency_rounds=2)


@dataclass(frozen=True)
class World:
    root: Path
    ribbed: Path  # train: half ribbed, half plate/disc; val: ribbed only (the holdout)
    shuffled: Path  # the same with every class id moved to the next class
    base_holdout: Path  # plate and disc parts: the parent's holdout
    parent_bundle: Path
    parent_weights: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from cloud.training.train import TrainConfig, train_detector

    root = tmp_path_factory.mktemp("retrain")
    ribbed = root / "ribbed"
    export_yolo(ribbed, LineConfig(seed=11, variants=("ribbed", "ribbed", "plate", "disc")),
                n_train=48, n_val=0)
    holdout = export_yolo(root / "ribbed-holdout", LineConfig(seed=5, variants=("ribbed",)),
                          n_train=0, n_val=32).parent
    for kind in ("images", "labels"):
        shutil.rmtree(ribbed / kind / "val")
        shutil.copytree(holdout / kind / "val", ribbed / kind / "val")
    base = export_yolo(root / "base", LineConfig(seed=7), n_train=0, n_val=32)
    shuffled = root / "shuffled"
    shutil.copytree(ribbed, shuffled)
    (shuffled / "data.yaml").write_text(
        (ribbed / "data.yaml").read_text().replace(f"path: {ribbed}", f"path: {shuffled}"))
    for label in (shuffled / "labels" / "train").glob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(f"{(int(r[0]) + 1) % 4} {' '.join(r[1:])}\n" for r in rows))
    parent = train_detector(
        TrainConfig(data_yaml=ribbed / "data.yaml", holdout_yaml=base, out_bundle=root / "parent",
                    name="demo", version=1,
                    label="demo-160", model=str(DEMO_WEIGHTS), imgsz=IMGSZ,
                    work_dir=root / "parent-work"),
        trained_weights=DEMO_WEIGHTS)
    return World(root, ribbed, shuffled, base, parent.root,
                 root / "parent-weights.pt")


def _registry(world: World, tmp_path: Path, holdout: Path | None) -> ModelRegistry:
    engine: Engine = migrated_engine(f"sqlite:///{tmp_path / 'cloud.db'}")
    registry = ModelRegistry(engine, tmp_path / "registry")
    registry.add(world.parent_bundle, weights=world.parent_weights, state="approved",
                 source="import: demo weights at 160 px",
                 lineage=RegistryLineage(holdout=str(holdout) if holdout else None))
    return registry


@pytest.fixture
def registry(world: World, tmp_path: Path) -> Iterator[ModelRegistry]:
    """The parent without a registered holdout."""
    registry = _registry(world, tmp_path, None)
    yield registry
    registry.engine.dispose()


@pytest.fixture
def registry_with_holdout(world: World, tmp_path: Path) -> Iterator[ModelRegistry]:
    """The parent with the plate/disc holdout registered."""
    registry = _registry(world, tmp_path, world.base_holdout)
    yield registry
    registry.engine.dispose()


def test_fine_tune_on_ribbed_beats_the_parent_and_passes_the_gate(
        world: World, registry: ModelRegistry, tmp_path: Path) -> None:
    lines: list[str] = []
    result = retrain(registry, ModelRef("demo", 1), str(world.ribbed), training=TRAINING,
                     gate=GATE, work_dir=tmp_path / "runs", progress=lines.append)
    report, entry = result.report, result.candidate
    [ribbed] = report.sets
    assert ribbed.title == "the dataset's held-out split"
    assert ribbed.parent_map50 is not None
    assert ribbed.candidate_map50 > ribbed.parent_map50, report.checks
    assert report.passed, report.reasons
    assert (entry.name, entry.version, entry.state) == ("demo", 2, "approved")
    assert entry.parent == ModelRef("demo", 1) and entry.gate_passed is True
    # lineage: dataset fingerprint, parent version, code revision, training args, seed
    manifest = load_bundle(entry.bundle_dir).manifest
    assert entry.dataset is not None
    assert entry.dataset.fingerprint == manifest.lineage.dataset_fingerprint
    assert manifest.lineage.parent_version == 1
    assert manifest.lineage.training_config["seed"] == 0
    assert manifest.lineage.training_config["epochs"] == 3
    assert manifest.input.height == IMGSZ  # served at the parent's size
    assert entry.weights_path is not None and entry.weights_path.stat().st_size > 0
    assert entry.gate_report_path is not None
    page = entry.gate_report_path.with_name("report.html").read_text()
    assert "PASSED" in page and "data:image/png;base64," in page
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [e.split()[1] for e in epochs] == ["1/3", "2/3", "3/3"]
    assert "ETA" in epochs[0] and "val mAP50" in epochs[0]
    log = (result.run_dir / LOG_NAME).read_text()
    assert "epoch 3/3" in log and "gate passed" in log


def test_shuffled_labels_are_refused_and_never_approved(
        world: World, registry_with_holdout: ModelRegistry, tmp_path: Path) -> None:
    registry = registry_with_holdout
    training = TRAINING.model_copy(update={"epochs": 1, "lr0": 0.002})
    result = retrain(registry, ModelRef("demo", 1), str(world.shuffled), training=training,
                     gate=GATE, work_dir=tmp_path / "runs")
    assert not result.report.passed
    assert [s.title for s in result.report.sets] == ["the dataset's held-out split",
                                                     "the parent's holdout"]
    assert any(r.startswith("mAP50 on") for r in result.report.reasons), result.report.reasons
    entry = registry.get("demo", 2)
    assert entry.state == "refused" and entry.gate_passed is False
    assert "gate refused: mAP50" in registry.history("demo", 2)[-1].reason
    with pytest.raises(StateTransitionRefused):
        registry.set_state("demo", 2, "approved", reason="ship it anyway", by="ana")
    assert registry.get("demo", 2).state == "refused"

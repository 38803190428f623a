"""`lineguard cloud train`: a real (tiny) Ultralytics run, exported and bundled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud.cli import main as cloud_main
from cloud.training.train import dataset_fingerprint
from linesim import LineConfig, export_yolo
from models.bundle import load_bundle
from models.golden import verify_golden
from models.runtime import OnnxDetector
from models.yolo_dataset import load_data_yaml

pytest.importorskip("ultralytics")

pytestmark = [pytest.mark.slow, pytest.mark.ultralytics]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("linesim")
    cfg = LineConfig(seed=11, width_px=128, height_px=96, defect_free_fraction=0.2)
    return export_yolo(root / "ds", cfg, n_train=16, n_val=6)


def test_train_exports_and_bundles(tiny_dataset: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    rc = cloud_main([
        "train", "--data", str(tiny_dataset), "--out", str(out), "--name", "tiny",
        "--version", "3", "--label", "test", "--epochs", "1", "--imgsz", "64",
        "--batch", "8", "--work-dir", str(tmp_path / "runs"), "--parent-version", "2",
    ])
    assert rc == 0, capsys.readouterr().err
    assert "[train] holdout mAP50" in capsys.readouterr().out

    bundle = load_bundle(out)
    m = bundle.manifest
    assert (m.name, m.version, m.label) == ("tiny", 3, "test")
    assert m.classes == ["scratch", "pit", "crack", "stain"]
    assert (m.input.height, m.input.width) == (64, 64)
    assert m.input.batch == "dynamic"
    assert m.metrics is not None
    assert m.metrics.images == 6
    assert m.lineage.parent_version == 2
    assert m.lineage.dataset_fingerprint == dataset_fingerprint(load_data_yaml(tiny_dataset))
    assert m.lineage.training_config["epochs"] == 1
    assert (out.parent / "bundle-weights.pt").is_file()

    detector = OnnxDetector(bundle.model_path)
    verify_golden(bundle, detector)
    # the exported graph takes any batch size
    out3 = detector.run(np.zeros((3, 3, 64, 64), np.float32))
    assert out3.shape[0] == 3
    assert out3.shape[1] == 4 + 4
    json.loads((out / "manifest.json").read_text())


def test_fingerprint_changes_with_a_label(tiny_dataset: Path) -> None:
    ds = load_data_yaml(tiny_dataset)
    before = dataset_fingerprint(ds)
    label = sorted((tiny_dataset.parent / "labels" / "train").glob("*.txt"))[0]
    original = label.read_text()
    try:
        label.write_text(original + "0 0.5 0.5 0.1 0.1\n")
        assert dataset_fingerprint(ds) != before
    finally:
        label.write_text(original)
    assert dataset_fingerprint(ds) == before


def test_train_without_data_is_a_clear_error(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = cloud_main(["train", "--data", str(tmp_path / "missing.yaml"),
                     "--out", str(tmp_path / "b")])
    assert rc == 2
    assert "missing.yaml" in capsys.readouterr().err

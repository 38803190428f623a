"""`lineguard cloud train` checks every argument the bundle needs before training starts
(issue 8 item 7): each bad argument is one clear error within a second, and a run
without `--label` gets a label derived from the name and the dataset. Ultralytics is
never reached here: its import is replaced by a tripwire."""

from __future__ import annotations

from pathlib import Path

import pytest

import cloud.training.train
from cloud.cli import main as cloud_main
from cloud.training.train import TrainConfig, TrainingError, dataset_fingerprint, plan_training
from linesim import LineConfig, export_yolo
from models.yolo_dataset import load_data_yaml


class TrainingStarted(Exception):
    pass


@pytest.fixture(autouse=True)
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    def started(*_: object, **__: object) -> None:
        raise TrainingStarted

    monkeypatch.setattr(cloud.training.train, "import_ultralytics", started)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("linesim")
    return export_yolo(root / "ds", LineConfig(seed=5, width_px=96, height_px=64),
                       n_train=4, n_val=3)


def _train(data: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(tmp_path / "bundle"),
            "--work-dir", str(tmp_path / "runs"), *extra]


def test_without_label_a_label_is_derived_before_training(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(TrainingStarted):
        cloud_main(_train(data, tmp_path, "--name", "tiny"))
    fingerprint = dataset_fingerprint(load_data_yaml(data))
    assert f"label 'tiny-{fingerprint[:8]}'" in capsys.readouterr().out

    plan = plan_training(TrainConfig(data, tmp_path / "b", name="tiny", version=2))
    assert plan.label == f"tiny-{fingerprint[:8]}" and plan.fingerprint == fingerprint
    assert len(plan.golden_images) >= 1
    given = plan_training(TrainConfig(data, tmp_path / "b", name="tiny", version=2, label="x"))
    assert given.label == "x"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "bad name"], "--name 'bad name': String should match pattern"),
        (["--label", "x" * 129], "--label 'xxxx"),
        (["--model", "missing/weights.pt"], "--model missing/weights.pt: no such weights"),
        (["--trained-weights", "missing.pt"], "--trained-weights missing.pt: no such file"),
        (["--holdout", "missing.yaml"], "dataset: data.yaml not found"),
    ],
)
def test_bad_arguments_fail_before_training(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
    message: str,
) -> None:
    assert cloud_main(_train(data, tmp_path, *args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


def test_a_full_output_directory_is_refused_not_overwritten(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = tmp_path / "bundle" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    assert cloud_main(_train(data, tmp_path)) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert keep.read_text() == "mine"


def test_an_output_under_a_file_is_refused(data: Path, tmp_path: Path) -> None:
    # (a read-only directory would be the other case, but root may write anywhere)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrainingError, match=r"--out .*a-file is not a writable directory"):
        plan_training(TrainConfig(data, blocker / "bundle", name="n", version=1))
    with pytest.raises(TrainingError, match="--work-dir"):
        plan_training(TrainConfig(data, tmp_path / "b", name="n", version=1,
                                  work_dir=blocker / "runs"))


def test_bad_data_and_classes(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match=r"dataset: data\.yaml not found"):
        plan_training(TrainConfig(tmp_path / "none.yaml", tmp_path / "b", name="n", version=1))
    dup = export_yolo(tmp_path / "dup", LineConfig(seed=1, width_px=96, height_px=64),
                      n_train=2, n_val=2)
    text = dup.read_text()
    names_at = text.index("names")
    dup.write_text(text[:names_at] + "names: [a, a, b, c]\n")
    with pytest.raises(TrainingError, match=r"class names .*duplicate class name"):
        plan_training(TrainConfig(dup, tmp_path / "b", name="n", version=1))


@pytest.mark.parametrize("flag", ["--epochs", "--imgsz", "--version", "--batch"])
def test_numbers_below_one_are_usage_errors(
    data: Path, tmp_path: Path, flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cloud_main(_train(data, tmp_path, flag, "0"))
    assert exc.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_the_onnx_export_is_written_in_the_run_not_beside_the_weights(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --trained-weights may lie in a shared, read-only folder: Ultralytics writes its
    # export next to the weights it reads, so it must read a copy in the run's folder
    shared = tmp_path / "shared"
    shared.mkdir()
    weights = shared / "best.pt"
    weights.write_bytes(b"weights")
    exported: list[Path] = []

    class FakeYolo:
        def __init__(self, path: str) -> None:
            self.path = Path(path)

        def export(self, **_: object) -> str:
            onnx = self.path.with_suffix(".onnx")
            onnx.write_bytes(b"onnx")
            exported.append(onnx)
            return str(onnx)

    class Bundled(Exception):
        pass

    def bundle(_cfg: object, _plan: object, onnx_path: Path, used: Path, *_: object) -> None:
        assert onnx_path == exported[0] and used == weights
        raise Bundled

    fake = type("FakeUltralytics", (), {"YOLO": FakeYolo})
    monkeypatch.setattr(cloud.training.train, "import_ultralytics", lambda *_: fake)
    monkeypatch.setattr(cloud.training.train, "_bundle", bundle)
    cfg = TrainConfig(data, tmp_path / "bundle", name="tiny", version=1,
                      work_dir=tmp_path / "runs")
    with pytest.raises(Bundled):
        cloud.training.train.train_detector(cfg, trained_weights=weights)
    assert sorted(p.name for p in shared.iterdir()) == ["best.pt"]
    assert exported[0].parent == cloud.training.train.export_dir(cfg)
    assert exported[0].is_relative_to((tmp_path / "runs").resolve())

"""models.evaluate and `lineguard eval` (models.cli_eval).

Metrics are checked end to end with an oracle detector (its raw output is made from
the ground truth through the letterbox geometry), so the expected numbers can be
worked out by hand; the CLI runs real tiny ONNX bundles; a slow test pins the
numbers of the shipped NEU-DET detector.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from models.bundle import Bundle, pack_bundle
from models.cli_eval import main
from models.evaluate import evaluate, evaluate_report
from models.manifest import Metrics
from models.preprocess import letterbox_geometry
from models.yolo_dataset import DatasetError, YoloDataset, load_data_yaml

from .onnx_builders import (
    NEU_DET_CLASSES,
    NEU_DET_DATA,
    NEU_DET_ONNX,
    build_tiny_bundle,
    build_yolo_raw_model,
    neu_det_available,
    neu_det_val_images,
    simple_raw_detections,
    tiny_lineage,
)

CLASSES = ["dent", "scratch", "stain"]  # build_tiny_bundle's default classes
INPUT_HW = (64, 64)  # build_tiny_bundle's input

# image name -> (height, width, grey, label rows); "c.jpg" has no label file
IMAGES: dict[str, tuple[int, int, bool, list[list[float]]]] = {
    "a.png": (48, 64, False, [[0, 0.5, 0.5, 0.25, 0.25], [1, 0.25, 0.3, 0.2, 0.2]]),
    "b.png": (64, 40, True, [[2, 0.5, 0.5, 0.4, 0.3]]),
    "c.jpg": (32, 32, False, []),
    "d.png": (80, 40, False, [[0, 0.3, 0.3, 0.25, 0.2], [0, 0.7, 0.7, 0.25, 0.2]]),
}


def _write_dataset(root: Path, names: list[str] = CLASSES) -> Path:
    rng = np.random.default_rng(0)
    for name, (h, w, grey, rows) in IMAGES.items():
        image = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
        path = root / "images" / "val" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), image)
        if rows or name != "c.jpg":
            label = root / "labels" / "val" / f"{Path(name).stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    yaml_path = root / "data.yaml"
    yaml_path.write_text(f"path: .\nval: images/val\nnames: {names}\n")
    return yaml_path


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    base = tmp_path_factory.mktemp("tiny")
    bundle = build_tiny_bundle(base / "bundle", base)
    assert isinstance(bundle, Bundle)
    return bundle


@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "ds")


@pytest.fixture
def dataset(data_yaml: Path) -> YoloDataset:
    return load_data_yaml(data_yaml)


# An oracle row: (class scores [nc], box shift as a fraction of the box width)
Answer = Callable[[int], tuple[list[float], float]]


class OracleDetector:
    """Returns, per image in dataset order, a raw head built from its ground truth."""

    def __init__(self, dataset: YoloDataset, answer: Answer, anchors: int = 8) -> None:
        self._heads: list[npt.NDArray[np.float32]] = []
        for path in dataset.images("val"):
            h, w = cv2.imread(str(path)).shape[:2]
            geometry = letterbox_geometry((h, w), INPUT_HW)
            left, top = geometry.pad_ltrb[:2]
            sx, sy = geometry.scale_xy
            head = np.zeros((4 + len(CLASSES), anchors), np.float32)
            for k, (cls, cx, cy, bw, bh) in enumerate(dataset.labels_for(path).tolist()):
                scores, shift = answer(int(cls))
                head[0, k] = (cx + shift * bw) * w * sx + left
                head[1, k] = cy * h * sy + top
                head[2, k] = bw * w * sx
                head[3, k] = bh * h * sy
                head[4:, k] = scores
            self._heads.append(head)
        self.batches: list[int] = []

    def run(self, batch: npt.NDArray[np.floating[npt.NBitBase]]) -> npt.NDArray[np.float32]:
        self.batches.append(batch.shape[0])
        heads, self._heads = self._heads[: batch.shape[0]], self._heads[batch.shape[0] :]
        return np.stack(heads)


def _one_hot(score: float) -> Answer:
    def answer(cls: int) -> tuple[list[float], float]:
        scores = [0.0] * len(CLASSES)
        scores[cls] = score
        return scores, 0.0

    return answer


def test_perfect_detections(tiny_bundle: Bundle, dataset: YoloDataset) -> None:
    progress: list[tuple[int, int]] = []
    oracle = OracleDetector(dataset, _one_hot(0.9))
    report = evaluate_report(
        tiny_bundle, dataset, batch_size=3, detector=oracle, progress=lambda *a: progress.append(a)
    )
    assert oracle.batches == [3, 1]
    assert progress == [(3, 4), (4, 4)]
    m = report.metrics
    assert (m.images, m.instances) == (4, 5)
    assert m.dataset == "ds/data.yaml:val" and m.measured_by == "lineguard eval"
    # the 101-point trapezoid gives a perfect detector 0.995
    assert m.map50 == pytest.approx(0.995) and m.map50_95 == pytest.approx(0.995)
    assert m.precision == pytest.approx(1.0) and m.recall == pytest.approx(1.0)
    assert {k: v.instances for k, v in m.per_class.items()} == {"dent": 3, "scratch": 1, "stain": 1}
    assert report.images_per_class == {"dent": 2, "scratch": 1, "stain": 1}
    assert report.providers == [] and report.split == "val"


def test_loose_boxes_lose_the_strict_thresholds(tiny_bundle: Bundle, dataset: YoloDataset) -> None:
    def answer(cls: int) -> tuple[list[float], float]:
        scores = [0.0] * len(CLASSES)
        scores[cls] = 0.9
        # dent boxes shifted by 0.24 of their width: IoU 0.76/1.24 = 0.613
        return scores, 0.24 if cls == 0 else 0.0

    m = evaluate(tiny_bundle, dataset, detector=OracleDetector(dataset, answer))
    dent = m.per_class["dent"]
    assert dent.map50 == pytest.approx(0.995)
    assert dent.map50_95 == pytest.approx(0.995 * 3 / 10)  # correct at 0.50, 0.55, 0.60 only
    assert m.map50 == pytest.approx(0.995)
    assert m.map50_95 == pytest.approx((0.2985 + 2 * 0.995) / 3)


def test_multi_label_reports_every_class_above_conf(
    tiny_bundle: Bundle, dataset: YoloDataset
) -> None:
    def answer(cls: int) -> tuple[list[float], float]:
        # the stain box also scores higher as a dent: served, it is a dent
        return ([0.8, 0.0, 0.6] if cls == 2 else _one_hot(0.9)(cls)[0]), 0.0

    multi = evaluate_report(tiny_bundle, dataset, detector=OracleDetector(dataset, answer))
    single = evaluate_report(
        tiny_bundle, dataset, detector=OracleDetector(dataset, answer), multi_label=False
    )
    assert multi.metrics.per_class["stain"].map50 == pytest.approx(0.995)
    assert single.metrics.per_class["stain"].map50 == 0.0
    # dent: three true positives at 0.9 rank above the extra 0.8 box either way
    assert multi.metrics.per_class["dent"].map50 == pytest.approx(0.995)
    assert single.metrics.per_class["dent"].map50 == pytest.approx(0.995)


def test_no_detections(tiny_bundle: Bundle, dataset: YoloDataset) -> None:
    m = evaluate(tiny_bundle, dataset, detector=OracleDetector(dataset, _one_hot(0.0)))
    assert (m.map50, m.map50_95, m.precision, m.recall) == (0.0, 0.0, 0.0, 0.0)
    assert set(m.per_class) == set(CLASSES) and m.instances == 5


def test_classes_must_match_the_bundle(tiny_bundle: Bundle, tmp_path: Path) -> None:
    other = load_data_yaml(_write_dataset(tmp_path / "o", ["dent", "stain", "scratch"]))
    with pytest.raises(DatasetError, match="differ from the bundle's classes"):
        evaluate(tiny_bundle, other, detector=OracleDetector(other, _one_hot(0.9)))


def test_bad_batch_size(tiny_bundle: Bundle, dataset: YoloDataset) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(tiny_bundle, dataset, batch_size=0)


def test_real_onnx_session(tiny_bundle: Bundle, dataset: YoloDataset) -> None:
    report = evaluate_report(tiny_bundle, dataset, batch_size=2, providers=["cpu"])
    assert report.providers == ["CPUExecutionProvider"]
    assert report.metrics.images == 4


def test_fixed_batch_model_gets_padded_batches(dataset: YoloDataset, tmp_path: Path) -> None:
    from models.golden import build_bundle

    boxes, scores = simple_raw_detections(len(CLASSES))
    onnx_path = build_yolo_raw_model(tmp_path / "fixed.onnx", boxes, scores, batch=3)
    bundle = build_bundle(
        tmp_path / "bundle",
        onnx_path,
        name="fixed",
        version=1,
        label="fixed",
        classes=CLASSES,
        input_hw=INPUT_HW,
        lineage=tiny_lineage(),  # type: ignore[arg-type]
        golden_images=[np.full((64, 64, 3), 255, np.uint8)],
        providers=["cpu"],
    )
    assert bundle.manifest.input.batch == 3
    progress: list[tuple[int, int]] = []
    m = evaluate(bundle, dataset, batch_size=8, progress=lambda *a: progress.append(a))
    assert progress == [(3, 4), (4, 4)]  # the model's batch size wins; the tail is padded
    assert m.images == 4


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def stdout_logging() -> Iterator[None]:
    """What the `lineguard` router does: INFO logs to stdout."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield
    root.removeHandler(handler)
    root.setLevel(old_level)


def test_cli_table(
    tiny_bundle: Bundle, data_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tiny_bundle.root), str(data_yaml), "--batch", "3"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("tiny v1 (tiny-v1) on ds/data.yaml:val [CPUExecutionProvider]")
    assert lines[1].split() == ["Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95"]
    assert lines[2].split()[:3] == ["all", "4", "5"]
    assert [line.split()[:3] for line in lines[3:]] == [
        ["dent", "2", "3"],
        ["scratch", "1", "1"],
        ["stain", "1", "1"],
    ]
    assert "eval: 4/4 images" in err


def test_cli_json_from_a_tar(
    tiny_bundle: Bundle,
    data_yaml: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    stdout_logging: None,
) -> None:
    tar = pack_bundle(tiny_bundle.root, tmp_path / "tiny.tar")
    assert main([str(tar), str(data_yaml), "--json", "--providers", "cpu"]) == 0
    out, _ = capsys.readouterr()
    metrics = Metrics.model_validate_json(out)  # logs went to stderr, stdout is pure JSON
    assert metrics.images == 4 and metrics.instances == 5
    assert set(json.loads(out)) >= {"map50", "map50_95", "per_class"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "{yaml}"], "error: bundle not found"),
        (["{bundle}", "{missing}"], "error: data.yaml not found"),
        (["{bundle}", "{bad_yaml}"], "error: .*not valid YAML"),
        (["{bundle}", "{yaml}", "--split", "test"], "error: dataset has no split 'test'"),
        (["{bundle}", "{other_yaml}"], "error: dataset classes .* differ"),
        (["{bundle}", "{yaml}", "--providers", "bogus"], "error: unknown execution provider"),
    ],
)
def test_cli_bad_input_is_one_error_line(
    tiny_bundle: Bundle,
    data_yaml: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("val: [unclosed\n")
    paths = {
        "bundle": str(tiny_bundle.root),
        "yaml": str(data_yaml),
        "missing": str(tmp_path / "missing"),
        "bad_yaml": str(bad_yaml),
        "other_yaml": str(_write_dataset(tmp_path / "other", ["a", "b", "c"])),
    }
    assert main([a.format(**paths) for a in args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert re.match(message, error_lines[0])


def test_cli_rejects_bad_batch(tiny_bundle: Bundle, data_yaml: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_bundle.root), str(data_yaml), "--batch", "0"])
    assert exc.value.code == 2


# --- the shipped NEU-DET detector -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not neu_det_available(), reason="shared NEU-DET model/dataset missing")
def test_neu_det_numbers(tmp_path: Path) -> None:
    from models.golden import build_bundle

    golden = [cv2.imread(str(p)) for p in neu_det_val_images(2)]
    bundle = build_bundle(
        tmp_path / "neu",
        NEU_DET_ONNX,
        name="neu-det",
        version=1,
        label="neu-det-yolo11n",
        classes=NEU_DET_CLASSES,
        input_hw=(224, 224),
        lineage=tiny_lineage(),  # type: ignore[arg-type]
        golden_images=golden,
        providers=["cpu"],
    )
    m = evaluate(bundle, load_data_yaml(NEU_DET_DATA / "data.yaml"), providers=["cpu"])
    assert (m.images, m.instances) == (360, 871)
    # Ultralytics 8.4.190 val of this ONNX at 224 (rect=False): mAP50 0.6854, mAP50-95
    # 0.3566, P 0.5886, R 0.6562; with its rect batches (256 px): 0.6816 / 0.3545.
    # We clip boxes to the image (as served), which lifts mAP50-95 slightly.
    assert m.map50 == pytest.approx(0.6854, abs=0.005)
    assert m.map50_95 == pytest.approx(0.3566, abs=0.01)
    assert m.precision == pytest.approx(0.5886, abs=0.01)
    assert m.recall == pytest.approx(0.6562, abs=0.01)

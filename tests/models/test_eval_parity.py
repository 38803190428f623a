"""Parity of our evaluation and serving pipeline with Ultralytics, on real models and data.

For every `ParityCase` (a bundle factory and a data.yaml):

- our `evaluate` mAP50 agrees with ``YOLO(onnx).val(...)`` within `map_tolerance`;
- our per-image detections (the bundle's serving thresholds) match
  ``YOLO(onnx).predict(...)``: same class, IoU >= 0.9, score within 0.01, for at least
  `min_match_rate` of the boxes, over the split's images;
- the same on non-square frames (crops and pads of the split's images), with the
  bundle's input and, when the ONNX has dynamic H/W, with a non-square input too.

Adding a case is one line in `PARITY_CASES`. Also here (fast): our matching and
`ap_per_class` against Ultralytics' own functions on random data.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import yaml

from models.bundle import Bundle
from models.evaluate import evaluate, read_image
from models.metrics import ap_per_class, box_iou, match_predictions
from models.postprocess import Detections, postprocess
from models.preprocess import preprocess_batch
from models.runtime import OnnxDetector
from models.yolo_dataset import YoloDataset, label_path_for, load_data_yaml

from .onnx_builders import (
    NEU_DET_CLASSES,
    NEU_DET_DATA,
    NEU_DET_ONNX,
    prepare_ultralytics_env,
    tiny_lineage,
)

pytestmark = pytest.mark.ultralytics

MATCH_IOU = 0.9
MATCH_SCORE_TOL = 0.01
PREDICT_CHUNK = 16  # images per Ultralytics predict call (bounds memory)


# --- the cases ----------------------------------------------------------------------------


def neu_det_bundle(out_dir: Path, input_hw: tuple[int, int] = (224, 224)) -> Bundle:
    """The shared NEU-DET yolo11n ONNX wrapped as a bundle (golden: 2 val images)."""
    from models.golden import build_bundle

    golden = [read_image(p) for p in sorted((NEU_DET_DATA / "images" / "val").glob("*.jpg"))[:2]]
    lineage = tiny_lineage()
    return build_bundle(
        out_dir,
        NEU_DET_ONNX,
        name="neu-det",
        version=1,
        label="neu-det-yolo11n",
        classes=NEU_DET_CLASSES,
        input_hw=input_hw,
        lineage=lineage,  # type: ignore[arg-type]
        golden_images=golden,
        providers=["cpu"],
    )


DEMO_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"


def demo_bundle(out_dir: Path, input_hw: tuple[int, int] | None = None) -> Bundle:
    """The shipped demo bundle; at another input size, its ONNX rebuilt as a bundle."""
    from models.bundle import load_bundle
    from models.golden import build_bundle

    shipped = load_bundle(DEMO_BUNDLE)
    if input_hw is None:
        return shipped
    m = shipped.manifest
    return build_bundle(
        out_dir, shipped.model_path, name=m.name, version=m.version, label=m.label,
        classes=m.classes, input_hw=input_hw, lineage=m.lineage,
        golden_images=[read_image(p) for p in sorted((DEMO_BUNDLE / "golden").glob("*.png"))],
        providers=["cpu"],
    )


def linesim_holdout(work: Path) -> Path:
    """A linesim holdout the demo detector never saw (seed 1; it trained on seed 0)."""
    from linesim import LineConfig, export_yolo

    return export_yolo(work / "linesim-holdout", LineConfig(seed=1), n_train=0, n_val=120)


@dataclass(frozen=True)
class ParityCase:
    """One bundle + dataset to hold against Ultralytics.

    `make_bundle(out_dir)` builds the bundle in an empty directory at the model's own
    input size; `make_bundle(out_dir, input_hw)` at `non_square_input_hw` (set that to
    None when the factory cannot take a size). `data_yaml` is a path, or a factory given a
    scratch directory. The case is skipped unless every path in `needs` exists.
    """

    name: str
    make_bundle: Callable[..., Bundle]
    data_yaml: Path | Callable[[Path], Path]
    needs: tuple[Path, ...] = ()
    split: str = "val"
    map_tolerance: float = 0.01
    min_match_rate: float = 0.99
    non_square_input_hw: tuple[int, int] | None = (160, 224)


PARITY_CASES = [
    ParityCase("neu-det-yolo11n", neu_det_bundle, NEU_DET_DATA / "data.yaml", (NEU_DET_ONNX,)),
    ParityCase("demo", demo_bundle, linesim_holdout, (DEMO_BUNDLE,),
               non_square_input_hw=(192, 256)),
]


@dataclass
class Prepared:
    case: ParityCase
    bundle: Bundle
    dataset: YoloDataset
    images: list[Path]
    work: Path


@pytest.fixture(scope="module")
def ultralytics_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Offline Ultralytics with a private config dir, set up BEFORE it is imported."""
    pytest.importorskip("torch")
    prepare_ultralytics_env(tmp_path_factory.mktemp("yolo-config"))
    pytest.importorskip("ultralytics")


@pytest.fixture(scope="module")
def ultralytics_yolo(ultralytics_env: None) -> Any:
    """Ultralytics' YOLO class."""
    from ultralytics import YOLO

    return YOLO


@pytest.fixture(scope="module", params=PARITY_CASES, ids=lambda c: c.name)
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    case: ParityCase = request.param
    missing = [p for p in case.needs if not p.exists()]
    if missing:
        pytest.skip(f"{case.name}: missing {missing[0]}")
    work = tmp_path_factory.mktemp(f"parity-{case.name}")
    data_yaml = case.data_yaml if isinstance(case.data_yaml, Path) else case.data_yaml(work)
    if not data_yaml.exists():
        pytest.skip(f"{case.name}: missing {data_yaml}")
    dataset = load_data_yaml(data_yaml)
    bundle = case.make_bundle(work / "bundle")
    return Prepared(case, bundle, dataset, dataset.images(case.split), work)


# --- reusable checks ----------------------------------------------------------------------


def mirror_split(dataset: YoloDataset, split: str, images: Sequence[Path], dst: Path) -> Path:
    """A data.yaml for Ultralytics over `images`: images symlinked and labels copied
    into `dst` (Ultralytics writes a labels .cache there, and resolves `path` from
    the working directory, so the original dataset is not used in place)."""
    common = Path(os.path.commonpath([p.parent for p in images]))
    for image in images:
        relative = image.relative_to(common)
        link = dst / "images" / split / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image.resolve())
        label = label_path_for(image)
        if label.is_file():
            target = dst / "labels" / split / relative.with_suffix(".txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(label, target)
    data = {
        "path": str(dst),
        "train": f"images/{split}",
        "val": f"images/{split}",
        "names": dict(enumerate(dataset.names)),
    }
    yaml_path = dst / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path


def our_predictions(
    bundle: Bundle, frames: Sequence[npt.NDArray[np.uint8]], batch_size: int = 8
) -> list[Detections]:
    """The serving path with the bundle's own thresholds."""
    m = bundle.manifest
    detector = OnnxDetector(bundle.model_path, ["cpu"])
    results: list[Detections] = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start : start + batch_size]
        tensor, transforms = preprocess_batch(chunk, m.preprocess, (m.input.height, m.input.width))
        out = detector.run(tensor)
        results += postprocess(out, m.postprocess, m.output.format, m.classes, transforms)
    return results


def ultralytics_predictions(
    yolo: Any, bundle: Bundle, frames: Sequence[npt.NDArray[np.uint8]]
) -> list[Detections]:
    m = bundle.manifest
    model = yolo(str(bundle.model_path), task="detect")
    results: list[Detections] = []
    for start in range(0, len(frames), PREDICT_CHUNK):
        chunk = list(frames[start : start + PREDICT_CHUNK])
        for r in model.predict(
            chunk,
            imgsz=[m.input.height, m.input.width],
            conf=m.postprocess.score_threshold,
            iou=m.postprocess.iou_threshold,
            max_det=m.postprocess.max_detections,
            # predict() defaults to rect=True: a dynamic-shape ONNX then gets a same-shape
            # batch letterboxed to the smallest stride-multiple rectangle, not to the
            # bundle's declared input; rect=False is the plain LetterBox(auto=False).
            rect=False,
            device="cpu",
            verbose=False,
        ):
            boxes = r.boxes
            results.append(
                Detections(
                    boxes.xyxy.numpy().astype(np.float32),
                    boxes.conf.numpy().astype(np.float32),
                    boxes.cls.numpy().astype(np.int64),
                )
            )
    return results


def count_matches(ours: Sequence[Detections], theirs: Sequence[Detections]) -> tuple[int, int]:
    """(matched boxes, boxes) over images: a match is the same class, IoU >= 0.9 and a
    score within 0.01 (one-to-one, best IoU first); boxes = max(ours, theirs) per image."""
    matched = total = 0
    for a, b in zip(ours, theirs, strict=True):
        total += max(len(a), len(b))
        if not len(a) or not len(b):
            continue
        iou = box_iou(a.boxes_xyxy, b.boxes_xyxy)
        ok = (
            (iou >= MATCH_IOU)
            & (a.class_ids[:, None] == b.class_ids[None, :])
            & (np.abs(a.scores[:, None] - b.scores[None, :]) <= MATCH_SCORE_TOL)
        )
        taken: set[int] = set()
        for i in np.argsort(-a.scores, kind="stable"):
            for j in np.argsort(-iou[i], kind="stable"):
                if ok[i, j] and int(j) not in taken:
                    taken.add(int(j))
                    matched += 1
                    break
    return matched, total


def check_predict_parity(
    yolo: Any, bundle: Bundle, frames: Sequence[npt.NDArray[np.uint8]], min_rate: float, what: str
) -> float:
    ours = our_predictions(bundle, frames)
    theirs = ultralytics_predictions(yolo, bundle, frames)
    matched, total = count_matches(ours, theirs)
    rate = matched / total if total else 1.0
    print(f"\n{what}: {matched}/{total} boxes match Ultralytics predict ({rate:.4f})")
    assert total > 0, f"{what}: no detections at all, nothing compared"
    assert rate >= min_rate, f"{what}: only {matched}/{total} boxes match ({rate:.4f})"
    return rate


def non_square_frames(images: Sequence[Path], count: int = 16) -> list[npt.NDArray[np.uint8]]:
    """Crops (wide, tall) and a reflect-pad of `count` images spread over the split."""
    step = max(1, len(images) // count)
    frames: list[npt.NDArray[np.uint8]] = []
    for path in list(images)[::step][:count]:
        image = read_image(path)
        h, w = image.shape[:2]
        frames.append(image[h // 5 : h - h // 5, :])  # wide, e.g. 200x120
        frames.append(image[:, w // 8 : w - w // 8])  # tall, e.g. 150x200
        frames.append(cv2.copyMakeBorder(image, 0, 0, 30, 30, cv2.BORDER_REFLECT))  # 260x200
    return frames


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.slow
def test_map_agrees_with_ultralytics_val(ultralytics_yolo: Any, prepared: Prepared) -> None:
    case, bundle = prepared.case, prepared.bundle
    h, w = bundle.manifest.input.height, bundle.manifest.input.width
    if h != w:
        pytest.skip("Ultralytics val takes one square imgsz")
    ours = evaluate(bundle, prepared.dataset, case.split, providers=["cpu"])
    data = mirror_split(prepared.dataset, case.split, prepared.images, prepared.work / "mirror")
    model = ultralytics_yolo(str(bundle.model_path), task="detect")
    theirs = model.val(
        data=str(data),
        imgsz=h,
        batch=8,
        device="cpu",
        plots=False,
        verbose=False,
        project=str(prepared.work / "runs"),
        name="val",
    )
    print(
        f"\n{case.name}: mAP50 ours {ours.map50:.4f} vs Ultralytics {theirs.box.map50:.4f}; "
        f"mAP50-95 {ours.map50_95:.4f} vs {theirs.box.map:.4f}; "
        f"P {ours.precision:.4f} vs {theirs.box.mp:.4f}; R {ours.recall:.4f} vs {theirs.box.mr:.4f}"
    )
    assert ours.images == len(prepared.images)
    assert abs(ours.map50 - float(theirs.box.map50)) <= case.map_tolerance
    assert abs(ours.map50_95 - float(theirs.box.map)) <= 2 * case.map_tolerance


@pytest.mark.slow
def test_predictions_match_ultralytics_predict(ultralytics_yolo: Any, prepared: Prepared) -> None:
    frames = [read_image(p) for p in prepared.images]
    check_predict_parity(
        ultralytics_yolo,
        prepared.bundle,
        frames,
        prepared.case.min_match_rate,
        f"{prepared.case.name} {prepared.case.split}",
    )


@pytest.mark.slow
def test_non_square_frames_match_ultralytics(ultralytics_yolo: Any, prepared: Prepared) -> None:
    case = prepared.case
    frames = non_square_frames(prepared.images)
    check_predict_parity(
        ultralytics_yolo, prepared.bundle, frames, case.min_match_rate, f"{case.name} non-square"
    )
    if case.non_square_input_hw is None:
        return
    onnx_dims = OnnxDetector(prepared.bundle.model_path, ["cpu"]).input_shape[2:]
    if any(isinstance(d, int) for d in onnx_dims):
        pytest.skip(f"{case.name}: ONNX input H/W are fixed ({onnx_dims}), no other input size")
    bundle = case.make_bundle(prepared.work / "bundle-non-square", case.non_square_input_hw)
    h, w = case.non_square_input_hw
    frames += [read_image(p) for p in prepared.images[:: max(1, len(prepared.images) // 16)]]
    check_predict_parity(
        ultralytics_yolo, bundle, frames, case.min_match_rate, f"{case.name} input {h}x{w}"
    )


# --- our metric functions against Ultralytics' own (fast) ---------------------------------


@pytest.fixture(scope="module")
def ultralytics_metrics(ultralytics_env: None) -> Any:
    from ultralytics.engine.validator import BaseValidator
    from ultralytics.utils import metrics

    return BaseValidator, metrics


def _random_scene(
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    m, n = int(rng.integers(0, 8)), int(rng.integers(0, 15))
    xy = rng.uniform(0, 100, (m, 2))
    gt = np.concatenate([xy, xy + rng.uniform(5, 40, (m, 2))], 1)
    near = (np.repeat(gt, 3, 0) + rng.normal(0, 4, (3 * m, 4)))[:n]
    far_xy = rng.uniform(0, 100, (n - len(near), 2))
    preds = np.concatenate([near, np.concatenate([far_xy, far_xy + 20], 1)])
    return gt, preds, rng.integers(0, 3, m), rng.integers(0, 3, n)


def test_matching_equals_ultralytics(ultralytics_metrics: Any) -> None:
    import torch

    validator_cls, metrics = ultralytics_metrics

    class _Validator:
        iouv = torch.linspace(0.5, 0.95, 10)

    rng = np.random.default_rng(0)
    for _ in range(200):
        gt, preds, gt_cls, pred_cls = _random_scene(rng)
        iou = metrics.box_iou(
            torch.tensor(gt, dtype=torch.float32), torch.tensor(preds, dtype=torch.float32)
        )
        theirs = validator_cls.match_predictions(
            _Validator(), torch.tensor(pred_cls), torch.tensor(gt_cls), iou
        ).numpy()
        ours = match_predictions(pred_cls, gt_cls, box_iou(gt, preds))
        np.testing.assert_array_equal(ours, theirs)


def test_ap_per_class_equals_ultralytics(ultralytics_metrics: Any) -> None:
    _, metrics = ultralytics_metrics
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, m = int(rng.integers(0, 400)), int(rng.integers(1, 100))
        tp = rng.random((n, 10)) < np.linspace(0.8, 0.1, 10)
        conf, pred_cls, target_cls = rng.random(n), rng.integers(0, 5, n), rng.integers(0, 5, m)
        theirs = metrics.ap_per_class(tp, conf, pred_cls, target_cls)
        ours = ap_per_class(tp, conf, pred_cls, target_cls)
        np.testing.assert_allclose(ours.precision, theirs[2], atol=1e-12)
        np.testing.assert_allclose(ours.recall, theirs[3], atol=1e-12)
        np.testing.assert_allclose(ours.f1, theirs[4], atol=1e-12)
        np.testing.assert_allclose(ours.ap, theirs[5], atol=1e-12)
        np.testing.assert_array_equal(ours.classes, theirs[6])

"""Evaluate a model bundle on a YOLO-format dataset, with Ultralytics' validation metrics.

The images go through exactly the serving path (`models.preprocess.preprocess_batch`
-> a `Detector` -> `models.postprocess.postprocess`) with Ultralytics' validation
settings instead of the bundle's serving thresholds: score threshold 0.001 for every
class, NMS IoU 0.7, at most 300 detections, and, like Ultralytics' validator,
multi-label decoding (a box may be reported once per class whose score passes;
single-label with ``multi_label=False``). Ground truth comes from the normalised label
rows scaled to each image's original size; predictions are mapped back to original
pixels, and both are matched there (`models.metrics`).

One known difference from Ultralytics: predictions are clipped to the image, as they
are when served, while Ultralytics matches unclipped boxes in the letterboxed input.
Boxes on the image border then overlap their ground truth a little better, which can
lift mAP50-95 by a few thousandths (NEU-DET: 0.3606 vs 0.3566 at rect=False; without
clipping the two agree to every printed digit).

Images are read with ``cv2.imread`` in colour mode, so grey images become 3-channel
BGR (as Ultralytics' loader does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from models.bundle import Bundle
from models.manifest import ClassMetrics, Metrics, PostprocessSpec
from models.metrics import ClassAP, DetectionStats
from models.postprocess import Detections, postprocess
from models.preprocess import preprocess_batch
from models.runtime import Detector, OnnxDetector, check_model_io
from models.undistort import bundle_undistorter
from models.yolo_dataset import DatasetError, YoloDataset, load_data_yaml

__all__ = [
    "DatasetError",
    "EvalReport",
    "ImageDetections",
    "ProgressCallback",
    "YoloDataset",
    "evaluate",
    "evaluate_report",
    "expand_multi_label",
    "ground_truth_xyxy",
    "iter_detections",
    "load_data_yaml",
    "read_image",
    "validation_postprocess_spec",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (images done, images total)."""

VAL_CONF = 0.001
VAL_IOU = 0.7
VAL_MAX_DET = 300


@dataclass(frozen=True)
class EvalReport:
    """Everything an evaluation measured.

    `metrics`: the manifest's `Metrics` (per class only for classes with ground
    truth, as Ultralytics reports). `images_per_class`: images holding at least one
    box of the class, for every class. `providers`: ORT providers the detector ran
    on (empty for an injected detector). `f1_confidence`: the score where the mean
    F1 peaks, at which P and R are read.
    """

    metrics: Metrics
    images_per_class: dict[str, int]
    providers: list[str]
    f1_confidence: float
    split: str
    pr_curves: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(
        default_factory=dict)
    """Per class with ground truth: (recall, precision) at 101 confidence thresholds
    from 0 to 1 (IoU 0.5), for plotting."""


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """Read an image as (H, W, 3) uint8 BGR (grey and 16-bit images are converted).

    Raises DatasetError when OpenCV cannot decode the file.
    """
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path} (missing or not an image OpenCV decodes)")
    out: npt.NDArray[np.uint8] = np.asarray(image, dtype=np.uint8)
    return out


def ground_truth_xyxy(
    labels: npt.NDArray[np.float32], width_px: int, height_px: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Label rows [K, 5] (class, cx, cy, w, h normalised) -> boxes_xyxy [K, 4] in
    original pixels (not clipped, as Ultralytics) and class ids [K]."""
    rows = np.asarray(labels, dtype=np.float64).reshape(-1, 5)
    scale = np.array([width_px, height_px, width_px, height_px], dtype=np.float64)
    centre, half = rows[:, 1:3], rows[:, 3:5] / 2
    boxes_xyxy = np.concatenate((centre - half, centre + half), axis=1) * scale
    return boxes_xyxy, rows[:, 0].astype(np.int64)


def expand_multi_label(
    output: npt.NDArray[np.floating[npt.NBitBase]], conf: float
) -> npt.NDArray[np.float32]:
    """Rewrite a yolo_raw batch ``[B, 4+nc, N]`` so that single-label decoding of the
    result is Ultralytics' multi-label decoding of the input.

    Every (anchor, class) pair whose score is > `conf` becomes its own column with
    the anchor's box and only that class's score (others 0), in Ultralytics' order
    (anchor-major, then class). Images with fewer pairs are padded with all-zero
    columns, which no threshold >= 0 keeps. Returns ``[B, 4+nc, M]`` float32, M >= 1.
    """
    out = np.asarray(output, dtype=np.float32)
    nc = out.shape[1] - 4
    # (anchor, class) pairs per image; scores transposed to [N, nc] for anchor-major order
    pairs = [np.nonzero(np.greater(out[b, 4:, :].T, conf)) for b in range(out.shape[0])]
    width = max([1, *(anchors.shape[0] for anchors, _ in pairs)])
    expanded = np.zeros((out.shape[0], 4 + nc, width), dtype=np.float32)
    for b, (anchors, classes) in enumerate(pairs):
        m = anchors.shape[0]
        image = out[b]  # [4+nc, N]; index per image so the advanced indices stay adjacent
        expanded[b, :4, :m] = image[:4, anchors]
        expanded[b, 4 + classes, np.arange(m)] = image[4 + classes, anchors]
    return expanded


def validation_postprocess_spec(
    spec: PostprocessSpec,
    conf: float = VAL_CONF,
    iou: float = VAL_IOU,
    max_det: int = VAL_MAX_DET,
) -> PostprocessSpec:
    """The bundle's postprocessing with validation thresholds: `conf` for every class
    (per-class serving thresholds dropped), NMS `iou`, `max_det` boxes; `agnostic`
    and `max_candidates` stay the bundle's."""
    return spec.model_copy(
        update={
            "score_threshold": conf,
            "class_score_thresholds": {},
            "iou_threshold": iou,
            "max_detections": max_det,
        }
    )


def _check_classes(bundle: Bundle, dataset: YoloDataset) -> None:
    if list(dataset.names) != list(bundle.manifest.classes):
        raise DatasetError(
            f"dataset classes {dataset.names} differ from the bundle's classes "
            f"{bundle.manifest.classes}; class ids would not mean the same thing"
        )


def _batches(items: Sequence[Path], size: int) -> list[Sequence[Path]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _pad_batch(
    tensor: npt.NDArray[np.floating[npt.NBitBase]], fixed: int | None
) -> npt.NDArray[np.floating[npt.NBitBase]]:
    if fixed is None or tensor.shape[0] == fixed:
        return tensor
    pad = np.zeros((fixed - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
    return np.concatenate((tensor, pad), axis=0)


def _metrics_from(
    summary: ClassAP, names: Sequence[str], images: int, instances: int, dataset_label: str
) -> Metrics:
    per_class = {
        names[int(c)]: ClassMetrics(
            precision=float(summary.precision[i]),
            recall=float(summary.recall[i]),
            map50=float(summary.ap50[i]),
            map50_95=float(summary.ap50_95[i]),
            instances=int(summary.instances[i]),
        )
        for i, c in enumerate(summary.classes.tolist())
    }
    return Metrics(
        dataset=dataset_label,
        images=images,
        instances=instances,
        precision=summary.mean_precision,
        recall=summary.mean_recall,
        map50=summary.map50,
        map50_95=summary.map50_95,
        per_class=per_class,
    )


@dataclass(frozen=True)
class ImageDetections:
    """One dataset image's detections (original pixels) and label rows [K, 5]."""

    path: Path
    width_px: int
    height_px: int
    labels: npt.NDArray[np.float32]
    detections: Detections


def iter_detections(
    bundle: Bundle,
    dataset: YoloDataset,
    split: str = "val",
    *,
    batch_size: int = 8,
    providers: Sequence[str] | None = None,
    conf: float = VAL_CONF,
    iou: float = VAL_IOU,
    max_det: int = VAL_MAX_DET,
    multi_label: bool = True,
    progress: ProgressCallback | None = None,
    detector: Detector | None = None,
    providers_out: list[str] | None = None,
) -> Iterator[ImageDetections]:
    """Run the bundle over `split` of `dataset` through the serving path (with the
    bundle's own undistortion, if its spec names one) at validation thresholds and
    yield every image's detections with its labels, in dataset order.

    `detector` replaces the bundle's ONNX Runtime session; otherwise one is created on
    `providers` (their names appended to `providers_out`). Raises what
    `evaluate_report` raises.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    manifest = bundle.manifest
    _check_classes(bundle, dataset)
    images = dataset.images(split)
    if detector is None:
        onnx = OnnxDetector(bundle.model_path, providers)
        check_model_io(onnx, manifest)
        if providers_out is not None:
            providers_out.extend(onnx.providers)
        detector = onnx
    undistort = bundle_undistorter(bundle)
    fixed = manifest.input.batch if isinstance(manifest.input.batch, int) else None
    if fixed is not None:
        batch_size = fixed
    input_hw = (manifest.input.height, manifest.input.width)
    spec = validation_postprocess_spec(manifest.postprocess, conf, iou, max_det)
    expand = multi_label and manifest.output.format == "yolo_raw" and len(manifest.classes) > 1
    done = 0
    for paths in _batches(images, batch_size):
        frames = [read_image(p) for p in paths]
        tensor, transforms = preprocess_batch(
            frames, manifest.preprocess, input_hw, undistort=undistort
        )
        output = detector.run(_pad_batch(tensor, fixed))[: len(frames)]
        if expand:
            output = expand_multi_label(output, conf)
        detections = postprocess(output, spec, manifest.output.format, manifest.classes, transforms)
        for path, frame, found in zip(paths, frames, detections, strict=True):
            height, width = frame.shape[:2]
            yield ImageDetections(path, int(width), int(height), dataset.labels_for(path), found)
        done += len(frames)
        if progress is not None:
            progress(done, len(images))


def evaluate_report(
    bundle: Bundle,
    dataset: YoloDataset,
    split: str = "val",
    *,
    batch_size: int = 8,
    providers: Sequence[str] | None = None,
    conf: float = VAL_CONF,
    iou: float = VAL_IOU,
    max_det: int = VAL_MAX_DET,
    multi_label: bool = True,
    progress: ProgressCallback | None = None,
    detector: Detector | None = None,
) -> EvalReport:
    """Run the bundle over `split` of `dataset` and measure P, R, mAP50, mAP50-95.

    `detector` replaces the bundle's ONNX Runtime session (tests, a warm engine);
    otherwise one is created on `providers` and checked against the manifest. A
    fixed-batch model gets its own batch size (short batches padded).

    Raises DatasetError (bad dataset, classes differing from the bundle's, unreadable
    image or label), and the `ModelError`s of the runtime and postprocessing.
    """
    manifest = bundle.manifest
    active_providers: list[str] = []
    stats = DetectionStats()
    for image in iter_detections(
        bundle, dataset, split, batch_size=batch_size, providers=providers, conf=conf,
        iou=iou, max_det=max_det, multi_label=multi_label, progress=progress,
        detector=detector, providers_out=active_providers,
    ):
        true_xyxy, true_cls = ground_truth_xyxy(image.labels, image.width_px, image.height_px)
        found = image.detections
        stats.add_image(found.boxes_xyxy, found.scores, found.class_ids, true_xyxy, true_cls)

    summary = stats.summary()
    names = list(manifest.classes)
    instances = stats.instances_per_class(len(names))
    per_image = stats.images_per_class(len(names))
    metrics = _metrics_from(
        summary, names, stats.images, int(instances.sum()), f"{dataset.label}:{split}"
    )
    logger.debug(
        "evaluated %s v%d on %s:%s: mAP50 %.4f",
        manifest.name,
        manifest.version,
        dataset.label,
        split,
        metrics.map50,
    )
    return EvalReport(
        metrics=metrics,
        images_per_class={name: int(per_image[i]) for i, name in enumerate(names)},
        providers=active_providers,
        f1_confidence=summary.confidence,
        split=split,
        pr_curves={
            names[int(c)]: (tuple(float(v) for v in summary.r_curve[i, ::10]),
                            tuple(float(v) for v in summary.p_curve[i, ::10]))
            for i, c in enumerate(summary.classes)
        },
    )


def evaluate(
    bundle: Bundle,
    dataset: YoloDataset,
    split: str = "val",
    *,
    batch_size: int = 8,
    providers: Sequence[str] | None = None,
    conf: float = VAL_CONF,
    progress: ProgressCallback | None = None,
    detector: Detector | None = None,
) -> Metrics:
    """`evaluate_report(...).metrics`: the `Metrics` to store in a manifest."""
    return evaluate_report(
        bundle,
        dataset,
        split,
        batch_size=batch_size,
        providers=providers,
        conf=conf,
        progress=progress,
        detector=detector,
    ).metrics

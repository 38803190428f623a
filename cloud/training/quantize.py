"""INT8 variants of model bundles: static quantization with ONNX Runtime's tools.

`quantize_bundle`: frames are preprocessed with the source bundle's own
`models.preprocess`, so calibration sees exactly the tensors inference sees ->
`cloud.training.onnx_quant.quantize_onnx` (ORT's pre-processing, then
``quantize_static``, QDQ by default) -> a new bundle with the same name, classes, preprocessing and
postprocessing, a golden set re-made by the INT8 model on the source bundle's golden
images, lineage pointing at the source (parent_version; quantization settings in
training_config) and metrics from `models.evaluate`. The variant keeps its source's
version and says ``variant: int8``: versions are claimed by training alone (one
allocator per model name), so a later training can never collide with a variant.

Defaults, as measured on NEU-DET yolo11n (val, 360 images; AVX2 CPU without VNNI):
- uint8 activations, int8 weights, per channel, ``reduce_range`` (7-bit weights). MLAS'
  AVX2 u8s8 kernel adds pairs of u8*s8 products in int16 (vpmaddubsw), which saturates
  with full 8-bit weights: mAP50 -3.7 points without reduce_range, -0.4 with it. 7-bit
  weights cannot saturate, so the integer results do not depend on the CPU having VNNI
  (nor, then, does the golden set; not tried on a VNNI machine). uint8 x uint8 is as
  accurate but barely faster than float (~1.15x against ~1.45x).
- the detection head's decode stays float (``exclude_head="decode"``): a YOLO output
  concatenates box coordinates (0..imgsz px) with class scores (0..1); quantized with
  one scale, every score rounds to 0 and mAP collapses to 0.
- min-max calibration on 64 frames: percentile was within noise of it (mAP50 -0.3
  against -0.4 points) at twice the calibration time; ORT's entropy calibration, with
  quantize_static's fixed 128 bins, has a single candidate range and gives exactly
  min-max's ranges.
- the input's range comes from the preprocessing spec ((0, 1) for pixels / 255), so
  every input pixel is exact in uint8.
- the DFL decode's softmax is rewritten as reductions (`cloud.training.graph_rewrite`): same
  numbers, no slow transposes; it was 15-18% of the demo detector's CPU time.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from cloud.training.onnx_quant import (
    HeadExclusion,
    QuantFormatName,
    QuantizationError,
    QuantKind,
    QuantMethod,
    quantize_onnx,
)
from cloud.training.train import code_revision
from models.bundle import Bundle
from models.errors import ModelError
from models.evaluate import evaluate
from models.golden import GOLDEN_JSON, GoldenFile, build_bundle
from models.manifest import Lineage, Metrics, PreprocessSpec
from models.preprocess import Tensor, preprocess_batch
from models.yolo_dataset import IMAGE_SUFFIXES, YoloDataset, load_data_yaml

__all__ = [
    "QuantizationError",
    "input_range",
    "load_calibration_frames",
    "quantize_bundle",
]

logger = logging.getLogger(__name__)


def load_calibration_frames(
    source: Path, count: int = 64, *, split: str = "train"
) -> list[npt.NDArray[np.uint8]]:
    """Read `count` calibration frames (BGR uint8) spread evenly over `source`: a
    YOLO data.yaml (its `split`; its val split if it has no `split`) or a folder of
    images (searched recursively). Files are taken in sorted order at an even stride,
    so a dataset sorted by class contributes every class.

    Raises QuantizationError for a missing source, no images, or an unreadable image.
    """
    if count < 1:
        raise QuantizationError(f"calibration needs at least 1 frame, asked for {count}")
    source = Path(source)
    if source.is_dir():
        paths = sorted((p for p in source.rglob("*")
                        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=str)
    elif source.is_file() and source.suffix.lower() in {".yaml", ".yml"}:
        paths = _dataset_images(source, split)
    else:
        raise QuantizationError(
            f"calibration source {source}: not a data.yaml or a folder of images"
            + ("" if source.exists() else " (it does not exist)"))
    if not paths:
        raise QuantizationError(f"calibration source {source}: no images found "
                                f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    stride = max(1, len(paths) // count)
    frames: list[npt.NDArray[np.uint8]] = []
    for path in paths[::stride][:count]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise QuantizationError(f"calibration image {path}: OpenCV cannot decode it")
        frames.append(np.asarray(image, dtype=np.uint8))
    return frames


def _dataset_images(data_yaml: Path, split: str) -> list[Path]:
    try:
        ds = load_data_yaml(data_yaml)
        if split not in ds.sources:
            logger.warning("%s has no %s split; calibrating on its val split", data_yaml, split)
            split = "val"
        return ds.images(split)
    except ModelError as e:
        raise QuantizationError(f"calibration source {data_yaml}: {e}") from e


def _golden_frames(src: Bundle) -> list[npt.NDArray[np.uint8]]:
    """The source bundle's golden images, decoded as golden verification decodes them."""
    try:
        golden = GoldenFile.model_validate_json(src.path_of(GOLDEN_JSON).read_bytes())
    except (OSError, ValueError) as e:
        raise QuantizationError(f"{src.root}: cannot read its golden set: {e}") from e
    frames: list[npt.NDArray[np.uint8]] = []
    for entry in golden.images:
        data = np.fromfile(src.path_of(entry.file), dtype=np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if image is None:
            raise QuantizationError(f"{src.root}: golden image {entry.file} is unreadable")
        frames.append(np.asarray(image, dtype=np.uint8))
    return frames


def input_range(spec: PreprocessSpec) -> tuple[float, float]:
    """The (min, max) a model input can hold under `spec`: pixel values 0 and 255
    after ``x * scale``, mean and std, over the channels. (0.0, 1.0) for pixels / 255."""
    lows = [(0.0 * spec.scale - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    highs = [(255.0 * spec.scale - m) / s for m, s in zip(spec.mean, spec.std, strict=True)]
    return min(lows), max(highs)


def _calibration_batches(
    src: Bundle, frames: Sequence[npt.NDArray[np.uint8]], batch_size: int
) -> list[Tensor]:
    manifest = src.manifest
    fixed = manifest.input.batch if isinstance(manifest.input.batch, int) else None
    size = fixed or batch_size
    hw = (manifest.input.height, manifest.input.width)
    batches: list[Tensor] = []
    for start in range(0, len(frames), size):
        chunk = list(frames[start:start + size])
        if fixed is not None and len(chunk) < fixed:  # a fixed-batch model: repeat frames
            chunk += [chunk[i % len(chunk)] for i in range(fixed - len(chunk))]
        try:
            tensor, _ = preprocess_batch(chunk, manifest.preprocess, hw)
        except ModelError as e:
            raise QuantizationError(f"calibration frame {start}..: {e}") from e
        batches.append(np.ascontiguousarray(tensor))
    return batches


def quantize_bundle(
    src: Bundle,
    out_dir: Path,
    calibration_images: Sequence[npt.NDArray[np.uint8]],
    *,
    method: QuantMethod = "minmax",
    per_channel: bool = True,
    reduce_range: bool = True,
    quant_format: QuantFormatName = "qdq",
    activation_type: QuantKind = "uint8",
    weight_type: QuantKind = "int8",
    exclude_head: HeadExclusion = "decode",
    nodes_to_exclude: Sequence[str] = (),
    rewrite_dfl: bool = True,
    label: str | None = None,
    eval_dataset: YoloDataset | None = None,
    eval_split: str = "val",
    calibration_batch: int = 8,
    progress: Callable[[str], None] | None = None,
) -> Bundle:
    """Make an INT8 variant of `src` as a new verified bundle in `out_dir` (must not
    exist or be empty).

    `calibration_images`: BGR uint8 frames as the camera gives them; they are
    preprocessed with `src`'s own spec. The new bundle has `src`'s name, classes and
    pre/postprocessing and version, ``variant="int8"``, label `label` (default src's +
    "-int8"), lineage parent_version = src's version with the quantization
    settings in training_config, a golden set made by the INT8 model on `src`'s golden
    images, and metrics from `evaluate` on `eval_dataset`'s `eval_split` (none without
    a dataset). Raises QuantizationError (also for a source that is already INT8), and
    the ModelErrors of building/evaluating.
    """
    say = progress or (lambda msg: logger.info("%s", msg))
    manifest = src.manifest
    if manifest.variant == "int8":
        raise QuantizationError(f"{src.root}: already an INT8 variant; quantize its source")
    if manifest.input.dtype != "float32":
        raise QuantizationError(
            f"{src.root}: input dtype {manifest.input.dtype}; quantize the float32 export")
    if not calibration_images:
        raise QuantizationError("no calibration frames")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise QuantizationError(f"{out_dir} exists and is not empty")
    golden = _golden_frames(src)
    batches = _calibration_batches(src, calibration_images, calibration_batch)
    settings = {"method": method, "per_channel": per_channel, "reduce_range": reduce_range,
                "format": quant_format, "activation_type": activation_type,
                "weight_type": weight_type, "exclude_head": exclude_head,
                "rewrite_dfl": rewrite_dfl}
    with tempfile.TemporaryDirectory(prefix="lineguard-int8-") as tmp:
        int8_path = Path(tmp) / "model.onnx"
        say(f"quantizing {src.model_path} on {len(calibration_images)} frames: "
            + ", ".join(f"{k}={v}" for k, v in settings.items()))
        result = quantize_onnx(src.model_path, int8_path, manifest.input.name, batches,
                               input_range=input_range(manifest.preprocess), method=method,
                               per_channel=per_channel, reduce_range=reduce_range,
                               quant_format=quant_format, activation_type=activation_type,
                               weight_type=weight_type, exclude_head=exclude_head,
                               nodes_to_exclude=nodes_to_exclude, rewrite_dfl=rewrite_dfl)
        say(f"quantized: {result.quant_ops}; {len(result.excluded_nodes)} nodes left float; "
            f"{result.dfl_rewrites} DFL decode(s) rewritten")
        lineage = Lineage(
            dataset_fingerprint=manifest.lineage.dataset_fingerprint,
            code_revision=code_revision(),
            training_config={**manifest.lineage.training_config,
                             "quantization": "onnxruntime static int8",
                             **{f"quant_{k}": v for k, v in settings.items()},
                             "quant_calibration_frames": len(calibration_images),
                             "quant_nodes_excluded": len(result.excluded_nodes),
                             "quant_dfl_rewrites": result.dfl_rewrites},
            parent_version=manifest.version,
            created_at=datetime.now(UTC),
        )

        def build(out: Path, metrics: Metrics | None) -> Bundle:
            return build_bundle(
                out, int8_path, name=manifest.name, version=manifest.version, variant="int8",
                label=f"{manifest.label}-int8" if label is None else label,
                classes=manifest.classes, input_hw=(manifest.input.height, manifest.input.width),
                preprocess=manifest.preprocess, postprocess=manifest.postprocess,
                output_format=manifest.output.format, lineage=lineage, metrics=metrics,
                golden_images=golden, providers=["cpu"],
            )

        if eval_dataset is None:
            return build(Path(out_dir), None)
        staging = build(Path(tmp) / "staging", None)
        say(f"evaluating the INT8 model on {eval_dataset.label}:{eval_split}")
        metrics = evaluate(staging, eval_dataset, eval_split, providers=["cpu"])
        say(f"INT8 mAP50 {metrics.map50:.4f}, mAP50-95 {metrics.map50_95:.4f}")
        shutil.rmtree(staging.root, ignore_errors=True)
        return build(Path(out_dir), metrics)

"""INT8 variants of model bundles: static quantization with ONNX Runtime's tools.

Steps: the source bundle's float32 model -> ``quant_pre_process`` (ORT's graph
optimisation and ONNX shape inference) -> ``quantize_static`` (QDQ format by default),
calibrated on frames that went through the bundle's own `models.preprocess`, so
calibration sees exactly the tensors inference sees -> a new bundle with the same
classes, preprocessing and postprocessing, a golden set re-made by the INT8 model on
the source bundle's golden images, lineage pointing at the source (parent_version,
quantization settings in training_config) and metrics from `models.evaluate`.

Defaults, as measured on NEU-DET yolo11n (AVX2 CPU without VNNI, see the report):
- uint8 activations, int8 weights, per channel, ``reduce_range`` (7-bit weights). MLAS'
  AVX2 u8s8 kernel adds pairs of u8*s8 products in int16 (vpmaddubsw), which saturates
  with full 8-bit weights; 7-bit weights cannot saturate, so results are also the same
  on VNNI CPUs (and the golden set reproduces there).
- the detection head's decode stays float (``exclude_head="decode"``): a YOLO output
  concatenates box coordinates (0..640 px) with class scores (0..1); quantized with one
  scale, every score rounds to 0 and mAP collapses to 0.

onnx and onnxruntime.quantization are imported inside the functions that use them:
only the cloud quantizes, the appliance never imports this module.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import numpy.typing as npt

from cloud.errors import CloudError
from cloud.train import code_revision
from models.bundle import Bundle
from models.errors import ModelError
from models.evaluate import evaluate
from models.golden import GOLDEN_JSON, GoldenFile, build_bundle
from models.manifest import Lineage, Metrics
from models.preprocess import Tensor, preprocess_batch
from models.yolo_dataset import IMAGE_SUFFIXES, YoloDataset, load_data_yaml

__all__ = [
    "HeadExclusion",
    "QuantFormatName",
    "QuantKind",
    "QuantMethod",
    "QuantizationError",
    "decode_tail_nodes",
    "load_calibration_frames",
    "output_head_nodes",
    "quantize_bundle",
    "quantize_onnx",
    "quantized_op_counts",
]

logger = logging.getLogger(__name__)

QuantMethod = Literal["minmax", "entropy", "percentile"]
QuantKind = Literal["uint8", "int8"]
QuantFormatName = Literal["qdq", "qoperator"]
HeadExclusion = Literal["decode", "output", "none"]
"""Which head nodes stay float: ``decode`` every node after the last weight-heavy
layers (reshapes, concats, DFL softmax and its 1x16 conv, sigmoid, box arithmetic);
``output`` only the node making the output and its direct producers (the final
Concat, Sigmoid, Mul); ``none`` nothing."""

_HEAVY_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_HEAVY_MIN_WEIGHTS = 256  # a YOLO DFL's expectation conv has 1x16 fixed weights: decode
_QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                        "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})


class QuantizationError(CloudError):
    """Quantization could not be done: bad calibration source or frames, a model the
    quantizer cannot handle, or ORT's tools failed; the message says which."""


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


class _CalibrationBatches:
    """ORT's CalibrationDataReader protocol over preprocessed batches."""

    def __init__(self, input_name: str, batches: Sequence[Tensor]) -> None:
        self._input_name, self._batches, self._next = input_name, batches, 0

    def get_next(self) -> dict[str, Tensor] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return {self._input_name: self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next = 0


def _weight_count(name: str, initializers: dict[str, Any]) -> int | None:
    tensor = initializers.get(name)
    return None if tensor is None else int(np.prod(list(tensor.dims), dtype=np.int64))


def decode_tail_nodes(model: Any, heavy_min_weights: int = _HEAVY_MIN_WEIGHTS) -> list[str]:
    """Names of the nodes after the model's last weight-heavy layers: nodes that some
    Conv/ConvTranspose/MatMul/Gemm with more than `heavy_min_weights` constant weights
    (or non-constant weights) feeds and that feed no such layer. For a YOLO detector
    that is the decode (reshape/concat of the per-level maps, DFL softmax and 1x16 conv,
    sigmoid, anchor arithmetic, the final concat). `model` is an onnx.ModelProto."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    heavy = []
    for node in graph.node:
        if node.op_type in _HEAVY_OPS and len(node.input) > 1:
            weights = _weight_count(node.input[1], initializers)
            if weights is None or weights > heavy_min_weights:
                heavy.append(node)
    upstream: set[int] = set()  # ids of nodes that reach a heavy layer (and heavy ones)
    stack = list(heavy)
    while stack:
        node = stack.pop()
        if id(node) not in upstream:
            upstream.add(id(node))
            stack += [producers[i] for i in node.input if i in producers]
    downstream: set[int] = set()
    stack = [c for node in heavy for out in node.output for c in consumers.get(out, [])]
    while stack:
        node = stack.pop()
        if id(node) not in downstream:
            downstream.add(id(node))
            stack += [c for out in node.output for c in consumers.get(out, [])]
    return [n.name for n in graph.node
            if id(n) in downstream and id(n) not in upstream and n.name]


def output_head_nodes(model: Any) -> list[str]:
    """Names of the nodes making the graph outputs and of their direct producers (for a
    YOLO export: the final Concat, its box Mul and class Sigmoid)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    names: list[str] = []
    for output in model.graph.output:
        last = producers.get(output.name)
        if last is None:
            continue
        for node in [last, *(producers[i] for i in last.input if i in producers)]:
            if node.name and node.name not in names:
                names.append(node.name)
    return names


def quantized_op_counts(model_path: Path) -> dict[str, int]:
    """How many nodes of each quantization op type (QuantizeLinear, DequantizeLinear,
    QLinearConv, ...) the ONNX file holds."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(model_path), load_external_data=False).graph.node:
        if node.op_type in _QUANT_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize_onnx` did: nodes left float on purpose, quantization ops written."""

    excluded_nodes: list[str]
    quant_ops: dict[str, int]


def quantize_onnx(
    src_path: Path,
    dst_path: Path,
    input_name: str,
    calibration_batches: Sequence[Tensor],
    *,
    method: QuantMethod = "minmax",
    per_channel: bool = True,
    reduce_range: bool = True,
    quant_format: QuantFormatName = "qdq",
    activation_type: QuantKind = "uint8",
    weight_type: QuantKind = "int8",
    exclude_head: HeadExclusion = "decode",
    nodes_to_exclude: Sequence[str] = (),
) -> QuantizeResult:
    """Statically quantize a float32 ONNX file to `dst_path`, calibrated on
    `calibration_batches` (model-input tensors) fed to `input_name`.

    Shape inference: ORT's symbolic shape inference fails on Ultralytics' dynamic-batch
    exports ("Incomplete symbolic shape inference") and is slow, so only ORT's
    optimiser and ONNX shape inference run; they give every conv activation its shape.
    Raises QuantizationError (no batches, the tools failed, nothing was quantized).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration_batches:
        raise QuantizationError("no calibration frames")
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="lineguard-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(src_path), str(prepared), skip_symbolic_shape=True)
            model = onnx.load(str(prepared))
        except Exception as e:  # ORT's tools raise bare Exception and many others
            raise QuantizationError(f"{src_path.name}: shape inference failed: {e}") from e
        head = (decode_tail_nodes(model) if exclude_head == "decode"
                else output_head_nodes(model) if exclude_head == "output" else [])
        excluded = list(dict.fromkeys([*head, *nodes_to_exclude]))
        logger.info("quantizing %s: %d calibration batches, %d nodes left float (%s head)",
                    src_path.name, len(calibration_batches), len(excluded), exclude_head)
        try:
            quantize_static(
                str(prepared), str(dst_path),
                _CalibrationBatches(input_name, calibration_batches),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=per_channel, reduce_range=reduce_range,
                activation_type=types[activation_type], weight_type=types[weight_type],
                nodes_to_exclude=excluded, calibrate_method=methods[method],
                calibration_providers=["CPUExecutionProvider"],
            )
        except Exception as e:  # ORT's tools raise bare Exception and many others
            raise QuantizationError(f"{src_path.name}: quantize_static failed: {e}") from e
    counts = quantized_op_counts(dst_path)
    if not counts:
        raise QuantizationError(f"{src_path.name}: the quantizer quantized no node")
    return QuantizeResult(excluded_nodes=excluded, quant_ops=counts)


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
    version: int | None = None,
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
    pre/postprocessing, version `version` (default src's + 1), label `label` (default
    src's + "-int8"), lineage parent_version = src's version with the quantization
    settings in training_config, a golden set made by the INT8 model on `src`'s golden
    images, and metrics from `evaluate` on `eval_dataset`'s `eval_split` (none without
    a dataset). Raises QuantizationError, and the ModelErrors of building/evaluating.
    """
    say = progress or (lambda msg: logger.info("%s", msg))
    manifest = src.manifest
    if manifest.input.dtype != "float32":
        raise QuantizationError(
            f"{src.root}: input dtype {manifest.input.dtype}; quantize the float32 export")
    if not calibration_images:
        raise QuantizationError("no calibration frames")
    golden = _golden_frames(src)
    batches = _calibration_batches(src, calibration_images, calibration_batch)
    settings = {"method": method, "per_channel": per_channel, "reduce_range": reduce_range,
                "format": quant_format, "activation_type": activation_type,
                "weight_type": weight_type, "exclude_head": exclude_head}
    with tempfile.TemporaryDirectory(prefix="lineguard-int8-") as tmp:
        int8_path = Path(tmp) / "model.onnx"
        say(f"quantizing {src.model_path} on {len(calibration_images)} frames ({settings})")
        result = quantize_onnx(src.model_path, int8_path, manifest.input.name, batches,
                               method=method, per_channel=per_channel,
                               reduce_range=reduce_range, quant_format=quant_format,
                               activation_type=activation_type, weight_type=weight_type,
                               exclude_head=exclude_head, nodes_to_exclude=nodes_to_exclude)
        say(f"quantized: {result.quant_ops}; {len(result.excluded_nodes)} nodes left float")
        lineage = Lineage(
            dataset_fingerprint=manifest.lineage.dataset_fingerprint,
            code_revision=code_revision(),
            training_config={**manifest.lineage.training_config,
                             "quantization": "onnxruntime static int8",
                             **{f"quant_{k}": v for k, v in settings.items()},
                             "quant_calibration_frames": len(calibration_images),
                             "quant_nodes_excluded": len(result.excluded_nodes)},
            parent_version=manifest.version,
            created_at=datetime.now(UTC),
        )

        def build(out: Path, metrics: Metrics | None) -> Bundle:
            return build_bundle(
                out, int8_path, name=manifest.name,
                version=manifest.version + 1 if version is None else version,
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

"""Static INT8 quantization of an ONNX detector with ONNX Runtime's tools.

`quantize_onnx`: ``quant_pre_process`` (ORT's graph optimiser and ONNX shape
inference) then ``quantize_static`` on given calibration tensors, with the detection
head's decode optionally kept float. `decode_tail_nodes` / `output_head_nodes` find
those nodes from the graph alone (no names assumed). Bundles are
`cloud.training.quantize`'s job.

onnx and onnxruntime.quantization are imported inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cloud.errors import CloudError
from cloud.training.graph_rewrite import graph_index, rewrite_dfl_softmax
from models.preprocess import Tensor

__all__ = [
    "HeadExclusion",
    "QuantFormatName",
    "QuantKind",
    "QuantMethod",
    "QuantizationError",
    "QuantizeResult",
    "decode_tail_nodes",
    "output_head_nodes",
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


class _CalibrationBatches:
    """ORT's CalibrationDataReader protocol over preprocessed batches. With
    ``CalibStridedMinMax`` ORT calls `set_range` per chunk of batches and collects each
    chunk on its own, so the histogram calibrators (which keep every intermediate tensor
    of what they are fed) hold one batch at a time."""

    def __init__(self, input_name: str, batches: Sequence[Tensor]) -> None:
        self._input_name, self._batches = input_name, batches
        self._next, self._end = 0, len(batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._batches))

    def get_next(self) -> dict[str, Tensor] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return {self._input_name: self._batches[self._next - 1]}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self._batches)


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
    initializers, producers, consumers = graph_index(graph)
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
    dfl_rewrites: int


def quantize_onnx(
    src_path: Path,
    dst_path: Path,
    input_name: str,
    calibration_batches: Sequence[Tensor],
    *,
    input_range: tuple[float, float] | None = None,
    method: QuantMethod = "minmax",
    per_channel: bool = True,
    reduce_range: bool = True,
    quant_format: QuantFormatName = "qdq",
    activation_type: QuantKind = "uint8",
    weight_type: QuantKind = "int8",
    exclude_head: HeadExclusion = "decode",
    nodes_to_exclude: Sequence[str] = (),
    rewrite_dfl: bool = True,
) -> QuantizeResult:
    """Statically quantize a float32 ONNX file to `dst_path`, calibrated on
    `calibration_batches` (model-input tensors) fed to `input_name`. `input_range`
    (min, max), when given, fixes the input's quantization range instead of calibrating
    it: for pixels / 255 that is (0, 1), and every input value is then exact in uint8.
    `rewrite_dfl`: first replace YOLO DFL softmax decodes by the equivalent reductions
    (`cloud.training.graph_rewrite`), which ORT runs much faster.

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
        rewritten, prepared = Path(tmp) / "rewritten.onnx", Path(tmp) / "prepared.onnx"
        try:
            source = onnx.load(str(src_path))
            rewrites = rewrite_dfl_softmax(source) if rewrite_dfl else 0
            onnx.save(source, str(rewritten))
            quant_pre_process(str(rewritten), str(prepared), skip_symbolic_shape=True)
            model = onnx.load(str(prepared))
        except Exception as e:  # ORT's tools raise bare Exception and many others
            raise QuantizationError(f"{src_path.name}: shape inference failed: {e}") from e
        head = (decode_tail_nodes(model) if exclude_head == "decode"
                else output_head_nodes(model) if exclude_head == "output" else [])
        excluded = list(dict.fromkeys([*head, *nodes_to_exclude]))
        logger.info("quantizing %s: %d calibration batches, %d nodes left float (%s head)",
                    src_path.name, len(calibration_batches), len(excluded), exclude_head)
        extra: dict[str, object] = {"CalibStridedMinMax": 1}  # one batch per collection
        if input_range is not None:
            extra["TensorQuantOverrides"] = {
                input_name: [{"rmin": np.float32(input_range[0]),
                              "rmax": np.float32(input_range[1])}]}
        chatter = io.StringIO()  # ORT's histogram calibrators print() their settings
        try:
            with contextlib.redirect_stdout(chatter):
                quantize_static(
                    str(prepared), str(dst_path),
                    _CalibrationBatches(input_name, calibration_batches),
                    quant_format=(QuantFormat.QDQ if quant_format == "qdq"
                                  else QuantFormat.QOperator),
                    per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=types[activation_type], weight_type=types[weight_type],
                    nodes_to_exclude=excluded, calibrate_method=methods[method],
                    calibration_providers=["CPUExecutionProvider"], extra_options=extra,
                )
        except Exception as e:  # ORT's tools raise bare Exception and many others
            raise QuantizationError(f"{src_path.name}: quantize_static failed: {e}") from e
        finally:
            if chatter.getvalue():
                logger.debug("onnxruntime.quantization: %s", chatter.getvalue().strip())
    counts = quantized_op_counts(dst_path)
    if not counts:
        raise QuantizationError(f"{src_path.name}: the quantizer quantized no node")
    return QuantizeResult(excluded_nodes=excluded, quant_ops=counts, dfl_rewrites=rewrites)



"""ONNX Runtime adapter: provider choice, session creation, model IO checks.

The only module of the package that talks to onnxruntime. Errors from ORT are
translated into `RuntimeUnavailableError` / `ModelShapeError` / `ModelError`.

GPU safety: onnxruntime-gpu lists the CUDA and TensorRT providers as *available*
even on a machine without a GPU; asking for them there makes ORT log errors and fall
back to CPU. So a GPU provider is only chosen when an NVIDIA device is visible, and
after creating a session the providers it actually runs with are read back
(`OnnxDetector.providers`) and reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from models.errors import ModelError, ModelShapeError, RuntimeUnavailableError
from models.manifest import Manifest, check_input_tensor_bytes
from models.preprocess import Tensor

__all__ = [
    "PROVIDER_ORDER",
    "Detector",
    "OnnxDetector",
    "check_model_io",
    "choose_providers",
    "gpu_visible",
]

logger = logging.getLogger(__name__)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_CPU = "CPUExecutionProvider"
_GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16"}

_state = ort.capi.onnxruntime_pybind11_state
# Everything ORT raises for a bad model, a bad input or a failed provider.
_ORT_ERRORS: tuple[type[BaseException], ...] = (
    _state.Fail,
    _state.InvalidArgument,
    _state.NoSuchFile,
    _state.NoModel,
    _state.EngineError,
    _state.RuntimeException,
    _state.InvalidProtobuf,
    _state.NotImplemented,
    _state.InvalidGraph,
    _state.EPFail,
    RuntimeError,
    ValueError,
)

Dim = int | str | None


class Detector(Protocol):
    """What the pipeline needs from a detector: one batch in, first output out."""

    def run(self, batch: Tensor) -> Tensor: ...


def gpu_visible() -> bool:
    """True when an NVIDIA GPU device node/driver is visible to this process."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in {"", "-1"}:
        return False
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """Execution providers to ask ORT for, best first, CPU always last.

    `requested`: provider names (``CUDAExecutionProvider``) or aliases (``cpu``,
    ``cuda``, ``tensorrt``), in preference order; None means `PROVIDER_ORDER`.
    Requested providers that are not available here (or GPU providers without a
    visible GPU) are left out with a log line. Raises RuntimeUnavailableError for a
    name ONNX Runtime does not know.
    """
    known = set(ort.get_all_providers())
    available = set(ort.get_available_providers())
    has_gpu = gpu_visible()
    names: list[str] = []
    for raw in PROVIDER_ORDER if requested is None else requested:
        name = _ALIASES.get(raw.strip().lower(), raw.strip())
        if name not in known:
            raise RuntimeUnavailableError(
                f"unknown execution provider {raw!r}; known: cpu, cuda, tensorrt or one of "
                f"{sorted(known)}"
            )
        if name in names:
            continue
        if name not in available:
            if requested is not None:
                logger.warning("execution provider %s is not available here; skipped", name)
            continue
        if name in _GPU_PROVIDERS and not has_gpu:
            if requested is not None:
                logger.warning("execution provider %s skipped: no GPU visible", name)
            continue
        names.append(name)
    if _CPU in names:
        names.remove(_CPU)
    names.append(_CPU)
    return names


class OnnxDetector:
    """An ONNX Runtime session for one detector model.

    Attributes: `input_name`, `output_names`, `input_shape` / `output_shape` (as
    declared in the model; symbolic dims are str or None), `input_dtype`
    ("float32"/"float16"), `providers` (the ones the session actually runs with).
    """

    def __init__(
        self,
        model_path: Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
    ) -> None:
        """Create the session. Raises ModelError if the file is missing,
        RuntimeUnavailableError if ORT cannot load it with the providers,
        ModelShapeError if the model does not have exactly one rank-4 float input."""
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"model file not found: {self.model_path}")
        wanted = choose_providers(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=wanted
            )
        except _ORT_ERRORS as exc:
            raise RuntimeUnavailableError(
                f"cannot load {self.model_path.name} with {wanted}: {exc}"
            ) from exc
        self.providers: list[str] = list(self.session.get_providers())
        if self.providers[:1] != wanted[:1]:
            logger.warning("asked ONNX Runtime for %s, session runs on %s", wanted, self.providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelShapeError(
                f"{self.model_path.name}: expected 1 input, found {len(inputs)} "
                f"({[i.name for i in inputs]})"
            )
        outputs = self.session.get_outputs()
        if not outputs:
            raise ModelShapeError(f"{self.model_path.name}: model has no outputs")
        self.input_name: str = inputs[0].name
        self.input_shape: list[Dim] = list(inputs[0].shape)
        self.output_names: list[str] = [o.name for o in outputs]
        self.output_shape: list[Dim] = list(outputs[0].shape)
        dtype = _ORT_DTYPES.get(inputs[0].type)
        if dtype is None or len(self.input_shape) != 4:
            raise ModelShapeError(
                f"{self.model_path.name}: input {self.input_name!r} must be a rank-4 float32/"
                f"float16 image tensor, found {inputs[0].type} {self.input_shape}"
            )
        self.input_dtype: str = dtype
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        logger.info(
            "loaded %s on %s: input %s %s, outputs %s",
            self.model_path.name,
            self.providers,
            self.input_name,
            self.input_shape,
            self.output_names,
        )

    @property
    def on_gpu(self) -> bool:
        """True when the session's first provider is a GPU one."""
        return self.providers[0] in _GPU_PROVIDERS

    def run(self, batch: Tensor) -> Tensor:
        """Run one batch (the model's input layout and dtype) and return the first
        output. Raises ModelShapeError if ORT rejects the input, ModelError otherwise."""
        try:
            result = self.session.run([self.output_names[0]], {self.input_name: batch})
        except _state.InvalidArgument as exc:
            raise ModelShapeError(
                f"{self.model_path.name} rejected input {batch.shape} {batch.dtype}: {exc}"
            ) from exc
        except _ORT_ERRORS as exc:
            raise ModelError(f"{self.model_path.name}: inference failed: {exc}") from exc
        output: Tensor = np.asarray(result[0])
        return output


def _dim_mismatch(found: Dim, expected: int) -> bool:
    return isinstance(found, int) and found != expected


def check_model_io(detector: OnnxDetector, manifest: Manifest) -> None:
    """Check the model's input and output against the manifest, statically and by one
    probe run on a zero batch (symbolic output dims only show their size when run).

    Raises ModelShapeError naming what was expected and what was found: input
    name, dtype, H x W, channels, batch; output name, rank, 4+nc rows (yolo_raw) or
    last dim 6 (end2end).
    """
    name = detector.model_path.name
    spec_in, spec_out = manifest.input, manifest.output
    nchw = manifest.preprocess.layout == "nchw"
    if detector.input_name != spec_in.name:
        raise ModelShapeError(
            f"{name}: input name: manifest says {spec_in.name!r}, model has {detector.input_name!r}"
        )
    if detector.input_dtype != spec_in.dtype or manifest.preprocess.dtype != spec_in.dtype:
        raise ModelShapeError(
            f"{name}: input dtype: manifest input {spec_in.dtype}, preprocess "
            f"{manifest.preprocess.dtype}, model {detector.input_dtype}"
        )
    batch_dim, *rest = detector.input_shape
    channels, height, width = rest if nchw else (rest[2], rest[0], rest[1])
    layout = "[B, 3, H, W]" if nchw else "[B, H, W, 3]"
    if (
        _dim_mismatch(channels, spec_in.channels)
        or _dim_mismatch(height, spec_in.height)
        or _dim_mismatch(width, spec_in.width)
    ):
        raise ModelShapeError(
            f"{name}: input {layout}: manifest says {spec_in.channels} channels, "
            f"{spec_in.height}x{spec_in.width} (HxW); model has {detector.input_shape}"
        )
    if spec_in.batch == "dynamic" and isinstance(batch_dim, int):
        raise ModelShapeError(
            f"{name}: input batch: manifest says dynamic, model has fixed batch {batch_dim}"
        )
    if isinstance(spec_in.batch, int) and _dim_mismatch(batch_dim, spec_in.batch):
        raise ModelShapeError(
            f"{name}: input batch: manifest says {spec_in.batch}, model has {batch_dim}"
        )
    if spec_out.name not in detector.output_names:
        raise ModelShapeError(
            f"{name}: output {spec_out.name!r} not in the model's outputs {detector.output_names}"
        )
    if detector.output_names[0] != spec_out.name:
        raise ModelShapeError(
            f"{name}: output {spec_out.name!r} must be the model's first output, "
            f"found {detector.output_names}"
        )
    nc = len(manifest.classes)
    probe_batch = spec_in.batch if isinstance(spec_in.batch, int) else 1
    shape = (
        (probe_batch, 3, spec_in.height, spec_in.width)
        if nchw
        else (probe_batch, spec_in.height, spec_in.width, 3)
    )
    dtype = np.float32 if spec_in.dtype == "float32" else np.float16
    check_input_tensor_bytes(shape, np.dtype(dtype).itemsize, f"{name}: probe input")
    probe = np.zeros(shape, dtype=dtype)
    _check_output_shape(name, manifest, detector.output_shape, nc, "declared")
    _check_output_shape(name, manifest, list(detector.run(probe).shape), nc, "probe run")


def _check_output_shape(
    name: str, manifest: Manifest, shape: list[Dim], nc: int, source: str
) -> None:
    fmt = manifest.output.format
    if len(shape) != 3:
        expected = "[B, 4+nc, N]" if fmt == "yolo_raw" else "[B, K, 6]"
        raise ModelShapeError(
            f"{name}: output {manifest.output.name!r} ({source}) must be {expected} "
            f"for format {fmt}, found rank {len(shape)} {shape}"
        )
    if fmt == "yolo_raw" and _dim_mismatch(shape[1], 4 + nc):
        raise ModelShapeError(
            f"{name}: output {manifest.output.name!r} ({source}) shape {shape}: expected "
            f"4+{nc} = {4 + nc} rows for {nc} classes {manifest.classes}, found {shape[1]}"
        )
    if fmt == "end2end" and _dim_mismatch(shape[2], 6):
        raise ModelShapeError(
            f"{name}: output {manifest.output.name!r} ({source}) shape {shape}: expected "
            f"last dim 6 (x1, y1, x2, y2, score, class) for end2end, found {shape[2]}"
        )

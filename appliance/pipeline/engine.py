"""The inference engine: model bundles loaded into warmed ONNX Runtime sessions.

`Engine.load(bundle)` builds a `LoadedModel`: a session on the configured providers
(TensorRT, CUDA, CPU, from what is present), its input/output checked against the
manifest, the golden set reproduced on this machine, every batch size 1..max_batch run
once (warm-up, so the first live batch of each size pays no allocation or kernel
selection), a preallocated input buffer, and I/O binding when on GPU. Only a model that
passed all of that is handed to the pipeline, so no frame meets a half-loaded model.

The session is `models.runtime.OnnxDetector` (made by an injectable `DetectorFactory`,
the seam tests use to inject failures); model errors are translated into `EngineError`.

Invariants:
- a `LoadedModel` is immutable once built except for its input buffer, which only the
  engine thread writes (`preprocess(..., into_buffer=True)`); `detect` allocates its
  own, so other threads (shadow runs) may call it concurrently;
- `infer` returns one output row per input row; a fixed-batch model gets its batch
  padded and the padding rows cut off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from appliance.config import EngineConfig
from appliance.errors import EngineError
from calibration.camera_model import CameraCalibration
from models.bundle import Bundle
from models.errors import ModelError
from models.golden import verify_golden
from models.manifest import Manifest, check_input_tensor_bytes
from models.postprocess import Detections, postprocess
from models.preprocess import FrameTransform, Tensor, preprocess, preprocess_batch
from models.runtime import OnnxDetector, check_model_io
from models.undistort import Undistorter, bundle_undistorter, check_station_camera

logger = logging.getLogger(__name__)

DetectorFactory = Callable[[Path, Sequence[str] | None, int, int], OnnxDetector]
"""`factory(model_path, providers or None, intra_op_threads, inter_op_threads)`."""

ImageBGR = npt.NDArray[np.uint8]


def default_detector_factory(
    model_path: Path, providers: Sequence[str] | None, intra: int, inter: int
) -> OnnxDetector:
    """A plain `OnnxDetector`."""
    return OnnxDetector(model_path, providers, intra_op_threads=intra, inter_op_threads=inter)


def version_id(manifest: Manifest) -> str:
    """The model version recorded with every verdict: ``"{name}:{version}"``."""
    return f"{manifest.name}:{manifest.version}"


@dataclass(frozen=True)
class ModelInfo:
    """What is running: for logs, events, stats and telemetry."""

    version_id: str
    name: str
    version: int
    label: str
    preprocess_hash: str
    classes: tuple[str, ...]
    input_hw: tuple[int, int]
    providers: tuple[str, ...]
    io_binding: bool
    max_batch: int
    bundle_root: str
    load_s: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


class _BoundRunner:
    """Runs a session through I/O binding: one preallocated input OrtValue per batch
    size on the session's device (the host batch is copied into it in place), the
    output bound to host memory (ORT allocates it per run, so a result handed to the
    postprocess thread is never overwritten)."""

    def __init__(self, detector: OnnxDetector) -> None:
        self._session = detector.session
        self._input = detector.input_name
        self._output = detector.output_names[0]
        self._device = "cuda" if detector.on_gpu else "cpu"
        self._binding = self._session.io_binding()
        self._inputs: dict[tuple[int, ...], Any] = {}

    def run(self, batch: Tensor) -> Tensor:
        key = tuple(batch.shape)
        value = self._inputs.get(key)
        if value is None:
            value = ort.OrtValue.ortvalue_from_shape_and_type(key, batch.dtype, self._device, 0)
            self._inputs[key] = value
        value.update_inplace(np.ascontiguousarray(batch))
        self._binding.bind_ortvalue_input(self._input, value)
        self._binding.bind_output(self._output, "cpu")
        self._session.run_with_iobinding(self._binding)
        output: Tensor = np.asarray(self._binding.copy_outputs_to_cpu()[0])
        return output


class LoadedModel:
    """A verified, warmed bundle ready for the engine thread. Build with `Engine.load`."""

    def __init__(
        self,
        bundle: Bundle,
        detector: OnnxDetector,
        *,
        max_batch: int,
        io_binding: bool,
        load_s: float = 0.0,
    ) -> None:
        m = bundle.manifest
        self.bundle = bundle
        self.manifest = m
        self.detector = detector
        self.input_hw = (m.input.height, m.input.width)
        self.fixed_batch = m.input.batch if isinstance(m.input.batch, int) else None
        self.max_batch = self.fixed_batch or max_batch
        self.undistort: Undistorter | None = bundle_undistorter(bundle)
        """The camera the preprocessing undistorts with (remap tables built once)."""
        self.preprocess_hash = m.preprocess.version_hash()
        self.preprocess_key = f"{self.preprocess_hash}:{self.input_hw}"
        """Which preprocessing a tensor was made for (spec hash and input size)."""
        shape = (3, *self.input_hw) if m.preprocess.layout == "nchw" else (*self.input_hw, 3)
        dtype = np.float16 if m.preprocess.dtype == "float16" else np.float32
        self._buffer: Tensor = np.zeros((self.max_batch, *shape), dtype=dtype)
        self._runner = _BoundRunner(detector) if io_binding else None
        self.info = ModelInfo(
            version_id=version_id(m),
            name=m.name,
            version=m.version,
            label=m.label,
            preprocess_hash=self.preprocess_hash,
            classes=tuple(m.classes),
            input_hw=self.input_hw,
            providers=tuple(detector.providers),
            io_binding=io_binding,
            max_batch=self.max_batch,
            bundle_root=str(bundle.root),
            load_s=load_s,
        )

    @property
    def version_id(self) -> str:
        return self.info.version_id

    @property
    def on_gpu(self) -> bool:
        return self.detector.on_gpu

    def preprocess(
        self, images_bgr: Sequence[ImageBGR], *, into_buffer: bool = False
    ) -> tuple[Tensor, list[FrameTransform]]:
        """The bundle's preprocessing of up to `max_batch` frames. `into_buffer` writes
        into the preallocated input buffer (engine thread only). Raises ModelError."""
        out = self._buffer if into_buffer else None
        return preprocess_batch(images_bgr, self.manifest.preprocess, self.input_hw, out=out,
                                undistort=self.undistort)

    def preprocess_one(self, image_bgr: ImageBGR) -> tuple[Tensor, FrameTransform]:
        """The bundle's preprocessing of one frame into a new tensor (no batch dim); safe
        in any thread. Raises ModelError."""
        return preprocess(image_bgr, self.manifest.preprocess, self.input_hw,
                          undistort=self.undistort)

    def preprocess_robust(
        self, images_bgr: Sequence[ImageBGR]
    ) -> tuple[Tensor, list[FrameTransform], dict[int, str]]:
        """Preprocess into the input buffer (engine thread only). If the batch fails,
        frames are done one by one so one bad frame does not sink the others: returns
        (tensor of the good frames in order, their transforms, {index: error} of the
        bad ones)."""
        try:
            tensor, transforms = self.preprocess(images_bgr, into_buffer=True)
        except ModelError as e:
            logger.warning("%s: batch preprocessing failed (%s); frame by frame",
                           self.version_id, e)
        else:
            return tensor, transforms, {}
        spec, good = self.manifest.preprocess, 0
        transforms, bad = [], {}
        for i, image in enumerate(images_bgr):
            try:
                _, one = preprocess_batch([image], spec, self.input_hw, out=self._buffer[good:],
                                          undistort=self.undistort)
            except ModelError as e:
                bad[i] = str(e)
                continue
            transforms.append(one[0])
            good += 1
        return self._buffer[:good], transforms, bad

    def load_into_buffer(self, tensors: Sequence[Tensor]) -> Tensor:
        """Copy per-frame input tensors (worker mode) into the input buffer; returns the
        batch view (engine thread only)."""
        batch = self._buffer[: len(tensors)]
        for i, tensor in enumerate(tensors):
            batch[i] = tensor
        return batch

    def infer(self, batch: Tensor) -> Tensor:
        """Run `batch` ([n, ...], n <= max_batch) and return the first output ([n, ...]).
        Raises EngineError if the runtime fails."""
        n = int(batch.shape[0])
        if self.fixed_batch is not None and n != self.fixed_batch:
            if batch.base is not self._buffer:
                self._buffer[:n] = batch
            batch = self._buffer[: self.fixed_batch]
        try:
            output = self._runner.run(batch) if self._runner else self.detector.run(batch)
        except ModelError as e:
            raise EngineError(f"{self.version_id}: inference failed: {e}") from e
        # ORT raises many unrelated exception types (pybind11 ones, RuntimeError...);
        # whatever it raises, this batch failed and the caller must know why.
        except Exception as e:
            raise EngineError(f"{self.version_id}: inference failed: {e!r}") from e
        return output[:n] if output.shape[0] != n else output

    def postprocess(
        self, output: Tensor, transforms: Sequence[FrameTransform]
    ) -> list[Detections]:
        """Decode + NMS, boxes in the (station-cropped) frame's pixels. Raises ModelError."""
        m = self.manifest
        return postprocess(output, m.postprocess, m.output.format, m.classes, transforms)

    def detect(self, images_bgr: Sequence[ImageBGR]) -> list[Detections]:
        """Preprocess, infer and postprocess any number of frames (chunks of max_batch)
        with buffers of its own: safe beside the engine thread (shadow runs)."""
        results: list[Detections] = []
        for start in range(0, len(images_bgr), self.max_batch):
            chunk = images_bgr[start : start + self.max_batch]
            tensor, transforms = self.preprocess(chunk)
            if self.fixed_batch is not None and len(chunk) != self.fixed_batch:
                pad = np.zeros((self.fixed_batch - len(chunk), *tensor.shape[1:]), tensor.dtype)
                tensor = np.concatenate([tensor, pad])
            try:
                output = self.detector.run(tensor)
            except ModelError as e:
                raise EngineError(f"{self.version_id}: inference failed: {e}") from e
            results += self.postprocess(output, transforms)
        return results

    def warm_up(self, runs: int) -> None:
        """Run every batch size the engine will send (`runs` times each). Raises
        EngineError."""
        sizes = [self.fixed_batch] if self.fixed_batch else range(1, self.max_batch + 1)
        for n in sizes:
            for _ in range(runs):
                self.infer(self._buffer[:n])


@dataclass(frozen=True)
class StationOptics:
    """What a bundle that undistorts needs to know of a station: its camera
    calibration (None: not calibrated) and whether it crops frames before the model
    (an undistorting bundle needs whole frames; its own `preprocess.roi_xywh` crops
    after undistortion)."""

    camera: CameraCalibration | None = None
    crops: bool = False


class Engine:
    """Builds `LoadedModel`s with one engine configuration. `stations`: the optics of
    every station the models will judge (checked against a bundle that undistorts)."""

    def __init__(
        self,
        cfg: EngineConfig,
        *,
        max_batch: int,
        factory: DetectorFactory = default_detector_factory,
        stations: Mapping[str, StationOptics] | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_batch = max_batch
        self._factory = factory
        self._stations = dict(stations) if stations is not None else {}

    def check_stations(self, bundle: Bundle) -> None:
        """Refuse (ModelError) a bundle that undistorts with a camera calibration that
        a station does not have, or on a station that crops frames first."""
        m = bundle.manifest
        wanted = m.preprocess.undistort_calibration
        if wanted is None:
            return
        stations = self._stations or {"(unnamed)": StationOptics()}
        for name, optics in sorted(stations.items()):
            check_station_camera(wanted, optics.camera, f"bundle {version_id(m)} on station {name}")
            if optics.crops:
                raise ModelError(
                    f"bundle {version_id(m)} undistorts whole frames but station {name} crops "
                    "them first (roi_xywh / calibration.roi_mm_xywh): remove the station ROI "
                    "and crop in the bundle's preprocess.roi_xywh")

    def load(
        self,
        bundle: Bundle,
        *,
        verify: bool = True,
        providers: Sequence[str] | None = None,
    ) -> LoadedModel:
        """Create, check, verify (golden set, unless `verify` is False) and warm a model
        for `bundle`. `providers` overrides the configured ones (CPU fallback).
        Raises EngineError naming the bundle and what failed."""
        started = time.perf_counter()
        m = bundle.manifest
        wanted = self.cfg.providers if providers is None else providers
        try:
            # The input buffer is (max batch, input) large: refuse before allocating it.
            batch = m.input.batch if isinstance(m.input.batch, int) else self.max_batch
            check_input_tensor_bytes(m.input.tensor_shape(batch, m.preprocess.layout),
                                     2 if m.preprocess.dtype == "float16" else 4,
                                     "input buffer")
            detector = self._factory(
                bundle.model_path, wanted, self.cfg.threads(), self.cfg.inter_op_threads
            )
            check_model_io(detector, m)
            self.check_stations(bundle)
            if verify:
                report = verify_golden(bundle, detector)
                logger.info("%s: golden set reproduces (%d images, %d detections)",
                            version_id(m), report.images, report.detections)
        except ModelError as e:
            raise EngineError(f"bundle {version_id(m)} ({bundle.root}): {e}") from e
        io_binding = self.cfg.io_binding == "on" or (
            self.cfg.io_binding == "auto" and detector.on_gpu
        )
        model = LoadedModel(bundle, detector, max_batch=self.max_batch, io_binding=io_binding)
        model.warm_up(self.cfg.warmup_runs)
        load_s = time.perf_counter() - started
        model.info = replace(model.info, load_s=round(load_s, 3))
        logger.info(
            "model %s (%s) ready on %s in %.2f s: input %dx%d, batch 1..%d warmed, "
            "io binding %s",
            model.version_id, m.label, ",".join(detector.providers), load_s,
            model.input_hw[0], model.input_hw[1], model.max_batch, io_binding,
        )
        return model

    def load_on_cpu(self, model: LoadedModel) -> LoadedModel:
        """The same bundle on the CPU provider (the GPU fallback). Raises EngineError."""
        return self.load(model.bundle, verify=True, providers=["cpu"])

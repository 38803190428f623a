"""Golden sets: the detections a bundle must reproduce, and building bundles with one.

``golden/golden.json`` lists, per golden image (``golden/img_000.png`` ...), the sha256
of its preprocessed tensor and the detections this exact bundle produced when it was
built. `verify_golden` redoes both on the current machine: a different tensor means
the preprocessing differs (an OpenCV resize, a colour order, a letterbox done as a
stretch); different detections mean the model or postprocessing behaves differently.
Either way the bundle must not be activated.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calibration.camera_model import CameraCalibration
from models.bundle import GOLDEN_DIR, MODEL, Bundle, write_bundle
from models.errors import GoldenMismatchError, ManifestError, ModelError
from models.imagefile import ImageFileError, decode_image
from models.manifest import (
    MAX_CLASSES,
    MAX_MANIFEST_BYTES,
    InputSpec,
    Lineage,
    Manifest,
    Metrics,
    OutputSpec,
    PostprocessSpec,
    PreprocessSpec,
    Variant,
    format_validation_error,
)
from models.postprocess import Detections, postprocess
from models.preprocess import Tensor, preprocess_batch, tensor_sha256
from models.runtime import Detector, OnnxDetector, check_model_io
from models.undistort import CAMERA_FILE, Undistorter, bundle_undistorter
from protocol.atomic import atomic_write_bytes

__all__ = [
    "GOLDEN_JSON",
    "GoldenDetection",
    "GoldenFile",
    "GoldenImage",
    "GoldenReport",
    "build_bundle",
    "create_golden",
    "detect",
    "verify_golden",
]

logger = logging.getLogger(__name__)

GOLDEN_JSON = f"{GOLDEN_DIR}/golden.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_Coord = Annotated[float, Field(ge=-1e6, le=1e6)]


class GoldenDetection(_Frozen):
    class_id: int = Field(ge=0, le=MAX_CLASSES)
    class_name: str = Field(max_length=128)
    score: float = Field(ge=0.0, le=1.0)
    box_xyxy: tuple[_Coord, _Coord, _Coord, _Coord]  # original-frame pixels


class GoldenImage(_Frozen):
    file: str = Field(max_length=1024)  # bundle-relative, e.g. golden/img_000.png
    height: int = Field(ge=1, le=65_535)
    width: int = Field(ge=1, le=65_535)
    tensor_sha256: str = Field(max_length=64)
    detections: list[GoldenDetection] = Field(max_length=100_000)


class GoldenFile(_Frozen):
    format: Literal[1] = 1
    preprocess_hash: str = Field(max_length=64)
    images: list[GoldenImage] = Field(min_length=1, max_length=1000)


@dataclass(frozen=True)
class GoldenReport:
    """What `verify_golden` checked: images, detections, and the worst deviations."""

    images: int
    detections: int
    max_score_diff: float
    min_iou: float


def _batch_for(manifest: Manifest, tensor: Tensor) -> Tensor:
    """A fixed-batch model gets the one-image batch repeated to its batch size."""
    size = manifest.input.batch
    if isinstance(size, int) and size > 1:
        return np.repeat(tensor, size, axis=0)
    return tensor


def detect(
    manifest: Manifest,
    detector: Detector,
    image_bgr: npt.NDArray[np.uint8],
    undistort: Undistorter | None = None,
) -> tuple[str, Detections]:
    """Preprocess one frame, run it alone, postprocess; returns (tensor sha256, detections).
    `undistort`: the camera the spec names, if it names one."""
    spec_in = manifest.input
    tensor, transforms = preprocess_batch(
        [image_bgr], manifest.preprocess, (spec_in.height, spec_in.width), undistort=undistort
    )
    output = detector.run(_batch_for(manifest, tensor))
    detections = postprocess(
        output, manifest.postprocess, manifest.output.format, manifest.classes, transforms
    )[0]
    return tensor_sha256(tensor[0]), detections


def create_golden(
    bundle_dir: Path,
    manifest: Manifest,
    images_bgr: Sequence[npt.NDArray[np.uint8]],
    detector: Detector,
    undistort: Undistorter | None = None,
) -> dict[str, Path]:
    """Write ``golden/img_NNN.png`` (lossless) and ``golden/golden.json`` under
    `bundle_dir` with what `detector` produces for each image under `manifest`
    (raw camera frames; undistorted with `undistort` when the spec names a calibration).

    Returns bundle-relative name -> path of every file written (to list in the
    manifest). Raises ModelError for no images or an image that cannot be encoded.
    """
    if not images_bgr:
        raise ModelError("a golden set needs at least one image")
    golden_dir = Path(bundle_dir) / GOLDEN_DIR
    golden_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    entries: list[GoldenImage] = []
    for index, image in enumerate(images_bgr):
        name = f"{GOLDEN_DIR}/img_{index:03d}.png"
        ok, encoded = cv2.imencode(".png", image)
        if not ok:
            raise ModelError(f"cannot encode golden image {index} (shape {image.shape})")
        path = Path(bundle_dir) / name
        atomic_write_bytes(path, encoded.tobytes())
        files[name] = path
        # Detections are made from the decoded PNG, exactly what verification reads.
        sha, dets = detect(manifest, detector, _read_image(path, name), undistort)
        entries.append(
            GoldenImage(
                file=name,
                height=int(image.shape[0]),
                width=int(image.shape[1]),
                tensor_sha256=sha,
                detections=[
                    GoldenDetection(
                        class_id=int(c),
                        class_name=manifest.classes[int(c)],
                        score=float(s),
                        box_xyxy=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    )
                    for b, s, c in zip(dets.boxes_xyxy, dets.scores, dets.class_ids, strict=True)
                ],
            )
        )
    golden = GoldenFile(preprocess_hash=manifest.preprocess.version_hash(), images=entries)
    json_path = Path(bundle_dir) / GOLDEN_JSON
    text = json.dumps(golden.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"
    atomic_write_bytes(json_path, text.encode("utf-8"))
    files[GOLDEN_JSON] = json_path
    return files


def _read_image(path: Path, name: str) -> npt.NDArray[np.uint8]:
    """A golden image, its header size checked before it is decoded."""
    try:
        data = path.read_bytes() if path.is_file() else b""
        image = decode_image(data, Path(name).name, flags=cv2.IMREAD_UNCHANGED)
    except (OSError, ImageFileError) as exc:
        raise GoldenMismatchError(
            f"golden image {Path(name).name}: missing or not a readable 8-bit image ({exc})"
        ) from None
    if image.dtype != np.uint8:
        raise GoldenMismatchError(
            f"golden image {Path(name).name}: missing or not a readable 8-bit image"
        )
    return np.asarray(image, dtype=np.uint8)


def _load_golden(bundle: Bundle) -> GoldenFile:
    if GOLDEN_JSON not in bundle.manifest.files:
        raise GoldenMismatchError(f"bundle has no golden set ({GOLDEN_JSON} not in the manifest)")
    path = bundle.path_of(GOLDEN_JSON)
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise GoldenMismatchError(f"{GOLDEN_JSON}: larger than {MAX_MANIFEST_BYTES} bytes")
        return GoldenFile.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise GoldenMismatchError(f"{GOLDEN_JSON}: {format_validation_error(exc)}") from None
    except OSError as exc:
        raise GoldenMismatchError(f"{GOLDEN_JSON}: cannot read ({exc})") from None


def _iou_xyxy(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """IoU of one box `a` [4] against boxes `b` [K, 4], both xyxy."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    wh = np.clip(np.minimum(a64[2:], b64[:, 2:]) - np.maximum(a64[:2], b64[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a64[2] - a64[0]) * (a64[3] - a64[1])
    area_b = (b64[:, 2] - b64[:, 0]) * (b64[:, 3] - b64[:, 1])
    union = area_a + area_b - inter
    # A box clipped flat against the image border has no area, so no IoU; the same
    # flat box found again (every corner within half a pixel) still counts as found.
    same = np.all(np.abs(b64 - a64) <= 0.5, axis=1).astype(np.float64)
    out: npt.NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-12), same)
    return out


def _compare(
    image: str,
    expected: list[GoldenDetection],
    found: Detections,
    manifest: Manifest,
    iou_min: float,
    score_tol: float,
) -> tuple[float, float]:
    """Match expected to found detections (same class, best IoU); returns (max score
    diff, min IoU). Detections within `score_tol` of their class's current threshold
    may appear or vanish (score jitter can carry them across it on other hardware)."""
    thresholds = manifest.postprocess.threshold_for(manifest.classes)
    used = np.zeros(len(found), dtype=bool)
    max_diff, min_iou = 0.0, 1.0
    missing: list[str] = []
    for index, det in enumerate(expected):
        candidates = (found.class_ids == det.class_id) & ~used
        box = np.asarray(det.box_xyxy, dtype=np.float32)
        ious = _iou_xyxy(box, found.boxes_xyxy) if len(found) else np.zeros(0)
        ious = np.where(candidates, ious, -1.0)
        best = int(np.argmax(ious)) if ious.size else -1
        borderline = abs(det.score - float(thresholds[det.class_id])) <= score_tol
        if best < 0 or ious[best] < iou_min:
            if not borderline:
                best_iou = float(ious[best]) if best >= 0 and ious[best] >= 0 else 0.0
                missing.append(
                    f"detection {index} (class {det.class_name}, score {det.score:.3f}, box "
                    f"{[round(v, 1) for v in det.box_xyxy]}) not reproduced (best IoU "
                    f"{best_iou:.3f} < {iou_min})"
                )
            continue
        used[best] = True
        diff = abs(float(found.scores[best]) - det.score)
        if diff > score_tol:
            raise GoldenMismatchError(
                f"golden image {image}: detection {index} (class {det.class_name}) score "
                f"{float(found.scores[best]):.4f} != {det.score:.4f} (tolerance {score_tol})"
            )
        max_diff, min_iou = max(max_diff, diff), min(min_iou, float(ious[best]))
    extra = [
        i
        for i in np.flatnonzero(~used)
        if abs(float(found.scores[i]) - float(thresholds[found.class_ids[i]])) > score_tol
    ]
    if missing or extra:
        detail = "; ".join(missing[:3])
        if extra:
            i = int(extra[0])
            where = [round(float(v), 1) for v in found.boxes_xyxy[i]]
            detail += ("; " if detail else "") + (
                f"unexpected {manifest.classes[int(found.class_ids[i])]} score "
                f"{float(found.scores[i]):.3f} at {where}"
            )
        raise GoldenMismatchError(
            f"golden image {image}: {len(found)} detections, expected {len(expected)}: {detail}"
        )
    return max_diff, min_iou


def verify_golden(
    bundle: Bundle, detector: Detector, *, iou_min: float = 0.98, score_tol: float = 0.005
) -> GoldenReport:
    """Check that every golden image reproduces its tensor sha256 and detections
    (undistorted with the calibration the bundle ships, when its spec names one).

    Raises GoldenMismatchError naming the image and what differs: the preprocessed
    tensor (preprocessing differs), a detection's class/box (IoU < `iou_min`) or score
    (> `score_tol` apart), or the number of detections.
    """
    manifest = bundle.manifest
    golden = _load_golden(bundle)
    undistort = bundle_undistorter(bundle)
    spec_hash = manifest.preprocess.version_hash()
    total, max_diff, min_iou = 0, 0.0, 1.0
    for entry in golden.images:
        name = Path(entry.file).name
        if entry.file not in manifest.files:
            raise GoldenMismatchError(f"golden image {name}: not listed in the manifest")
        image = _read_image(bundle.path_of(entry.file), entry.file)
        sha, found = detect(manifest, detector, image, undistort)
        if sha != entry.tensor_sha256:
            why = (
                f"preprocessing spec changed: {golden.preprocess_hash} -> {spec_hash}"
                if golden.preprocess_hash != spec_hash
                else "same spec, so the image or this machine's resize/conversion differs"
            )
            raise GoldenMismatchError(
                f"golden image {name}: preprocessed tensor sha256 {sha[:12]}.. != expected "
                f"{entry.tensor_sha256[:12]}.. (preprocessing differs; {why})"
            )
        diff, iou = _compare(name, entry.detections, found, manifest, iou_min, score_tol)
        total += len(entry.detections)
        max_diff, min_iou = max(max_diff, diff), min(min_iou, iou)
    return GoldenReport(len(golden.images), total, max_diff, min_iou)


def build_bundle(
    out_dir: Path,
    onnx_path: Path,
    *,
    name: str,
    version: int,
    label: str,
    variant: Variant | None = None,
    classes: Sequence[str],
    input_hw: tuple[int, int],
    preprocess: PreprocessSpec | None = None,
    postprocess: PostprocessSpec | None = None,
    output_format: Literal["yolo_raw", "end2end"] = "yolo_raw",
    lineage: Lineage,
    metrics: Metrics | None = None,
    golden_images: Sequence[npt.NDArray[np.uint8]],
    providers: Sequence[str] | None = None,
    extra_files: Mapping[str, Path] | None = None,
    camera: CameraCalibration | None = None,
) -> Bundle:
    """Build a verified bundle in `out_dir` (must not exist or be empty) from an ONNX
    file: the input/output names, dtype and batch come from the model; model IO is
    checked against the manifest; the golden set is made from `golden_images` and
    then verified on the written bundle. `extra_files` (bundle-relative name -> source)
    are added and listed in the manifest like every file (e.g. `drift_reference.json`).
    `camera`: ship this calibration as
    ``calibration/camera.json`` and name it in the preprocessing (frames, golden
    images included, are then undistorted before anything else).

    Raises ManifestError, ModelShapeError, RuntimeUnavailableError, ModelError.
    """
    detector = OnnxDetector(Path(onnx_path), providers)
    spec = preprocess or PreprocessSpec(
        dtype="float16" if detector.input_dtype == "float16" else "float32")
    if camera is not None:
        spec = spec.model_copy(update={"undistort_calibration": camera.content_hash()})
    batch_dim = detector.input_shape[0]
    dtype: Literal["float32", "float16"] = (
        "float16" if detector.input_dtype == "float16" else "float32"
    )
    try:
        manifest = Manifest.model_validate(
            {
                "name": name,
                "version": version,
                "label": label,
                "variant": variant,
                "classes": list(classes),
                "input": InputSpec(
                    name=detector.input_name,
                    height=input_hw[0],
                    width=input_hw[1],
                    dtype=dtype,
                    batch=batch_dim if isinstance(batch_dim, int) else "dynamic",
                ),
                "output": OutputSpec(name=detector.output_names[0], format=output_format),
                "preprocess": spec,
                "postprocess": postprocess or PostprocessSpec(),
                "lineage": lineage,
                "metrics": metrics,
            }
        )
    except ValidationError as exc:
        raise ManifestError(f"manifest: {format_validation_error(exc)}") from None
    check_model_io(detector, manifest)
    with tempfile.TemporaryDirectory(prefix="lineguard-golden-") as staging:
        undistort = None
        extra: dict[str, Path] = dict(extra_files or {})
        if camera is not None:
            undistort = Undistorter(camera)
            extra[CAMERA_FILE] = Path(staging) / CAMERA_FILE
            extra[CAMERA_FILE].parent.mkdir(parents=True)
            atomic_write_bytes(extra[CAMERA_FILE], camera.to_json().encode("utf-8"))
        golden_files = create_golden(Path(staging), manifest, golden_images, detector, undistort)
        bundle = write_bundle(
            Path(out_dir), manifest, {MODEL: Path(onnx_path), **golden_files, **extra}
        )
    report = verify_golden(bundle, detector)
    logger.info(
        "built bundle %s v%d: %d golden images, %d detections",
        name,
        version,
        report.images,
        report.detections,
    )
    return bundle

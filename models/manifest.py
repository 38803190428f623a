"""The bundle manifest: what a model bundle is, as validated data.

Every model is pydantic v2 with ``extra="forbid"`` and ``frozen=True``: an unknown
field is an error, never silently ignored, and a parsed manifest cannot be mutated
(build a new one with ``model_validate`` instead). `parse_manifest` is the one entry
point from text or a file; it turns pydantic's errors into a `ManifestError` whose
message spells out the field path of every problem.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models.errors import ManifestError
from protocol.configfile import format_validation_error as _format_validation_error

__all__ = [
    "MANIFEST_NAME",
    "PREPROCESS_SPEC_FORMAT",
    "ClassMetrics",
    "InputSpec",
    "Lineage",
    "Manifest",
    "Metrics",
    "OutputSpec",
    "PostprocessSpec",
    "PreprocessSpec",
    "Variant",
    "check_input_tensor_bytes",
    "check_relative_path",
    "format_validation_error",
    "parse_manifest",
]

MANIFEST_NAME = "manifest.json"
# Bumped whenever the *meaning* of a PreprocessSpec field changes, so that an old
# golden set's spec hash no longer matches even if the JSON looks the same.
PREPROCESS_SPEC_FORMAT = 1

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

# Bounds on every manifest field: a manifest is input from outside (a downloaded bundle),
# so nothing in it may make the process allocate or loop without limit.
MAX_MANIFEST_BYTES = 1024 * 1024
"""A manifest file larger than this is refused before it is parsed."""
MAX_INPUT_SIDE_PX = 8192
"""The largest model input height or width."""
MAX_BATCH = 256
"""The largest fixed batch size a manifest may declare."""
MAX_INPUT_TENSOR_BYTES = 2 * 1024**3
"""The largest input tensor (one batch) the models package allocates."""
MAX_CLASSES = 1000
MAX_FILES = 10_000
MAX_TEXT = 256
MAX_PATH = 1024
MAX_COUNT = 2**31 - 1
"""Versions, image and instance counts: what an SQLite INTEGER and JSON readers hold."""

Text = Annotated[str, Field(max_length=MAX_TEXT)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Finite = Annotated[float, Field(ge=-1e6, le=1e6)]
Pixels = Annotated[int, Field(ge=0, le=65_535)]
Variant = Literal["fp32", "int8"]
"""The numeric builds of one trained model a bundle can hold."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_input_tensor_bytes(shape: Sequence[int], itemsize: int, what: str) -> None:
    """Raise ManifestError if a tensor of `shape` and `itemsize` bytes per element is
    larger than `MAX_INPUT_TENSOR_BYTES`; call before allocating one."""
    nbytes = itemsize
    for dim in shape:
        nbytes *= int(dim)
    if nbytes > MAX_INPUT_TENSOR_BYTES:
        raise ManifestError(
            f"{what}: a {list(shape)} tensor needs {nbytes} bytes, more than the limit "
            f"{MAX_INPUT_TENSOR_BYTES} bytes (input size or batch too large)"
        )


def check_relative_path(name: str, *, allow_manifest: bool = False) -> str:
    """Return `name` if it is a safe bundle-relative POSIX path, else raise ValueError.

    Safe: non-empty, relative, no ``..`` / ``.`` / empty components, no backslash,
    no NUL, and (unless `allow_manifest`) not the manifest itself.
    """
    if not name or "\\" in name or "\x00" in name:
        raise ValueError(f"bad file name {name!r}")
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"file name {name!r} is absolute")
    parts = name.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise ValueError(f"file name {name!r} must be a plain relative path (no '..', '.', '//')")
    if name == MANIFEST_NAME and not allow_manifest:
        raise ValueError(f"{MANIFEST_NAME} must not list itself")
    return name


class PreprocessSpec(_Frozen):
    """How a BGR uint8 frame becomes the model's input tensor (see models.preprocess).

    Order: undistort the whole frame (when `undistort_calibration` names a camera
    calibration by its content hash; the calibration ships in the bundle) -> ROI crop
    (pixels of the undistorted frame) -> letterbox/stretch to the input size -> colour
    order -> x * scale -> (x - mean) / std -> layout -> dtype.
    """

    roi_xywh: tuple[Pixels, Pixels, Pixels, Pixels] | None = None
    undistort_calibration: Text | None = None
    color_order: Literal["rgb", "bgr"] = "rgb"
    resize: Literal["letterbox", "stretch"] = "letterbox"
    interpolation: Literal["linear", "nearest", "area", "cubic"] = "linear"
    pad_value: int = Field(default=114, ge=0, le=255)
    scale: float = Field(default=1 / 255, gt=0.0, le=1e6)
    mean: tuple[Finite, Finite, Finite] = (0.0, 0.0, 0.0)
    std: tuple[Finite, Finite, Finite] = (1.0, 1.0, 1.0)
    layout: Literal["nchw", "nhwc"] = "nchw"
    dtype: Literal["float32", "float16"] = "float32"

    @field_validator("roi_xywh")
    @classmethod
    def _roi_positive(
        cls, value: tuple[int, int, int, int] | None
    ) -> tuple[int, int, int, int] | None:
        if value is not None:
            x, y, w, h = value
            if x < 0 or y < 0:
                raise ValueError("ROI origin must be >= 0")
            if w <= 0 or h <= 0:
                raise ValueError("ROI width and height must be > 0")
        return value

    @field_validator("undistort_calibration")
    @classmethod
    def _calibration_hash(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256_RE.match(value):
            raise ValueError("must be a camera calibration's content hash (64 lowercase hex)")
        return value

    @field_validator("std")
    @classmethod
    def _std_positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in value):
            raise ValueError("std values must be > 0")
        return value

    def version_hash(self) -> str:
        """16 hex chars of sha256 over the canonical JSON of the spec (sorted keys)
        plus `PREPROCESS_SPEC_FORMAT`; equal specs give equal hashes."""
        payload = {"spec_format": PREPROCESS_SPEC_FORMAT, "spec": self.model_dump(mode="json")}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class PostprocessSpec(_Frozen):
    """Decode + NMS settings; defaults are Ultralytics predict's (conf 0.25, iou 0.7)."""

    score_threshold: Fraction = 0.25
    class_score_thresholds: dict[Text, Fraction] = Field(default_factory=dict,
                                                         max_length=MAX_CLASSES)
    iou_threshold: Fraction = 0.7
    max_detections: int = Field(default=300, ge=1, le=100_000)
    max_candidates: int = Field(default=30000, ge=1, le=10_000_000)
    agnostic: bool = False

    def threshold_for(self, classes: Sequence[str]) -> npt.NDArray[np.float32]:
        """Per-class score threshold vector [nc] (float32), in the order of `classes`.

        Raises ManifestError if `class_score_thresholds` names a class not in `classes`.
        """
        unknown = sorted(set(self.class_score_thresholds) - set(classes))
        if unknown:
            raise ManifestError(
                f"postprocess.class_score_thresholds: unknown class(es) {unknown}; "
                f"classes are {list(classes)}"
            )
        return np.array(
            [self.class_score_thresholds.get(name, self.score_threshold) for name in classes],
            dtype=np.float32,
        )


class InputSpec(_Frozen):
    """The model's image input: ``[B, 3, H, W]`` (nchw) or ``[B, H, W, 3]`` (nhwc)."""

    name: str = Field(default="images", min_length=1, max_length=MAX_TEXT)
    height: int = Field(ge=1, le=MAX_INPUT_SIDE_PX)
    width: int = Field(ge=1, le=MAX_INPUT_SIDE_PX)
    channels: Literal[3] = 3
    dtype: Literal["float32", "float16"] = "float32"
    batch: Literal["dynamic"] | Annotated[int, Field(ge=1, le=MAX_BATCH)] = "dynamic"

    def tensor_shape(self, batch: int, layout: str = "nchw") -> tuple[int, int, int, int]:
        """The input tensor's shape for `batch` images in `layout`."""
        if layout == "nhwc":
            return (batch, self.height, self.width, self.channels)
        return (batch, self.channels, self.height, self.width)

    @model_validator(mode="after")
    def _tensor_fits(self) -> InputSpec:
        batch = self.batch if isinstance(self.batch, int) else 1
        try:
            check_input_tensor_bytes(self.tensor_shape(batch), 4, "input")
        except ManifestError as exc:
            raise ValueError(str(exc).removeprefix("input: ")) from None
        return self


class OutputSpec(_Frozen):
    """The detector's output.

    ``yolo_raw``: ``[B, 4+nc, N]``, rows cx, cy, w, h (input pixels) then nc class
    scores (already sigmoid). ``end2end``: ``[B, K, 6]``, x1, y1, x2, y2 (input
    pixels), score, class id.
    """

    name: str = Field(default="output0", min_length=1, max_length=MAX_TEXT)
    format: Literal["yolo_raw", "end2end"] = "yolo_raw"


class Lineage(_Frozen):
    """Where a model came from."""

    dataset_fingerprint: Text | None = None
    code_revision: Text | None = None
    training_config: dict[Text, Annotated[str, Field(max_length=4096)] | int | float | bool
                          | None] = Field(default_factory=dict, max_length=1000)
    parent_version: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    created_at: datetime


class ClassMetrics(_Frozen):
    precision: Fraction
    recall: Fraction
    map50: Fraction
    map50_95: Fraction
    instances: int = Field(ge=0, le=MAX_COUNT)


class Metrics(_Frozen):
    """Validation metrics measured on `dataset` (Ultralytics-compatible definitions)."""

    dataset: Text
    images: int = Field(ge=0, le=MAX_COUNT)
    instances: int = Field(ge=0, le=MAX_COUNT)
    precision: Fraction
    recall: Fraction
    map50: Fraction
    map50_95: Fraction
    per_class: dict[Text, ClassMetrics] = Field(default_factory=dict, max_length=MAX_CLASSES)
    measured_by: Text = "lineguard eval"


class Manifest(_Frozen):
    """``manifest.json`` of a model bundle.

    `files` maps every bundle file except ``manifest.json`` (bundle-relative POSIX
    path) to its lowercase sha256 hex digest.
    """

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=128, pattern=_NAME_RE)
    version: int = Field(ge=1, le=MAX_COUNT)
    label: str = Field(min_length=1, max_length=128)
    variant: Variant | None = None
    """Which numeric build of the trained model `version` this is. A quantized build
    keeps its source's name and version and says ``int8`` here, so only training (one
    version allocator per name) ever claims a new version. None: not stated (bundles
    made before this field, or wrapped from an ONNX file)."""
    classes: list[Annotated[str, Field(max_length=128)]] = Field(min_length=1,
                                                                  max_length=MAX_CLASSES)
    input: InputSpec
    output: OutputSpec
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    postprocess: PostprocessSpec = Field(default_factory=PostprocessSpec)
    files: dict[Annotated[str, Field(max_length=MAX_PATH)], str] = Field(
        default_factory=dict, max_length=MAX_FILES)
    lineage: Lineage
    metrics: Metrics | None = None
    min_runtime: dict[Annotated[str, Field(max_length=64)],
                      Annotated[str, Field(max_length=64)]] = Field(
        default_factory=lambda: {"onnxruntime": "1.17"}, max_length=32)

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("class names must be non-empty")
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate class name(s) {duplicates}")
        return value

    @field_validator("files")
    @classmethod
    def _files_valid(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            check_relative_path(name)
            if not _SHA256_RE.match(digest):
                raise ValueError(f"{name!r}: sha256 must be 64 lowercase hex chars, got {digest!r}")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        unknown = sorted(set(self.postprocess.class_score_thresholds) - set(self.classes))
        if unknown:
            raise ValueError(
                f"postprocess.class_score_thresholds names unknown class(es) {unknown}; "
                f"classes are {self.classes}"
            )
        if self.metrics is not None:
            unknown = sorted(set(self.metrics.per_class) - set(self.classes))
            if unknown:
                raise ValueError(f"metrics.per_class names unknown class(es) {unknown}")
        return self

    def to_json(self) -> str:
        """Canonical, human-readable JSON (sorted keys, 2-space indent, trailing newline).
        An unstated `variant` is left out, so such a manifest stays readable by
        appliances that predate the field."""
        data = self.model_dump(mode="json")
        if data.get("variant") is None:
            data.pop("variant", None)
        return json.dumps(data, sort_keys=True, indent=2) + "\n"


def format_validation_error(error: ValidationError) -> str:
    """One ``field.path: why`` per pydantic error, joined with ``; ``
    (`protocol.configfile`'s formatter, in the manifest's words)."""
    return _format_validation_error(error, noun="field")


def parse_manifest(text_or_path: str | Path) -> Manifest:
    """Parse and validate a manifest from JSON text (a `str` starting with ``{``) or a
    file path (a `Path`, or any other `str`).

    Raises ManifestError naming the file and every bad field path, e.g.
    ``manifest.json: postprocess.iou_threshold: Input should be less than or equal to 1``.
    """
    if isinstance(text_or_path, str) and text_or_path.lstrip().startswith("{"):
        source, text = "manifest", text_or_path
    else:
        path = Path(text_or_path)
        source = str(path)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_MANIFEST_BYTES + 1)
        except FileNotFoundError:
            raise ManifestError(f"manifest not found: {path}") from None
        except OSError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{source}: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{source}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise ManifestError(f"{source}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ManifestError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: top level must be a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {format_validation_error(exc)}") from None

"""lineguard models package: the model bundle.

Manifest, the one preprocessing and postprocessing implementation, the ONNX Runtime
adapter, bundle files and archives, and golden sets. Importable without torch or
ultralytics.
"""

from models.bundle import (
    GOLDEN_DIR,
    MANIFEST,
    MODEL,
    Bundle,
    file_sha256,
    load_bundle,
    open_bundle,
    pack_bundle,
    unpack_bundle,
    write_bundle,
)
from models.errors import (
    BundleIntegrityError,
    GoldenMismatchError,
    ManifestError,
    ModelError,
    ModelShapeError,
    RuntimeUnavailableError,
    UnsafeArchiveError,
)
from models.golden import GoldenReport, build_bundle, create_golden, verify_golden
from models.manifest import (
    ClassMetrics,
    InputSpec,
    Lineage,
    Manifest,
    Metrics,
    OutputSpec,
    PostprocessSpec,
    PreprocessSpec,
    parse_manifest,
)
from models.postprocess import Detections, decode_end2end, decode_yolo_raw, nms, postprocess
from models.preprocess import FrameTransform, preprocess, preprocess_batch, tensor_sha256
from models.runtime import (
    PROVIDER_ORDER,
    Detector,
    OnnxDetector,
    check_model_io,
    choose_providers,
)

__all__ = [
    "GOLDEN_DIR",
    "MANIFEST",
    "MODEL",
    "PROVIDER_ORDER",
    "Bundle",
    "BundleIntegrityError",
    "ClassMetrics",
    "Detections",
    "Detector",
    "FrameTransform",
    "GoldenMismatchError",
    "GoldenReport",
    "InputSpec",
    "Lineage",
    "Manifest",
    "ManifestError",
    "Metrics",
    "ModelError",
    "ModelShapeError",
    "OnnxDetector",
    "OutputSpec",
    "PostprocessSpec",
    "PreprocessSpec",
    "RuntimeUnavailableError",
    "UnsafeArchiveError",
    "build_bundle",
    "check_model_io",
    "choose_providers",
    "create_golden",
    "decode_end2end",
    "decode_yolo_raw",
    "file_sha256",
    "load_bundle",
    "nms",
    "open_bundle",
    "pack_bundle",
    "parse_manifest",
    "postprocess",
    "preprocess",
    "preprocess_batch",
    "tensor_sha256",
    "unpack_bundle",
    "verify_golden",
    "write_bundle",
]

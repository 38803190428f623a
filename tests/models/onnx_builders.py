"""Shared test helpers: tiny ONNX detectors built with onnx.helper, the shipped NEU-DET
model and dataset paths, and the Ultralytics offline environment.

Tiny detectors compute their output from the input so detections are predictable:
every score is ``base_score * mean(input)`` (mean over C, H, W of the preprocessed
tensor), boxes are constants. A white frame (mean 1.0 after /255) gives exactly the
base scores; a black frame gives nothing.

Importable from any test folder: ``from tests.models.onnx_builders import ...``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.bundle import Bundle
from models.golden import build_bundle
from models.manifest import Lineage

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"
NEU_DET_DIR = SHARED / "models" / "neu-det-yolo11n"
NEU_DET_ONNX = NEU_DET_DIR / "model.onnx"
NEU_DET_DATA = SHARED / "datasets" / "neu-det"
NEU_DET_CLASSES = [
    "crazing",
    "inclusion",
    "patches",
    "pitted_surface",
    "rolled-in_scale",
    "scratches",
]
NEU_DET_IMGSZ = 224

OPSET = 17
IR_VERSION = 8


def neu_det_available() -> bool:
    return NEU_DET_ONNX.is_file() and (NEU_DET_DATA / "images" / "val").is_dir()


def neu_det_val_images(count: int) -> list[Path]:
    """`count` NEU-DET val images, one per class in class order, then round-robin
    (files are named ``<class>_<n>.jpg``); deterministic."""
    paths = sorted((NEU_DET_DATA / "images" / "val").glob("*.jpg"))
    by_class = [[p for p in paths if p.stem.rsplit("_", 1)[0] == name] for name in NEU_DET_CLASSES]
    picked: list[Path] = []
    for rank in range(max((len(group) for group in by_class), default=0)):
        picked += [group[rank] for group in by_class if rank < len(group)]
    return picked[:count]


def _dims(batch: int | str, *rest: int | str) -> list[int | str]:
    return [batch, *rest]


def _mean_gain_nodes(input_name: str) -> list[onnx.NodeProto]:
    """Nodes producing ``gain`` [B, 1, 1] = mean of the input over C, H, W."""
    return [
        helper.make_node("ReduceMean", [input_name], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "gain_shape"], ["gain"]),
    ]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lineguard-tests"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_yolo_raw_model(
    path: Path,
    boxes_cxcywh: npt.ArrayLike,
    class_scores: npt.ArrayLike,
    *,
    input_hw: tuple[int, int] = (64, 64),
    batch: int | str = "batch",
    declared_rows: int | str | None = None,
    input_name: str = "images",
    output_name: str = "output0",
) -> Path:
    """A detector with raw YOLO output ``[B, 4+nc, N]``.

    `boxes_cxcywh`: [N, 4] in input pixels; `class_scores`: [N, nc] base scores.
    Output rows: boxes (constant), then ``class_scores.T * mean(input)``.
    `declared_rows` overrides the declared dim 1 of the output (int, or a symbol). A
    symbol also hides the row count from shape inference (like Ultralytics exports'
    ``Concatoutput0_dim_1``): it is only known after a run.
    """
    boxes = np.asarray(boxes_cxcywh, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(class_scores, dtype=np.float32)
    n, nc = scores.shape
    h, w = input_hw
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "gain_shape"),
        numpy_helper.from_array(boxes.T[None].copy(), "boxes"),  # [1, 4, N]
        numpy_helper.from_array(scores.T[None].copy(), "scores"),  # [1, nc, N]
        numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "zero"),
    ]
    nodes = [
        *_mean_gain_nodes(input_name),
        helper.make_node("Mul", ["gain", "scores"], ["scaled"]),  # [B, nc, N]
        helper.make_node("Mul", ["gain", "zero"], ["zeros_b"]),  # [B, 1, 1]
        helper.make_node("Add", ["zeros_b", "boxes"], ["boxes_b"]),  # [B, 4, N]
    ]
    if isinstance(declared_rows, str):
        inits.append(numpy_helper.from_array(np.array([-1, n], dtype=np.int64), "tail_shape"))
        nodes += [
            helper.make_node("Concat", ["boxes_b", "scaled"], ["head"], axis=1),
            helper.make_node("Shape", ["head"], ["head_shape"], end=1),  # [B]
            helper.make_node("Concat", ["head_shape", "tail_shape"], ["out_shape"], axis=0),
            helper.make_node("Reshape", ["head", "out_shape"], [output_name]),
        ]
    else:
        nodes.append(helper.make_node("Concat", ["boxes_b", "scaled"], [output_name], axis=1))
    rows = 4 + nc if declared_rows is None else declared_rows
    graph = helper.make_graph(
        nodes,
        "tiny_yolo_raw",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, _dims(batch, 3, h, w))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, _dims(batch, rows, n))],
        initializer=inits,
    )
    return _save(graph, path)


def build_end2end_model(
    path: Path,
    rows_xyxy_score_class: npt.ArrayLike,
    *,
    input_hw: tuple[int, int] = (64, 64),
    batch: int | str = "batch",
    columns: int = 6,
) -> Path:
    """A detector with end-to-end output ``[B, K, columns]`` (normally 6).

    `rows_xyxy_score_class`: [K, columns] rows x1, y1, x2, y2 (input pixels), base
    score, class id; the score column is multiplied by ``mean(input)``.
    """
    rows = np.asarray(rows_xyxy_score_class, dtype=np.float32)
    k = rows.shape[0]
    h, w = input_hw
    mask = np.zeros((1, 1, columns), np.float32)
    mask[0, 0, 4] = 1.0
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "gain_shape"),
        numpy_helper.from_array(rows[None].copy(), "rows"),  # [1, K, C]
        numpy_helper.from_array(mask, "mask"),
        numpy_helper.from_array(1.0 - mask, "inv_mask"),
    ]
    nodes = [
        *_mean_gain_nodes("images"),
        helper.make_node("Mul", ["gain", "mask"], ["gm"]),  # [B, 1, C]
        helper.make_node("Add", ["gm", "inv_mask"], ["factor"]),
        helper.make_node("Mul", ["factor", "rows"], ["output0"]),  # [B, K, C]
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_end2end",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, _dims(batch, 3, h, w))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, _dims(batch, k, columns))],
        initializer=inits,
    )
    return _save(graph, path)


def simple_raw_detections(nc: int = 3) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Anchors for `build_yolo_raw_model` on a 64x64 input: two overlapping class-0
    boxes (the weaker is suppressed by NMS at IoU 0.7), one class-1 box overlapping
    them (kept: class-aware), one low-score box (below 0.25)."""
    boxes = np.array(
        [
            [20, 20, 20, 20],  # class 0, 0.9
            [21, 20, 20, 20],  # class 0, 0.8, IoU ~0.90 with the first -> suppressed
            [20, 21, 20, 20],  # class 1, 0.7, overlaps but other class -> kept
            [50, 50, 8, 8],  # class 2, 0.1 -> below threshold
        ],
        dtype=np.float32,
    )
    scores = np.zeros((4, nc), dtype=np.float32)
    scores[0, 0], scores[1, 0], scores[2, 1], scores[3, 2] = 0.9, 0.8, 0.7, 0.1
    scores[0, 1] = 0.05  # a lower second class never wins
    return boxes, scores


def white_frames(shapes: Sequence[tuple[int, int]]) -> list[npt.NDArray[np.uint8]]:
    return [np.full((h, w, 3), 255, dtype=np.uint8) for h, w in shapes]


def prepare_ultralytics_env(config_dir: Path) -> None:
    """Offline Ultralytics settings; call BEFORE importing ultralytics."""
    config_dir.mkdir(parents=True, exist_ok=True)
    font = config_dir / "Arial.ttf"
    if not font.exists():
        import matplotlib  # ultralytics depends on it

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copyfile(source, font)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


def tiny_lineage() -> Lineage:
    """A fixed Lineage for test bundles."""
    return Lineage(
        dataset_fingerprint="sha256:test",
        code_revision="test",
        training_config={"epochs": 1},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def build_tiny_bundle(
    out_dir: Path,
    work_dir: Path,
    *,
    output_format: Literal["yolo_raw", "end2end"] = "yolo_raw",
    classes: Sequence[str] = ("dent", "scratch", "stain"),
    golden_shapes: Sequence[tuple[int, int]] = ((48, 64), (64, 64), (80, 40)),
    version: int = 1,
) -> Bundle:
    """A complete, verified bundle around a tiny detector (64x64 input).

    Golden images are bright frames of `golden_shapes` with a coloured square and a
    textured corner, so every image yields the `simple_raw_detections` boxes (scores
    scaled by the frame's mean).
    Returns the `models.bundle.Bundle`.
    """
    nc = len(classes)
    if output_format == "yolo_raw":
        boxes, scores = simple_raw_detections(nc)
        onnx_path = build_yolo_raw_model(work_dir / "tiny_raw.onnx", boxes, scores)
    else:
        rows: list[list[float]] = [
            [10, 10, 30, 30, 0.9, 0],
            [12, 12, 40, 44, 0.6, nc - 1],
            [0, 0, 0, 0, 0, -1],
        ]
        onnx_path = build_end2end_model(work_dir / "tiny_e2e.onnx", rows)
    images = []
    rng = np.random.default_rng(7)
    for h, w in golden_shapes:
        image = np.full((h, w, 3), 255, dtype=np.uint8)
        image[h // 4 : h // 2, w // 4 : w // 2] = (40, 90, 160)
        # texture, so that every resize/interpolation change shows in the tensor
        image[h // 2 :, : w // 2] = rng.integers(150, 256, (h - h // 2, w // 2, 3), np.uint8)
        images.append(image)
    return build_bundle(
        out_dir,
        onnx_path,
        name="tiny",
        version=version,
        label=f"tiny-v{version}",
        classes=list(classes),
        input_hw=(64, 64),
        output_format=output_format,
        lineage=tiny_lineage(),
        golden_images=images,
        providers=["cpu"],
    )


def resign_bundle(root: Path, mutate: Callable[[dict[str, Any]], Any] | None = None) -> None:
    """Rewrite a bundle's manifest after tampering: optionally `mutate(data)` the manifest
    dict in place, and recompute every listed file's sha256 (so only the golden check,
    not the integrity check, can notice the change)."""
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    if mutate is not None:
        mutate(data)
    data["files"] = {
        name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in data["files"]
    }
    path.write_text(json.dumps(data, indent=2))


def read_image(path: Path, flags: int | None = None) -> npt.NDArray[np.uint8]:
    """cv2.imread that fails loudly (default: unchanged channels)."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED if flags is None else flags)
    if image is None:
        raise FileNotFoundError(path)
    return np.asarray(image, dtype=np.uint8)

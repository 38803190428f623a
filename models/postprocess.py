"""Decode detector outputs, apply per-class thresholds and NMS, map boxes to frames.

Pure numpy/OpenCV. Semantics follow Ultralytics' ``non_max_suppression`` (single
label per box, ``multi_label=False``) followed by ``scale_boxes``:

1. a candidate's class is its best class score, its score that maximum;
2. it is kept if ``score > threshold[class]`` (per-class thresholds generalise
   Ultralytics' single ``conf``);
3. at most ``max_candidates`` candidates, highest scores first, go to NMS;
4. NMS is class-aware unless ``agnostic`` (OpenCV ``NMSBoxesBatched``: same result as
   Ultralytics' class-offset trick), then the first ``max_detections`` are kept;
5. boxes are mapped back through each frame's `FrameTransform`.

End-to-end outputs ``[B, K, 6]`` already went through NMS inside the graph: only the
threshold and ``max_detections`` apply (as Ultralytics does for end2end models).

No Python loop runs over candidates; the only loops are over images in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import ModelError, ModelShapeError
from models.manifest import PostprocessSpec
from models.preprocess import FrameTransform, Tensor

__all__ = [
    "Detections",
    "RawDetections",
    "decode_end2end",
    "decode_yolo_raw",
    "nms",
    "postprocess",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
# (boxes_xyxy [K, 4] float32 input pixels, scores [K] float32, class_ids [K] int64)
RawDetections = tuple[F32, F32, I64]
_NMS_FIRST_PREFIX = 256  # minimum candidates in the first NMS round (see `nms`)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, boxes in ORIGINAL frame pixels.

    boxes_xyxy: [K, 4] float32 x1, y1, x2, y2; scores: [K] float32 in [0, 1];
    class_ids: [K] int64 indices into the manifest's classes. Sorted by score,
    highest first (NMS order).
    """

    boxes_xyxy: F32
    scores: F32
    class_ids: I64

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            np.zeros((0, 4), dtype=np.float32),
            np.zeros((0,), dtype=np.float32),
            np.zeros((0,), dtype=np.int64),
        )


def xywh_to_xyxy(boxes_cxcywh: F32) -> F32:
    """[K, 4] centre x, centre y, width, height -> [K, 4] x1, y1, x2, y2 (float32)."""
    boxes = np.asarray(boxes_cxcywh, dtype=np.float32)
    half = boxes[:, 2:4] / np.float32(2)
    return np.concatenate((boxes[:, 0:2] - half, boxes[:, 0:2] + half), axis=1)


def xyxy_to_xywh(boxes_xyxy: F32) -> F32:
    """[K, 4] x1, y1, x2, y2 -> [K, 4] left x, top y, width, height (OpenCV Rect2d)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    return np.concatenate((boxes[:, 0:2], boxes[:, 2:4] - boxes[:, 0:2]), axis=1)


def _check_thresholds(thresholds: F32, nc: int) -> F32:
    thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    if thr.shape[0] != nc:
        raise ModelShapeError(f"expected {nc} class thresholds (one per class), got {thr.shape[0]}")
    return thr


def decode_yolo_raw(output: Tensor, thresholds: F32, max_candidates: int) -> list[RawDetections]:
    """Decode a YOLOv8/11 raw head ``[B, 4+nc, N]`` (cx, cy, w, h in input pixels, then
    nc sigmoid class scores) into per-image candidates above the class threshold.

    Returns per image (boxes_xyxy [K,4] input pixels, scores [K], class_ids [K]),
    at most `max_candidates`, in anchor order unless truncated (then score order).
    Raises ModelShapeError if the shape does not fit `thresholds` ([nc]).
    """
    out = np.asarray(output)
    if out.ndim != 3 or out.shape[1] < 5:
        raise ModelShapeError(f"yolo_raw output must be [B, 4+nc, N], got shape {out.shape}")
    nc = out.shape[1] - 4
    thr = _check_thresholds(thresholds, nc)
    if out.dtype != np.float32:
        out = out.astype(np.float32)
    # The max over classes is cheap for the whole batch; the argmax runs per image
    # (numpy's 3-D argmax over a middle axis is ~50x slower) and only on candidates
    # that can pass the lowest threshold.
    best_scores = out[:, 4:, :].max(axis=1)  # [B, N]
    maybe = best_scores > thr.min()
    results: list[RawDetections] = []
    for b in range(out.shape[0]):
        idx = np.flatnonzero(maybe[b])
        class_ids = out[b, 4:, :][:, idx].argmax(axis=0)  # [K], first max like torch
        scores = best_scores[b, idx]
        passed = scores > thr[class_ids]
        idx, scores, class_ids = idx[passed], scores[passed], class_ids[passed]
        if idx.size > max_candidates:
            order = np.argsort(-scores, kind="stable")[:max_candidates]
            idx, scores, class_ids = idx[order], scores[order], class_ids[order]
        boxes_cxcywh = out[b, :4, :][:, idx].T.astype(np.float32, copy=False)
        results.append((xywh_to_xyxy(boxes_cxcywh), scores, class_ids.astype(np.int64)))
    return results


def decode_end2end(output: Tensor, thresholds: F32) -> list[RawDetections]:
    """Decode an end-to-end head ``[B, K, 6]`` (x1, y1, x2, y2 input pixels, score,
    class id) keeping rows with ``score > thresholds[class]`` in model order.

    Rows whose class id is not in [0, nc) (padding rows) are dropped. Raises
    ModelShapeError if the last dimension is not 6.
    """
    out = np.asarray(output)
    if out.ndim != 3 or out.shape[2] != 6:
        raise ModelShapeError(f"end2end output must be [B, K, 6], got shape {out.shape}")
    thr = np.asarray(thresholds, dtype=np.float32).reshape(-1)
    nc = thr.shape[0]
    if out.dtype != np.float32:
        out = out.astype(np.float32)
    class_f = np.rint(out[:, :, 5])
    valid = (class_f >= 0) & (class_f < nc)
    class_ids = np.where(valid, class_f, 0).astype(np.int64)  # [B, K]
    keep = valid & (out[:, :, 4] > thr[class_ids])
    results: list[RawDetections] = []
    for b in range(out.shape[0]):
        idx = np.flatnonzero(keep[b])
        results.append(
            (np.ascontiguousarray(out[b, idx, 0:4]), out[b, idx, 4].copy(), class_ids[b, idx])
        )
    return results


def nms(
    boxes_xyxy: F32,
    scores: F32,
    class_ids: I64,
    iou_threshold: float,
    agnostic: bool,
    max_detections: int,
) -> I64:
    """Greedy NMS; returns int64 indices of kept boxes, highest score first.

    Class-aware (boxes of different classes never suppress each other) unless
    `agnostic`. A box is suppressed when its IoU with a kept, higher-scoring box is
    > `iou_threshold`. Boxes with score <= 0 are dropped (OpenCV keeps score > 0).
    Uses ``cv2.dnn.NMSBoxesBatched`` / ``NMSBoxes``, which take x, y, width, height.
    """
    n = scores.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    boxes = np.asarray(boxes_xyxy, dtype=np.float32)
    # OpenCV separates classes by offsetting with (max coordinate + 1) * class, which
    # only works for non-negative boxes; IoU is translation-invariant, so shift first.
    lowest = float(min(boxes[:, 0].min(), boxes[:, 1].min()))
    if lowest < 0:
        boxes = boxes - np.float32(lowest)
    boxes_xywh = xyxy_to_xywh(boxes)
    scores_f32 = np.ascontiguousarray(scores, dtype=np.float32)
    ids_i32 = np.asarray(class_ids, dtype=np.int32)
    # Greedy NMS decides each box from higher-scoring boxes only, so NMS over the
    # top-m prefix keeps exactly the full run's boxes within that prefix. Once a prefix
    # keeps `max_detections`, they are final: cost O(m * kept) instead of O(n * kept).
    m = min(n, max(2 * max_detections, _NMS_FIRST_PREFIX))
    if m == n:  # the usual case: one round, no sorting needed
        kept = _opencv_nms(boxes_xywh, scores_f32, ids_i32, iou_threshold, agnostic)
        return kept[:max_detections]
    order = np.argsort(-scores_f32, kind="stable")  # ties: lower index first, like OpenCV
    while True:
        sub = order[:m]
        kept = _opencv_nms(boxes_xywh[sub], scores_f32[sub], ids_i32[sub], iou_threshold, agnostic)
        if kept.shape[0] >= max_detections or m == n:
            return sub[kept[:max_detections]].astype(np.int64)
        m = min(n, 4 * m)


def _opencv_nms(
    boxes_xywh: F32,
    scores: F32,
    class_ids: npt.NDArray[np.int32],
    iou_threshold: float,
    agnostic: bool,
) -> I64:
    """Indices kept by OpenCV's NMS, highest score first (score > 0 only)."""
    # OpenCV's stubs say Sequence[...]; it takes (and we pass) float32 [K, 4] xywh
    # arrays, which it reads as Rect2d (no rounding to whole pixels).
    rects = cast("Sequence[Sequence[float]]", boxes_xywh)
    confidences = cast("Sequence[float]", scores)
    if agnostic:
        kept = cv2.dnn.NMSBoxes(rects, confidences, 0.0, float(iou_threshold))
    else:
        ids = cast("Sequence[int]", class_ids)
        kept = cv2.dnn.NMSBoxesBatched(rects, confidences, ids, 0.0, float(iou_threshold))
    return np.asarray(kept, dtype=np.int64).reshape(-1)


def postprocess(
    output: Tensor,
    spec: PostprocessSpec,
    output_format: Literal["yolo_raw", "end2end"],
    classes: Sequence[str],
    transforms: Sequence[FrameTransform],
) -> list[Detections]:
    """Turn a detector output batch into per-frame `Detections` in original pixels.

    `output`: ``[B, 4+nc, N]`` (yolo_raw) or ``[B, K, 6]`` (end2end) with
    nc = len(classes); `transforms`: one per frame, from `preprocess_batch`. Extra
    output rows beyond the transforms (a padded fixed-size batch) are ignored.
    Raises ModelShapeError if the output does not fit the classes/format, ModelError
    if there are more transforms than output rows.
    """
    thresholds = spec.threshold_for(classes)
    if output.ndim != 3 or output.shape[0] < len(transforms):
        raise ModelError(
            f"output shape {output.shape} has fewer images than the {len(transforms)} frames"
        )
    batch = output[: len(transforms)]
    if output_format == "yolo_raw":
        if batch.shape[1] != 4 + len(classes):
            raise ModelShapeError(
                f"yolo_raw output has {batch.shape[1]} rows, expected 4+{len(classes)} "
                f"= {4 + len(classes)} for {len(classes)} classes (shape {output.shape})"
            )
        decoded = decode_yolo_raw(batch, thresholds, spec.max_candidates)
    elif output_format == "end2end":
        decoded = decode_end2end(batch, thresholds)
    else:
        raise ModelError(f"unknown output format {output_format!r}")
    results: list[Detections] = []
    for (boxes, scores, class_ids), transform in zip(decoded, transforms, strict=True):
        if output_format == "yolo_raw":
            keep = nms(
                boxes, scores, class_ids, spec.iou_threshold, spec.agnostic, spec.max_detections
            )
            boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
        else:
            boxes = boxes[: spec.max_detections]
            scores = scores[: spec.max_detections]
            class_ids = class_ids[: spec.max_detections]
        if scores.shape[0] == 0:
            results.append(Detections.empty())
            continue
        results.append(Detections(transform.to_original(boxes), scores, class_ids))
    return results

"""Decode (both formats), per-class thresholds, NMS and the full postprocess, as tables."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import ModelError, ModelShapeError
from models.manifest import PostprocessSpec
from models.postprocess import (
    Detections,
    decode_end2end,
    decode_yolo_raw,
    nms,
    postprocess,
    xywh_to_xyxy,
    xyxy_to_xywh,
)
from models.preprocess import FrameTransform

IDENTITY = FrameTransform((1000, 1000), (0, 0), (1.0, 1.0), (0.0, 0.0))


def raw_head(rows: list[tuple[float, float, float, float, list[float]]]) -> np.ndarray:
    """[1, 4+nc, N] from rows (cx, cy, w, h, class scores)."""
    table = np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in rows], np.float32)
    return table.T[None].copy()


def test_box_format_conversions() -> None:
    cxcywh = np.array([[10, 20, 4, 6]], np.float32)
    xyxy = xywh_to_xyxy(cxcywh)
    np.testing.assert_array_equal(xyxy, [[8, 17, 12, 23]])
    np.testing.assert_array_equal(xyxy_to_xywh(xyxy), [[8, 17, 4, 6]])


# rows, thresholds, expected (boxes_xyxy, scores, class_ids)
DECODE_RAW = [
    pytest.param(
        [(10, 10, 4, 4, [0.9, 0.1]), (50, 50, 10, 10, [0.2, 0.3])],
        [0.25, 0.25],
        ([[8, 8, 12, 12], [45, 45, 55, 55]], [0.9, 0.3], [0, 1]),
        id="best-class-wins",
    ),
    pytest.param(
        [(10, 10, 4, 4, [0.9, 0.1]), (50, 50, 10, 10, [0.2, 0.3])],
        [0.25, 0.5],
        ([[8, 8, 12, 12]], [0.9], [0]),
        id="per-class-threshold-on-chosen-class",
    ),
    pytest.param(
        [(10, 10, 4, 4, [0.4, 0.6])],
        [0.25, 0.7],
        ([], [], []),
        id="no-fallback-to-second-class",  # like Ultralytics: the max class decides
    ),
    pytest.param(
        [(10, 10, 4, 4, [0.25, 0.0])],
        [0.25, 0.25],
        ([], [], []),
        id="threshold-is-strict",
    ),
    pytest.param(
        [(10, 10, 4, 4, [0.5, 0.5])],
        [0.25, 0.25],
        ([[8, 8, 12, 12]], [0.5], [0]),
        id="tie-takes-first-class",
    ),
]


@pytest.mark.parametrize(("rows", "thresholds", "expected"), DECODE_RAW)
def test_decode_yolo_raw(
    rows: list[tuple[float, float, float, float, list[float]]],
    thresholds: list[float],
    expected: tuple[list[list[float]], list[float], list[int]],
) -> None:
    ((boxes, scores, class_ids),) = decode_yolo_raw(
        raw_head(rows), np.asarray(thresholds, np.float32), 30000
    )
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert class_ids.dtype == np.int64
    np.testing.assert_allclose(boxes.reshape(-1, 4), np.reshape(expected[0], (-1, 4)))
    np.testing.assert_allclose(scores, expected[1], rtol=1e-6)
    np.testing.assert_array_equal(class_ids, expected[2])


def test_decode_yolo_raw_batched_and_max_candidates() -> None:
    a = raw_head([(10, 10, 4, 4, [0.3]), (20, 20, 4, 4, [0.9]), (30, 30, 4, 4, [0.6])])
    b = raw_head([(10, 10, 4, 4, [0.1]), (20, 20, 4, 4, [0.1]), (30, 30, 4, 4, [0.8])])
    batch = np.concatenate([a, b]).astype(np.float16)
    first, second = decode_yolo_raw(batch, np.array([0.25], np.float32), 2)
    np.testing.assert_allclose(first[1], [0.9, 0.6], rtol=1e-3)  # top 2 by score
    np.testing.assert_allclose(second[1], [0.8], rtol=1e-3)


def test_decode_yolo_raw_shape_errors() -> None:
    with pytest.raises(ModelShapeError, match=r"\[B, 4\+nc, N\]"):
        decode_yolo_raw(np.zeros((1, 4, 10), np.float32), np.zeros(0, np.float32), 10)
    with pytest.raises(ModelShapeError, match="expected 2 class thresholds"):
        decode_yolo_raw(np.zeros((1, 6, 10), np.float32), np.zeros(3, np.float32), 10)


# rows [K, 6], thresholds, expected kept row indices
DECODE_E2E = [
    pytest.param([[0, 0, 10, 10, 0.9, 0], [5, 5, 20, 20, 0.2, 1]], [0.25, 0.25], [0], id="score"),
    pytest.param(
        [[0, 0, 10, 10, 0.9, 0], [5, 5, 20, 20, 0.4, 1]], [0.95, 0.3], [1], id="per-class"
    ),
    pytest.param([[0, 0, 10, 10, 0.9, -1], [0, 0, 1, 1, 0.9, 7]], [0.2, 0.2], [], id="bad-class"),
    pytest.param([[0, 0, 0, 0, 0.0, 0]] * 3, [0.0, 0.0], [], id="padding-rows"),
]


@pytest.mark.parametrize(("rows", "thresholds", "kept"), DECODE_E2E)
def test_decode_end2end(rows: list[list[float]], thresholds: list[float], kept: list[int]) -> None:
    table = np.asarray(rows, np.float32)
    ((boxes, scores, class_ids),) = decode_end2end(table[None], np.asarray(thresholds, np.float32))
    np.testing.assert_array_equal(boxes, table[kept, :4].reshape(-1, 4))
    np.testing.assert_array_equal(scores, table[kept, 4])
    np.testing.assert_array_equal(class_ids, table[kept, 5].astype(np.int64))


def test_decode_end2end_shape_error() -> None:
    with pytest.raises(ModelShapeError, match=r"\[B, K, 6\]"):
        decode_end2end(np.zeros((1, 5, 7), np.float32), np.zeros(2, np.float32))


A = [10, 10, 30, 30]
A_SHIFTED = [11, 10, 31, 30]  # IoU 380/420 = 0.905 with A
A_HALF = [20, 10, 40, 30]  # IoU 200/600 = 0.333 with A
FAR = [100, 100, 120, 120]

# boxes, scores, classes, iou, agnostic, max_det, expected kept indices (score order)
NMS_TABLE = [
    pytest.param(
        [A, A_SHIFTED], [0.9, 0.8], [0, 0], 0.7, False, 300, [0], id="same-class-suppressed"
    ),
    pytest.param(
        [A, A_SHIFTED], [0.9, 0.8], [0, 1], 0.7, False, 300, [0, 1], id="class-aware-keeps"
    ),
    pytest.param([A, A_SHIFTED], [0.9, 0.8], [0, 1], 0.7, True, 300, [0], id="agnostic-suppresses"),
    pytest.param([A, A_SHIFTED], [0.8, 0.9], [0, 0], 0.95, False, 300, [1, 0], id="iou-below-thr"),
    pytest.param([A, A_HALF], [0.9, 0.8], [0, 0], 0.3, False, 300, [0], id="iou-above-low-thr"),
    pytest.param([A, A_HALF], [0.9, 0.8], [0, 0], 0.34, False, 300, [0, 1], id="iou-just-below"),
    pytest.param([A, FAR, A_HALF], [0.5, 0.9, 0.7], [0, 0, 0], 0.7, False, 2, [1, 2], id="max-det"),
    pytest.param(
        [[-30, -30, -10, -10], [-29, -30, -9, -10], [-30, -30, -10, -10]],
        [0.9, 0.8, 0.7],
        [0, 0, 1],
        0.5,
        False,
        300,
        [0, 2],
        id="negative-coords-class-aware",
    ),
    pytest.param(
        [[-5, -5, 5, 5], [1, 1, 11, 11]],
        [0.9, 0.8],
        [0, 1],
        0.01,
        False,
        300,
        [0, 1],
        id="negative-coords-classes-never-mix",
    ),
    pytest.param([A], [0.0], [0], 0.7, False, 300, [], id="zero-score-dropped"),
]


@pytest.mark.parametrize(
    ("boxes", "scores", "classes", "iou", "agnostic", "max_det", "expected"), NMS_TABLE
)
def test_nms(
    boxes: list[list[float]],
    scores: list[float],
    classes: list[int],
    iou: float,
    agnostic: bool,
    max_det: int,
    expected: list[int],
) -> None:
    kept = nms(
        np.asarray(boxes, np.float32),
        np.asarray(scores, np.float32),
        np.asarray(classes, np.int64),
        iou,
        agnostic,
        max_det,
    )
    assert kept.dtype == np.int64
    assert kept.tolist() == expected


def test_nms_empty() -> None:
    kept = nms(
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.float32),
        np.zeros(0, np.int64),
        0.7,
        False,
        300,
    )
    assert kept.shape == (0,)


def test_nms_keeps_fractional_boxes_as_floats() -> None:
    # As integer rects these would be identical (IoU 1); as floats IoU is 0.29.
    boxes = np.array([[0, 0, 1.5, 1.5], [0.5, 0.5, 2.0, 2.0]], np.float32)
    kept = nms(boxes, np.array([0.9, 0.8], np.float32), np.zeros(2, np.int64), 0.5, False, 300)
    assert kept.tolist() == [0, 1]


def test_postprocess_yolo_raw_maps_boxes_and_honours_spec() -> None:
    head = raw_head(
        [
            (20, 20, 20, 20, [0.9, 0.0]),
            (21, 20, 20, 20, [0.8, 0.0]),  # suppressed by the first
            (20, 21, 20, 20, [0.0, 0.7]),  # other class: kept unless agnostic
            (50, 50, 8, 8, [0.0, 0.4]),  # below the class-1 override 0.5
        ]
    )
    batch = np.concatenate([head, head * np.array([1, 1, 1, 1, 0, 0], np.float32)[None, :, None]])
    transforms = [
        FrameTransform((48, 64), (0, 0), (1.0, 1.0), (0.0, 8.0)),
        FrameTransform((64, 64), (0, 0), (1.0, 1.0), (0.0, 0.0)),
    ]
    spec = PostprocessSpec(class_score_thresholds={"b": 0.5})
    first, second = postprocess(batch, spec, "yolo_raw", ["a", "b"], transforms)
    assert len(first) == 2 and len(second) == 0
    np.testing.assert_allclose(first.scores, [0.9, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(first.class_ids, [0, 1])
    np.testing.assert_allclose(first.boxes_xyxy, [[10, 2, 30, 22], [10, 3, 30, 23]])
    agnostic = postprocess(
        head, PostprocessSpec(agnostic=True), "yolo_raw", ["a", "b"], transforms[:1]
    )[0]
    # the class-1 box overlapping the 0.9 box goes; the far 0.4 one stays (default 0.25)
    np.testing.assert_allclose(agnostic.scores, [0.9, 0.4], rtol=1e-6)


def test_postprocess_end2end_no_nms_and_max_detections() -> None:
    rows = np.array(
        [[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0], [5, 5, 9, 9, 0.7, 1]], np.float32
    )
    spec = PostprocessSpec(max_detections=2)
    (dets,) = postprocess(rows[None], spec, "end2end", ["a", "b"], [IDENTITY])
    assert len(dets) == 2  # the graph did NMS already: overlapping rows both kept
    np.testing.assert_array_equal(dets.boxes_xyxy, rows[:2, :4])


@pytest.mark.parametrize(
    ("output", "fmt", "error", "message"),
    [
        (np.zeros((1, 7, 10), np.float32), "yolo_raw", ModelShapeError, "expected 4\\+2 = 6"),
        (np.zeros((1, 10, 7), np.float32), "end2end", ModelShapeError, "\\[B, K, 6\\]"),
        (np.zeros((0, 6, 10), np.float32), "yolo_raw", ModelError, "fewer images"),
    ],
)
def test_postprocess_shape_errors(
    output: np.ndarray, fmt: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        postprocess(output, PostprocessSpec(), fmt, ["a", "b"], [IDENTITY])  # type: ignore[arg-type]


def test_detections_empty() -> None:
    empty = Detections.empty()
    assert len(empty) == 0
    assert empty.boxes_xyxy.shape == (0, 4) and empty.class_ids.dtype == np.int64


@pytest.mark.parametrize(
    ("n", "max_det", "agnostic"), [(3000, 5, False), (3000, 300, True), (700, 1, False)]
)
def test_prefix_rounds_equal_one_full_nms(n: int, max_det: int, agnostic: bool) -> None:
    """`nms` stops early once a top-score prefix keeps max_det boxes; the result must be
    what a single OpenCV run over all boxes gives (greedy NMS is prefix-consistent)."""
    from models.postprocess import _opencv_nms

    rng = np.random.default_rng(n + max_det)
    xy = rng.uniform(0, 500, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (n, 2)).astype(np.float32)], axis=1)
    scores = rng.choice(np.linspace(0.05, 1, 40, dtype=np.float32), n)  # many ties
    classes = rng.integers(0, 3, n)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    full = _opencv_nms(xywh, scores, classes.astype(np.int32), 0.5, agnostic)  # one round
    kept = nms(boxes, scores, classes, 0.5, agnostic, max_det)
    assert kept.tolist() == full[:max_det].tolist()

"""models.metrics: hand-computable tables for IoU, matching, AP and P/R at max F1."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import (
    IOU_THRESHOLDS,
    DetectionStats,
    ap_per_class,
    box_iou,
    compute_ap,
    match_image,
    match_predictions,
    smooth,
)

T, F = True, False


@pytest.mark.parametrize(
    ("box_a", "box_b", "expected"),
    [
        ([0, 0, 10, 10], [0, 0, 10, 10], 1.0),  # identical
        ([0, 0, 10, 10], [20, 20, 30, 30], 0.0),  # disjoint
        ([0, 0, 10, 10], [10, 0, 20, 10], 0.0),  # touching edges
        ([0, 0, 10, 10], [5, 0, 15, 10], 50 / 150),  # half shifted
        ([0, 0, 10, 10], [0, 0, 5, 10], 0.5),  # contained half
        ([0, 0, 10, 10], [0, 0, 10, 8], 0.8),
        ([0, 0, 4, 4], [2, 2, 6, 6], 4 / 28),  # corner overlap
    ],
)
def test_box_iou_table(box_a: list[float], box_b: list[float], expected: float) -> None:
    iou = box_iou([box_a], [box_b])
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(expected, abs=1e-6)
    assert box_iou([box_b], [box_a])[0, 0] == pytest.approx(expected, abs=1e-6)


def test_box_iou_shapes() -> None:
    assert box_iou(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0, 3)
    assert box_iou([[0, 0, 1, 1], [0, 0, 2, 2]], np.zeros((0, 4))).shape == (2, 0)


def test_iou_thresholds_are_coco() -> None:
    np.testing.assert_allclose(IOU_THRESHOLDS, [0.5 + 0.05 * i for i in range(10)])


# pred_classes (descending score), true_classes, iou [M, N], expected [N, 10]
MATCH_TABLE = [
    pytest.param([0], [0], [[0.62]], [[T, T, T, F, F, F, F, F, F, F]], id="iou-0.62"),
    pytest.param([0], [0], [[0.97]], [[T] * 10], id="iou-0.97-all"),
    pytest.param([0], [0], [[0.49]], [[F] * 10], id="below-0.5"),
    pytest.param([1], [0], [[0.99]], [[F] * 10], id="wrong-class"),
    pytest.param([0, 0], [0], [[0.92, 0.92]], [[T] * 9 + [F], [F] * 10], id="duplicate-is-fp"),
    pytest.param(
        # the higher-scoring prediction takes the ground truth it overlaps best (B),
        # so the second, which only overlaps B, is a false positive
        [0, 0],
        [0, 0],
        [[0.6, 0.0], [0.91, 0.8]],
        [[T] * 9 + [F], [F] * 10],
        id="greedy-best-iou",
    ),
    pytest.param(
        # per threshold: up to 0.6 the first prediction claims the box; above, it
        # fails and the box is free for the second one
        [0, 0],
        [0],
        [[0.62, 0.91]],
        [[T, T, T, F, F, F, F, F, F, F], [F, F, F, T, T, T, T, T, T, F]],
        id="claimed-per-threshold",
    ),
    pytest.param(
        [0, 1],
        [1, 0],
        [[0.0, 0.72], [0.81, 0.0]],
        [[T] * 7 + [F] * 3, [T] * 5 + [F] * 5],
        id="two-classes",
    ),
]


@pytest.mark.parametrize(("pred_cls", "true_cls", "iou", "expected"), MATCH_TABLE)
def test_match_predictions_table(
    pred_cls: list[int], true_cls: list[int], iou: list[list[float]], expected: list[list[bool]]
) -> None:
    correct = match_predictions(pred_cls, true_cls, iou)
    assert correct.dtype == np.bool_
    np.testing.assert_array_equal(correct, np.array(expected, dtype=bool))


def test_match_predictions_empty() -> None:
    assert match_predictions([0, 1], [], np.zeros((0, 2))).shape == (2, 10)
    assert not match_predictions([0, 1], [], np.zeros((0, 2))).any()
    assert match_predictions([], [0], np.zeros((1, 0))).shape == (0, 10)


def test_match_image_orders_by_score_but_keeps_input_rows() -> None:
    gt = [[0, 0, 10, 10]]
    # the second row scores higher, so it is the one that matches
    preds = [[0, 0, 10, 10], [0, 0, 10, 10]]
    tp = match_image(preds, [0.3, 0.9], [0, 0], gt, [0])
    np.testing.assert_array_equal(tp[:, 0], [False, True])


@pytest.mark.parametrize(
    ("recall", "precision", "expected"),
    [
        # perfect detector: the 101-point trapezoid loses the last half step (0.995)
        ([1.0], [1.0], 0.995),
        # 1 of 3 found, no FP: precision 1 up to recall 1/3 (points 0..0.33) + half step
        ([1 / 3], [1.0], 0.335),
        # TP, FP, TP with 3 ground truth: envelope 1 to 1/3, then 2/3 to 2/3
        # (0..0.33 at 1, a half step, 0.34..0.66 at 2/3, a half step down to 0) = 0.555
        ([1 / 3, 1 / 3, 2 / 3], [1.0, 0.5, 2 / 3], 0.555),
        ([0.0], [0.0], 0.0),  # only false positives
    ],
)
def test_compute_ap_table(recall: list[float], precision: list[float], expected: float) -> None:
    assert compute_ap(recall, precision) == pytest.approx(expected, abs=1e-9)


def test_smooth_keeps_constants_and_length() -> None:
    y = np.full(1000, 0.25)
    out = smooth(y, 0.1)
    assert out.shape == (1000,)
    np.testing.assert_allclose(out, 0.25)
    step = np.r_[np.zeros(500), np.ones(500)]
    smoothed = smooth(step, 0.1)  # 101-wide box filter
    assert smoothed[449] == 0.0 and smoothed[550] == 1.0
    assert smoothed[500] == pytest.approx(51 / 101)


def test_ap_per_class_one_class_by_hand() -> None:
    # 3 ground-truth boxes; predictions TP (0.9), FP (0.8), TP (0.7) at every IoU
    tp = np.array([[T] * 10, [F] * 10, [T] * 10])
    result = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 0]), np.array([0, 0, 0]))
    np.testing.assert_array_equal(result.classes, [0])
    np.testing.assert_array_equal(result.instances, [3])
    assert result.ap.shape == (1, 10)
    np.testing.assert_allclose(result.ap, 0.555, atol=1e-9)
    # F1 is flat (2/3) for every confidence up to 0.7, highest there: read P/R at 0
    assert result.confidence == 0.0
    assert result.precision[0] == pytest.approx(2 / 3)
    assert result.recall[0] == pytest.approx(2 / 3, abs=1e-12)
    assert result.map50 == pytest.approx(0.555)
    assert result.map50_95 == pytest.approx(0.555)


def test_ap_per_class_input_order_does_not_matter() -> None:
    tp = np.array([[F] * 10, [T] * 10, [T] * 10])
    conf = np.array([0.8, 0.9, 0.7])
    result = ap_per_class(tp, conf, [0, 0, 0], [0, 0, 0])
    np.testing.assert_allclose(result.ap, 0.555, atol=1e-9)


def test_ap_per_class_classes_without_predictions_or_labels() -> None:
    # class 0: perfect; class 1: labelled, never predicted; class 2: predicted, no labels
    tp = np.array([[T] * 10, [F] * 10])
    result = ap_per_class(tp, [0.9, 0.95], [0, 2], [0, 1])
    np.testing.assert_array_equal(result.classes, [0, 1])  # only classes with labels
    np.testing.assert_allclose(result.ap[0], 0.995)
    np.testing.assert_allclose(result.ap[1], 0.0)
    assert result.precision[1] == 0.0 and result.recall[1] == 0.0
    assert result.map50 == pytest.approx(0.995 / 2)


def test_ap_per_class_mixed_iou_columns() -> None:
    # one GT, one prediction correct at IoU 0.5..0.7 only: AP 0.995 there, 0 above
    tp = np.array([[T] * 5 + [F] * 5])
    result = ap_per_class(tp, [0.8], [3], [3])
    np.testing.assert_allclose(result.ap[0], [0.995] * 5 + [0.0] * 5)
    assert result.map50 == pytest.approx(0.995)
    assert result.map50_95 == pytest.approx(0.4975)


def test_ap_per_class_no_labels() -> None:
    result = ap_per_class(np.zeros((2, 10), bool), [0.5, 0.4], [0, 1], [])
    assert result.classes.size == 0
    assert result.map50 == 0.0 and result.map50_95 == 0.0
    assert result.mean_precision == 0.0 and result.mean_recall == 0.0


def test_ap_per_class_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="tp must be"):
        ap_per_class(np.zeros((3, 10), bool), [0.5], [0], [0])


def test_detection_stats_two_images() -> None:
    stats = DetectionStats()
    # image 1: one box of class 0 found exactly, plus a false positive of class 0
    stats.add_image([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.8], [0, 0], [[0, 0, 10, 10]], [0])
    # image 2: two class-0 boxes, one found; a class-1 box missed
    tp = stats.add_image(
        [[0, 0, 20, 20]],
        [0.7],
        [0],
        [[0, 0, 20, 20], [30, 30, 40, 40], [5, 5, 9, 9]],
        [0, 0, 1],
    )
    assert tp.shape == (1, 10) and tp.all()
    # image 3: background, no predictions
    stats.add_image(np.zeros((0, 4)), [], [], np.zeros((0, 4)), [])
    assert stats.images == 3
    np.testing.assert_array_equal(stats.instances_per_class(3), [3, 1, 0])
    np.testing.assert_array_equal(stats.images_per_class(3), [2, 1, 0])
    summary = stats.summary()
    # class 0 sees TP, FP, TP over 3 labels: the hand-computed 0.555 case
    np.testing.assert_allclose(summary.ap[0], 0.555, atol=1e-9)
    np.testing.assert_allclose(summary.ap[1], 0.0)
    assert summary.map50 == pytest.approx(0.555 / 2)


def test_detection_stats_empty() -> None:
    summary = DetectionStats().summary()
    assert summary.classes.size == 0 and summary.map50 == 0.0

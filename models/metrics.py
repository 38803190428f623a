"""Detection metrics compatible with Ultralytics validation, in pure numpy.

The numbers reproduce Ultralytics' `DetectionValidator` (ultralytics 8.4):

- predictions of one image are matched to its ground truth greedily, in descending
  score order, at each of the ten IoU thresholds 0.50:0.05:0.95
  (`BaseValidator.match_predictions`): a prediction takes the unclaimed ground-truth box
  of its class with the highest IoU, and is correct at a threshold if that IoU reaches it;
- AP is the area under the monotone precision envelope sampled at 101 recall points
  and integrated with the trapezoid rule (`compute_ap`);
- P and R are read off the per-class precision/recall-vs-confidence curves (1000
  points) at the confidence where the box-smoothed mean F1 over classes peaks
  (`ap_per_class`);
- per-class results exist only for classes with at least one ground-truth instance and
  the means run over those classes only.

Boxes are `xyxy` in any pixel frame, as long as predictions and ground truth share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IOU_THRESHOLDS: npt.NDArray[np.float64] = np.linspace(0.5, 0.95, 10)
"""The ten IoU thresholds of mAP50-95; column 0 is mAP50."""

_AP_RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCO 101-point interpolation
_CURVE_POINTS = 1000  # resolution of the P/R/F1-vs-confidence curves
_EPS = 1e-16

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def box_iou(
    boxes1_xyxy: npt.ArrayLike, boxes2_xyxy: npt.ArrayLike, eps: float = 1e-7
) -> FloatArray:
    """Pairwise IoU of two box sets.

    Args:
        boxes1_xyxy: [M, 4] boxes x1, y1, x2, y2.
        boxes2_xyxy: [N, 4] boxes in the same frame.
        eps: added to the union, as Ultralytics' `box_iou` does.

    Returns:
        [M, N] IoU values in [0, 1].
    """
    a = np.asarray(boxes1_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2_xyxy, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou: FloatArray = inter / (area_a[:, None] + area_b[None, :] - inter + eps)
    return iou


def match_predictions(
    pred_classes: npt.ArrayLike,
    true_classes: npt.ArrayLike,
    iou: npt.ArrayLike,
    thresholds: npt.ArrayLike = IOU_THRESHOLDS,
) -> BoolArray:
    """Mark each prediction correct or not at each IoU threshold (greedy, one-to-one).

    Same algorithm as Ultralytics' `BaseValidator.match_predictions` (non-scipy path).

    Args:
        pred_classes: [N] class ids of the predictions, in descending score order.
        true_classes: [M] class ids of the ground-truth boxes.
        iou: [M, N] IoU between ground truth (rows) and predictions (columns).
        thresholds: [T] IoU thresholds.

    Returns:
        [N, T] bool: prediction n is a true positive at threshold t.
    """
    pc = np.asarray(pred_classes).reshape(-1)
    tc = np.asarray(true_classes).reshape(-1)
    thr = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    iou_same_class = np.asarray(iou, dtype=np.float64).reshape(tc.shape[0], pc.shape[0]) * (
        tc[:, None] == pc[None, :]
    )
    correct = np.zeros((pc.shape[0], thr.shape[0]), dtype=bool)
    if tc.shape[0] == 0 or pc.shape[0] == 0:
        return correct
    columns = np.arange(thr.shape[0])
    claimed = np.zeros((tc.shape[0], thr.shape[0]), dtype=bool)  # ground truth taken, per threshold
    for j in np.flatnonzero((iou_same_class >= thr.min()).any(0)):
        available = np.where(claimed, 0.0, iou_same_class[:, j, None])  # [M, T]
        best = available.argmax(0)  # best unclaimed ground truth per threshold
        correct[j] = available[best, columns] >= thr
        claimed[best, columns] |= correct[j]
    return correct


def match_image(
    pred_boxes_xyxy: npt.ArrayLike,
    pred_scores: npt.ArrayLike,
    pred_classes: npt.ArrayLike,
    true_boxes_xyxy: npt.ArrayLike,
    true_classes: npt.ArrayLike,
    thresholds: npt.ArrayLike = IOU_THRESHOLDS,
) -> BoolArray:
    """True-positive matrix of one image's predictions, in the order they were given.

    Predictions are visited in descending score order (stable for ties), as NMS
    output is; the result rows follow the input order.

    Args:
        pred_boxes_xyxy: [N, 4]; pred_scores: [N]; pred_classes: [N].
        true_boxes_xyxy: [M, 4] in the same pixel frame; true_classes: [M].
        thresholds: [T] IoU thresholds.

    Returns:
        [N, T] bool.
    """
    scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
    pc = np.asarray(pred_classes).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    iou = box_iou(true_boxes_xyxy, np.asarray(pred_boxes_xyxy).reshape(-1, 4)[order])
    correct_sorted = match_predictions(pc[order], true_classes, iou, thresholds)
    correct = np.empty_like(correct_sorted)
    correct[order] = correct_sorted
    return correct


def compute_ap(recall: npt.ArrayLike, precision: npt.ArrayLike) -> float:
    """Average precision of one precision/recall curve (COCO 101-point, trapezoid).

    Args:
        recall: [K] non-decreasing recall after each prediction (descending score).
        precision: [K] precision after each prediction.

    Returns:
        AP in [0, 1].
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    mrec = np.concatenate(([0.0], rec, [rec[-1] if rec.size else 1.0], [1.0]))
    mpre = np.concatenate(([1.0], prec, [0.0], [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))  # precision envelope
    y = np.interp(_AP_RECALL_POINTS, mrec, mpre)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(_AP_RECALL_POINTS)) / 2.0)


def smooth(y: npt.ArrayLike, fraction: float = 0.05) -> FloatArray:
    """Box-filter `y` with a window of `fraction` of its length (odd, edge-padded)."""
    values = np.asarray(y, dtype=np.float64).reshape(-1)
    width = round(len(values) * fraction * 2) // 2 + 1
    pad = np.ones(width // 2)
    padded = np.concatenate((pad * values[0], values, pad * values[-1]))
    out: FloatArray = np.convolve(padded, np.ones(width) / width, mode="valid")
    return out


@dataclass(frozen=True)
class ClassAP:
    """Per-class results of `ap_per_class`; row i belongs to class `classes[i]`.

    Only classes with at least one ground-truth instance have a row.
    """

    classes: IntArray  # [C] class ids
    instances: IntArray  # [C] ground-truth boxes per class
    precision: FloatArray  # [C] at the max-mean-F1 confidence
    recall: FloatArray  # [C]
    f1: FloatArray  # [C]
    ap: FloatArray  # [C, T] AP per IoU threshold
    confidence: float  # the confidence where mean F1 peaks (0 when there are no classes)
    # [C, 1000] precision and recall (IoU 0.5) at confidences linspace(0, 1, 1000): the
    # PR curve of each class, traced by the confidence threshold
    p_curve: FloatArray = field(default_factory=lambda: np.zeros((0, _CURVE_POINTS)))
    r_curve: FloatArray = field(default_factory=lambda: np.zeros((0, _CURVE_POINTS)))

    @property
    def ap50(self) -> FloatArray:
        """[C] AP at IoU 0.5."""
        return self.ap[:, 0]

    @property
    def ap50_95(self) -> FloatArray:
        """[C] AP averaged over the IoU thresholds."""
        out: FloatArray = self.ap.mean(1) if self.ap.size else np.zeros(0)
        return out

    @property
    def mean_precision(self) -> float:
        return float(self.precision.mean()) if self.precision.size else 0.0

    @property
    def mean_recall(self) -> float:
        return float(self.recall.mean()) if self.recall.size else 0.0

    @property
    def map50(self) -> float:
        return float(self.ap[:, 0].mean()) if self.ap.size else 0.0

    @property
    def map50_95(self) -> float:
        return float(self.ap.mean()) if self.ap.size else 0.0


def ap_per_class(
    tp: npt.ArrayLike,
    conf: npt.ArrayLike,
    pred_cls: npt.ArrayLike,
    target_cls: npt.ArrayLike,
) -> ClassAP:
    """AP per class and IoU threshold, and P/R/F1 at the max-mean-F1 confidence.

    Same computation as Ultralytics' `ap_per_class`.

    Args:
        tp: [N, T] bool, prediction correct at each IoU threshold (see `match_image`).
        conf: [N] prediction scores in [0, 1].
        pred_cls: [N] predicted class ids.
        target_cls: [M] class ids of all ground-truth boxes of the dataset.

    Returns:
        `ClassAP` over the classes present in `target_cls`.
    """
    tp_arr = np.asarray(tp, dtype=bool)
    conf_arr = np.asarray(conf, dtype=np.float64).reshape(-1)
    if tp_arr.ndim != 2 or tp_arr.shape[0] != conf_arr.shape[0]:
        raise ValueError(f"tp must be [N, T] with N = len(conf) = {conf_arr.shape[0]}")
    order = np.argsort(-conf_arr)  # same (unstable) sort as Ultralytics, so ties land alike
    tp_arr, conf_arr = tp_arr[order], conf_arr[order]
    pcls = np.asarray(pred_cls).reshape(-1)[order]

    classes, counts = np.unique(np.asarray(target_cls).reshape(-1), return_counts=True)
    nc, nt = classes.shape[0], tp_arr.shape[1]
    x = np.linspace(0.0, 1.0, _CURVE_POINTS)
    ap = np.zeros((nc, nt))
    p_curve = np.zeros((nc, _CURVE_POINTS))
    r_curve = np.zeros((nc, _CURVE_POINTS))
    for ci, c in enumerate(classes):
        sel = pcls == c
        n_labels = counts[ci]
        if not sel.any():
            continue
        fpc = (1 - tp_arr[sel]).cumsum(0)
        tpc = tp_arr[sel].cumsum(0)
        recall = tpc / (n_labels + _EPS)
        precision = tpc / (tpc + fpc)
        # np.interp wants increasing xp; scores decrease, so negate both axes
        r_curve[ci] = np.interp(-x, -conf_arr[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-x, -conf_arr[sel], precision[:, 0], left=1)
        for j in range(nt):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])

    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + _EPS)
    best = int(smooth(f1_curve.mean(0), 0.1).argmax()) if nc else 0
    return ClassAP(
        classes=classes.astype(np.int64),
        instances=counts.astype(np.int64),
        precision=p_curve[:, best],
        recall=r_curve[:, best],
        f1=f1_curve[:, best],
        ap=ap,
        confidence=float(x[best]) if nc else 0.0,
        p_curve=p_curve,
        r_curve=r_curve,
    )


@dataclass
class DetectionStats:
    """Accumulates per-image matches over a dataset; `summary()` gives the metrics.

    Invariant: the four prediction lists have one entry per image added, in order.
    """

    thresholds: FloatArray = field(default_factory=lambda: IOU_THRESHOLDS.copy())
    images: int = 0
    _tp: list[BoolArray] = field(default_factory=list)
    _conf: list[FloatArray] = field(default_factory=list)
    _pred_cls: list[IntArray] = field(default_factory=list)
    _target_cls: list[IntArray] = field(default_factory=list)
    _image_classes: list[IntArray] = field(default_factory=list)

    def add_image(
        self,
        pred_boxes_xyxy: npt.ArrayLike,
        pred_scores: npt.ArrayLike,
        pred_classes: npt.ArrayLike,
        true_boxes_xyxy: npt.ArrayLike,
        true_classes: npt.ArrayLike,
    ) -> BoolArray:
        """Match one image's predictions [N] with its ground truth [M]; returns tp [N, T]."""
        scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        pcls = np.asarray(pred_classes).reshape(-1).astype(np.int64)
        tcls = np.asarray(true_classes).reshape(-1).astype(np.int64)
        tp = match_image(pred_boxes_xyxy, scores, pcls, true_boxes_xyxy, tcls, self.thresholds)
        # keep Ultralytics' concatenation order: per image, descending score
        order = np.argsort(-scores, kind="stable")
        self._tp.append(tp[order])
        self._conf.append(scores[order])
        self._pred_cls.append(pcls[order])
        self._target_cls.append(tcls)
        self._image_classes.append(np.unique(tcls))
        self.images += 1
        return tp

    def summary(self) -> ClassAP:
        """Metrics over all images added so far."""
        nt = self.thresholds.shape[0]
        tp = np.concatenate(self._tp, 0) if self._tp else np.zeros((0, nt), dtype=bool)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        pcls = np.concatenate(self._pred_cls) if self._pred_cls else np.zeros(0, np.int64)
        tcls = np.concatenate(self._target_cls) if self._target_cls else np.zeros(0, np.int64)
        return ap_per_class(tp, conf, pcls, tcls)

    def images_per_class(self, num_classes: int) -> IntArray:
        """[num_classes] number of images holding at least one box of each class."""
        return _bincount(self._image_classes, num_classes)

    def instances_per_class(self, num_classes: int) -> IntArray:
        """[num_classes] number of ground-truth boxes of each class."""
        return _bincount(self._target_cls, num_classes)


def _bincount(class_ids: Sequence[IntArray], num_classes: int) -> IntArray:
    found = [c for c in class_ids if c.size]
    if not found:
        return np.zeros(num_classes, dtype=np.int64)
    counts: IntArray = np.bincount(np.concatenate(found), minlength=num_classes)
    return counts.astype(np.int64)

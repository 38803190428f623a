"""Decision thresholds chosen from data for a target miss rate. Pure numpy/scipy.

A *part* is one image of the validation set; its *score* for a class is the highest
score of a detection of that class the model reports for it (0 when none); the judge
fails a part when a score is strictly above the threshold.

- One threshold for every class: a part is *defective* when its labels hold any box,
  *good* when they hold none; its score is its highest score of any class.
- One threshold per class c: a part is defective for c when its labels hold a box of
  c, and a *negative* for c otherwise (a defect-free part, or one with other defects
  only); its score is its class-c score. A negative above the threshold is a false
  alarm of c: a false reject when the part is good.

- miss rate(t) = defective parts with score <= t / defective parts
- false-reject rate(t) = negatives with score > t / negatives

The chosen threshold is the highest t (fewest false rejects) whose miss rate on the
set is at most the target: with n defective parts sorted by score s_1 <= ... <= s_n
and k = floor(target * n) misses allowed, t is the float32 just below s_(k+1). The
miss rate's 95% Clopper-Pearson interval says what the set supports; a set with
fewer than ``ceil(3 / target)`` defective parts of a class cannot show the target
even with no miss at all (rule of three), so it is refused, saying how many it needs;
so is a set of one kind of part only (no negatives, or no defects).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calibration.errors import ThresholdError

__all__ = [
    "ANY_DEFECT",
    "ClassThreshold",
    "Curves",
    "PartScores",
    "choose_threshold",
    "clopper_pearson",
    "curves",
    "part_scores",
    "required_defects",
]

ANY_DEFECT = "any defect"
CONFIDENCE = 0.95
MIN_THRESHOLD = 0.001
"""Scores at or below the validation floor are not detections: no threshold can
catch a defect the model scores this low."""

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class PartScores:
    """Per part: the scores of one class (or any defect), and which parts are
    defective for it and which are its negatives (`good`: not defective for it).
    Arrays of equal length."""

    name: str
    scores: F64
    defective: npt.NDArray[np.bool_]
    good: npt.NDArray[np.bool_]


def part_scores(
    labels_per_part: Sequence[npt.NDArray[np.int64]],
    scores_per_part: Sequence[F64],
    classes: Sequence[str],
    per_class: bool,
) -> list[PartScores]:
    """Per class (or one "any defect" entry): part scores and defect flags.

    `labels_per_part[i]`: class ids of part i's labelled boxes; `scores_per_part[i]`:
    [nc] highest detection score per class for part i (0 where none).
    """
    n = len(labels_per_part)
    nc = len(classes)
    matrix = np.zeros((n, nc), np.float64)
    present = np.zeros((n, nc), bool)
    for i, (labels, scores) in enumerate(zip(labels_per_part, scores_per_part, strict=True)):
        matrix[i] = np.asarray(scores, np.float64)
        present[i, np.asarray(labels, np.int64)] = True
    any_defect: npt.NDArray[np.bool_] = np.asarray(present.any(axis=1), bool)
    if not per_class:
        best: F64 = matrix.max(axis=1) if nc else np.zeros(n)
        return [PartScores(ANY_DEFECT, best, any_defect, ~any_defect)]
    out = []
    for c, name in enumerate(classes):
        has_c: npt.NDArray[np.bool_] = np.asarray(present[:, c], bool)
        out.append(PartScores(name, matrix[:, c], has_c, ~has_c))
    return out


def required_defects(target_miss_rate: float) -> int:
    """Defective parts a set needs before it can support `target_miss_rate` (rule of
    three: with none missed, the 95% upper bound of the miss rate is about 3/n)."""
    return math.ceil(3.0 / target_miss_rate - 1e-9)


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided binomial interval for k successes in n trials."""
    from scipy.stats import beta  # lazily: scipy is heavy and only this needs it

    if n <= 0:
        return (0.0, 1.0)
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return (low, high)


@dataclass(frozen=True)
class ClassThreshold:
    """The chosen threshold of one class and what it does on the set."""

    name: str
    threshold: float
    defective: int
    good: int
    misses: int
    miss_rate: float
    miss_rate_ci: tuple[float, float]
    false_rejects: int
    false_reject_rate: float
    false_reject_ci: tuple[float, float]


def choose_threshold(part: PartScores, target_miss_rate: float) -> ClassThreshold:
    """The highest threshold whose miss rate on the set is <= `target_miss_rate`.

    Raises ThresholdError: no good parts or no defective parts (a set of one kind
    only), fewer defective parts than `required_defects(target)` (says how many are
    needed), or more defects unseen by the model (score <= 0.001) than the target
    allows.
    """
    if not 0.0 < target_miss_rate < 1.0:
        raise ThresholdError(f"target miss rate {target_miss_rate} must be between 0 and 1")
    scores = part.scores
    n_def = int(part.defective.sum())
    n_good = int(part.good.sum())
    if n_good == 0:
        raise ThresholdError(
            f"{part.name}: every part of the set is defective (a set of one kind only), so "
            "false rejects cannot be measured; add defect-free parts (or use --per-class)")
    if n_def == 0:
        raise ThresholdError(
            f"{part.name}: the set holds no defective part (a set of one kind only); "
            f"need at least {required_defects(target_miss_rate)}")
    need = required_defects(target_miss_rate)
    if n_def < need:
        raise ThresholdError(
            f"{part.name}: {n_def} defective parts cannot support a {target_miss_rate:g} miss "
            f"rate; need at least {need} (rule of three: 3/target), {need - n_def} more")
    defect_scores = np.sort(scores[part.defective])
    allowed = math.floor(target_miss_rate * n_def + 1e-9)
    unseen = int((defect_scores <= MIN_THRESHOLD).sum())
    if unseen > allowed:
        raise ThresholdError(
            f"{part.name}: the model reports nothing for {unseen} of {n_def} defective parts "
            f"({unseen / n_def:.1%}), more than the {target_miss_rate:g} miss rate allows "
            f"({allowed}); no threshold reaches the target")
    cut = float(defect_scores[allowed])
    threshold = float(np.nextafter(np.float32(cut), np.float32(0.0)))
    threshold = max(threshold, MIN_THRESHOLD)
    misses = int((defect_scores <= threshold).sum())
    false_rejects = int((scores[part.good] > threshold).sum())
    return ClassThreshold(
        name=part.name,
        threshold=threshold,
        defective=n_def,
        good=n_good,
        misses=misses,
        miss_rate=misses / n_def,
        miss_rate_ci=clopper_pearson(misses, n_def),
        false_rejects=false_rejects,
        false_reject_rate=false_rejects / n_good,
        false_reject_ci=clopper_pearson(false_rejects, n_good),
    )


@dataclass(frozen=True)
class Curves:
    """Part-level rates over a grid of thresholds (all arrays of one length)."""

    thresholds: F64
    miss_rate: F64
    false_reject_rate: F64
    precision: F64
    recall: F64


def curves(part: PartScores, points: int = 201) -> Curves:
    """Miss rate, false-reject rate, precision and recall at `points` thresholds in
    [0, 1]. Precision counts rejected defective parts among all rejected parts
    (defective or good); recall = 1 - miss rate."""
    grid = np.linspace(0.0, 1.0, points)
    defect = np.sort(part.scores[part.defective])
    good = np.sort(part.scores[part.good])
    missed = np.searchsorted(defect, grid, side="right")  # scores <= t
    kept_good = np.searchsorted(good, grid, side="right")
    n_def, n_good = max(len(defect), 1), max(len(good), 1)
    caught = len(defect) - missed
    rejected_good = len(good) - kept_good
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(caught + rejected_good > 0,
                             caught / np.maximum(caught + rejected_good, 1), 1.0)
    return Curves(grid, missed / n_def, rejected_good / n_good, precision, caught / n_def)


def evaluate_threshold(part: PartScores, threshold: float) -> tuple[int, int, int, int]:
    """(misses, defective, false rejects, good) of `threshold` on another set."""
    defect = part.scores[part.defective]
    good = part.scores[part.good]
    return (int((defect <= threshold).sum()), len(defect),
            int((good > threshold).sum()), len(good))

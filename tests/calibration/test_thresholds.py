"""Threshold choice (pure, tables) and `lineguard calibration thresholds` end to end on
a linesim split with the demo bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.cli import main
from calibration.errors import ThresholdError
from calibration.thresholds import (
    PartScores,
    choose_threshold,
    clopper_pearson,
    curves,
    evaluate_threshold,
    part_scores,
    required_defects,
)
from linesim.config import LineConfig
from linesim.dataset import export_yolo
from models.bundle import load_bundle
from models.golden import verify_golden
from models.runtime import OnnxDetector

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"


def _parts(defect_scores: list[float], good_scores: list[float]) -> PartScores:
    scores = np.array(defect_scores + good_scores, np.float64)
    defective = np.array([True] * len(defect_scores) + [False] * len(good_scores))
    return PartScores("x", scores, defective, ~defective)


@pytest.mark.parametrize(("target", "need"), [(0.01, 300), (0.05, 60), (0.1, 30), (0.3, 10)])
def test_rule_of_three(target: float, need: int) -> None:
    assert required_defects(target) == need


@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 300, 0.0, 0.01222),  # the rule of three's exact counterpart (two-sided 95%)
    (3, 300, 0.00207, 0.02893),
    (10, 10, 0.69150, 1.0),
])
def test_clopper_pearson(k: int, n: int, low: float, high: float) -> None:
    lo, hi = clopper_pearson(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_highest_threshold_meeting_the_target() -> None:
    defects = [float(s) for s in np.linspace(0.2, 0.99, 100)]  # 100 defective parts
    goods = [0.05] * 50 + [0.3] * 30 + [0.6] * 20
    chosen = choose_threshold(_parts(defects, goods), 0.05)
    # 5 misses allowed: the threshold sits just below the 6th lowest defect score
    assert chosen.misses == 5 and chosen.miss_rate == 0.05
    assert defects[4] <= chosen.threshold < defects[5]
    assert chosen.false_rejects == 50 and chosen.good == 100  # the 0.3 and 0.6 goods
    assert chosen.miss_rate_ci[0] < 0.05 < chosen.miss_rate_ci[1]
    # and on another set the same threshold is measured the same way
    assert evaluate_threshold(_parts(defects, goods), chosen.threshold) == (5, 100, 50, 100)
    curve = curves(_parts(defects, goods))
    assert curve.miss_rate[0] == 0.0 and curve.miss_rate[-1] == 1.0
    assert np.all(np.diff(curve.miss_rate) >= 0) and np.all(np.diff(curve.false_reject_rate) <= 0)


@pytest.mark.parametrize(("defects", "goods", "target", "message"), [
    ([0.9] * 50, [0.1] * 10, 0.05, "50 defective parts cannot support a 0.05 miss rate; need "
     "at least 60 (rule of three: 3/target), 10 more"),
    ([0.9] * 60, [], 0.05, "every part of the set is defective (a set of one kind only)"),
    ([], [0.1] * 60, 0.05, "the set holds no defective part (a set of one kind only)"),
    ([0.0] * 10 + [0.9] * 50, [0.1], 0.05, "the model reports nothing for 10 of 60 defective"),
    ([0.9] * 60, [0.1], 1.5, "must be between 0 and 1"),
])
def test_refusals(defects: list[float], goods: list[float], target: float, message: str) -> None:
    with pytest.raises(ThresholdError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_threshold(_parts(defects, goods), target)


def test_part_scores_per_class_and_for_any_defect() -> None:
    labels = [np.array([0]), np.array([1, 1]), np.array([], np.int64)]
    scores = [np.array([0.9, 0.2]), np.array([0.1, 0.8]), np.array([0.3, 0.0])]
    [any_defect] = part_scores(labels, scores, ["a", "b"], per_class=False)
    assert any_defect.scores.tolist() == [0.9, 0.8, 0.3]
    assert any_defect.defective.tolist() == [True, True, False]
    assert any_defect.good.tolist() == [False, False, True]
    a, b = part_scores(labels, scores, ["a", "b"], per_class=True)
    assert a.scores.tolist() == [0.9, 0.1, 0.3] and a.defective.tolist() == [True, False, False]
    assert b.good.tolist() == [True, False, True]  # negatives of b: parts without b


@pytest.mark.slow
def test_thresholds_command_writes_a_new_bundle_version_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = export_yolo(tmp_path / "val", LineConfig(seed=7), n_train=0, n_val=50)
    out = tmp_path / "demo-v2"
    assert main(["thresholds", str(DEMO), str(data), "--target-miss-rate", "0.1",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "any defect: threshold" in printed and "wrote demo v" in printed
    old, new = load_bundle(DEMO).manifest, load_bundle(out).manifest
    assert new.version == old.version + 1 and new.lineage.parent_version == old.version
    assert new.postprocess.score_threshold != old.postprocess.score_threshold
    assert new.preprocess == old.preprocess and new.classes == old.classes
    verify_golden(load_bundle(out), OnnxDetector(out / "model.onnx", ["cpu"]))
    report = tmp_path / "demo-v2.report"
    html = (report / "report.html").read_text()
    assert "data:image/png;base64," in html and "any defect" in html
    assert (report / "any_defect.png").read_bytes()[:4] == b"\x89PNG"
    chosen = json.loads((report / "thresholds.json").read_text())["thresholds"][0]
    assert chosen["threshold"] == pytest.approx(new.postprocess.score_threshold)
    assert chosen["miss_rate"] <= 0.1

"""The gate's decision as a table, and its HTML report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud.registry.gate_html import render_gate_html
from cloud.registry.gate_report import GateReport, PrCurve, SetResult
from cloud.retrain.config import GateConfig
from cloud.retrain.gate import SetMeasurement, decide
from models.manifest import ClassMetrics, Metrics

SETTINGS = GateConfig(map50_tolerance=0.02, max_recall_drop=0.05,
                      min_instances_for_recall=10, latency_budget_ms=50.0)


def metrics(map50: float, **recalls: float | tuple[float, int]) -> Metrics:
    per_class = {}
    for name, value in recalls.items():
        recall, instances = value if isinstance(value, tuple) else (value, 20)
        per_class[name] = ClassMetrics(precision=0.8, recall=recall, map50=map50,
                                       map50_95=map50 / 2, instances=instances)
    return Metrics(dataset="d:val", images=10, instances=40, precision=0.8, recall=0.8,
                   map50=map50, map50_95=map50 / 2, per_class=per_class)


P = metrics(0.80, scratch=0.70, pit=0.60)

# (name, sets as (candidate, parent) pairs, latency, passed, reason fragments)
CASES = [
    ("better everywhere", [(metrics(0.85, scratch=0.75, pit=0.65), P)], 10.0, True, []),
    ("within the mAP tolerance", [(metrics(0.785, scratch=0.70, pit=0.60), P)], 10.0, True, []),
    ("exactly at the floor", [(metrics(0.78, scratch=0.70, pit=0.60), P)], 10.0, True, []),
    ("mAP below the floor", [(metrics(0.77, scratch=0.70, pit=0.60), P)], 10.0, False,
     ["mAP50 on set 0", "candidate 0.770, parent 0.800"]),
    ("worse on the second set only",
     [(metrics(0.9, scratch=0.8, pit=0.7), P), (metrics(0.5, scratch=0.70, pit=0.60), P)],
     10.0, False, ["mAP50 on set 1"]),
    ("a class's recall falls too far", [(metrics(0.82, scratch=0.64, pit=0.60), P)], 10.0,
     False, ["recall of scratch on set 0: candidate 0.640, parent 0.700"]),
    ("a recall fall within the limit", [(metrics(0.82, scratch=0.66, pit=0.60), P)], 10.0,
     True, []),
    ("a class the candidate lost entirely", [(metrics(0.82, scratch=0.70), P)], 10.0, False,
     ["recall of pit on set 0: candidate 0.000"]),
    ("a rare class is not judged on recall",
     [(metrics(0.82, scratch=0.70, pit=(0.0, 3)), metrics(0.80, scratch=0.70, pit=(0.6, 3)))],
     10.0, True, []),
    ("too slow", [(metrics(0.85, scratch=0.75, pit=0.65), P)], 51.0, False,
     ["batch-1 latency 51.0 ms, budget 50 ms"]),
    ("latency not measured", [(metrics(0.85, scratch=0.75, pit=0.65), P)], None, False,
     ["not measured"]),
    ("no parent: latency only", [(metrics(0.1, scratch=0.1), None)], 10.0, True, []),
    ("everything wrong", [(metrics(0.1, scratch=0.1, pit=0.1), P)], 99.0, False,
     ["mAP50", "recall of scratch", "recall of pit", "latency"]),
]


@pytest.mark.parametrize(("name", "pairs", "latency", "passed", "fragments"), CASES,
                         ids=[c[0] for c in CASES])
def test_decide(name: str, pairs: list[tuple[Metrics, Metrics | None]], latency: float | None,
                passed: bool, fragments: list[str]) -> None:
    sets = [SetMeasurement(f"set {i}", c, p) for i, (c, p) in enumerate(pairs)]
    decision = decide(SETTINGS, sets, latency)
    assert decision.passed is passed, decision.reasons
    assert bool(decision.reasons) is not passed
    text = " | ".join(decision.reasons)
    for fragment in fragments:
        assert fragment in text
    assert len(decision.reasons) == sum(not c.passed for c in decision.checks)


def test_report_html_is_self_contained_with_curves() -> None:
    curve = PrCurve(model="candidate", class_name="scratch", recall=[0.0, 0.5, 0.9],
                    precision=[1.0, 0.8, 0.3])
    s = SetResult(title="the parent's holdout", dataset="h:val", images=10, candidate_map50=0.7,
                  parent_map50=0.8, candidate_map50_95=0.4, parent_map50_95=0.5, classes=[],
                  curves=[curve, curve.model_copy(update={"model": "parent"})])
    decision = decide(SETTINGS, [SetMeasurement("the parent's holdout", metrics(0.7),
                                                metrics(0.8))], 5.0)
    report = GateReport(model="demo@2", parent="demo@1", passed=decision.passed,
                        reasons=decision.reasons, checks=decision.checks, sets=[s],
                        latency_batch1_ms=5.0, latency_budget_ms=50.0, measured_on="cpu",
                        settings={"map50_tolerance": 0.02}, created_at=datetime.now(UTC))
    page = render_gate_html(report)
    assert "REFUSED" in page and "mAP50 on the parent&#x27;s holdout" in page
    assert 'src="data:image/png;base64,' in page
    assert "http://" not in page and "https://" not in page
    assert GateReport.model_validate_json(report.model_dump_json(by_alias=True)) == report


def test_the_new_data_must_improve_and_is_not_held_to_recall() -> None:
    holdout = SetMeasurement("the parent's holdout", metrics(0.80, scratch=0.70),
                             metrics(0.80, scratch=0.70))

    def new(candidate: float, parent: float, recall: float = 0.9) -> SetMeasurement:
        return SetMeasurement("the new data's held-out split",
                              metrics(candidate, stain=recall), metrics(parent, stain=1.0),
                              improve=True)

    learned = decide(SETTINGS, [holdout, new(0.69, 0.30)], 5.0)
    assert learned.passed, learned.reasons  # stain recall 1.0 -> 0.9 not judged here
    sabotaged = decide(SETTINGS, [holdout, new(0.0, 0.0)], 5.0)
    assert not sabotaged.passed
    assert sabotaged.reasons == [
        "mAP50 on the new data's held-out split (d:val): candidate 0.000, parent 0.000, "
        "floor 0.020 (at least +0.02 over the parent)"]
    assert not decide(SETTINGS, [holdout, new(0.31, 0.30)], 5.0).passed  # below the gain
    assert decide(SETTINGS, [holdout, new(0.32, 0.30)], 5.0).passed

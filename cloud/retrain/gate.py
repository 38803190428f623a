"""The validation gate's decision: a pure function of the measurements and the
settings (no IO; `cloud.retrain.gate_run` measures). Rules, each a `Check`:

- mAP50 on each held-out set is at least the parent's minus `map50_tolerance`; on the
  new data's held-out split (a set with `improve`) at least the parent's plus
  `min_new_data_gain`: there the candidate must have learned something;
- no class's recall on any set but the new data's falls by more than
  `max_recall_drop` (classes with fewer than `min_instances_for_recall` boxes in that
  set are not judged);
- the candidate's batch-1 latency is within `latency_budget_ms`.

A candidate without a parent is judged on latency only (nothing to compare with).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cloud.registry.gate_report import Check
from cloud.retrain.config import GateConfig
from models.manifest import Metrics


@dataclass(frozen=True)
class SetMeasurement:
    """Candidate and parent metrics on one held-out set."""

    title: str
    candidate: Metrics
    parent: Metrics | None
    improve: bool = False
    """The new data: the candidate must beat the parent here, not only keep up."""


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    checks: list[Check]
    reasons: list[str]
    """The failed checks' details (empty when it passed)."""


def decide(settings: GateConfig, sets: Sequence[SetMeasurement],
           latency_batch1_ms: float | None) -> GateDecision:
    """Apply the gate's rules. `latency_batch1_ms` None (not measured) fails the
    latency rule: an unmeasured model is not shipped."""
    checks: list[Check] = []
    for s in sets:
        if s.parent is None:
            continue
        if s.improve:
            floor = s.parent.map50 + settings.min_new_data_gain
            rule = f"at least +{settings.min_new_data_gain:g} over the parent"
        else:
            floor = s.parent.map50 - settings.map50_tolerance
            rule = f"tolerance {settings.map50_tolerance:g}"
        checks.append(Check(
            rule=f"mAP50 on {s.title}",
            passed=s.candidate.map50 >= floor - 1e-12,
            detail=f"mAP50 on {s.title} ({s.candidate.dataset}): candidate "
                   f"{s.candidate.map50:.3f}, parent {s.parent.map50:.3f}, floor {floor:.3f} "
                   f"({rule})"))
        if s.improve:
            continue  # a few dozen new images: per-class recall is too coarse to judge
        for name, parent_cls in sorted(s.parent.per_class.items()):
            if parent_cls.instances < settings.min_instances_for_recall:
                continue
            cand = s.candidate.per_class.get(name)
            recall = cand.recall if cand is not None else 0.0
            drop = parent_cls.recall - recall
            checks.append(Check(
                rule=f"recall of {name} on {s.title}",
                passed=drop <= settings.max_recall_drop + 1e-12,
                detail=f"recall of {name} on {s.title}: candidate {recall:.3f}, parent "
                       f"{parent_cls.recall:.3f} ({-drop:+.3f}; at most "
                       f"-{settings.max_recall_drop:g} allowed)"))
    if latency_batch1_ms is None:
        checks.append(Check(rule="batch-1 latency", passed=False,
                            detail="batch-1 latency was not measured"))
    else:
        checks.append(Check(
            rule="batch-1 latency",
            passed=latency_batch1_ms <= settings.latency_budget_ms,
            detail=f"batch-1 latency {latency_batch1_ms:.1f} ms, budget "
                   f"{settings.latency_budget_ms:g} ms"))
    reasons = [c.detail for c in checks if not c.passed]
    return GateDecision(passed=not reasons, checks=checks, reasons=reasons)

"""Pure decisions of a staged activation: do two judgements of one frame agree, is a
shadow run good enough, is a health window healthy. Plain data in, reasons out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from appliance.records import DefectRecord


def iou_xyxy(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two xyxy boxes (0 for empty ones)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def judgements_agree(verdict_a: str, defects_a: Sequence[DefectRecord], verdict_b: str,
                     defects_b: Sequence[DefectRecord], *, min_iou: float) -> bool:
    """Same verdict, and every defect of each side matched one-to-one (same class, IoU
    at least `min_iou`, greedy by IoU) by one of the other."""
    if verdict_a != verdict_b or len(defects_a) != len(defects_b):
        return False
    unmatched = list(defects_b)
    for d in defects_a:
        best, best_iou = None, min_iou
        for other in unmatched:
            if other.class_name != d.class_name:
                continue
            iou = iou_xyxy(d.box_xyxy, other.box_xyxy)
            if iou >= best_iou:
                best, best_iou = other, iou
        if best is None:
            return False
        unmatched.remove(best)
    return True


@dataclass(frozen=True)
class ShadowResult:
    """What a shadow run measured."""

    frames: int
    agreed: int
    candidate_ms_p50: float
    active_ms_p50: float
    errors: int

    @property
    def agreement(self) -> float:
        return self.agreed / self.frames if self.frames else 0.0


def shadow_refusal(result: ShadowResult, *, wanted_frames: int, min_agreement: float,
                   max_latency_ratio: float, latency_budget_ms: float | None,
                   latency_floor_ms: float = 0.0) -> str | None:
    """Why a candidate fails its shadow run, or None if it passes."""
    if result.errors:
        return f"candidate failed on {result.errors} shadow frame(s)"
    if result.frames < wanted_frames:
        return f"only {result.frames} of {wanted_frames} shadow frames seen in time"
    if result.frames and result.agreement < min_agreement:
        return (f"agreement {result.agreement:.3f} with the active model on "
                f"{result.frames} frames is below {min_agreement:.3f}")
    if latency_budget_ms is not None and result.candidate_ms_p50 > latency_budget_ms:
        return (f"median frame time {result.candidate_ms_p50:.1f} ms is over the budget "
                f"of {latency_budget_ms:.1f} ms")
    if result.active_ms_p50 > 0 and result.candidate_ms_p50 > \
            max(max_latency_ratio * result.active_ms_p50, result.active_ms_p50 + latency_floor_ms):
        return (f"median frame time {result.candidate_ms_p50:.1f} ms is over "
                f"{max_latency_ratio:.1f}x the active model's {result.active_ms_p50:.1f} ms")
    return None


@dataclass(frozen=True)
class HealthFigures:
    """Verdict figures of one model over a window."""

    verdicts: int
    uninspected: int
    engine_failures: int
    fails: int
    latency_ms_p99: float

    @property
    def uninspected_rate(self) -> float:
        return self.uninspected / self.verdicts if self.verdicts else 0.0

    @property
    def fail_rate(self) -> float:
        inspected = self.verdicts - self.uninspected
        return self.fails / inspected if inspected else 0.0


def figures_of(verdicts: Sequence[tuple[str, str | None, float | None]]) -> HealthFigures:
    """Figures of (verdict, uninspected reason, end-to-end latency ms) triples."""
    lat = [t for _, _, t in verdicts if t is not None]
    return HealthFigures(
        verdicts=len(verdicts),
        uninspected=sum(v == "uninspected" for v, _, _ in verdicts),
        engine_failures=sum(r == "engine_failure" for _, r, _ in verdicts),
        fails=sum(v == "fail" for v, _, _ in verdicts),
        latency_ms_p99=float(np.percentile(lat, 99)) if lat else 0.0,
    )


def health_failures(before: HealthFigures | None, after: HealthFigures, *,
                    max_uninspected_increase: float, max_p99_latency_ratio: float,
                    max_defect_rate_shift: float) -> list[str]:
    """Why the new model's window is unhealthy (empty: healthy). `before` is the previous
    model's recent window (None: none known, only absolute checks)."""
    reasons = []
    if after.engine_failures:
        reasons.append(f"{after.engine_failures} engine failure(s)")
    base_un = before.uninspected_rate if before and before.verdicts else 0.0
    if after.uninspected_rate > base_un + max_uninspected_increase:
        reasons.append(f"uninspected rate {after.uninspected_rate:.3f} against "
                       f"{base_un:.3f} before")
    if before is None or not before.verdicts:
        return reasons
    if before.latency_ms_p99 > 0 and \
            after.latency_ms_p99 > max_p99_latency_ratio * before.latency_ms_p99:
        reasons.append(f"latency p99 {after.latency_ms_p99:.1f} ms against "
                       f"{before.latency_ms_p99:.1f} ms before")
    if abs(after.fail_rate - before.fail_rate) > max_defect_rate_shift:
        reasons.append(f"defect rate {after.fail_rate:.3f} against {before.fail_rate:.3f} "
                       "before")
    return reasons

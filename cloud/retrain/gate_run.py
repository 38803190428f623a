"""Running the validation gate: evaluate the candidate and its parent with
`lineguard eval` (models.evaluate) on each held-out set, time the candidate at batch 1
on this machine, and decide (`cloud.retrain.gate.decide`) into a `GateReport`."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cloud.registry.gate_report import ClassResult, GateReport, PrCurve, SetResult
from cloud.retrain.config import GateConfig
from cloud.retrain.gate import SetMeasurement, decide
from cloud.training.throughput import measure_throughput
from models.bundle import Bundle
from models.evaluate import EvalReport, evaluate_report, read_image
from models.preprocess import preprocess_batch
from models.yolo_dataset import YoloDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldOutSet:
    """A held-out set the gate measures on: its val split."""

    title: str
    dataset: YoloDataset
    improve: bool = False
    """The new data: the candidate must beat its parent here (gate.decide)."""


def machine_description(threads: int) -> str:
    """CPU model and the thread count a measurement used (latency moves between CPUs)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {threads} ORT threads"


def _curves(model: Literal["candidate", "parent"], report: EvalReport) -> list[PrCurve]:
    return [PrCurve(model=model, class_name=name, recall=list(r), precision=list(p))
            for name, (r, p) in sorted(report.pr_curves.items())]


def _set_result(title: str, cand: EvalReport, parent: EvalReport | None) -> SetResult:
    names = sorted(set(cand.metrics.per_class) | set(parent.metrics.per_class if parent else ()))
    classes = []
    for name in names:
        c = cand.metrics.per_class.get(name)
        p = parent.metrics.per_class.get(name) if parent else None
        either = c or p
        classes.append(ClassResult(
            name=name, instances=either.instances if either is not None else 0,
            candidate_recall=c.recall if c else None, parent_recall=p.recall if p else None,
            candidate_ap50=c.map50 if c else None, parent_ap50=p.map50 if p else None))
    return SetResult(
        title=title, dataset=cand.metrics.dataset, images=cand.metrics.images,
        candidate_map50=cand.metrics.map50,
        parent_map50=parent.metrics.map50 if parent else None,
        candidate_map50_95=cand.metrics.map50_95,
        parent_map50_95=parent.metrics.map50_95 if parent else None,
        classes=classes,
        curves=_curves("candidate", cand) + (_curves("parent", parent) if parent else []))


def batch1_latency_ms(bundle: Bundle, dataset: YoloDataset, settings: GateConfig) -> float:
    """Median batch-1 latency of the bundle's model (ONNX Runtime, CPU), milliseconds,
    on a real preprocessed frame of `dataset`'s val split."""
    m = bundle.manifest
    frame = read_image(dataset.images("val")[0])
    sample, _ = preprocess_batch([frame], m.preprocess, (m.input.height, m.input.width))
    rows = measure_throughput({"candidate": bundle.model_path}, sample, batch_sizes=(1,),
                              threads=settings.latency_threads, rounds=settings.latency_rounds,
                              images_per_round=8)
    return 1000.0 / rows[0].images_per_s


def run_gate(
    candidate: Bundle,
    parent: Bundle | None,
    sets: Sequence[HeldOutSet],
    settings: GateConfig,
    *,
    parent_name: str | None,
    progress: Callable[[str], None] | None = None,
) -> GateReport:
    """Measure and decide. Raises the `ModelError`s of evaluation (a dataset whose
    classes differ from the bundle's, unreadable images)."""
    say = progress or (lambda msg: logger.info("%s", msg))
    if not sets:
        raise ValueError("the gate needs at least one held-out set")
    measured: list[SetMeasurement] = []
    results: list[SetResult] = []
    for s in sets:
        say(f"gate: evaluating the candidate on {s.title} ({s.dataset.label})")
        cand = evaluate_report(candidate, s.dataset, "val", providers=["cpu"])
        par = None
        if parent is not None:
            say(f"gate: evaluating the parent on {s.title}")
            par = evaluate_report(parent, s.dataset, "val", providers=["cpu"])
        say(f"gate: mAP50 on {s.title}: candidate {cand.metrics.map50:.3f}"
            + (f", parent {par.metrics.map50:.3f}" if par else ""))
        measured.append(SetMeasurement(s.title, cand.metrics, par.metrics if par else None,
                                       improve=s.improve))
        results.append(_set_result(s.title, cand, par))
    say(f"gate: timing batch-1 latency ({settings.latency_threads} threads)")
    latency = batch1_latency_ms(candidate, sets[0].dataset, settings)
    decision = decide(settings, measured, latency)
    m = candidate.manifest
    return GateReport(
        model=f"{m.name}@{m.version}", parent=parent_name, passed=decision.passed,
        reasons=decision.reasons, checks=decision.checks, sets=results,
        latency_batch1_ms=latency, latency_budget_ms=settings.latency_budget_ms,
        measured_on=machine_description(settings.latency_threads),
        settings={"map50_tolerance": settings.map50_tolerance,
                  "max_recall_drop": settings.max_recall_drop,
                  "min_instances_for_recall": float(settings.min_instances_for_recall),
                  "min_new_data_gain": settings.min_new_data_gain,
                  "latency_budget_ms": settings.latency_budget_ms},
        created_at=datetime.now(UTC))

"""`retrain`: fine-tune a registered model on a dataset into a gated candidate.

Steps: resolve the parent (registry; its `.pt`) and the data -> fine-tune with
Ultralytics from the parent's weights (cloud/training/train.py: offline, export to
ONNX, bundle with its golden set and lineage) with a progress line per epoch and a log
file -> register the bundle and weights as a candidate -> run the validation gate on
the dataset's held-out split, the parent's holdout, and the new data's held-out split
(the val images no parent version of the dataset held: there the candidate must beat
its parent) -> record the report (the candidate becomes approved or refused).

The candidate keeps the parent's name, takes the next free version, and is served at
the parent's input size whatever size it trained at.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloud.errors import CloudError
from cloud.registry import (
    DatasetUse,
    GateReport,
    ModelEntry,
    ModelRef,
    ModelRegistry,
    RegistryError,
    RegistryLineage,
)
from cloud.retrain.config import GateConfig, TrainingDefaults
from cloud.retrain.data import DatasetSource, ResolvedData, resolve_data
from cloud.retrain.errors import RetrainError
from cloud.retrain.gate_run import HeldOutSet, run_gate
from cloud.retrain.progress import epoch_callback
from models.bundle import load_bundle
from models.errors import ModelError
from models.yolo_dataset import load_data_yaml

logger = logging.getLogger(__name__)

LOG_NAME = "retrain.log"


@dataclass(frozen=True)
class RetrainResult:
    candidate: ModelEntry
    report: GateReport
    run_dir: Path


@contextmanager
def _log_to(path: Path) -> Iterator[logging.Handler]:
    """Everything logged meanwhile (ours and Ultralytics') also goes to `path`."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def retrain(
    registry: ModelRegistry,
    parent_ref: ModelRef,
    data: str,
    *,
    training: TrainingDefaults,
    gate: GateConfig,
    work_dir: Path,
    datasets: DatasetSource | None = None,
    progress: Callable[[str], None] | None = None,
    by: str = "retrain",
) -> RetrainResult:
    """Fine-tune `parent_ref` on `data` (`NAME@VERSION` of `datasets` or a YOLO path),
    register the candidate and gate it. Raises RetrainError (bad parent or data,
    training failed), RegistryError."""
    from cloud.training.train import TrainConfig, TrainingError, train_detector
    from cloud.training.ultralytics_env import UltralyticsUnavailable

    parent = registry.get(parent_ref.name, parent_ref.version)
    if parent.state == "refused":
        raise RetrainError(f"{parent.ref} was refused; fine-tune an approved model")
    if parent.weights_path is None:
        raise RetrainError(f"{parent.ref} has no weights (.pt) in the registry; import it "
                           "with --weights to fine-tune it")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = (work_dir / f"{parent.name}-{stamp}-{secrets.token_hex(3)}").resolve()
    run_dir.mkdir(parents=True)
    with _log_to(run_dir / LOG_NAME) as log_file:
        say = _sayer(progress, log_file)
        resolved = resolve_data(data, run_dir, datasets)
        holdout = (resolve_data(parent.holdout, run_dir, datasets, "the parent's holdout")
                   if parent.holdout else None)
        parent_bundle = load_bundle(parent.bundle_dir)
        version = registry.next_version(parent.name)
        cfg = TrainConfig(
            data_yaml=resolved.data_yaml, out_bundle=run_dir / "bundle", name=parent.name,
            version=version, model=str(parent.weights_path), epochs=training.epochs,
            imgsz=training.imgsz, batch=training.batch, seed=training.seed,
            workers=training.workers, optimizer=training.optimizer, lr0=training.lr0,
            warmup_epochs=training.warmup_epochs, close_mosaic=training.close_mosaic,
            freeze=training.freeze,
            serve_imgsz=parent_bundle.manifest.input.height, parent_version=parent.version,
            work_dir=run_dir / "ultralytics", device=training.device)
        say(f"fine-tuning {parent.ref} on {resolved.ref} into {parent.name}@{version}; "
            f"log {run_dir / LOG_NAME}")
        try:
            bundle = train_detector(cfg, progress=say,
                                    callbacks={"on_fit_epoch_end": epoch_callback(say)})
        except (TrainingError, UltralyticsUnavailable, ModelError) as e:
            raise RetrainError(f"retraining {parent.ref} on {resolved.ref} failed: {e}") from e
        weights = cfg.out_bundle.parent / f"{cfg.out_bundle.name}-weights.pt"
        fingerprint = resolved.fingerprint or bundle.manifest.lineage.dataset_fingerprint or ""
        entry = registry.add(
            bundle.root, weights=weights, source="retrain", by=by,
            lineage=RegistryLineage(parent=parent.ref,
                                    dataset=DatasetUse(resolved.ref, fingerprint),
                                    holdout=resolved.ref))
        say(f"registered {entry.ref} as {entry.state}")
        new_data = _new_data(resolved, datasets, run_dir / "new-data", gate, say)
        report = gate_candidate(registry, entry, parent, resolved, holdout, gate, say,
                                new_data=new_data)
        entry = registry.record_gate(entry.name, entry.version, report,
                                     approve=gate.approve_on_pass)
        say(f"gate {'passed' if report.passed else 'REFUSED'}: {entry.ref} is {entry.state}"
            + ("" if report.passed else ": " + "; ".join(report.reasons)))
    return RetrainResult(entry, report, run_dir)


def gate_candidate(
    registry: ModelRegistry, candidate: ModelEntry, parent: ModelEntry | None,
    data: ResolvedData, parent_holdout: ResolvedData | None, gate: GateConfig,
    say: Callable[[str], None], *, new_data: Path | None = None,
) -> GateReport:
    """Run the gate on the candidate against its parent: on `data`'s held-out (val)
    split, on the parent's holdout when it has one, and on the new data's held-out
    split (`new_data`, a data.yaml; see `_new_data`). Raises RetrainError."""
    try:
        sets = [HeldOutSet("the dataset's held-out split", load_data_yaml(data.data_yaml))]
        if new_data is not None:
            sets.append(HeldOutSet("the new data's held-out split", load_data_yaml(new_data),
                                   improve=True))
        if parent_holdout is not None and parent_holdout.data_yaml != data.data_yaml:
            sets.append(HeldOutSet("the parent's holdout",
                                   load_data_yaml(parent_holdout.data_yaml)))
        elif parent is not None:
            say(f"{parent.ref} has no registered holdout: gating on the dataset's split only")
        return run_gate(load_bundle(candidate.bundle_dir),
                        load_bundle(parent.bundle_dir) if parent else None, sets, gate,
                        parent_name=str(parent.ref) if parent else None, progress=say)
    except (ModelError, RegistryError) as e:
        raise RetrainError(f"the gate could not evaluate {candidate.ref}: {e}") from e


def _new_data(data: ResolvedData, datasets: DatasetSource | None, out_dir: Path,
              gate: GateConfig, say: Callable[[str], None]) -> Path | None:
    """The val images of dataset version `data` that none of its parent versions held,
    as a holdout folder at `out_dir` (its data.yaml); None when there is nothing to
    judge there (a path, a version without parents, too few such images)."""
    if datasets is None or data.fingerprint is None:
        return None
    try:
        found = datasets.new_holdout(data.ref, out_dir)
    except (CloudError, LookupError, OSError) as e:
        raise RetrainError(f"the new data of {data.ref}: {e}") from e
    if found is None:
        return None  # an import, or nothing new in val
    data_yaml, count = found
    if count < gate.min_new_data_images:
        say(f"gate: {count} of {data.ref}'s val images are new (fewer than "
            f"{gate.min_new_data_images}): the new data is not judged on its own")
        return None
    say(f"gate: {count} of {data.ref}'s val images are new since its parent versions")
    return data_yaml


def _sayer(progress: Callable[[str], None] | None,
           log_file: logging.Handler) -> Callable[[str], None]:
    """Progress goes to `progress` (the CLI prints it) or, without one, to the log; and
    always to the run's log file."""

    def say(message: str) -> None:
        if progress is None:
            logger.info("%s", message)  # reaches the log file through the root logger
            return
        progress(message)
        log_file.handle(logger.makeRecord(logger.name, logging.INFO, __file__, 0,
                                          "%s", (message,), None))

    return say

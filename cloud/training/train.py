"""Training a detector with Ultralytics, fully offline, into a lineguard bundle.

Steps: check every argument the bundle will need (`plan_training`, before any epoch
runs, so a bad name or a full output directory fails in a second, not after the whole
run) -> train (from a model YAML or our own weights) -> export ONNX with a dynamic batch
axis -> evaluate with `lineguard eval` (our preprocessing, ONNX Runtime and
postprocessing) on a holdout -> build the bundle with its golden set, metrics and
lineage. torch and ultralytics are imported lazily, inside `train_detector`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from cloud.errors import CloudError
from cloud.training.ultralytics_env import import_ultralytics, ultralytics_output
from models.bundle import Bundle
from models.drift.reference import REFERENCE_FILE, reference_from_dataset, write_reference
from models.drift.signals import SignalSpec
from models.errors import ModelError
from models.evaluate import evaluate
from models.golden import build_bundle
from models.manifest import Lineage, Manifest, Metrics, PreprocessSpec
from models.yolo_dataset import YoloDataset, label_path_for, load_data_yaml

logger = logging.getLogger(__name__)


PICO_YAML = Path(__file__).resolve().parent / "model_cfg" / "lineguard-pico.yaml"
"""YOLO11 at half yolo11n's width: the demo detector's architecture."""


class TrainingError(CloudError):
    """Bad training arguments, or training, export or bundle building failed; the
    message says which argument or step."""


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. `model` is an Ultralytics model YAML (e.g. yolo11n.yaml,
    built from scratch) or a path to our own .pt weights to fine-tune."""

    data_yaml: Path
    out_bundle: Path
    name: str
    version: int
    label: str | None = None
    """Human label of the bundle; None or "": `default_label` (name and dataset)."""
    model: str = str(PICO_YAML)
    epochs: int = 40
    imgsz: int = 256
    batch: int = 16
    seed: int = 0
    workers: int = 0
    patience: int = 100
    optimizer: str = "auto"
    """Ultralytics optimizer name; "auto" lets it choose by iteration count."""
    lr0: float | None = None
    """Initial learning rate (None: Ultralytics' default for the optimizer)."""
    warmup_epochs: float = 3.0
    close_mosaic: int = 10
    """Train the last N epochs without mosaic augmentation."""
    freeze: int = 0
    """Keep the first N layers of the model as they are (0: train every layer). When
    fine-tuning, freezing the backbone keeps what the parent learned (less forgetting
    of the original product) and makes each epoch cheaper."""
    serve_imgsz: int | None = None
    """Input size of the bundle (default `imgsz`). A detector trained with scale
    augmentation often finds thin defects better served a little larger than it trained;
    the holdout metrics are measured at this size."""
    torch_threads: int | None = None
    holdout_yaml: Path | None = None
    """Dataset whose val split measures the bundle's metrics; default: `data_yaml`'s."""
    golden_count: int = 4
    parent_version: int | None = None
    work_dir: Path = Path("runs/train")
    device: str = "cpu"
    """Ultralytics' `device` for training ("cpu", "0", "0,1" for DDP on two GPUs); the
    ONNX export always runs on the CPU."""


def dataset_fingerprint(ds: YoloDataset) -> str:
    """sha256 over every image and label file of the dataset (paths relative to its root,
    in sorted order): the content identity a bundle's lineage refers to."""
    h = hashlib.sha256()
    for split in ("train", "val"):
        for img in sorted(ds.images(split)):
            h.update(str(img.relative_to(ds.root)).encode())
            h.update(hashlib.sha256(img.read_bytes()).digest())
            label = label_path_for(img)
            if label.exists():
                h.update(label.read_bytes())
    return h.hexdigest()


def code_revision() -> str | None:
    """The git commit of the code that trains, when run from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=10, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _golden_images(ds: YoloDataset, count: int) -> list[npt.NDArray[np.uint8]]:
    """The first `count` val images that have at least one labelled defect."""
    images: list[npt.NDArray[np.uint8]] = []
    for path in sorted(ds.images("val")):
        if len(ds.labels_for(path)):
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                images.append(np.asarray(img, np.uint8))
        if len(images) >= count:
            break
    if not images:
        raise TrainingError(f"no labelled val image in {ds.root} for the golden set")
    return images


def default_label(name: str, fingerprint: str) -> str:
    """The label of a bundle trained without ``--label``: ``<name>-<first 8 hex digits
    of the dataset fingerprint>``, so two runs on different data read differently."""
    return f"{name}-{fingerprint[:8]}"


@dataclass(frozen=True)
class TrainPlan:
    """Everything about the bundle that is known before training, checked."""

    dataset: YoloDataset
    holdout: YoloDataset
    fingerprint: str
    label: str
    golden_images: list[npt.NDArray[np.uint8]]


def plan_training(cfg: TrainConfig, trained_weights: Path | None = None) -> TrainPlan:
    """Check every argument the bundle will need, before any training, and derive the
    defaults (label). Reads the dataset(s) once: fingerprint and golden images.

    Raises TrainingError naming the argument: a number out of range, an unreadable
    data.yaml or one without images, holdout classes that differ, a name, version,
    label or class list the manifest would refuse, model weights that do not exist,
    an output bundle directory that exists and is not empty, or a directory that
    cannot be written.
    """
    _check_numbers(cfg)
    model = Path(cfg.model)
    if model.suffix == ".pt" and not model.is_file():
        raise TrainingError(f"--model {cfg.model}: no such weights file (nothing is downloaded)")
    if model.suffix in {".yaml", ".yml"} and len(model.parts) > 1 and not model.is_file():
        raise TrainingError(f"--model {cfg.model}: no such model YAML")
    if trained_weights is not None and not trained_weights.is_file():
        raise TrainingError(f"--trained-weights {trained_weights}: no such file")
    _check_out_dir(cfg.out_bundle)
    _check_writable("--work-dir", cfg.work_dir)
    try:
        ds = load_data_yaml(cfg.data_yaml)
        holdout = load_data_yaml(cfg.holdout_yaml) if cfg.holdout_yaml else ds
        fingerprint = dataset_fingerprint(ds)
        holdout.images("val")
    except ModelError as e:
        raise TrainingError(f"dataset: {e}") from e
    if list(ds.names) != list(holdout.names):
        raise TrainingError(f"holdout classes {holdout.names} differ from {ds.names}")
    label = cfg.label or default_label(cfg.name, fingerprint)
    _check_manifest_fields(cfg.name, cfg.version, label, list(ds.names))
    return TrainPlan(ds, holdout, fingerprint, label, _golden_images(holdout, cfg.golden_count))


def _check_numbers(cfg: TrainConfig) -> None:
    minimum = {"--epochs": (cfg.epochs, 1), "--imgsz": (cfg.imgsz, 32),
               "--batch": (cfg.batch, 1), "--version": (cfg.version, 1),
               "--workers": (cfg.workers, 0), "--patience": (cfg.patience, 0),
               "--close-mosaic": (cfg.close_mosaic, 0), "--freeze": (cfg.freeze, 0),
               "golden_count": (cfg.golden_count, 1),
               "--serve-imgsz": (cfg.serve_imgsz, 32), "--threads": (cfg.torch_threads, 1),
               "--parent-version": (cfg.parent_version, 1)}
    for flag, (value, low) in minimum.items():
        if value is not None and value < low:
            raise TrainingError(f"{flag} must be >= {low}, got {value}")


def _check_manifest_fields(name: str, version: int, label: str, classes: list[str]) -> None:
    """The manifest's own rules for the fields fixed before training (a placeholder
    input, output and lineage stand in for what training will produce)."""
    given: dict[str, tuple[str, object]] = {
        "name": ("--name", name), "version": ("--version", version),
        "label": ("--label", label), "classes": ("class names (data.yaml `names`)", classes)}
    try:
        Manifest.model_validate({
            "name": name, "version": version, "label": label, "classes": classes,
            "input": {"height": 1, "width": 1}, "output": {},
            "lineage": {"created_at": datetime.now(UTC)},
        })
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            what, value = given.get(str(err["loc"][0]), (str(err["loc"][0]), None))
            problems.append(f"{what} {value!r}: {err['msg'].removeprefix('Value error, ')}")
        raise TrainingError("the bundle would be refused: " + "; ".join(problems)) from None


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise TrainingError(f"--out {out}: exists and is not empty (nothing is overwritten; "
                            "remove it or choose another directory)")
    _check_writable("--out", out.parent if not out.exists() else out)


def _check_writable(flag: str, path: Path) -> None:
    """`path`, or its nearest existing parent (it will be created), is a writable dir."""
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrainingError(f"{flag} {path}: {existing} is not a writable directory")


def train_args(cfg: TrainConfig) -> dict[str, object]:
    """The arguments handed to Ultralytics' `model.train` (recorded in the lineage)."""
    return {
        "data": str(cfg.data_yaml), "epochs": cfg.epochs, "imgsz": cfg.imgsz,
        "batch": cfg.batch, "nbs": cfg.batch, "device": cfg.device, "workers": cfg.workers,
        "seed": cfg.seed, "deterministic": True, "plots": False, "amp": False,
        "project": str(cfg.work_dir.resolve()), "name": cfg.name, "exist_ok": True,
        "patience": cfg.patience, "verbose": True, "optimizer": cfg.optimizer,
        "warmup_epochs": cfg.warmup_epochs, "close_mosaic": cfg.close_mosaic,
    } | ({"lr0": cfg.lr0} if cfg.lr0 is not None else {}) | (
        {"freeze": cfg.freeze} if cfg.freeze else {})


def train_detector(
    cfg: TrainConfig,
    progress: Callable[[str], None] | None = None,
    *,
    trained_weights: Path | None = None,
    callbacks: Mapping[str, Callable[[Any], None]] | None = None,
) -> Bundle:
    """Check the arguments (`plan_training`), then train, export, evaluate and bundle;
    returns the verified bundle. With `trained_weights` (the best.pt of an earlier run
    with the same `cfg`), training is skipped and the run resumes at the export.
    `callbacks`: Ultralytics event name -> function of the trainer (e.g.
    `on_fit_epoch_end` for a progress line per epoch).
    Raises TrainingError (or UltralyticsUnavailable without the train extra)."""
    say = progress or (lambda msg: logger.info("%s", msg))
    plan = plan_training(cfg, trained_weights)
    say(f"bundle {cfg.name} version {cfg.version} label {plan.label!r} -> {cfg.out_bundle}")
    work = cfg.work_dir.resolve()
    ultralytics = import_ultralytics(work / "yolo_config", cfg.torch_threads)
    args = train_args(cfg)
    best = trained_weights or _train(ultralytics, cfg, args, say, callbacks or {})

    onnx_path = _export_onnx(ultralytics, best, cfg, say)
    return _bundle(cfg, plan, onnx_path, best, args, say)


def export_dir(cfg: TrainConfig) -> Path:
    """Where a run exports its ONNX model: a folder of the run's own."""
    return cfg.work_dir.resolve() / cfg.name / "export"


def _export_onnx(ultralytics: ModuleType, weights: Path, cfg: TrainConfig,
                 say: Callable[[str], None]) -> Path:
    """Export `weights` to ONNX with a dynamic batch axis, in `export_dir(cfg)`.
    Ultralytics writes the export next to the weights it reads, so it reads a copy
    there: `--trained-weights` may lie in a shared or read-only folder, which is never
    written to. Raises TrainingError."""
    folder = export_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / weights.name
    if source.resolve() != weights.resolve():
        shutil.copyfile(weights, source)
    say(f"exporting {weights} to ONNX with a dynamic batch axis (in {folder})")
    try:
        with ultralytics_output():
            return Path(ultralytics.YOLO(str(source)).export(
                format="onnx", imgsz=cfg.imgsz, dynamic=True, simplify=False, device="cpu"))
    except Exception as e:
        raise TrainingError(f"ONNX export failed: {e}") from e


def _train(ultralytics: ModuleType, cfg: TrainConfig, args: dict[str, object],
           say: Callable[[str], None],
           callbacks: Mapping[str, Callable[[Any], None]]) -> Path:

    say(f"training {cfg.model} on {cfg.data_yaml} for {cfg.epochs} epochs at {cfg.imgsz}px "
        "(Ultralytics prints per-epoch progress)")
    model = ultralytics.YOLO(cfg.model, task="detect")
    for event, callback in callbacks.items():
        model.add_callback(event, callback)
    try:
        with ultralytics_output():
            model.train(**args)
    except Exception as e:  # Ultralytics raises bare exceptions of many kinds
        raise TrainingError(f"training failed: {e}") from e
    best = cfg.work_dir.resolve() / cfg.name / "weights" / "best.pt"
    if not best.is_file():
        raise TrainingError(f"training produced no weights at {best}")
    return best


def _bundle(
    cfg: TrainConfig, plan: TrainPlan, onnx_path: Path, weights: Path,
    args: dict[str, object], say: Callable[[str], None],
) -> Bundle:
    ds, holdout = plan.dataset, plan.holdout
    lineage = Lineage(
        dataset_fingerprint=plan.fingerprint,
        code_revision=code_revision(),
        training_config={k: v for k, v in args.items()
                         if isinstance(v, str | int | float | bool) and k != "project"}
        | {"model": Path(cfg.model).name, "serve_imgsz": cfg.serve_imgsz or cfg.imgsz},
        parent_version=cfg.parent_version,
        created_at=datetime.now(UTC),
    )
    serve = cfg.serve_imgsz or cfg.imgsz

    say("computing the drift reference from the training and validation frames")
    reference = write_reference(reference_from_dataset(ds, SignalSpec()),
                                cfg.work_dir.resolve() / REFERENCE_FILE)

    def build(out: Path, metrics: Metrics | None) -> Bundle:
        if out.exists():
            shutil.rmtree(out)
        return build_bundle(
            out, onnx_path, name=cfg.name, version=cfg.version, label=plan.label,
            classes=list(ds.names), input_hw=(serve, serve),
            preprocess=PreprocessSpec(), lineage=lineage, golden_images=plan.golden_images,
            metrics=metrics, extra_files={REFERENCE_FILE: reference},
        )

    say("building the bundle and its golden set")
    staging = build(cfg.work_dir.resolve() / f"{cfg.name}-staging", None)
    say(f"evaluating with lineguard eval on the holdout {holdout.label} (val split)")
    metrics = evaluate(staging, holdout, "val")
    say(f"holdout mAP50 {metrics.map50:.3f}, mAP50-95 {metrics.map50_95:.3f}")
    final = build(cfg.out_bundle, metrics)
    shutil.copyfile(weights, cfg.out_bundle.parent / f"{cfg.out_bundle.name}-weights.pt")
    shutil.rmtree(staging.root, ignore_errors=True)
    return final

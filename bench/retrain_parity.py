"""NEU-DET parity: `lineguard cloud retrain` against plain Ultralytics fine-tuning.

Fine-tunes the shared yolo11n (`--model-dir`, model.pt + model.onnx) on NEU-DET
(`--data`) twice with the same Ultralytics arguments (epochs, image size, batch, seed,
optimizer, deterministic): once through `retrain` (registry, offline Ultralytics,
ONNX export, bundle, and `lineguard eval` in the gate), once with plain
`YOLO(model.pt).train(...)` and Ultralytics' own `val`. Prints both mAP50 on the same
val images and their difference (target: within 0.01).

On 2 CPU cores the full dataset takes hours, so `--train-per-class` / `--val-per-class`
take the first N images of each class (sorted by name) into a temporary YOLO folder of
symbolic links; 0 takes all.

    .venv/bin/python bench/retrain_parity.py [--epochs 1] [--imgsz 224] [--batch 16]
        [--seed 0] [--train-per-class 40] [--val-per-class 20]
        [--data ../shared/datasets/neu-det] [--model-dir ../shared/models/neu-det-yolo11n]

Prints the CPU model and thread count, a table and one JSON line
(`{"bench": "retrain_parity", ...}`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, cpu_threads

DEFAULT_DATA = Path("/work/shared/datasets/neu-det")
DEFAULT_MODEL = Path("/work/shared/models/neu-det-yolo11n")

def subset(data: Path, out: Path, train_per_class: int, val_per_class: int) -> Path:
    """A YOLO folder of symlinks: the first N images per class prefix (`crazing_1.jpg`)."""
    import yaml

    meta = yaml.safe_load((data / "data.yaml").read_text("utf-8"))
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        taken: dict[str, int] = {}
        for img in sorted((data / "images" / split).iterdir()):
            cls = img.stem.rsplit("_", 1)[0]
            if per_class and taken.get(cls, 0) >= per_class:
                continue
            taken[cls] = taken.get(cls, 0) + 1
            os.symlink(img.resolve(), out / "images" / split / img.name)
            label = data / "labels" / split / f"{img.stem}.txt"
            if label.exists():
                os.symlink(label.resolve(), out / "labels" / split / label.name)
    names = meta["names"]
    lines = "\n".join(f"  {k}: {v}" for k, v in (names.items() if isinstance(names, dict)
                                                  else enumerate(names)))
    (out / "data.yaml").write_text(f"path: {out}\ntrain: images/train\nval: images/val\n"
                                   f"names:\n{lines}\n", "utf-8")
    return out / "data.yaml"

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--imgsz", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--work", type=Path, default=None, help="keep runs here")
    args = parser.parse_args(argv)
    if not (args.data / "data.yaml").is_file() or not (args.model_dir / "model.pt").is_file():
        print(f"need {args.data}/data.yaml and {args.model_dir}/model.pt", file=sys.stderr)
        return 2

    from cloud.db import DatabaseConfig, open_engine, upgrade
    from cloud.registry import ModelRef, ModelRegistry, RegistryLineage
    from cloud.retrain.config import GateConfig, TrainingDefaults
    from cloud.retrain.pipeline import retrain
    from cloud.training.train import TrainConfig, train_args
    from cloud.training.ultralytics_env import import_ultralytics, ultralytics_output
    from models.cli import main as bundle_main

    work = args.work or Path(tempfile.mkdtemp(prefix="lineguard-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    data_yaml = subset(args.data, work / "data", args.train_per_class, args.val_per_class)
    n_train = len(list((work / "data" / "images" / "train").iterdir()))
    n_val = len(list((work / "data" / "images" / "val").iterdir()))
    threads = cpu_threads()
    print(f"CPU: {cpu_model()}, {threads} threads (torch); NEU-DET subset {n_train} train / "
          f"{n_val} val images; {args.epochs} epoch(s) at {args.imgsz} px, batch "
          f"{args.batch}, seed {args.seed}", flush=True)

    # The parent: the shared ONNX wrapped as a bundle, registered with its .pt.
    parent_bundle = work / "parent-bundle"
    if bundle_main(["wrap", str(args.model_dir / "model.onnx"), str(parent_bundle),
                    "--golden-from", str(work / "data" / "images" / "val"),
                    "--name", "neu-det", "--version", "1", "--imgsz", str(args.imgsz)]) != 0:
        return 2
    db = DatabaseConfig(url=f"sqlite:///{work / 'cloud.db'}")
    engine = open_engine(db)
    upgrade(engine, db)
    registry = ModelRegistry(engine, work / "registry")
    registry.add(parent_bundle, weights=args.model_dir / "model.pt", state="approved",
                 source="import: shared yolo11n", lineage=RegistryLineage())
    # retrain's own defaults (AdamW, lr0 0.0005, no warmup) but the epochs, size and seed
    training = TrainingDefaults(epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                                seed=args.seed)
    gate = GateConfig(map50_tolerance=1.0, max_recall_drop=1.0, latency_budget_ms=60_000.0,
                      latency_rounds=1)
    t0 = time.perf_counter()
    result = retrain(registry, ModelRef("neu-det", 1), str(data_yaml), training=training,
                     gate=gate, work_dir=work / "retrain",
                     progress=lambda m: print(f"[retrain] {m}", flush=True))
    retrain_s = time.perf_counter() - t0
    ours = result.report.sets[0].candidate_map50

    # Plain Ultralytics with the same arguments (train_args of the same TrainConfig).
    cfg = TrainConfig(data_yaml=data_yaml, out_bundle=work / "unused", name="plain",
                      version=2, model=str(args.model_dir / "model.pt"), epochs=args.epochs,
                      imgsz=args.imgsz, batch=args.batch, seed=args.seed,
                      optimizer=training.optimizer, lr0=training.lr0,
                      warmup_epochs=training.warmup_epochs,
                      close_mosaic=training.close_mosaic, work_dir=work / "plain")
    ultralytics = import_ultralytics(work / "plain" / "yolo_config")
    t0 = time.perf_counter()
    with ultralytics_output():
        model = ultralytics.YOLO(str(args.model_dir / "model.pt"), task="detect")
        model.train(**train_args(cfg))
        best = work / "plain" / "plain" / "weights" / "best.pt"
        val = ultralytics.YOLO(str(best)).val(data=str(data_yaml), imgsz=args.imgsz,
                                               batch=args.batch, device="cpu", plots=False,
                                               conf=0.001, iou=0.7, rect=False)
    plain_s = time.perf_counter() - t0
    theirs = float(val.box.map50)
    engine.dispose()

    print(f"{'run':<44}{'mAP50':>8}{'seconds':>10}")
    print(f"{'retrain (lineguard eval of the ONNX bundle)':<44}{ours:>8.4f}{retrain_s:>10.0f}")
    print(f"{'plain Ultralytics (its own val)':<44}{theirs:>8.4f}{plain_s:>10.0f}")
    print(f"{'difference':<44}{ours - theirs:>+8.4f}   target |diff| <= 0.01")
    print(json.dumps({"bench": "retrain_parity", "cpu": cpu_model(), "threads": threads,
                      "train_images": n_train, "val_images": n_val, "epochs": args.epochs,
                      "imgsz": args.imgsz, "batch": args.batch, "seed": args.seed,
                      "retrain_map50": ours, "ultralytics_map50": theirs,
                      "difference": ours - theirs, "within_0_01": abs(ours - theirs) <= 0.01}))
    return 0 if abs(ours - theirs) <= 0.01 else 1

if __name__ == "__main__":
    sys.exit(main())

"""Export of labelled linesim parts as an Ultralytics YOLO detection dataset."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2

from linesim.config import CLASSES, LineConfig
from linesim.line import render

logger = logging.getLogger(__name__)

# Parts of the val split are numbered from here so they never repeat a train part.
_VAL_OFFSET = 10_000_000


def _write_split(
    root: Path, split: str, cfg: LineConfig, count: int, first_id: int,
    progress: Callable[[str, int, int], None] | None,
) -> int:
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    n_boxes = 0
    for i in range(count):
        part = render(cfg, first_id + i)
        name = f"{split}_{first_id + i:08d}"
        if not cv2.imwrite(str(images / f"{name}.png"), part.image_bgr):
            raise OSError(f"could not write {images / name}.png")
        lines = [
            f"{d.class_id} " + " ".join(f"{v:.6f}" for v in d.yolo(cfg.width_px, cfg.height_px))
            for d in part.defects
        ]
        (labels / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
        n_boxes += len(lines)
        if progress is not None:
            progress(split, i + 1, count)
    return n_boxes


def export_yolo(
    out_dir: str | os.PathLike[str],
    cfg: LineConfig,
    *,
    n_train: int,
    n_val: int,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write `n_train` + `n_val` labelled parts under `out_dir` in YOLO format
    (`images/{train,val}`, `labels/{train,val}`, `data.yaml`) and return the path of
    `data.yaml`. Train and val parts never overlap. Images are PNG (lossless), labels
    normalised `class cx cy w h`. `progress(split, done, total)` is called per image."""
    if n_train < 0 or n_val < 0:
        raise ValueError("n_train and n_val must be >= 0")
    root = Path(out_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    train_boxes = _write_split(root, "train", cfg, n_train, 0, progress)
    val_cfg = replace(cfg)
    val_boxes = _write_split(root, "val", val_cfg, n_val, _VAL_OFFSET, progress)
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASSES))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"# linesim export: seed={cfg.seed} {cfg.width_px}x{cfg.height_px} drift={cfg.drift}\n"
        f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    logger.info("exported %d train parts (%d boxes), %d val parts (%d boxes) to %s",
                n_train, train_boxes, n_val, val_boxes, root)
    return data_yaml

"""Writing a dataset version as an Ultralytics YOLO folder (for training, or its val
split alone as a holdout).

Invariants: the folder appears whole (built in a temporary sibling, renamed into place);
a folder holding the same version (its `MARKER` file names the fingerprint) is returned
as it is; any other non-empty folder is refused. Images are hard links into the object
store where the filesystem allows (objects are read-only), else copies.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from cloud.datasets.content import DatasetVersion, Item
from cloud.datasets.errors import DatasetError
from cloud.datasets.objects import ObjectStore
from protocol.atomic import atomic_write_text

logger = logging.getLogger(__name__)

MARKER = ".lineguard-dataset"
"""File in a materialised folder holding the fingerprint it was made from."""


def write_yolo_folder(objects: ObjectStore, version: DatasetVersion, items: Sequence[Item],
                      out_dir: Path, *, holdout: bool, part: str = "") -> Path:
    """Write `items` of `version` at `out_dir` (`images/<split>/<sha256>.<ext>`,
    `labels/<split>/<sha256>.txt`, `data.yaml` with an absolute `path`); only the val
    split when `holdout` (then the data.yaml's train and val both name it). `part` names
    a subset of the version's items (in the folder's marker, so that it is never taken
    for the whole). Returns the data.yaml. Raises DatasetError (not empty, a split
    without images, I/O)."""
    out_dir = Path(out_dir).resolve()
    stamp = f"{version.fingerprint}{' holdout' if holdout else ''}{f' {part}' if part else ''}"
    if out_dir.exists():
        marker = out_dir / MARKER
        if marker.is_file() and marker.read_text("utf-8").strip() == stamp:
            return out_dir / "data.yaml"
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise DatasetError(f"{out_dir} exists and is not empty (nor {version.ref})")
    splits = ("val",) if holdout else ("train", "val")
    for split in splits:
        if not any(i.split == split for i in items):
            raise DatasetError(f"{version.ref} has no {split} images")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.tmp")
    try:
        for split in splits:
            (staging / "images" / split).mkdir(parents=True)
            (staging / "labels" / split).mkdir(parents=True)
        for item in items:
            if item.split not in splits:
                continue
            objects.link_or_copy(item.image_sha256, item.ext, staging / "images" / item.split
                                 / f"{item.image_sha256}.{item.ext}")
            (staging / "labels" / item.split / f"{item.image_sha256}.txt").write_text(
                item.labels + ("\n" if item.labels else ""), "utf-8")  # canonical rows
        names = "\n".join(f"  {i}: {json.dumps(n)}" for i, n in enumerate(version.classes))
        train = "images/val" if holdout else "images/train"
        (staging / "data.yaml").write_text(
            f"# lineguard dataset {version.ref} ({version.fingerprint})"
            f"{' holdout (val split)' if holdout else ''}\n"
            f"path: {json.dumps(str(out_dir))}\ntrain: {train}\nval: images/val\n"
            f"names:\n{names}\n", "utf-8")
        atomic_write_text(staging / MARKER, stamp + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except OSError as e:
        raise DatasetError(f"cannot write {out_dir}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("materialised %s%s at %s", version.ref, " holdout" if holdout else "", out_dir)
    return out_dir / "data.yaml"

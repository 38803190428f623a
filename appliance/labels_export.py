"""Export operator labels as an Ultralytics YOLO dataset, for the cloud to retrain on.

    DIR/data.yaml        path: ., train: images, val: images, names: the model's classes
    DIR/images/<frame>.jpg   the kept original image of each labelled frame
    DIR/labels/<frame>.txt   one `class cx cy w h` row per true defect (normalised);
                             empty for a frame whose detections were all rejected
    DIR/manifest.json    per frame: frame id, model version, preprocessing hash, label ids

Which frames: those with a label not yet exported (`--all`: every labelled frame), and
with `since` only labels made since then. A frame's ground truth is `labels.ground_truth`
over *all* its labels. Frames without a kept image or with a class the model does not
have are skipped and reported (their labels stay pending).

Invariants: DIR appears whole or not at all (written in a temporary folder beside it,
then renamed); only after that are the exported labels marked (`exported_at`) and their
frames' images unpinned (those without other pending labels). A crash in between
exports them again next time, never loses them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from appliance.errors import LabelError, StoreError
from appliance.labels import (
    _COLUMNS,
    Label,
    frame_facts,
    ground_truth,
    image_size_wh,
    label_from_row,
)
from appliance.store import Store
from appliance.store.queries import open_reader
from protocol.atomic import fsync_dir

logger = logging.getLogger(__name__)

WRITE_TIMEOUT_S = 30.0


@dataclass
class ExportResult:
    """What an export wrote."""

    out_dir: Path
    frames: int = 0
    boxes: int = 0
    labels_marked: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    """frame id -> why it was not exported."""


def _safe_name(frame_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", frame_id)[:120]


def yolo_row(class_id: int, box_xyxy: Sequence[float], width: int, height: int) -> str:
    """`class cx cy w h`, normalised to the image size (pure)."""
    x1, y1, x2, y2 = box_xyxy
    cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
    w, h = (x2 - x1) / width, (y2 - y1) / height
    return f"{class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


def _select(conn: sqlite3.Connection, include_all: bool,
            since: float | None) -> dict[str, list[Label]]:
    where = ["1"] if include_all else ["exported_at IS NULL"]
    params: list[object] = []
    if since is not None:
        where.append("created_at >= ?")
        params.append(since)
    chosen = {str(r[0]) for r in conn.execute(
        f"SELECT DISTINCT frame_id FROM labels WHERE {' AND '.join(where)}", params)}
    by_frame: dict[str, list[Label]] = defaultdict(list)
    for row in conn.execute(f"SELECT {_COLUMNS} FROM labels ORDER BY id"):
        if row[1] in chosen:
            by_frame[str(row[1])].append(label_from_row(row))
    return dict(sorted(by_frame.items()))


def _prepare_target(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir() or any(out_dir.iterdir()):
            raise LabelError(f"{out_dir} exists and is not an empty folder; export into a "
                             "new folder")
        out_dir.rmdir()
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def export_labels(store: Store, out_dir: Path, classes: Sequence[str], *,
                  include_all: bool = False, since: float | None = None,
                  keep_unreviewed: bool = True,
                  clock: Callable[[], float] = time.time) -> ExportResult:
    """Write the dataset (see the module docstring) and mark its labels exported.
    Raises LabelError (DIR not empty, nothing to export, a write failed: then nothing is
    left behind and nothing marked), StoreError."""
    out_dir = Path(out_dir)
    _prepare_target(out_dir)
    class_ids = {name: i for i, name in enumerate(classes)}
    try:
        conn = open_reader(store.path)
    except sqlite3.Error as e:
        raise StoreError(f"{store.path}: cannot open for reading: {e}") from e
    try:
        by_frame = _select(conn, include_all, since)
        facts = {f: frame_facts(conn, f, store.config.images.dir) for f in by_frame}
    except sqlite3.Error as e:
        raise StoreError(f"{store.path}: reading labels failed: {e}") from e
    finally:
        conn.close()
    if not by_frame:
        raise LabelError("no labels to export" + ("" if include_all else
                                                  " (all exported already; --all: again)"))
    result = ExportResult(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{secrets.token_hex(4)}.tmp")
    exported: list[Label] = []
    try:
        (tmp / "images").mkdir(parents=True)
        (tmp / "labels").mkdir()
        frames_doc: list[dict[str, Any]] = []
        for frame_id, labels in by_frame.items():
            fact = facts[frame_id]
            if fact.image_path is None or not fact.image_path.is_file():
                result.skipped[frame_id] = "no kept image"
                continue
            truth = ground_truth(fact.defects, labels, keep_unreviewed=keep_unreviewed)
            unknown = sorted({c for c, _ in truth if c not in class_ids})
            if unknown:
                result.skipped[frame_id] = f"class(es) {unknown} not in the model's classes"
                continue
            width, height = image_size_wh(fact.image_path)
            name = _safe_name(frame_id)
            shutil.copyfile(fact.image_path, tmp / "images" / f"{name}.jpg")
            rows = [yolo_row(class_ids[c], box, width, height) for c, box in truth]
            (tmp / "labels" / f"{name}.txt").write_text(
                "".join(f"{r}\n" for r in rows), encoding="utf-8")
            frames_doc.append({"frame_id": frame_id, "image": f"images/{name}.jpg",
                               "model_version": fact.model_version,
                               "preprocess_hash": fact.preprocess_hash,
                               "boxes": len(rows), "label_ids": [lb.id for lb in labels]})
            result.frames += 1
            result.boxes += len(rows)
            exported += [lb for lb in labels if lb.exported_at_s is None]
        if not result.frames:
            raise LabelError(f"no labelled frame could be exported: {result.skipped}")
        (tmp / "data.yaml").write_text(yaml.safe_dump(
            {"path": ".", "train": "images", "val": "images", "names": list(classes)},
            sort_keys=False), encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(
            {"schema": "lineguard.labels_export/1", "exported_at": clock(),
             "classes": list(classes), "frames": frames_doc,
             "skipped": result.skipped}, indent=1), encoding="utf-8")
        for file in (*tmp.rglob("*.jpg"), *tmp.rglob("*.txt"), tmp / "data.yaml",
                     tmp / "manifest.json"):
            with file.open("rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, out_dir)
        fsync_dir(out_dir.parent)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise LabelError(f"cannot write the export to {out_dir}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.labels_marked = _mark_exported(store, [lb.id for lb in exported], clock())
    logger.info("exported %d frames (%d boxes) to %s; %d labels marked, %d frames skipped",
                result.frames, result.boxes, out_dir, result.labels_marked,
                len(result.skipped))
    return result


def _mark_exported(store: Store, label_ids: Sequence[int], now: float) -> int:
    """Mark the labels exported, then release their pins (one each)."""
    ids = list(label_ids)
    if not ids:
        return 0

    def work(conn: sqlite3.Connection) -> list[str]:
        frames: list[str] = []  # one entry per label marked now: each held one pin
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            frames += [str(r[0]) for r in conn.execute(
                f"SELECT frame_id FROM labels WHERE id IN ({marks}) AND exported_at IS NULL",
                chunk)]
            conn.execute(f"UPDATE labels SET exported_at = ? WHERE id IN ({marks})"
                         " AND exported_at IS NULL", (now, *chunk))
        return frames

    frames = store.transact(work, urgent=True).result(WRITE_TIMEOUT_S)
    store.unpin_images(frames)
    return len(frames)

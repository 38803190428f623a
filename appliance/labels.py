"""Operator feedback on judged frames: labels in the store's `labels` table.

A label belongs to a frame with a kept image and names the model version and
preprocessing hash that judged it (copied from the frame's inspection row):
- `confirm` / `reject`: a stored detection of the frame is right / wrong; it is named by
  its index among the frame's defects (0-based, in the order they were stored, as
  `Store.recent_failures` and the panel list them). The latest feedback on a detection
  wins.
- `missed`: a defect the model did not find, with its class (one of the bundle's
  classes) and an xyxy box in original image pixels, inside the image.

Invariants:
- Each label not yet exported holds one pin on its frame's image (never evicted while
  pinned), taken before its row is written and released once it is exported
  (`exported_at`, labels_export.py) or if its row could not be written; at a store's
  start the pins are re-read from this table (store.py). A label is only accepted while
  the image is kept.
- Writes go through the store's single writer (`Store.transact`); reads use their own
  read-only connection.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import cv2

from appliance.errors import BadLabel, StoreError, UnknownFrame
from appliance.store import Store
from appliance.store.queries import open_reader

logger = logging.getLogger(__name__)

LabelKind = Literal["confirm", "reject", "missed"]
LABEL_KINDS: tuple[LabelKind, ...] = get_args(LabelKind)
MAX_AUTHOR_CHARS = 64
WRITE_TIMEOUT_S = 10.0

_COLUMNS = ("id, frame_id, kind, author, created_at, defect_index, class_name, x1_px, y1_px,"
            " x2_px, y2_px, model_version, preprocess_hash, exported_at")

BoxXYXY = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class Label:
    """One piece of operator feedback (times: unix seconds; box: xyxy original pixels)."""

    id: int
    frame_id: str
    kind: LabelKind
    author: str
    created_at_s: float
    defect_index: int | None
    class_name: str | None
    box_xyxy: BoxXYXY | None
    model_version: str | None
    preprocess_hash: str | None
    exported_at_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class FrameFacts:
    """What a label is checked against: the frame's inspection and its kept image."""

    frame_id: str
    model_version: str | None
    preprocess_hash: str | None
    defects: list[tuple[str, BoxXYXY]]
    """(class name, xyxy box) in stored order."""
    image_path: Path | None
    """Absolute path of the kept image, None if not kept."""


def _kind(value: object) -> LabelKind:
    for kind in LABEL_KINDS:
        if value == kind:
            return kind
    raise StoreError(f"unknown label kind {value!r} in the store")


def label_from_row(row: Sequence[Any]) -> Label:
    (id_, frame_id, kind, author, created, index, cls, x1, y1, x2, y2, version, phash,
     exported) = row
    box = None if x1 is None else (float(x1), float(y1), float(x2), float(y2))
    return Label(int(id_), str(frame_id), _kind(kind), str(author), float(created), index,
                 cls, box, version, phash, exported)


def frame_facts(conn: sqlite3.Connection, frame_id: str, images_dir: Path) -> FrameFacts:
    """The frame's inspection, defects and kept image. Raises UnknownFrame."""
    row = conn.execute("SELECT id, model_version, preprocess_hash FROM inspections"
                       " WHERE frame_id = ?", (frame_id,)).fetchone()
    if row is None:
        raise UnknownFrame(f"no inspection with frame id {frame_id!r}")
    defects = [(str(c), (float(a), float(b), float(d), float(e))) for c, a, b, d, e in
               conn.execute("SELECT class_name, x1_px, y1_px, x2_px, y2_px FROM defects"
                            " WHERE inspection_id = ? ORDER BY id", (row[0],))]
    image = conn.execute("SELECT path FROM images WHERE frame_id = ? AND deleted_at IS NULL"
                         " ORDER BY id LIMIT 1", (frame_id,)).fetchone()
    return FrameFacts(frame_id, row[1], row[2], defects,
                      None if image is None else images_dir / str(image[0]))


def image_size_wh(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of an image file. Raises BadLabel if unreadable."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise BadLabel(f"the kept image {path} cannot be read")
    return int(image.shape[1]), int(image.shape[0])


def check_label(kind: str, facts: FrameFacts, classes: Sequence[str] | None, *,
                defect_index: int | None, class_name: str | None,
                box_xyxy: Sequence[float] | None,
                image_wh: tuple[int, int] | None) -> tuple[LabelKind, BoxXYXY | None]:
    """Validate one label against its frame (pure; `classes` None: any class name of 1
    to 128 characters). Returns the kind and the box as floats. Raises BadLabel with
    what is wrong."""
    checked: LabelKind | None = next((k for k in LABEL_KINDS if k == kind), None)
    if checked is None:
        raise BadLabel(f"unknown label kind {kind!r}: expected one of {', '.join(LABEL_KINDS)}")
    if checked != "missed":
        if class_name is not None or box_xyxy is not None:
            raise BadLabel(f"a {checked} label names a detection by defect_index; "
                           "class_name and box_xyxy are for missed defects only")
        if defect_index is None or isinstance(defect_index, bool) or \
                not isinstance(defect_index, int):
            raise BadLabel(f"a {checked} label needs defect_index (an integer)")
        n = len(facts.defects)
        if not 0 <= defect_index < n:
            raise BadLabel(f"frame {facts.frame_id} has {n} detection(s) (indices 0 to "
                           f"{n - 1}); no defect_index {defect_index}" if n else
                           f"frame {facts.frame_id} has no detections to {checked}")
        return checked, None
    if defect_index is not None:
        raise BadLabel("a missed label gives class_name and box_xyxy, not defect_index")
    if classes is None:
        if not isinstance(class_name, str) or not 1 <= len(class_name.strip()) <= 128:
            raise BadLabel("a missed label needs class_name (1 to 128 characters)")
    elif class_name is None or class_name not in classes:
        raise BadLabel(f"class_name {class_name!r} is not one of the model's classes: "
                       f"{', '.join(classes)}")
    if box_xyxy is None or len(box_xyxy) != 4:
        raise BadLabel("a missed label needs box_xyxy: four numbers x1, y1, x2, y2 (pixels)")
    try:
        x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    except (TypeError, ValueError):
        raise BadLabel(f"box_xyxy must be four numbers, got {list(box_xyxy)!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise BadLabel("box_xyxy must be finite numbers")
    if not (x1 < x2 and y1 < y2):
        raise BadLabel(f"box_xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is empty: need x1 < x2 "
                       "and y1 < y2")
    if image_wh is not None:
        w, h = image_wh
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise BadLabel(f"box_xyxy ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the "
                           f"{w}x{h} image")
    return checked, (x1, y1, x2, y2)


ClassNames = Sequence[str] | Callable[[], Sequence[str]]
"""The model's class names, or a function giving the current ones (after a hot swap)."""


class LabelBook:
    """See the module docstring. `classes`: what a missed defect may be (the active
    model's class names, or a function returning them); None accepts any class name of
    1 to 128 characters (the export then skips frames with a class its bundle lacks).
    Thread-safe."""

    def __init__(self, store: Store, classes: ClassNames | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._classes = classes
        self._clock = clock

    @property
    def classes(self) -> list[str] | None:
        """The class names a missed defect may have now (None: any)."""
        if self._classes is None:
            return None
        return list(self._classes() if callable(self._classes) else self._classes)

    def _reader(self) -> sqlite3.Connection:
        try:
            return open_reader(self._store.path)
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: cannot open for reading: {e}") from e

    def _labels(self, sql: str, params: tuple[object, ...] = ()) -> list[Label]:
        conn = self._reader()
        try:
            return [label_from_row(r) for r in conn.execute(sql, params).fetchall()]
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: reading labels failed: {e}") from e
        finally:
            conn.close()

    def frame(self, frame_id: str) -> FrameFacts:
        """The frame's inspection, defects and kept image. Raises UnknownFrame."""
        conn = self._reader()
        try:
            return frame_facts(conn, frame_id, self._store.config.images.dir)
        except sqlite3.Error as e:
            raise StoreError(f"{self._store.path}: reading frame failed: {e}") from e
        finally:
            conn.close()

    def for_frame(self, frame_id: str) -> list[Label]:
        """The frame's labels, oldest first."""
        return self._labels(f"SELECT {_COLUMNS} FROM labels WHERE frame_id = ? ORDER BY id",
                            (frame_id,))

    def pending_export(self) -> list[Label]:
        """Labels not yet exported, oldest first."""
        return self._labels(f"SELECT {_COLUMNS} FROM labels WHERE exported_at IS NULL"
                            " ORDER BY id")

    def add(self, frame_id: str, kind: str, author: str, defect_index: int | None = None,
            class_name: str | None = None,
            box_xyxy: Sequence[float] | None = None) -> Label:
        """Store one label (see the module docstring) and pin the frame's image. Raises
        UnknownFrame, BadLabel (the message says what is wrong; nothing is written),
        StoreError."""
        if not author or len(author) > MAX_AUTHOR_CHARS:
            raise BadLabel(f"author must be 1 to {MAX_AUTHOR_CHARS} characters")
        facts = self.frame(frame_id)
        if facts.image_path is None:
            raise BadLabel(f"frame {frame_id} has no kept image (not sampled, or already "
                           "deleted); only frames shown with their image can be labelled")
        wh = image_size_wh(facts.image_path) if kind == "missed" else None
        checked, box = check_label(kind, facts, self.classes, defect_index=defect_index,
                                   class_name=class_name, box_xyxy=box_xyxy, image_wh=wh)
        if not self._store.pin_image(frame_id):
            raise BadLabel(f"the image of frame {frame_id} was just deleted (image quota); "
                           "it can no longer be labelled")
        now = self._clock()
        row = (frame_id, checked, defect_index if checked != "missed" else None,
               class_name if checked == "missed" else None,
               *(box if box is not None else (None, None, None, None)),
               author, now, facts.model_version, facts.preprocess_hash)

        def work(conn: sqlite3.Connection) -> tuple[Any, ...]:
            new_id = conn.execute(
                "INSERT INTO labels (frame_id, kind, defect_index, class_name, x1_px, y1_px,"
                " x2_px, y2_px, author, created_at, model_version, preprocess_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid
            return tuple(conn.execute(f"SELECT {_COLUMNS} FROM labels WHERE id = ?",
                                      (new_id,)).fetchone())

        try:
            label = label_from_row(
                self._store.transact(work, urgent=True).result(WRITE_TIMEOUT_S))
        except StoreError:
            self._store.unpin_images([frame_id])  # this label's pin (not written)
            raise
        logger.info("label %d on %s: %s by %s", label.id, frame_id, checked, author)
        return label


def ground_truth(defects: Sequence[tuple[str, BoxXYXY]], labels: Sequence[Label], *,
                 keep_unreviewed: bool = True) -> list[tuple[str, BoxXYXY]]:
    """A labelled frame's true defects (pure): every detection whose latest feedback is
    `confirm`, plus every `missed` box; a detection whose latest feedback is `reject` is
    dropped; a detection without feedback is kept (the operator reviewed the frame and
    left it standing) unless `keep_unreviewed` is False. `labels` in id order."""
    verdict: dict[int, LabelKind] = {}
    for label in labels:
        if label.kind != "missed" and label.defect_index is not None:
            verdict[label.defect_index] = label.kind
    out = [d for i, d in enumerate(defects)
           if verdict.get(i, "confirm" if keep_unreviewed else "reject") == "confirm"]
    out += [(label.class_name, label.box_xyxy) for label in labels
            if label.kind == "missed" and label.class_name is not None
            and label.box_xyxy is not None]
    return out

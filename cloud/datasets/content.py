"""The pure core of the dataset index: references, canonical labels, the content
fingerprint, the stable split by image hash, class mapping by name. No IO.

Invariants:
- A version's fingerprint is the sha256 of its canonical listing: the class names, then
  one line per image, sorted by image hash: ``<sha256> <split> <labels>``, the labels
  being the canonical rows (``class cx cy w h``, 6 decimals, sorted, `;`-joined). The
  same images with the same labels, splits and classes always give the same
  fingerprint, whatever their file names, order or source.
- `split_for_hash(sha, f)` depends only on the image hash and `f`: a frame never moves
  between train and val across versions made with the same fraction, and raising `f`
  only ever moves frames from train to val.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from cloud.datasets.errors import BadReference, DatasetRejected

Split = Literal["train", "val"]
SPLITS: Final[tuple[Split, ...]] = ("train", "val")
SplitRule = Literal["hash", "keep"]

NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_NAME = re.compile(NAME_PATTERN)
_HEX_PREFIX = re.compile(r"[0-9a-f]{4,64}")
MIN_PREFIX_LEN: Final = 4
COORD_EDGE_TOLERANCE: Final = 1e-3
"""How far a box's edge (cx - w/2 ...) may lie outside 0..1 (exporters' rounding)."""


@dataclass(frozen=True)
class DatasetRef:
    """`NAME` (the latest version), `NAME@3` (number 3) or `NAME@9f2c81` (the version
    whose fingerprint starts with these hex digits)."""

    name: str
    number: int | None = None
    fingerprint_prefix: str | None = None

    def __str__(self) -> str:
        if self.number is not None:
            return f"{self.name}@{self.number}"
        if self.fingerprint_prefix is not None:
            return f"{self.name}@{self.fingerprint_prefix}"
        return self.name


def check_name(name: str) -> str:
    """`name` if it is a valid dataset name, else BadReference saying the rule."""
    if not _NAME.fullmatch(name):
        raise BadReference(
            f"dataset name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")
    return name


def parse_ref(text: str) -> DatasetRef:
    """Parse `NAME`, `NAME@NUMBER` or `NAME@HEXPREFIX` (at least 4 lowercase hex digits;
    all digits means a number). Raises BadReference."""
    name, at, version = text.strip().partition("@")
    check_name(name)
    if not at:
        return DatasetRef(name)
    if version.isdigit():
        number = int(version)
        if number < 1:
            raise BadReference(f"{text!r}: version numbers start at 1")
        return DatasetRef(name, number=number)
    if _HEX_PREFIX.fullmatch(version):
        return DatasetRef(name, fingerprint_prefix=version)
    raise BadReference(
        f"{text!r}: expected NAME, NAME@NUMBER or NAME@FINGERPRINT (at least "
        f"{MIN_PREFIX_LEN} lowercase hex digits)")


LabelRow = tuple[int, float, float, float, float]
"""class id, cx, cy, w, h (normalised to the image)."""


def check_label_row(row: Sequence[float], num_classes: int, where: str) -> LabelRow:
    """One label row, checked strictly: an integer class id in 0..num_classes-1,
    cx, cy, w, h within 0..1, w and h > 0, and the box's edges inside the image (within
    `COORD_EDGE_TOLERANCE`). Raises DatasetRejected naming `where`."""
    if len(row) != 5:
        raise DatasetRejected(f"{where}: expected 'class cx cy w h', got {len(row)} values")
    cls, cx, cy, w, h = (float(v) for v in row)
    if cls != int(cls) or not 0 <= cls < num_classes:
        raise DatasetRejected(f"{where}: class {cls:g} is not one of 0..{num_classes - 1}")
    values = (cx, cy, w, h)
    if not all(0.0 <= v <= 1.0 for v in values):
        raise DatasetRejected(
            f"{where}: coordinates must lie in [0, 1], got cx cy w h = "
            + " ".join(f"{v:g}" for v in values))
    if w <= 0.0 or h <= 0.0:
        raise DatasetRejected(f"{where}: box of zero size (w {w:g}, h {h:g})")
    tol = COORD_EDGE_TOLERANCE
    if cx - w / 2 < -tol or cy - h / 2 < -tol or cx + w / 2 > 1 + tol or cy + h / 2 > 1 + tol:
        raise DatasetRejected(
            f"{where}: box reaches outside the image (cx cy w h = "
            + " ".join(f"{v:g}" for v in values) + ")")
    return int(cls), cx, cy, w, h


def canonical_labels(rows: Iterable[LabelRow]) -> str:
    """The canonical text of an image's labels: rows ``class cx cy w h`` with 6
    decimals, sorted, duplicates dropped, joined by newlines ('' for no objects)."""
    lines = {f"{c:d} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}" for c, cx, cy, w, h in rows}
    return "\n".join(sorted(lines))


def parse_canonical(labels: str) -> list[LabelRow]:
    """Rows of a canonical label text (as written by `canonical_labels`)."""
    rows: list[LabelRow] = []
    for line in labels.splitlines():
        c, cx, cy, w, h = line.split()
        rows.append((int(c), float(cx), float(cy), float(w), float(h)))
    return rows


def split_for_hash(image_sha256: str, val_fraction: float) -> Split:
    """`val` for a fraction `val_fraction` of images, chosen by the image hash alone."""
    return "val" if int(image_sha256[:16], 16) < val_fraction * 2**64 else "train"


@dataclass(frozen=True)
class Item:
    """One image of a version: its content hash, file type, split and canonical labels."""

    image_sha256: str
    ext: str
    split: Split
    labels: str


def fingerprint(classes: Sequence[str], items: Iterable[Item]) -> str:
    """sha256 (hex) of the canonical listing (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(("classes " + json.dumps(list(classes), ensure_ascii=True) + "\n").encode())
    for item in sorted(items, key=lambda i: i.image_sha256):
        digest.update(f"{item.image_sha256} {item.split} "
                      f"{item.labels.replace(chr(10), ';')}\n".encode())
    return digest.hexdigest()


class VersionCounts(BaseModel):
    """Images per split, and boxes per split and class name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    images: dict[str, int]
    boxes: dict[str, dict[str, int]]


def count(classes: Sequence[str], items: Iterable[Item]) -> VersionCounts:
    """Images per split and boxes per split and class (every class listed, 0 included)."""
    images = dict.fromkeys(SPLITS, 0)
    boxes = {s: dict.fromkeys(classes, 0) for s in SPLITS}
    for item in items:
        images[item.split] += 1
        for row in parse_canonical(item.labels):
            boxes[item.split][classes[row[0]]] += 1
    return VersionCounts(images=images, boxes=boxes)


class DatasetVersion(BaseModel):
    """One immutable dataset version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    number: int
    fingerprint: str
    classes: list[str]
    counts: VersionCounts
    parents: list[str]
    """Refs (`NAME@NUMBER`) of the versions this one was made from."""
    split_rule: str
    """How images were put in train/val: `hash:<val fraction>` or `kept` (the import's)."""
    source: str
    created_at: datetime

    @property
    def ref(self) -> str:
        """`NAME@NUMBER`."""
        return f"{self.name}@{self.number}"

    @property
    def images(self) -> int:
        """All images of the version."""
        return sum(self.counts.images.values())


def class_mapping(target: Sequence[str], source: Sequence[str], what: str) -> list[int]:
    """For each class id of `source`, the id of the class with the same name in `target`.
    Raises DatasetRejected for duplicate names or a source class `target` does not have
    (an unknown class), naming `what`."""
    for names, whose in ((target, "target"), (source, what)):
        dupes = sorted({n for n in names if list(names).count(n) > 1})
        if dupes:
            raise DatasetRejected(f"{whose}: class names repeat: {', '.join(dupes)}")
    index = {n: i for i, n in enumerate(target)}
    unknown = [n for n in source if n not in index]
    if unknown:
        raise DatasetRejected(
            f"{what}: unknown class(es) {', '.join(unknown)}; the classes are "
            f"{', '.join(target)}")
    return [index[n] for n in source]


def remap_labels(labels: str, mapping: Sequence[int]) -> str:
    """Canonical labels with every class id `c` replaced by `mapping[c]`."""
    if list(mapping) == list(range(len(mapping))):
        return labels
    return canonical_labels((mapping[c], cx, cy, w, h) for c, cx, cy, w, h in
                            parse_canonical(labels))


def merge_items(groups: Iterable[tuple[str, Iterable[Item]]]) -> list[Item]:
    """The union of items from several versions (`(ref, items)` pairs), one per image.
    The same image in two groups must have the same labels and split; raises
    DatasetRejected naming both refs otherwise."""
    merged: dict[str, tuple[str, Item]] = {}
    for ref, items in groups:
        for item in items:
            seen = merged.get(item.image_sha256)
            if seen is None:
                merged[item.image_sha256] = (ref, item)
                continue
            other_ref, other = seen
            if other.labels != item.labels:
                raise DatasetRejected(
                    f"image {item.image_sha256[:12]} has different labels in {other_ref} "
                    f"and {ref}")
            if other.split != item.split:
                raise DatasetRejected(
                    f"image {item.image_sha256[:12]} is in {other.split} in {other_ref} "
                    f"but in {item.split} in {ref}")
    return [item for _, item in merged.values()]

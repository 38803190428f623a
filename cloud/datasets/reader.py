"""Reading an Ultralytics YOLO dataset for import, strictly (the IO adapter in front of
`cloud.datasets.content`).

Accepted layouts (PATH given to `lineguard cloud dataset import`):
- a data.yaml, or a folder holding one (read by models/yolo_dataset.py: `names`,
  `train`/`val`/`test` dirs or lists);
- a folder with `images/` and `labels/` and no data.yaml: the class names come from
  `classes.txt` beside them (one per line, as labelImg and Label Studio export) or from
  the caller; `images/train`, `images/val` (and `images/test`) are the splits if present,
  else every image under `images/` is `train`.

`test` and `minival` images count as `val` (held out) when the import's split is kept.
Every image is decoded (models/imagefile.py: truncated or corrupt files are refused);
every label row is checked (content.check_label_row). Duplicate images (same bytes) with
the same labels are kept once; with different labels (or, keeping the split, in train
and in val) the import is refused naming both files, unless the caller asks to drop
them: then every copy of such an image is left out and listed in `dropped` (NEU-DET
has one such pair: a val image that is a train image with other boxes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cloud.datasets.content import Split, canonical_labels, check_label_row
from cloud.datasets.errors import DatasetRejected
from models.imagefile import ImageFileError, decode_image
from models.yolo_dataset import DatasetError as YoloDatasetError
from models.yolo_dataset import YoloDataset, label_path_for, load_data_yaml

_SPLIT_AS: dict[str, Split] = {"train": "train", "val": "val", "test": "val", "minival": "val"}


@dataclass(frozen=True)
class SourceImage:
    """An image of the dataset being imported, read and checked."""

    path: Path
    sha256: str
    ext: str
    width_px: int
    height_px: int
    size_bytes: int
    split: Split
    """The split the source put it in."""
    labels: str
    """Canonical labels, class ids of the source's `names`."""


@dataclass(frozen=True)
class SourceDataset:
    """What an import read: class names, the images (one per content hash), a label."""

    classes: list[str]
    images: list[SourceImage]
    description: str
    dropped: list[Path]
    """Files left out as conflicting duplicates (only with `drop_conflicts`)."""


def _open(path: Path, classes: list[str] | None) -> YoloDataset:
    path = Path(path)
    if path.is_file():
        return load_data_yaml(path)
    if not path.is_dir():
        raise DatasetRejected(f"{path}: no such file or folder")
    if (path / "data.yaml").is_file():
        return load_data_yaml(path / "data.yaml")
    images = path / "images"
    if not images.is_dir():
        raise DatasetRejected(
            f"{path}: neither a data.yaml nor an images/ folder (expected an Ultralytics "
            "YOLO dataset)")
    names = classes
    if names is None:
        listing = path / "classes.txt"
        if not listing.is_file():
            raise DatasetRejected(
                f"{path}: no data.yaml and no classes.txt; give the class names")
        try:
            names = [n.strip() for n in listing.read_text("utf-8-sig").splitlines()
                     if n.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetRejected(f"{listing}: cannot read: {e}") from e
        if not names:
            raise DatasetRejected(f"{listing}: no class names")
    splits = {s: [images / s] for s in _SPLIT_AS if (images / s).is_dir()}
    return YoloDataset(root=path.resolve(), names=list(names),
                       sources=splits or {"train": [images.resolve()]})


def _read_image(path: Path, split: Split, names: list[str]) -> SourceImage:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetRejected(f"{path}: cannot read: {e.strerror}") from e
    try:
        image = decode_image(data, str(path))
    except ImageFileError as e:
        raise DatasetRejected(f"{e} (broken image)") from e
    label_file = label_path_for(path)
    try:
        rows = YoloDataset(root=path.parent, names=names, sources={}).labels_for(path)
    except YoloDatasetError as e:
        raise DatasetRejected(str(e)) from e
    checked = [check_label_row([float(v) for v in row], len(names), str(label_file))
               for row in rows]
    ext = path.suffix.lower().lstrip(".")
    return SourceImage(
        path=path, sha256=hashlib.sha256(data).hexdigest(), ext=ext,
        width_px=int(image.shape[1]), height_px=int(image.shape[0]), size_bytes=len(data),
        split=split, labels=canonical_labels(checked))


def read_yolo(path: Path, classes: list[str] | None = None, *,
              drop_conflicts: bool = False) -> SourceDataset:
    """Read and check every image and label of the dataset at `path` (see the module
    docstring). `drop_conflicts`: leave out conflicting duplicates instead of refusing.
    Raises DatasetRejected naming the file and why."""
    conflicts: dict[str, list[Path]] = {}
    try:
        dataset = _open(path, classes)
        names = dataset.names
        if len(set(names)) != len(names):
            raise DatasetRejected(f"{path}: class names repeat: {names}")
        by_hash: dict[str, SourceImage] = {}
        for split_name in dataset.sources:
            split = _SPLIT_AS.get(split_name)
            if split is None:
                continue
            for image_path in dataset.images(split_name):
                image = _read_image(image_path, split, names)
                seen = by_hash.get(image.sha256)
                if seen is None:
                    by_hash[image.sha256] = image
                elif seen.labels != image.labels or seen.split != image.split:
                    if not drop_conflicts:
                        raise DatasetRejected(
                            f"{image_path}: the same image as {seen.path} "
                            + ("with different labels (duplicate image)"
                               if seen.labels != image.labels else
                               f"in {image.split} and in {seen.split}"))
                    conflicts.setdefault(image.sha256, [seen.path]).append(image_path)
    except YoloDatasetError as e:
        raise DatasetRejected(str(e)) from e
    for sha in conflicts:
        del by_hash[sha]
    if not by_hash:
        raise DatasetRejected(f"{path}: no images")
    return SourceDataset(classes=list(names), images=list(by_hash.values()),
                         description=str(dataset.yaml_path or dataset.root),
                         dropped=[p for paths in conflicts.values() for p in paths])

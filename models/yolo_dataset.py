"""Read an Ultralytics YOLO detection dataset (data.yaml, image lists, label files).

What is accepted follows Ultralytics (`check_det_dataset`, `img2label_paths`,
`verify_image_label`), with one deliberate difference: a relative `path` in the
yaml is resolved against the yaml's own folder (Ultralytics tries the working
directory and then its datasets dir), and relative lines of an image-list file are
resolved against the list file's folder.

- `names`: a list, or a dict {0: name, 1: name, ...} with keys 0..n-1; `nc`, if
  present, must equal the number of names.
- a split (`train`, `val`, `test`, ...): a directory (searched recursively for
  images), a ``.txt`` file listing images, a single image, or a list of those;
  relative to `path`.
- labels: for ``.../images/.../x.jpg`` the file ``.../labels/.../x.txt`` (last
  ``/images/`` replaced); a missing label file means no objects. A row is
  ``class cx cy w h`` (normalised), or ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon,
  reduced to its bounding box). Duplicate rows are dropped as Ultralytics does.

Everything that is wrong raises `DatasetError` naming the file (and line).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from models.errors import ModelError
from protocol.configfile import ConfigFileError, read_yaml_mapping

__all__ = ["IMAGE_SUFFIXES", "DatasetError", "YoloDataset", "label_path_for", "load_data_yaml"]

IMAGE_SUFFIXES = frozenset(
    {".bmp", ".dng", ".jp2", ".jpeg", ".jpg", ".mpo", ".png", ".tif", ".tiff", ".webp"}
)
"""Image types listed from a split folder (those OpenCV reads; as Ultralytics, less HEIC/AVIF)."""

_COORD_TOLERANCE = 0.01  # Ultralytics accepts normalised coordinates up to 1.01 / down to -0.01


class DatasetError(ModelError):
    """A data.yaml, image list, image or label file is missing or malformed."""


def label_path_for(image_path: Path) -> Path:
    """Label file of an image: last ``/images/`` -> ``/labels/``, suffix -> ``.txt``."""
    text = os.fspath(image_path)
    images, labels = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(labels.join(text.rsplit(images, 1)).rsplit(".", 1)[0] + ".txt")


def _parse_label_file(path: Path, num_classes: int) -> npt.NDArray[np.float32]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read label file {path}: {exc}") from exc
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DatasetError(f"{where}: not a number in {line.strip()!r}") from None
        if len(values) == 5:
            box = values[1:]
        elif len(values) >= 7 and len(values) % 2 == 1:  # polygon: its bounding box
            xs, ys = values[1::2], values[2::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            box = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        else:
            raise DatasetError(
                f"{where}: expected 'class cx cy w h' (5 values) or a polygon "
                f"'class x1 y1 x2 y2 x3 y3 ...', got {len(values)} values"
            )
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < num_classes:
            raise DatasetError(f"{where}: class {fields[0]} is not one of 0..{num_classes - 1}")
        if max(box) > 1 + _COORD_TOLERANCE:
            raise DatasetError(f"{where}: coordinates must be normalised to 0..1, got {box}")
        if min(box) < -_COORD_TOLERANCE or min(box[2:]) < 0:
            raise DatasetError(f"{where}: negative coordinates or size {box}")
        rows.append([cls, *box])
    if not rows:
        return np.zeros((0, 5), dtype=np.float32)
    labels = np.asarray(rows, dtype=np.float32)
    _, first = np.unique(labels, axis=0, return_index=True)
    if first.shape[0] < labels.shape[0]:
        labels = labels[first]  # Ultralytics drops duplicates (in sorted-row order)
    return labels


def _images_in(source: Path, split: str) -> list[Path]:
    if source.is_dir():
        found = (p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return sorted((p for p in found if p.is_file()), key=str)  # string order, as Ultralytics
    if source.is_file() and source.suffix.lower() in IMAGE_SUFFIXES:
        return [source]
    if source.is_file():
        try:
            lines = source.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"split {split!r}: cannot read image list {source}: {exc}") from exc
        images: list[Path] = []
        for line in lines:
            entry = line.strip()
            if entry:
                image = Path(entry)
                images.append(image if image.is_absolute() else source.parent / image)
        return images
    raise DatasetError(f"split {split!r}: {source} does not exist")


@dataclass(frozen=True)
class YoloDataset:
    """A YOLO-format dataset: class `names` (index = class id) and split sources.

    `sources` maps a split name to the directories / list files / images it is made
    of, already resolved to absolute paths.
    """

    root: Path
    names: list[str]
    sources: dict[str, list[Path]]
    yaml_path: Path | None = None

    @property
    def label(self) -> str:
        """Short human name: ``<folder>/<yaml file>`` (or the root folder name)."""
        if self.yaml_path is None:
            return self.root.name
        return f"{self.yaml_path.parent.name}/{self.yaml_path.name}"

    def images(self, split: str = "val") -> list[Path]:
        """Image files of `split`, sorted within each source, duplicates removed.

        Raises DatasetError for an unknown split, a missing source, a listed image
        that does not exist, or a split without images.
        """
        if split not in self.sources:
            known = ", ".join(sorted(self.sources)) or "none"
            raise DatasetError(f"dataset has no split {split!r} (splits: {known})")
        found: dict[Path, None] = {}
        for source in self.sources[split]:
            for image in _images_in(source, split):
                found.setdefault(image, None)
        images = list(found)
        missing = [p for p in images if not p.is_file()]
        if missing:
            raise DatasetError(
                f"split {split!r}: {len(missing)} listed image(s) not found, first {missing[0]}"
            )
        if not images:
            where = ", ".join(str(s) for s in self.sources[split])
            raise DatasetError(f"split {split!r}: no images found in {where}")
        return images

    def labels_for(self, image_path: Path) -> npt.NDArray[np.float32]:
        """[K, 5] float32 rows ``class, cx, cy, w, h`` (normalised) of one image.

        A missing label file is an image without objects (K = 0). Raises
        DatasetError for an unreadable or malformed label file, naming file and line.
        """
        path = label_path_for(image_path)
        if not path.is_file():
            return np.zeros((0, 5), dtype=np.float32)
        return _parse_label_file(path, len(self.names))


def _names_from(data: Mapping[str, object], where: str) -> list[str]:
    raw = data.get("names")
    nc = data.get("nc")
    if raw is None:
        if isinstance(nc, int) and not isinstance(nc, bool) and nc > 0:
            return [f"class{i}" for i in range(nc)]
        raise DatasetError(f"{where}: 'names' is missing")
    if isinstance(raw, list):
        names = [str(n) for n in raw]
    elif isinstance(raw, dict):
        try:
            by_id = {int(str(k)): str(v) for k, v in raw.items()}
        except ValueError:
            raise DatasetError(f"{where}: 'names' keys must be class ids 0..n-1") from None
        if sorted(by_id) != list(range(len(by_id))):
            raise DatasetError(
                f"{where}: 'names' keys must be 0..{len(by_id) - 1}, got {sorted(by_id)}"
            )
        names = [by_id[i] for i in range(len(by_id))]
    else:
        raise DatasetError(f"{where}: 'names' must be a list or a mapping of id to name")
    if not names:
        raise DatasetError(f"{where}: 'names' is empty")
    if nc is not None and nc != len(names):
        raise DatasetError(f"{where}: nc is {nc} but {len(names)} names are given")
    return names


def load_data_yaml(path: Path) -> YoloDataset:
    """Load an Ultralytics data.yaml.

    `path` key: the dataset root, relative to the yaml's folder (default: that
    folder). Split values are relative to the root. Raises DatasetError for a
    missing/unparseable yaml, a missing root, bad `names`, or a split value that is
    not a string or list of strings (missing split paths are reported by `images`).
    """
    yaml_path = Path(path).resolve()
    where = str(yaml_path)
    if not yaml_path.exists():
        raise DatasetError(f"data.yaml not found: {yaml_path}")
    try:
        data = read_yaml_mapping(yaml_path)
    except ConfigFileError as exc:
        raise DatasetError(f"{exc} (expected path/train/val/names)") from None
    root_value = data.get("path")
    if root_value is None or root_value == "":
        root = yaml_path.parent
    elif isinstance(root_value, str):
        root = (yaml_path.parent / Path(root_value).expanduser()).resolve()
    else:
        raise DatasetError(f"{where}: 'path' must be a string")
    if not root.is_dir():
        raise DatasetError(f"{where}: dataset root {root} ('path') is not a directory")
    names = _names_from(data, where)
    sources: dict[str, list[Path]] = {}
    for key in ("train", "val", "test", "minival"):
        value = data.get(key)
        if value is None or value == "":
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) and e for e in entries):
            raise DatasetError(f"{where}: {key!r} must be a path or a list of paths")
        sources[key] = [(root / Path(str(e)).expanduser()).resolve() for e in entries]
    if not sources:
        raise DatasetError(f"{where}: no split given (expected 'train', 'val' or 'test')")
    return YoloDataset(root=root, names=names, sources=sources, yaml_path=yaml_path)

"""What `--data` and a model's holdout name: a dataset version of the dataset index
(`NAME@VERSION`, materialized as a YOLO folder) or a YOLO folder / data.yaml path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cloud.errors import CloudError
from cloud.retrain.errors import RetrainError

if TYPE_CHECKING:
    from cloud.datasets.index import DatasetIndex

_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._-]+)?$")


class DatasetSource(Protocol):
    """The dataset index as retraining uses it (cloud/datasets' `DatasetIndex`)."""

    def materialize(self, ref: str, out_dir: Path) -> Path:
        """Write dataset version `ref` as a YOLO folder under `out_dir`; its data.yaml."""
        ...

    def resolve(self, ref: str) -> tuple[str, str]:
        """(`NAME@NUMBER`, content fingerprint) of `ref` (`NAME`: the newest version)."""
        ...

    def created_at(self, ref: str) -> datetime:
        """When version `ref` (`NAME`: the newest version) was made (UTC)."""
        ...

    def new_images(self, ref: str) -> frozenset[str] | None:
        """sha256 of the images of version `ref` that none of its parent versions held
        (e.g. the operators' labelled samples an inbox acceptance added); None for a
        version without parent versions (an import: all of it is new)."""
        ...


class IndexSource:
    """`DatasetSource` over the dataset index (cloud/datasets)."""

    def __init__(self, index: DatasetIndex) -> None:
        self._index = index

    def materialize(self, ref: str, out_dir: Path) -> Path:
        return self._index.materialize(ref, out_dir)

    def resolve(self, ref: str) -> tuple[str, str]:
        version = self._index.get(ref)
        return f"{version.name}@{version.number}", version.fingerprint

    def created_at(self, ref: str) -> datetime:
        return self._index.get(ref).created_at

    def new_images(self, ref: str) -> frozenset[str] | None:
        version = self._index.get(ref)
        if not version.parents:
            return None
        held = {item.image_sha256 for p in version.parents for item in self._index.items(p)}
        return frozenset(item.image_sha256 for item in self._index.items(ref)
                         if item.image_sha256 not in held)


@dataclass(frozen=True)
class ResolvedData:
    """A dataset ready for Ultralytics: `ref` as recorded in the lineage, and the
    index's content fingerprint of that version (None for a plain path)."""

    ref: str
    data_yaml: Path
    fingerprint: str | None = None


def resolve_data(text: str, work_dir: Path, index: DatasetSource | None,
                 what: str = "--data") -> ResolvedData:
    """`text` as a YOLO folder / data.yaml path, else as `NAME@VERSION` of the index
    (materialized under `work_dir`). Raises RetrainError saying which."""
    path = Path(text)
    if path.is_dir():
        yaml = path / "data.yaml"
        if not yaml.is_file():
            raise RetrainError(f"{what} {text}: folder without data.yaml")
        return ResolvedData(str(path.resolve()), yaml.resolve())
    if path.is_file():
        return ResolvedData(str(path.resolve()), path.resolve())
    if _REF.fullmatch(text):
        if index is None:
            raise RetrainError(f"{what} {text}: no dataset index to resolve NAME@VERSION "
                               "(give a YOLO folder or data.yaml path)")
        try:
            ref, fingerprint = index.resolve(text)
            out = work_dir / ("data-" + ref.replace("@", "-"))
            return ResolvedData(ref, index.materialize(ref, out), fingerprint)
        except (CloudError, OSError) as e:
            raise RetrainError(f"{what} {text}: {e}") from e
    raise RetrainError(f"{what} {text}: neither an existing path nor DATASET@VERSION")


def val_subset(data_yaml: Path, keep: frozenset[str], out_dir: Path) -> tuple[Path, int]:
    """A YOLO folder under `out_dir` holding the val images of `data_yaml` whose file
    name (without extension) is in `keep` (a materialized version names its images by
    sha256), with their labels (links, or copies where links are refused). Returns its
    data.yaml and how many images it holds (0: no data.yaml is written)."""
    import os
    import shutil

    import yaml

    from models.yolo_dataset import label_path_for, load_data_yaml

    dataset = load_data_yaml(data_yaml)
    chosen = [p for p in dataset.images("val") if p.stem in keep]
    if not chosen:
        return out_dir / "data.yaml", 0
    for kind in ("images", "labels"):
        (out_dir / kind / "val").mkdir(parents=True, exist_ok=True)
    for image in chosen:
        for src, dst in ((image, out_dir / "images" / "val" / image.name),
                         (label_path_for(image),
                          out_dir / "labels" / "val" / (image.stem + ".txt"))):
            if not src.exists():
                continue  # an image without a label file: no boxes
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    names = dict(enumerate(dataset.names))
    out = out_dir / "data.yaml"
    out.write_text(yaml.safe_dump({"path": str(out_dir.resolve()), "train": "images/val",
                                   "val": "images/val", "names": names}, sort_keys=False),
                   "utf-8")
    return out, len(chosen)

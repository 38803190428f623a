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

    def new_holdout(self, ref: str, out_dir: Path) -> tuple[Path, int] | None:
        """The val images of version `ref` that none of its parent versions held, as a
        YOLO folder at `out_dir`: (its data.yaml, how many images); None when there
        are none or the version has no parent versions."""
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

    def new_holdout(self, ref: str, out_dir: Path) -> tuple[Path, int] | None:
        return self._index.new_holdout(ref, out_dir)


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


"""Datasets: immutable, content-fingerprinted versions of labelled images, imported from
Ultralytics YOLO folders, unions of other versions, or accepted from the lines' sample
inbox; materialised as YOLO folders for training (docs/datasets.md).

Public API: `DatasetIndex(engine, root)` (`import_yolo`, `union`, `get`, `list`,
`materialize`, `holdout`), `DatasetVersion`, `parse_ref` / `DatasetRef`, and the errors.
"""

from cloud.datasets.content import DatasetRef, DatasetVersion, VersionCounts, parse_ref
from cloud.datasets.errors import (
    BadReference,
    DatasetError,
    DatasetRejected,
    ObjectStoreError,
    UnknownDataset,
)
from cloud.datasets.index import DatasetIndex

__all__ = [
    "BadReference",
    "DatasetError",
    "DatasetIndex",
    "DatasetRef",
    "DatasetRejected",
    "DatasetVersion",
    "ObjectStoreError",
    "UnknownDataset",
    "VersionCounts",
    "parse_ref",
]

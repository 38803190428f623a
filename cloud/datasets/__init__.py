"""Datasets: immutable, content-fingerprinted versions of labelled images, imported from
Ultralytics YOLO folders, unions of other versions, or accepted from the lines' sample
inbox; materialised as YOLO folders for training (docs/datasets.md).

Public API: `DatasetIndex(engine, root)` (`import_yolo`, `union`, `get`, `list`,
`materialize`, `holdout`), `DatasetVersion`, `parse_ref` / `DatasetRef`, `SampleInbox`,
and the errors. Imported on first use, so that `cloud.config` (which holds
`cloud.datasets.config`) does not load SQLAlchemy and OpenCV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.datasets.content import DatasetRef, DatasetVersion, VersionCounts, parse_ref
    from cloud.datasets.errors import (
        BadReference,
        DatasetError,
        DatasetRejected,
        ObjectStoreError,
        UnknownDataset,
    )
    from cloud.datasets.inbox import SampleInbox
    from cloud.datasets.index import DatasetIndex

_WHERE = {
    "DatasetRef": "content", "DatasetVersion": "content", "VersionCounts": "content",
    "parse_ref": "content", "BadReference": "errors", "DatasetError": "errors",
    "DatasetRejected": "errors", "ObjectStoreError": "errors", "UnknownDataset": "errors",
    "SampleInbox": "inbox", "DatasetIndex": "index",
}

__all__ = [
    "BadReference",
    "DatasetError",
    "DatasetIndex",
    "DatasetRef",
    "DatasetRejected",
    "DatasetVersion",
    "ObjectStoreError",
    "SampleInbox",
    "UnknownDataset",
    "VersionCounts",
    "parse_ref",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud.datasets' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cloud.datasets.{module}"), name)

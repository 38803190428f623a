"""Shared pieces of the dataset tests: small linesim YOLO datasets, an index on a
migrated database, and sample uploads."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from cloud.datasets.index import DatasetIndex
from cloud.db import DatabaseConfig, open_engine, upgrade
from linesim.config import LineConfig
from linesim.dataset import export_yolo

CLASSES = ["scratch", "pit", "crack", "stain"]


def linesim_dataset(out: Path, *, seed: int = 1, n_train: int = 16, n_val: int = 4) -> Path:
    """A small linesim YOLO dataset (160x120 PNGs); its data.yaml."""
    return export_yolo(out, LineConfig(width_px=160, height_px=120, seed=seed),
                       n_train=n_train, n_val=n_val)


def copy_dataset(data_yaml: Path, out: Path) -> Path:
    """A copy of a linesim dataset at `out` (its data.yaml re-pointed); the data.yaml."""
    shutil.copytree(data_yaml.parent, out)
    text = (out / "data.yaml").read_text().replace(str(data_yaml.parent), str(out))
    (out / "data.yaml").write_text(text)
    return out / "data.yaml"


@pytest.fixture(scope="module")
def source_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return linesim_dataset(tmp_path_factory.mktemp("linesim") / "src")


@pytest.fixture
def index(database_url: str, tmp_path: Path) -> Iterator[DatasetIndex]:
    """A DatasetIndex on a freshly migrated database (SQLite and PostgreSQL)."""
    config = DatabaseConfig(url=database_url)
    engine = open_engine(config)
    upgrade(engine, config)
    try:
        yield DatasetIndex(engine, tmp_path / "datasets", val_fraction=0.25)
    finally:
        engine.dispose()


def png_bytes(seed: int, width: int = 64, height: int = 48) -> bytes:
    """A small PNG, different per seed."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", image)
    assert ok
    return buffer.tobytes()


def jpeg_bytes(seed: int, width: int = 64, height: int = 48) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    ok, buffer = cv2.imencode(".jpg", image)
    assert ok
    return buffer.tobytes()


def meta(sample_id: str, **overrides: Any) -> dict[str, Any]:
    """A valid SampleMeta document (as JSON-ready dict)."""
    doc: dict[str, Any] = {
        "schema": "lineguard.sample/1", "sample_id": sample_id, "frame_id": f"f-{sample_id}",
        "captured_at": datetime(2025, 3, 14, 9, 0, tzinfo=UTC).isoformat(),
        "model": {"name": "demo", "version": 3}, "reason": "random",
        "predictions": [{"class_name": "pit", "score": 0.8, "box_xyxy": [4, 4, 20, 16]}],
        "labels": [],
    }
    doc.update(overrides)
    return doc


def multipart(sample_meta: dict[str, Any] | str, image: bytes,
              content_type: str = "image/png") -> dict[str, Any]:
    """httpx keyword arguments of an upload."""
    text = sample_meta if isinstance(sample_meta, str) else json.dumps(sample_meta)
    return {"data": {"meta": text}, "files": {"image": ("frame.png", image, content_type)}}

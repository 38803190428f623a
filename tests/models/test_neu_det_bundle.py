"""The shipped NEU-DET yolo11n ONNX wrapped as a bundle, with a golden set made from
real val images; verified, then tampered with."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.bundle import Bundle, load_bundle, open_bundle, pack_bundle
from models.errors import GoldenMismatchError
from models.golden import build_bundle, verify_golden
from models.manifest import Lineage
from models.runtime import OnnxDetector

from .onnx_builders import (
    NEU_DET_CLASSES,
    NEU_DET_IMGSZ,
    NEU_DET_ONNX,
    neu_det_available,
    neu_det_val_images,
    read_image,
    resign_bundle,
)

pytestmark = pytest.mark.skipif(not neu_det_available(), reason="shared NEU-DET data missing")


@pytest.fixture(scope="module")
def neu_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = [read_image(p, cv2.IMREAD_COLOR) for p in neu_det_val_images(6)]
    bundle = build_bundle(
        tmp_path_factory.mktemp("neu") / "bundle",
        NEU_DET_ONNX,
        name="neu-det-yolo11n",
        version=1,
        label="reference",
        classes=NEU_DET_CLASSES,
        input_hw=(NEU_DET_IMGSZ, NEU_DET_IMGSZ),
        lineage=Lineage(
            dataset_fingerprint="neu-det",
            training_config={"epochs": 60},
            created_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        golden_images=images,
        providers=["cpu"],
    )
    return bundle.root


@pytest.fixture
def neu_bundle(neu_bundle_dir: Path, tmp_path: Path) -> Bundle:
    shutil.copytree(neu_bundle_dir, tmp_path / "copy")
    return load_bundle(tmp_path / "copy")


def test_wrapped_bundle_verifies_with_real_detections(neu_bundle: Bundle, tmp_path: Path) -> None:
    m = neu_bundle.manifest
    assert m.classes == NEU_DET_CLASSES
    assert (m.input.height, m.input.width, m.input.batch) == (224, 224, "dynamic")
    assert m.output.name == "output0" and m.output.format == "yolo_raw"
    report = verify_golden(neu_bundle, OnnxDetector(neu_bundle.model_path, ["cpu"]))
    assert report.images == 6
    assert report.detections >= 3  # a trained model finds defects in defect images
    # and the same after a pack/unpack round trip
    archive = pack_bundle(neu_bundle.root, tmp_path / "neu.tar.gz")
    unpacked = open_bundle(archive, tmp_path / "unpacked")
    verify_golden(unpacked, OnnxDetector(unpacked.model_path, ["cpu"]))


def test_corrupted_golden_image_is_named(neu_bundle: Bundle) -> None:
    path = neu_bundle.root / "golden" / "img_003.png"
    image = read_image(path)
    cv2.imwrite(str(path), np.ascontiguousarray(image[:, ::-1]))  # mirrored: same stats
    resign_bundle(neu_bundle.root)
    bundle = load_bundle(neu_bundle.root)
    with pytest.raises(
        GoldenMismatchError, match=r"golden image img_003\.png: preprocessed tensor"
    ):
        verify_golden(bundle, OnnxDetector(bundle.model_path, ["cpu"]))


def test_changed_preprocessing_spec_is_named(neu_bundle: Bundle) -> None:
    # 200x200 -> 224x224 upscales, so a different interpolation changes every tensor
    resign_bundle(neu_bundle.root, lambda d: d["preprocess"].update(interpolation="nearest"))
    bundle = load_bundle(neu_bundle.root)
    with pytest.raises(
        GoldenMismatchError,
        match=r"golden image img_000\.png: preprocessed tensor .* preprocessing spec changed",
    ):
        verify_golden(bundle, OnnxDetector(bundle.model_path, ["cpu"]))

"""Manifest parsing and validation: clear errors naming the field path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.errors import ManifestError
from models.manifest import Manifest, PostprocessSpec, PreprocessSpec, parse_manifest

SHA = "a" * 64


def manifest_dict(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "tiny",
        "version": 3,
        "label": "tiny-v3",
        "classes": ["dent", "scratch"],
        "input": {"height": 64, "width": 64},
        "output": {"format": "yolo_raw"},
        "preprocess": {},
        "postprocess": {"class_score_thresholds": {"scratch": 0.5}},
        "files": {"model.onnx": SHA, "golden/golden.json": SHA},
        "lineage": {"created_at": "2026-01-01T00:00:00Z"},
    }
    data.update(overrides)
    return data


def test_valid_manifest_round_trips_through_json(tmp_path: Path) -> None:
    manifest = parse_manifest(json.dumps(manifest_dict()))
    assert manifest.version == 3
    assert manifest.input.batch == "dynamic"
    assert manifest.postprocess.iou_threshold == 0.7
    path = tmp_path / "manifest.json"
    path.write_text(manifest.to_json())
    assert parse_manifest(path) == manifest
    assert parse_manifest(str(path)) == manifest


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["postprocess"].update(iou_threshold=1.5), "postprocess.iou_threshold"),
        (lambda d: d["postprocess"].update(nms_mode="fast"), "postprocess.nms_mode: unknown field"),
        (lambda d: d.update(colour="red"), "colour: unknown field"),
        (lambda d: d["input"].pop("height"), "input.height: required field is missing"),
        (lambda d: d.update(classes=[]), "classes"),
        (lambda d: d.update(classes=["a", "a"]), "duplicate class name"),
        (lambda d: d.update(version=0), "version"),
        (lambda d: d["preprocess"].update(color_order="rbg"), "preprocess.color_order"),
        (lambda d: d["preprocess"].update(pad_value=300), "preprocess.pad_value"),
        (lambda d: d["preprocess"].update(std=[1, 0, 1]), "preprocess.std"),
        (lambda d: d["preprocess"].update(roi_xywh=[0, 0, 0, 10]), "preprocess.roi_xywh"),
        (lambda d: d["output"].update(format="yolo_v5"), "output.format"),
        (
            lambda d: d["postprocess"].update(class_score_thresholds={"rust": 0.3}),
            "unknown class(es) ['rust']",
        ),
        (lambda d: d["files"].update({"../evil": SHA}), "'../evil'"),
        (lambda d: d["files"].update({"/etc/passwd": SHA}), "absolute"),
        (lambda d: d["files"].update({"model.onnx": "XYZ"}), "sha256 must be 64"),
        (lambda d: d["files"].update({"manifest.json": SHA}), "must not list itself"),
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.update(name="bad name/"), "name"),
    ],
)
def test_bad_manifest_errors_name_the_field(mutate: Any, expected: str) -> None:
    data = manifest_dict()
    mutate(data)
    with pytest.raises(ManifestError) as info:
        parse_manifest(json.dumps(data))
    assert expected in str(info.value)


def test_error_message_spells_out_pydantic_location() -> None:
    data = manifest_dict()
    data["postprocess"]["iou_threshold"] = 2
    with pytest.raises(ManifestError, match=r"postprocess\.iou_threshold: Input should be less"):
        parse_manifest(json.dumps(data))


def test_missing_and_unparseable_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        parse_manifest(tmp_path / "manifest.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",,}')
    with pytest.raises(ManifestError, match=r"not valid JSON \(line 1 column"):
        parse_manifest(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ManifestError, match="top level must be a JSON object"):
        parse_manifest(bad)


def test_manifest_is_frozen() -> None:
    manifest = Manifest.model_validate(manifest_dict())
    with pytest.raises(ValueError, match="frozen"):
        manifest.version = 4  # type: ignore[misc]


def test_version_hash_is_stable_and_sensitive() -> None:
    base = PreprocessSpec()
    assert base.version_hash() == PreprocessSpec().version_hash()
    assert len(base.version_hash()) == 16
    variants = [
        PreprocessSpec(interpolation="nearest"),
        PreprocessSpec(resize="stretch"),
        PreprocessSpec(color_order="bgr"),
        PreprocessSpec(pad_value=0),
        PreprocessSpec(roi_xywh=(0, 0, 10, 10)),
        PreprocessSpec(mean=(0.1, 0.0, 0.0)),
        PreprocessSpec(layout="nhwc"),
        PreprocessSpec(dtype="float16"),
    ]
    hashes = {v.version_hash() for v in variants} | {base.version_hash()}
    assert len(hashes) == len(variants) + 1


def test_threshold_for_applies_per_class_overrides() -> None:
    spec = PostprocessSpec(score_threshold=0.25, class_score_thresholds={"b": 0.6})
    np.testing.assert_array_equal(
        spec.threshold_for(["a", "b", "c"]), np.array([0.25, 0.6, 0.25], np.float32)
    )
    assert spec.threshold_for(["a", "b"]).dtype == np.float32
    with pytest.raises(ManifestError, match="unknown class"):
        spec.threshold_for(["a", "c"])


def test_variant_is_optional_bounded_and_left_out_when_unstated() -> None:
    plain = parse_manifest(json.dumps(manifest_dict()))
    assert plain.variant is None
    assert "variant" not in json.loads(plain.to_json())  # readable by older appliances
    int8 = parse_manifest(json.dumps(manifest_dict(variant="int8")))
    assert int8.variant == "int8"
    assert json.loads(int8.to_json())["variant"] == "int8"
    assert parse_manifest(int8.to_json()) == int8
    with pytest.raises(ManifestError, match="variant"):
        parse_manifest(json.dumps(manifest_dict(variant="int4")))

"""ONNX Runtime adapter: providers, session errors, model IO vs manifest (real ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models.errors import ModelError, ModelShapeError, RuntimeUnavailableError
from models.manifest import Manifest
from models.runtime import OnnxDetector, check_model_io, choose_providers, gpu_visible

from .onnx_builders import (
    IR_VERSION,
    OPSET,
    build_end2end_model,
    build_yolo_raw_model,
    simple_raw_detections,
)


def make_manifest(**overrides: Any) -> Manifest:
    data: dict[str, Any] = {
        "name": "tiny",
        "version": 1,
        "label": "v1",
        "classes": ["a", "b", "c"],
        "input": {"height": 64, "width": 64},
        "output": {"format": "yolo_raw"},
        "lineage": {"created_at": "2026-01-01T00:00:00Z"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Manifest.model_validate(data)


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    boxes, scores = simple_raw_detections(3)
    return build_yolo_raw_model(tmp_path_factory.mktemp("rt") / "raw.onnx", boxes, scores)


def test_choose_providers_defaults_to_what_runs_here() -> None:
    providers = choose_providers()
    assert providers[-1] == "CPUExecutionProvider"
    if not gpu_visible():
        assert providers == ["CPUExecutionProvider"]


def test_choose_providers_aliases_and_cpu_last() -> None:
    assert choose_providers(["cpu"]) == ["CPUExecutionProvider"]
    providers = choose_providers(["CPUExecutionProvider", "cuda"])
    assert providers[-1] == "CPUExecutionProvider"
    assert providers.count("CPUExecutionProvider") == 1


def test_choose_providers_rejects_unknown_names() -> None:
    with pytest.raises(RuntimeUnavailableError, match="unknown execution provider 'warp'"):
        choose_providers(["warp"])


def test_detector_runs_and_reports_actual_providers(raw_model: Path) -> None:
    detector = OnnxDetector(raw_model, ["cuda", "cpu"], intra_op_threads=1)
    assert detector.input_name == "images" and detector.output_names == ["output0"]
    assert detector.input_shape == ["batch", 3, 64, 64]
    assert detector.providers[-1] == "CPUExecutionProvider"
    if not gpu_visible():
        assert detector.providers == ["CPUExecutionProvider"] and not detector.on_gpu
    out = detector.run(np.ones((2, 3, 64, 64), np.float32))
    assert out.shape == (2, 7, 4)
    np.testing.assert_allclose(out[0, 4, :2], [0.9, 0.8], rtol=1e-6)


def test_detector_errors(tmp_path: Path, raw_model: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        OnnxDetector(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(RuntimeUnavailableError, match=r"cannot load garbage\.onnx"):
        OnnxDetector(garbage)
    detector = OnnxDetector(raw_model)
    with pytest.raises(ModelShapeError, match="rejected input"):
        detector.run(np.ones((1, 3, 32, 32), np.float32))


def test_detector_needs_one_image_input(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save(model, str(tmp_path / "two.onnx"))
    with pytest.raises(ModelShapeError, match="expected 1 input, found 2"):
        OnnxDetector(tmp_path / "two.onnx")


def test_check_model_io_accepts_matching_models(tmp_path: Path, raw_model: Path) -> None:
    check_model_io(OnnxDetector(raw_model), make_manifest())
    e2e = build_end2end_model(tmp_path / "e2e.onnx", [[0, 0, 5, 5, 0.9, 0]])
    check_model_io(OnnxDetector(e2e), make_manifest(output={"format": "end2end"}))


@pytest.mark.parametrize(
    ("build", "manifest_overrides", "message"),
    [
        pytest.param(
            "raw_symbolic_rows",
            {"classes": ["a", "b"]},
            r"\(probe run\) shape \[1, 7, 4\]: expected 4\+2 = 6 rows for 2 classes",
            id="raw-rows-vs-classes-found-by-probe",
        ),
        pytest.param(
            "raw",
            {"classes": ["a", "b", "c", "d"]},
            r"\(declared\) shape \['batch', 7, 4\]: expected 4\+4 = 8 rows",
            id="raw-rows-declared",
        ),
        pytest.param(
            "raw",
            {"input": {"height": 640}},
            r"640x64 \(HxW\); model has \['batch', 3, 64, 64\]",
            id="input-size",
        ),
        pytest.param(
            "raw", {"input": {"name": "pixels"}}, "manifest says 'pixels'", id="input-name"
        ),
        pytest.param("raw", {"output": {"name": "boxes"}}, "'boxes' not in", id="output-name"),
        pytest.param(
            "raw",
            {"input": {"dtype": "float16"}},
            "input dtype: manifest input float16",
            id="input-dtype",
        ),
        pytest.param(
            "fixed_batch", {"input": {"batch": 4}}, "manifest says 4, model has 1", id="batch"
        ),
        pytest.param(
            "fixed_batch", {}, "manifest says dynamic, model has fixed batch 1", id="fixed"
        ),
        pytest.param(
            "raw",
            {"output": {"format": "end2end"}},
            "expected last dim 6 .* found 4",
            id="raw-as-end2end",
        ),
        pytest.param(
            "e2e7", {"output": {"format": "end2end"}}, "expected last dim 6 .* found 7", id="e2e-7"
        ),
    ],
)
def test_check_model_io_names_expected_and_found(
    tmp_path: Path, build: str, manifest_overrides: dict[str, Any], message: str
) -> None:
    boxes, scores = simple_raw_detections(3)
    path = tmp_path / f"{build}.onnx"
    if build == "raw":
        build_yolo_raw_model(path, boxes, scores)
    elif build == "raw_symbolic_rows":
        build_yolo_raw_model(path, boxes, scores, declared_rows="rows")
    elif build == "fixed_batch":
        build_yolo_raw_model(path, boxes, scores, batch=1)
    else:
        build_end2end_model(path, [[0, 0, 5, 5, 0.9, 0, 0]], columns=7)
    with pytest.raises(ModelShapeError, match=message):
        check_model_io(OnnxDetector(path), make_manifest(**manifest_overrides))

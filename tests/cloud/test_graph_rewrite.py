"""The DFL softmax rewrite: same outputs, no Transpose/Softmax left, other graphs untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloud.training.graph_rewrite import rewrite_dfl_softmax


def _dfl_model(opset: int, softmax_axis: int = 1, perm: tuple[int, ...] = (0, 2, 1, 3)
               ) -> onnx.ModelProto:
    """Ultralytics' DFL decode alone: x [B, 64, N] -> [B, 4, 16, N] -> Transpose ->
    Softmax -> Conv 1x1 (weights 0..15) -> Reshape [B, 4, N], then a Mul by 2."""
    inits = [
        numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "dfl_w"),
        numpy_helper.from_array(np.array([0, 4, 16, -1], np.int64), "split_shape"),
        numpy_helper.from_array(np.array([0, 4, -1], np.int64), "out_shape"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "split_shape"], ["bins"], name="reshape"),
        helper.make_node("Transpose", ["bins"], ["bins_t"], perm=list(perm), name="transpose"),
        helper.make_node("Softmax", ["bins_t"], ["probs"], axis=softmax_axis, name="softmax"),
        helper.make_node("Conv", ["probs", "dfl_w"], ["expect"], name="conv"),
        helper.make_node("Reshape", ["expect", "out_shape"], ["dist"], name="reshape_out"),
        helper.make_node("Mul", ["dist", "two"], ["y"], name="scale"),
    ]
    graph = helper.make_graph(
        nodes, "dfl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4, "n"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"x": x})[0]
    return out


@pytest.mark.parametrize("opset", [13, 17, 18])
def test_rewritten_dfl_gives_the_same_distances(opset: int) -> None:
    x = (np.random.default_rng(0).standard_normal((3, 64, 50)) * 4).astype(np.float32)
    model = _dfl_model(opset)
    expected = _run(model, x)
    assert rewrite_dfl_softmax(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "Softmax" not in ops and "Transpose" not in ops and "Conv" not in ops
    assert "dfl_w" not in {t.name for t in model.graph.initializer}
    np.testing.assert_allclose(_run(model, x), expected, atol=1e-4)


@pytest.mark.parametrize(("opset", "axis", "perm"), [
    (12, 1, (0, 2, 1, 3)),  # no ReduceSum with an axes input before opset 13
    (17, -1, (0, 2, 1, 3)),  # softmax over another axis
    (17, 1, (0, 1, 2, 3)),  # no transpose of bins to axis 1
])
def test_other_graphs_are_left_alone(opset: int, axis: int, perm: tuple[int, ...]) -> None:
    model = _dfl_model(opset, axis, perm)
    before = model.SerializeToString()
    assert rewrite_dfl_softmax(model) == 0
    assert model.SerializeToString() == before

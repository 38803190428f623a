"""Exact rewrites of ONNX detector graphs that ONNX Runtime runs faster on CPU.

`rewrite_dfl_softmax`: a YOLOv8/11 head decodes each box side as the expectation of a
16-bin distribution (DFL): ``Reshape [B, 4, 16, N] -> Transpose [B, 16, 4, N] ->
Softmax(axis=1) -> Conv 1x1 with weights 0..15 -> [B, 1, 4, N] -> Reshape [B, 4, N]``.
ORT runs a Softmax over a non-last axis by transposing to the last axis and back, with
a generic slow transpose: 15-18% of the whole model's CPU time on the demo detector
(and more of an INT8 model's, whose convolutions got faster). The same numbers come
out of reductions over axis 2 of the un-transposed tensor, ``sum(exp(x - max) * w) /
sum(exp(x - max))``, without any transpose (outputs differ by float rounding only,
2.4e-4 px measured). Nothing here needs ORT; onnx is imported by the caller.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["rewrite_dfl_softmax"]

logger = logging.getLogger(__name__)


def _opset(model: Any) -> int:
    return max((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")),
               default=0)


def graph_index(
    graph: Any,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[Any]]]:
    """(initializers by name, the node producing each tensor, the nodes consuming each
    tensor) of an onnx.GraphProto, for walking it in both directions."""
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return initializers, producers, consumers


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dfl_match(graph: Any, softmax: Any, producers: dict[str, Any],
               consumers: dict[str, list[Any]], initializers: dict[str, Any]
               ) -> tuple[Any, Any, Any] | None:
    """(transpose, conv, weights [K]) when `softmax` is the middle of a DFL decode."""
    outputs = {o.name for o in graph.output}
    transpose = producers.get(softmax.input[0])
    if (transpose is None or transpose.op_type != "Transpose"
            or list(_attrs(transpose).get("perm", [])) != [0, 2, 1, 3]
            or _attrs(softmax).get("axis") not in (1, -3)
            or len(consumers.get(transpose.output[0], [])) != 1
            or {transpose.output[0], softmax.output[0]} & outputs):
        return None
    after = consumers.get(softmax.output[0], [])
    conv = after[0] if len(after) == 1 else None
    if conv is None or conv.op_type != "Conv" or len(conv.input) != 2:
        return None
    weight = initializers.get(conv.input[1])
    conv_attrs = _attrs(conv)
    if (weight is None or len(weight.dims) != 4 or weight.dims[0] != 1
            or list(weight.dims[2:]) != [1, 1] or conv_attrs.get("group", 1) != 1
            or any(v != 1 for v in conv_attrs.get("strides", [1, 1]))
            or any(v != 0 for v in conv_attrs.get("pads", [0, 0, 0, 0]))
            or conv.output[0] in outputs):
        return None
    # The new result is [B, 4, 1, N] where the conv gave [B, 1, 4, N]: the same values in
    # the same flat order, so it may only feed Reshapes (Ultralytics: -> [B, 4, N]).
    if any(c.op_type != "Reshape" or c.input[0] != conv.output[0]
           for c in consumers.get(conv.output[0], [])):
        return None
    from onnx import numpy_helper

    return transpose, conv, numpy_helper.to_array(weight).reshape(-1)


def rewrite_dfl_softmax(model: Any) -> int:
    """Replace every DFL ``Transpose -> Softmax(axis=1) -> Conv 1x1`` in `model` (an
    onnx.ModelProto, changed in place) by reductions over the bin axis; returns how
    many were replaced (0 for graphs without the pattern, or opset < 13)."""
    from onnx import helper, numpy_helper

    opset = _opset(model)
    if opset < 13:
        return 0
    graph = model.graph
    initializers, producers, consumers = graph_index(graph)
    replaced = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        match = _dfl_match(graph, softmax, producers, consumers, initializers)
        if match is None:
            continue
        transpose, conv, weights = match
        p = f"/dfl_expectation_{replaced}/"
        x = transpose.input[0]  # [B, 4, K, N]: reduce over axis 2 (the K bins)
        graph.initializer.extend([
            numpy_helper.from_array(weights.astype(np.float32).reshape(1, 1, -1, 1), p + "bins"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), p + "axes"),
        ])
        axes_in = [p + "axes"]
        # ReduceMax takes axes as an input from opset 18, ReduceSum from opset 13.
        reduce_max = (helper.make_node("ReduceMax", [x, *axes_in], [p + "max"], keepdims=1,
                                       name=p + "max") if opset >= 18 else
                      helper.make_node("ReduceMax", [x], [p + "max"], axes=[2], keepdims=1,
                                       name=p + "max"))
        new_nodes = [
            reduce_max,
            helper.make_node("Sub", [x, p + "max"], [p + "shifted"], name=p + "shifted"),
            helper.make_node("Exp", [p + "shifted"], [p + "exp"], name=p + "exp"),
            helper.make_node("ReduceSum", [p + "exp", *axes_in], [p + "den"], keepdims=1,
                             name=p + "den"),
            helper.make_node("Mul", [p + "exp", p + "bins"], [p + "weighted"], name=p + "weighted"),
            helper.make_node("ReduceSum", [p + "weighted", *axes_in], [p + "num"], keepdims=1,
                             name=p + "num"),
            helper.make_node("Div", [p + "num", p + "den"], [conv.output[0]], name=p + "div"),
        ]
        at = list(graph.node).index(transpose)
        for node in (transpose, softmax, conv):
            graph.node.remove(node)
        for offset, node in enumerate(new_nodes):
            graph.node.insert(at + offset, node)
        stale = {transpose.output[0], softmax.output[0], conv.output[0]}
        for info in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(info)
        if not any(conv.input[1] in node.input for node in graph.node):
            graph.initializer.remove(initializers.pop(conv.input[1]))
        replaced += 1
    if replaced:
        logger.info("rewrote %d DFL softmax decode(s) as reductions over the bin axis", replaced)
    return replaced

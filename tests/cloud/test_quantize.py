"""`lineguard cloud quantize`: INT8 bundles from a tiny conv detector (fast) and from the
shipped NEU-DET yolo11n (slow, with a real mAP comparison)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cloud.cli import main as cloud_main
from cloud.training.onnx_quant import decode_tail_nodes, output_head_nodes, quantized_op_counts
from cloud.training.quantize import (
    QuantizationError,
    input_range,
    load_calibration_frames,
    quantize_bundle,
)
from models.bundle import Bundle, load_bundle
from models.evaluate import evaluate, read_image
from models.golden import build_bundle, verify_golden
from models.manifest import Lineage, PreprocessSpec
from models.runtime import OnnxDetector
from models.yolo_dataset import YoloDataset, load_data_yaml
from tests.models.onnx_builders import (
    NEU_DET_CLASSES,
    NEU_DET_DATA,
    NEU_DET_IMGSZ,
    NEU_DET_ONNX,
    neu_det_available,
)

CLASSES = ["scratch", "pit", "crack", "stain"]
IMGSZ = 32


def _tiny_detector(path: Path, nc: int = len(CLASSES)) -> Path:
    """A YOLO-shaped detector on [B, 3, 32, 32]: two stride-2 conv+SiLU layers (16, 80
    channels), a box and a class 1x1 conv over the 8x8 grid, decode (sigmoid, boxes in
    input pixels) and the final concat into [B, 4+nc, 64]. Seeded random weights."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:]))
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    def conv_silu(i: int, x: str, out: str) -> list[onnx.NodeProto]:
        return [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}",
                             kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
            helper.make_node("Mul", [f"c{i}", f"s{i}"], [out], name=f"silu{i}"),
        ]

    inits = [weight("w1", 16, 3, 3, 3), weight("w2", 80, 16, 3, 3),
             weight("wbox", 4, 80, 1, 1), weight("wcls", nc, 80, 1, 1),
             numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
             numpy_helper.from_array(np.zeros(80, np.float32), "b2"),
             numpy_helper.from_array(np.array([0, 4, -1], np.int64), "box_shape"),
             numpy_helper.from_array(np.array([0, nc, -1], np.int64), "cls_shape"),
             numpy_helper.from_array(np.array(float(IMGSZ), np.float32), "img_px")]
    nodes = [
        *conv_silu(1, "images", "f1"), *conv_silu(2, "f1", "f2"),
        helper.make_node("Conv", ["f2", "wbox"], ["box_map"], name="box_conv"),
        helper.make_node("Conv", ["f2", "wcls"], ["cls_map"], name="cls_conv"),
        helper.make_node("Reshape", ["box_map", "box_shape"], ["box_raw"], name="box_reshape"),
        helper.make_node("Reshape", ["cls_map", "cls_shape"], ["cls_raw"], name="cls_reshape"),
        helper.make_node("Sigmoid", ["box_raw"], ["box_unit"], name="box_sigmoid"),
        helper.make_node("Mul", ["box_unit", "img_px"], ["boxes_cxcywh"], name="box_scale"),
        helper.make_node("Sigmoid", ["cls_raw"], ["scores"], name="cls_sigmoid"),
        helper.make_node("Concat", ["boxes_cxcywh", "scores"], ["output0"], name="out_concat",
                         axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, IMGSZ, IMGSZ])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 4 + nc, 64])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _frames(count: int, seed: int) -> list[npt.NDArray[np.uint8]]:
    """Smooth random BGR frames of mixed sizes (letterboxed by preprocessing)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        frame = cv2.resize(small, (48 + 8 * (i % 3), 40), interpolation=cv2.INTER_CUBIC)
        frames.append(np.asarray(frame, dtype=np.uint8))
    return frames


def _lineage() -> Lineage:
    return Lineage(dataset_fingerprint="tiny", training_config={"epochs": 1},
                   created_at=datetime(2026, 1, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("tiny")
    return build_bundle(
        root / "fp32", _tiny_detector(root / "tiny.onnx"), name="tiny", version=4,
        label="fp32", classes=CLASSES, input_hw=(IMGSZ, IMGSZ), lineage=_lineage(),
        golden_images=_frames(3, seed=1), providers=["cpu"])


def test_decode_tail_is_everything_after_the_last_heavy_convs(tmp_path: Path) -> None:
    model = onnx.load(str(_tiny_detector(tmp_path / "m.onnx")))
    assert set(decode_tail_nodes(model)) == {
        "box_reshape", "cls_reshape", "box_sigmoid", "box_scale", "cls_sigmoid", "out_concat"}
    # with 4x80-weight 1x1 convs counted as light, they and the SiLU before join the tail
    assert set(decode_tail_nodes(model, heavy_min_weights=400)) == {
        "sig2", "silu2", "box_conv", "cls_conv", "box_reshape", "cls_reshape", "box_sigmoid",
        "box_scale", "cls_sigmoid", "out_concat"}
    assert set(output_head_nodes(model)) == {"out_concat", "box_scale", "cls_sigmoid"}


def test_int8_bundle_loads_verifies_and_points_at_its_parent(
    tiny_bundle: Bundle, tmp_path: Path
) -> None:
    int8 = quantize_bundle(tiny_bundle, tmp_path / "int8", _frames(16, seed=2))
    bundle = load_bundle(tmp_path / "int8")
    m, src = bundle.manifest, tiny_bundle.manifest
    # a variant keeps its source's version (training alone claims versions) and says so
    assert (m.name, m.version, m.label, m.variant) == ("tiny", 4, "fp32-int8", "int8")
    assert '"variant": "int8"' in (tmp_path / "int8" / "manifest.json").read_text()
    assert m.classes == src.classes
    assert (m.preprocess, m.postprocess) == (src.preprocess, src.postprocess)
    assert m.lineage.parent_version == 4
    assert m.lineage.dataset_fingerprint == "tiny"
    cfg = m.lineage.training_config
    assert cfg["epochs"] == 1  # the parent's training config is kept
    assert (cfg["quant_method"], cfg["quant_reduce_range"], cfg["quant_format"]) == (
        "minmax", True, "qdq")
    assert cfg["quant_calibration_frames"] == 16
    assert m.metrics is None  # no eval dataset given
    ops = quantized_op_counts(bundle.model_path)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    report = verify_golden(bundle, OnnxDetector(bundle.model_path, ["cpu"]))
    assert report.images == 3
    assert int8.root == bundle.root
    # the input's range comes from the preprocessing: pixels / 255 are exact in uint8
    graph = onnx.load(str(bundle.model_path)).graph
    q_in = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "images")
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    assert float(consts[q_in.input[1]]) == pytest.approx(1 / 255)
    assert int(consts[q_in.input[2]]) == 0


@pytest.mark.parametrize(("spec", "expected"), [
    (PreprocessSpec(), (0.0, 1.0)),
    (PreprocessSpec(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), (-1.0, 1.0)),
    (PreprocessSpec(scale=1.0, mean=(100.0, 0.0, 50.0), std=(2.0, 1.0, 1.0)), (-50.0, 255.0)),
])
def test_input_range_follows_the_preprocessing(
    spec: PreprocessSpec, expected: tuple[float, float]
) -> None:
    assert input_range(spec) == pytest.approx(expected)


def test_keeping_the_decode_float_keeps_the_scores(tiny_bundle: Bundle, tmp_path: Path) -> None:
    """One scale for boxes (0..32 px) and scores (0..1) ruins the scores; excluding the
    decode keeps them within a few hundredths."""
    frames = _frames(16, seed=2)
    batch = np.stack([np.full((3, IMGSZ, IMGSZ), v, np.float32) for v in (0.2, 0.5, 0.8)])
    reference = OnnxDetector(tiny_bundle.model_path, ["cpu"]).run(batch)
    errors = {}
    for mode in ("decode", "none"):
        bundle = quantize_bundle(tiny_bundle, tmp_path / mode, frames, exclude_head=mode)
        found = OnnxDetector(bundle.model_path, ["cpu"]).run(batch)
        errors[mode] = float(np.abs(found[:, 4:] - reference[:, 4:]).max())
    assert errors["decode"] < 0.05
    assert errors["none"] > 2 * errors["decode"]


def test_bad_calibration_sources_are_named(tmp_path: Path, tiny_bundle: Bundle) -> None:
    with pytest.raises(QuantizationError, match="does not exist"):
        load_calibration_frames(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizationError, match="no images found"):
        load_calibration_frames(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(QuantizationError, match=r"not a data\.yaml or a folder of images"):
        load_calibration_frames(tmp_path / "notes.txt")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [a]\n")
    with pytest.raises(QuantizationError, match=r"data\.yaml"):
        load_calibration_frames(tmp_path / "data.yaml")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "frame.png").write_bytes(b"not a png")
    with pytest.raises(QuantizationError, match=r"frame\.png: OpenCV cannot decode"):
        load_calibration_frames(tmp_path / "broken")
    with pytest.raises(QuantizationError, match="no calibration frames"):
        quantize_bundle(tiny_bundle, tmp_path / "out", [])
    with pytest.raises(QuantizationError, match="exists and is not empty"):
        quantize_bundle(tiny_bundle, tmp_path / "broken", _frames(2, seed=0))


def test_an_int8_variant_is_not_quantized_again(tiny_bundle: Bundle, tmp_path: Path) -> None:
    int8 = quantize_bundle(tiny_bundle, tmp_path / "int8", _frames(4, seed=2))
    with pytest.raises(QuantizationError, match="already an INT8 variant"):
        quantize_bundle(int8, tmp_path / "again", _frames(4, seed=2))


def test_cli_prints_the_comparison_table(
    tiny_bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from linesim import LineConfig, export_yolo

    data = export_yolo(tmp_path / "ds", LineConfig(seed=3, width_px=96, height_px=64),
                       n_train=8, n_val=6)
    rc = cloud_main(["quantize", str(tiny_bundle.root), str(tmp_path / "int8"),
                     "--calib", str(data), "--calib-count", "8", "--eval", str(data),
                     "--label", "int8 test", "--bench-rounds", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "[quantize] 8 calibration frames" in out
    rows = {line.split()[0] + (line.split()[2] if "batch" in line else ""): line
            for line in out.splitlines() if line.startswith(("mAP", "images/s"))}
    assert set(rows) == {"mAP50", "mAP50-95", "images/s1", "images/s8"}
    assert " pt" in rows["mAP50"] and " x" in rows["images/s8"]
    m = load_bundle(tmp_path / "int8").manifest
    assert (m.version, m.variant, m.label, m.lineage.parent_version) == (4, "int8", "int8 test", 4)
    assert "version 4 variant int8 (int8 test)" in out
    assert m.metrics is not None and m.metrics.images == 6

    rc = cloud_main(["quantize", str(tiny_bundle.root), str(tmp_path / "x"),
                     "--calib", str(tmp_path / "missing")])
    assert rc == 2
    assert "error: calibration source" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not neu_det_available(), reason="shared NEU-DET data missing")
def test_neu_det_int8_map_is_close_to_fp32(tmp_path: Path) -> None:
    """yolo11n on NEU-DET: calibrated on 32 train images, measured on 60 val images."""
    val = sorted((NEU_DET_DATA / "images" / "val").glob("*.jpg"))
    src = build_bundle(
        tmp_path / "fp32", NEU_DET_ONNX, name="neu", version=1, label="fp32",
        classes=NEU_DET_CLASSES, input_hw=(NEU_DET_IMGSZ, NEU_DET_IMGSZ), lineage=_lineage(),
        golden_images=[read_image(p) for p in val[::90]], providers=["cpu"])
    listing = tmp_path / "val60.txt"
    listing.write_text("".join(f"{p}\n" for p in val[::6]))
    full = load_data_yaml(NEU_DET_DATA / "data.yaml")
    subset = YoloDataset(root=full.root, names=full.names, sources={"val": [listing]})
    frames = load_calibration_frames(NEU_DET_DATA / "data.yaml", 32)
    int8 = quantize_bundle(src, tmp_path / "int8", frames, eval_dataset=subset)
    assert int8.manifest.metrics is not None and int8.manifest.metrics.images == 60
    fp32 = evaluate(src, subset, "val", providers=["cpu"])
    assert fp32.map50 > 0.5  # a trained model, so the comparison means something
    assert abs(int8.manifest.metrics.map50 - fp32.map50) <= 0.05
    assert quantized_op_counts(int8.model_path).get("QuantizeLinear", 0) > 50
    assert int8.manifest.lineage.training_config["quant_dfl_rewrites"] == 1
    verify_golden(int8, OnnxDetector(int8.model_path, ["cpu"]))

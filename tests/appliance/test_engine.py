"""The engine: loading checks (model IO, golden set), warm-up of every batch size, I/O
binding, fixed-batch models, robust preprocessing, and error translation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from appliance.config import EngineConfig
from appliance.errors import EngineError
from appliance.pipeline.engine import Engine
from appliance.pipeline.judge import Judge
from models.bundle import Bundle
from models.golden import build_bundle
from models.preprocess import Tensor
from models.runtime import OnnxDetector
from tests.appliance.pipeline_helpers import BLACK, RAW_WHITE_DEFECTS, WHITE, tiny_bundle
from tests.models.onnx_builders import build_yolo_raw_model, simple_raw_detections, tiny_lineage


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundles"))


class Recording(OnnxDetector):
    sizes: ClassVar[list[int]] = []

    def run(self, batch: Tensor) -> Tensor:
        type(self).sizes.append(int(batch.shape[0]))
        return super().run(batch)


def recording_engine(max_batch: int, **cfg: object) -> tuple[Engine, type[Recording]]:
    cls = type("Rec", (Recording,), {"sizes": []})

    def factory(path: Path, providers: Sequence[str] | None, intra: int,
                inter: int) -> OnnxDetector:
        return cls(path, providers, intra_op_threads=intra, inter_op_threads=inter)

    config = EngineConfig(**{"intra_op_threads": 1, **cfg})  # type: ignore[arg-type]
    return Engine(config, max_batch=max_batch, factory=factory), cls


def test_load_checks_verifies_and_warms_every_batch_size(bundle: Bundle) -> None:
    engine, cls = recording_engine(5, warmup_runs=2)
    model = engine.load(bundle)
    warm = cls.sizes[-10:]
    assert sorted(warm) == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    info = model.info
    assert info.version_id == "tiny:1" and info.name == "tiny" and info.version == 1
    assert info.providers == ("CPUExecutionProvider",) and not info.io_binding
    assert info.max_batch == 5 and info.input_hw == (64, 64)
    assert info.classes == ("dent", "scratch", "stain")
    assert info.preprocess_hash == bundle.manifest.preprocess.version_hash()
    assert info.load_s > 0
    assert info.as_dict()["version_id"] == "tiny:1"


def test_detect_and_batch_round_trip(bundle: Bundle) -> None:
    engine, _ = recording_engine(2)
    model = engine.load(bundle)
    found = model.detect([WHITE, BLACK, WHITE])  # more frames than max_batch
    assert [len(d) for d in found] == [2, 0, 2]
    verdict, defects = Judge.from_manifest(model.manifest).verdict(found[0])
    assert verdict == "fail"
    assert {(d.class_name, d.box_xyxy) for d in defects} == RAW_WHITE_DEFECTS


def test_io_binding_gives_the_same_output(bundle: Bundle) -> None:
    plain = recording_engine(4, io_binding="off")[0].load(bundle)
    bound = recording_engine(4, io_binding="on")[0].load(bundle)
    assert bound.info.io_binding and not plain.info.io_binding
    for n in (1, 3, 4):
        tensor, _ = plain.preprocess([WHITE] * n)
        np.testing.assert_array_equal(bound.infer(tensor), plain.infer(tensor))
        # a second run reuses the bound input buffer for this size
        np.testing.assert_array_equal(bound.infer(tensor), plain.infer(tensor))


def test_fixed_batch_models_get_padded_batches(tmp_path: Path) -> None:
    boxes, scores = simple_raw_detections(3)
    onnx_path = build_yolo_raw_model(tmp_path / "fixed4.onnx", boxes, scores, batch=4)
    fixed = build_bundle(tmp_path / "bundle", onnx_path, name="fixed", version=3,
                         label="fixed", classes=["dent", "scratch", "stain"],
                         input_hw=(64, 64), lineage=tiny_lineage(),  # type: ignore[arg-type]
                         golden_images=[WHITE], providers=["cpu"])
    engine, cls = recording_engine(8)
    model = engine.load(fixed)
    assert model.max_batch == 4 and model.fixed_batch == 4
    assert set(cls.sizes) == {4}  # every run, warm-up included, is a full batch
    tensor, transforms = model.preprocess([WHITE, BLACK], into_buffer=True)
    output = model.infer(tensor)
    assert output.shape[0] == 2
    assert [len(d) for d in model.postprocess(output, transforms)] == [2, 0]
    assert [len(d) for d in model.detect([BLACK, WHITE, WHITE, WHITE, WHITE])] == [0, 2, 2, 2, 2]


def test_preprocess_robust_isolates_bad_frames(bundle: Bundle) -> None:
    model = recording_engine(4)[0].load(bundle)
    bad = np.zeros((64, 64, 3), dtype=np.float32)
    tensor, transforms, failed = model.preprocess_robust([WHITE, bad, BLACK])  # type: ignore[list-item]
    assert list(failed) == [1] and "uint8" in failed[1]
    assert tensor.shape[0] == 2 and len(transforms) == 2
    assert [len(d) for d in model.postprocess(model.infer(tensor), transforms)] == [2, 0]


def test_a_model_that_does_not_match_its_manifest_is_refused(
    tmp_path: Path, bundle: Bundle
) -> None:
    boxes, scores = simple_raw_detections(4)
    other = build_yolo_raw_model(tmp_path / "four_classes.onnx", boxes, scores)

    def wrong(path: Path, providers: Sequence[str] | None, intra: int,
              inter: int) -> OnnxDetector:
        return OnnxDetector(other, providers, intra_op_threads=intra)

    engine = Engine(EngineConfig(intra_op_threads=1), max_batch=2, factory=wrong)
    with pytest.raises(EngineError, match=r"bundle tiny:1 .*4\+3"):
        engine.load(bundle)


def test_a_golden_set_that_does_not_reproduce_is_refused(
    tmp_path: Path, bundle: Bundle
) -> None:
    boxes, scores = simple_raw_detections(3)
    shifted = build_yolo_raw_model(tmp_path / "shifted.onnx", boxes + 5, scores)

    def drifted(path: Path, providers: Sequence[str] | None, intra: int,
                inter: int) -> OnnxDetector:
        return OnnxDetector(shifted, providers, intra_op_threads=intra)

    engine = Engine(EngineConfig(intra_op_threads=1), max_batch=2, factory=drifted)
    with pytest.raises(EngineError, match="golden image"):
        engine.load(bundle)
    assert engine.load(bundle, verify=False).version_id == "tiny:1"


def test_runtime_failures_become_engine_errors(bundle: Bundle) -> None:
    model = recording_engine(2)[0].load(bundle)
    with pytest.raises(EngineError, match="tiny:1: inference failed"):
        model.infer(np.zeros((1, 3, 32, 32), dtype=np.float32))


def test_unknown_provider_is_an_engine_error(bundle: Bundle) -> None:
    engine = Engine(EngineConfig(providers=["quantum"]), max_batch=1)
    with pytest.raises(EngineError, match="quantum"):
        engine.load(bundle)

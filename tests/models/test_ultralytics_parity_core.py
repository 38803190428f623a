"""Our preprocessing/postprocessing against Ultralytics' own code (no model needed).

- LetterBox + the predictor's tensor conversion: byte-equal to our `preprocess`.
- scale_boxes/clip_boxes: equal to `FrameTransform.to_original`.
- non_max_suppression: the same detections as our decode + NMS on random heads.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.manifest import PostprocessSpec, PreprocessSpec
from models.postprocess import postprocess
from models.preprocess import FrameTransform, preprocess

from .onnx_builders import prepare_ultralytics_env

pytestmark = pytest.mark.ultralytics

SHAPES = [(200, 200), (224, 224), (100, 300), (300, 100), (480, 640), (37, 91), (1080, 1920)]
INPUTS = [(224, 224), (640, 640), (320, 640)]


@pytest.fixture(scope="module")
def ul() -> Any:
    pytest.importorskip("torch")
    prepare_ultralytics_env(Path(tempfile.gettempdir()) / "lineguard-tests-yolo-config")
    ultralytics = pytest.importorskip("ultralytics")
    from ultralytics.data.augment import LetterBox
    from ultralytics.utils import nms, ops

    return ultralytics, LetterBox, ops, nms


@pytest.mark.parametrize("input_hw", INPUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_letterbox_is_byte_equal_to_ultralytics(
    ul: Any, shape: tuple[int, int], input_hw: tuple[int, int]
) -> None:
    import torch

    _, letterbox_cls, _, _ = ul
    h, w = shape
    frame = np.random.default_rng(h * 7919 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    boxed = letterbox_cls(input_hw, auto=False, scaleup=True, center=True, stride=32)(image=frame)
    # What BasePredictor.preprocess does with the letterboxed uint8 image:
    theirs = (
        torch.from_numpy(boxed[None]).permute(0, 3, 1, 2).contiguous().flip(1).float().div_(255)
    ).numpy()[0]
    ours, _ = preprocess(frame, PreprocessSpec(), input_hw)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert ours.tobytes() == theirs.tobytes()
    # and the uint8 image itself, recovered exactly from our tensor
    recovered = np.rint(ours * 255).astype(np.uint8).transpose(1, 2, 0)[:, :, ::-1]
    assert recovered.tobytes() == np.ascontiguousarray(boxed).tobytes()


@pytest.mark.parametrize("shape", SHAPES)
def test_to_original_matches_scale_boxes(ul: Any, shape: tuple[int, int]) -> None:
    import torch

    _, _, ops, _ = ul
    h, w = shape
    rng = np.random.default_rng(w)
    xy = rng.uniform(-20, 240, (50, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 120, (50, 2)).astype(np.float32)], axis=1)
    _, transform = preprocess(np.zeros((h, w, 3), np.uint8), PreprocessSpec(), (224, 224))
    theirs = ops.scale_boxes((224, 224), torch.from_numpy(boxes.copy()), (h, w)).numpy()
    np.testing.assert_allclose(transform.to_original(boxes), theirs, rtol=1e-6, atol=1e-4)


def random_head(seed: int, nc: int, n: int) -> np.ndarray:
    """A [1, 4+nc, n] raw head with clustered boxes so NMS has work to do."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 200, (8, 2))
    pick = rng.integers(0, 8, n)
    cxcy = centres[pick] + rng.normal(0, 4, (n, 2))
    wh = rng.uniform(10, 60, (n, 2))
    scores = rng.uniform(0, 1, (n, nc)) ** 3
    return np.concatenate([cxcy, wh, scores], axis=1).T[None].astype(np.float32)


@pytest.mark.parametrize(
    ("seed", "nc", "n", "conf", "iou", "agnostic", "max_det"),
    [
        (0, 6, 2000, 0.25, 0.7, False, 300),
        (1, 6, 2000, 0.25, 0.45, False, 300),
        (2, 6, 2000, 0.25, 0.7, True, 300),
        (3, 1, 500, 0.1, 0.5, False, 300),
        (4, 80, 1500, 0.001, 0.7, False, 300),  # validation-style conf, hits max_det
        (5, 6, 3000, 0.05, 0.6, False, 20),
    ],
)
def test_decode_and_nms_match_non_max_suppression(
    ul: Any, seed: int, nc: int, n: int, conf: float, iou: float, agnostic: bool, max_det: int
) -> None:
    import torch

    _, _, _, nms_mod = ul
    head = random_head(seed, nc, n)
    theirs = nms_mod.non_max_suppression(
        torch.from_numpy(head.copy()), conf, iou, agnostic=agnostic, max_det=max_det
    )[0].numpy()
    spec = PostprocessSpec(
        score_threshold=conf, iou_threshold=iou, agnostic=agnostic, max_detections=max_det
    )
    identity = FrameTransform((100_000, 100_000), (0, 0), (1.0, 1.0), (0.0, 0.0))
    ours = postprocess(head, spec, "yolo_raw", [f"c{i}" for i in range(nc)], [identity])[0]
    assert len(ours) == len(theirs)
    # their NMS output is not clipped yet (scale_boxes does that); ours is mapped+clipped
    np.testing.assert_allclose(ours.boxes_xyxy, np.clip(theirs[:, :4], 0, 100_000), atol=1e-4)
    np.testing.assert_allclose(ours.scores, theirs[:, 4], atol=1e-6)
    np.testing.assert_array_equal(ours.class_ids, theirs[:, 5].astype(np.int64))

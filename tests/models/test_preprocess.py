"""Preprocessing: letterbox geometry, FrameTransform, every spec knob, batch buffers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.errors import ModelError
from models.manifest import PreprocessSpec
from models.preprocess import (
    FrameTransform,
    letterbox_geometry,
    preprocess,
    preprocess_batch,
    tensor_sha256,
)

DEFAULT = PreprocessSpec()


def random_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# src_hw, dst_hw, mode, resized_wh, pad_ltrb
GEOMETRY = [
    ((200, 200), (224, 224), "letterbox", (224, 224), (0, 0, 0, 0)),  # upscale, square
    ((480, 640), (640, 640), "letterbox", (640, 480), (0, 80, 0, 80)),
    ((100, 300), (224, 224), "letterbox", (224, 75), (0, 74, 0, 75)),  # odd pad: more after
    ((300, 100), (224, 224), "letterbox", (75, 224), (74, 0, 75, 0)),
    ((37, 91), (64, 64), "letterbox", (64, 26), (0, 19, 0, 19)),
    ((1, 500), (64, 64), "letterbox", (64, 1), (0, 31, 0, 32)),  # thin: at least 1 px
    ((2, 4), (3, 3), "letterbox", (3, 2), (0, 0, 0, 1)),  # round(1.5) == 2 (half-even)
    ((64, 48), (32, 64), "letterbox", (24, 32), (20, 0, 20, 0)),  # downscale, wide input
    ((10, 10), (15, 15), "letterbox", (15, 15), (0, 0, 0, 0)),
    ((100, 300), (224, 224), "stretch", (224, 224), (0, 0, 0, 0)),
]


@pytest.mark.parametrize(("src", "dst", "mode", "resized", "pad"), GEOMETRY)
def test_letterbox_geometry(
    src: tuple[int, int],
    dst: tuple[int, int],
    mode: str,
    resized: tuple[int, int],
    pad: tuple[int, int, int, int],
) -> None:
    geo = letterbox_geometry(src, dst, mode)
    assert geo.resized_wh == resized
    assert geo.pad_ltrb == pad
    left, top, right, bottom = geo.pad_ltrb
    assert (resized[0] + left + right, resized[1] + top + bottom) == (dst[1], dst[0])
    assert geo.scale_xy == (resized[0] / src[1], resized[1] / src[0])


def test_letterbox_geometry_rejects_empty_sizes() -> None:
    with pytest.raises(ModelError, match="empty size"):
        letterbox_geometry((0, 10), (64, 64))


# transform, boxes_in (input pixels), expected (original pixels)
TO_ORIGINAL = [
    (
        FrameTransform((64, 64), (0, 0), (1.0, 1.0), (0.0, 0.0)),
        [[10, 10, 30, 30]],
        [[10, 10, 30, 30]],
    ),
    (
        FrameTransform((48, 64), (0, 0), (1.0, 1.0), (0.0, 8.0)),
        [[10, 10, 30, 30]],
        [[10, 2, 30, 22]],
    ),
    (
        FrameTransform((32, 32), (0, 0), (2.0, 2.0), (0.0, 0.0)),
        [[10, 10, 30, 30]],
        [[5, 5, 15, 15]],
    ),
    (FrameTransform((48, 64), (0, 0), (1.0, 1.0), (0.0, 8.0)), [[-5, 4, 70, 60]], [[0, 0, 64, 48]]),
    (  # ROI: offset and clipped to the ROI, not the frame
        FrameTransform((100, 200), (50, 20), (1.0, 1.0), (0.0, 0.0), roi_hw=(40, 60)),
        [[10, 10, 30, 30], [-5, -5, 70, 50]],
        [[60, 30, 80, 50], [50, 20, 110, 60]],
    ),
    (  # anisotropic stretch 300x100 -> 224x224
        FrameTransform((100, 300), (0, 0), (224 / 300, 2.24), (0.0, 0.0)),
        [[0, 0, 224, 224], [112, 112, 224, 224]],
        [[0, 0, 300, 100], [150, 50, 300, 100]],
    ),
]


@pytest.mark.parametrize(("transform", "boxes", "expected"), TO_ORIGINAL)
def test_frame_transform_to_original(
    transform: FrameTransform, boxes: list[list[float]], expected: list[list[float]]
) -> None:
    out = transform.to_original(np.asarray(boxes, dtype=np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np.asarray(expected, dtype=np.float32), atol=1e-4)


def test_to_original_empty() -> None:
    transform = FrameTransform((10, 10), (0, 0), (1.0, 1.0), (0.0, 0.0))
    assert transform.to_original(np.zeros((0, 4), np.float32)).shape == (0, 4)


@pytest.mark.parametrize("shape", [(200, 200), (100, 300), (300, 100), (37, 91), (480, 640)])
def test_transform_maps_the_letterboxed_image_back_onto_the_frame(shape: tuple[int, int]) -> None:
    h, w = shape
    _, transform = preprocess(random_frame(h, w), DEFAULT, (224, 224))
    geo = letterbox_geometry(shape, (224, 224))
    left, top, _, _ = geo.pad_ltrb
    new_w, new_h = geo.resized_wh
    whole = np.array([[left, top, left + new_w, top + new_h]], np.float32)
    np.testing.assert_allclose(transform.to_original(whole), [[0, 0, w, h]], atol=1e-3)


def test_default_spec_matches_manual_letterbox() -> None:
    frame = random_frame(100, 300)
    tensor, transform = preprocess(frame, DEFAULT, (224, 224))
    resized = cv2.resize(frame, (224, 75), interpolation=cv2.INTER_LINEAR)
    padded = cv2.copyMakeBorder(resized, 74, 75, 0, 0, cv2.BORDER_CONSTANT, value=(114, 114, 114))
    expected = padded[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    assert tensor.dtype == np.float32 and tensor.shape == (3, 224, 224)
    assert tensor.tobytes() == np.ascontiguousarray(expected).tobytes()
    assert transform.pad_xy == (0.0, 74.0)
    assert transform.orig_hw == (100, 300)


def test_grey_frames_equal_replicated_bgr() -> None:
    grey = random_frame(50, 70)[:, :, 0]
    bgr = np.repeat(grey[:, :, None], 3, axis=2)
    a, _ = preprocess(grey, DEFAULT, (64, 64))
    b, _ = preprocess(grey[:, :, None], DEFAULT, (64, 64))
    c, _ = preprocess(bgr, DEFAULT, (64, 64))
    assert a.tobytes() == b.tobytes() == c.tobytes()


def test_colour_order_layout_dtype_and_normalisation() -> None:
    frame = random_frame(64, 64)
    rgb, _ = preprocess(frame, DEFAULT, (64, 64))
    bgr, _ = preprocess(frame, PreprocessSpec(color_order="bgr"), (64, 64))
    np.testing.assert_array_equal(rgb, bgr[::-1])
    np.testing.assert_array_equal(rgb[0], frame[:, :, 2] / np.float32(255))
    nhwc, _ = preprocess(frame, PreprocessSpec(layout="nhwc"), (64, 64))
    np.testing.assert_array_equal(nhwc, rgb.transpose(1, 2, 0))
    half, _ = preprocess(frame, PreprocessSpec(dtype="float16"), (64, 64))
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, rgb.astype(np.float16))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    norm, _ = preprocess(frame, PreprocessSpec(mean=mean, std=std), (64, 64))
    mean_a = np.asarray(mean, np.float32).reshape(3, 1, 1)
    expected = (rgb - mean_a) / np.asarray(std, np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(norm, expected, rtol=1e-6)
    scaled, _ = preprocess(frame, PreprocessSpec(scale=1.0), (64, 64))
    np.testing.assert_array_equal(scaled, rgb * 255)


def test_padding_value_and_resize_modes() -> None:
    frame = random_frame(32, 64)
    tensor, _ = preprocess(frame, DEFAULT, (64, 64))
    assert np.all(tensor[:, :16, :] == np.float32(114) / np.float32(255))
    black, _ = preprocess(frame, PreprocessSpec(pad_value=0), (64, 64))
    assert np.all(black[:, :16, :] == 0)
    stretched, transform = preprocess(frame, PreprocessSpec(resize="stretch"), (64, 64))
    assert transform.pad_xy == (0.0, 0.0) and transform.scale_xy == (1.0, 2.0)
    assert not np.all(stretched[:, :16, :] == tensor[:, :16, :])


def test_interpolation_is_honoured() -> None:
    frame = random_frame(20, 20)
    linear, _ = preprocess(frame, DEFAULT, (64, 64))
    nearest, _ = preprocess(frame, PreprocessSpec(interpolation="nearest"), (64, 64))
    assert linear.tobytes() != nearest.tobytes()
    expected = cv2.resize(frame, (64, 64), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(nearest[0], expected[:, :, 2] / np.float32(255))


def test_roi_crops_first_and_transform_maps_back() -> None:
    frame = random_frame(120, 200)
    spec = PreprocessSpec(roi_xywh=(50, 20, 60, 40))
    tensor, transform = preprocess(frame, spec, (64, 64))
    direct, _ = preprocess(np.ascontiguousarray(frame[20:60, 50:110]), DEFAULT, (64, 64))
    assert tensor.tobytes() == direct.tobytes()
    assert transform.roi_xy == (50, 20) and transform.roi_hw == (40, 60)
    assert transform.orig_hw == (120, 200)
    whole_roi = np.array([[0, 0, 64, 64]], np.float32)  # beyond the letterboxed area
    np.testing.assert_allclose(transform.to_original(whole_roi), [[50, 20, 110, 60]])


@pytest.mark.parametrize(
    ("frame", "spec", "message"),
    [
        (random_frame(30, 30), PreprocessSpec(roi_xywh=(10, 10, 30, 5)), "outside the 30x30"),
        (random_frame(30, 30), PreprocessSpec(undistort_calibration="ab" * 32),
         "no camera calibration was given"),
        (np.zeros((30, 30, 3), np.float32), DEFAULT, "uint8"),
        (np.zeros((30, 30, 4), np.uint8), DEFAULT, "shape"),
        (np.zeros((0, 30, 3), np.uint8), DEFAULT, "empty"),
        (np.zeros((30,), np.uint8), DEFAULT, "shape"),
    ],
)
def test_bad_frames_and_specs_raise_model_error(
    frame: np.ndarray, spec: PreprocessSpec, message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        preprocess(frame, spec, (64, 64))


def test_batch_equals_singles_and_reuses_out_buffer() -> None:
    frames = [random_frame(48, 64, 1), random_frame(64, 48, 2), random_frame(10, 90, 3)]
    batch, transforms = preprocess_batch(frames, DEFAULT, (64, 64))
    assert batch.shape == (3, 3, 64, 64)
    for i, frame in enumerate(frames):
        single, transform = preprocess(frame, DEFAULT, (64, 64))
        assert batch[i].tobytes() == single.tobytes()
        assert transforms[i] == transform
    out = np.empty((8, 3, 64, 64), np.float32)
    view, _ = preprocess_batch(frames, DEFAULT, (64, 64), out=out)
    assert view.shape == (3, 3, 64, 64) and np.shares_memory(view, out)
    assert view.tobytes() == batch.tobytes()


@pytest.mark.parametrize(
    "out",
    [
        np.empty((2, 3, 64, 64), np.float32),  # too few rows
        np.empty((4, 3, 64, 64), np.float16),  # dtype
        np.empty((4, 64, 64, 3), np.float32),  # layout
        np.empty((4, 3, 64, 128), np.float32)[:, :, :, ::2],  # not contiguous
    ],
)
def test_batch_rejects_unusable_out(out: np.ndarray) -> None:
    frames = [random_frame(8, 8)] * 3
    with pytest.raises(ModelError, match="out"):
        preprocess_batch(frames, DEFAULT, (64, 64), out=out)


def test_batch_rejects_no_frames() -> None:
    with pytest.raises(ModelError, match="no frames"):
        preprocess_batch([], DEFAULT, (64, 64))


def test_tensor_sha256() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert tensor_sha256(a) == tensor_sha256(np.asfortranarray(a))
    assert tensor_sha256(a) != tensor_sha256(a.reshape(4, 3))
    assert tensor_sha256(a) != tensor_sha256(a.astype(np.float16))
    b = a.copy()
    b[0, 0] = np.nextafter(np.float32(0), np.float32(1))
    assert tensor_sha256(a) != tensor_sha256(b)

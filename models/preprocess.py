"""The one implementation of a `PreprocessSpec`: BGR uint8 frames -> model input tensor.

The appliance, the cloud's validation, golden sets and benchmarks all call these
functions, so a model sees exactly the same tensor wherever it runs. With the
default spec the result is byte-identical to Ultralytics' ``YOLO(...).predict()``
preprocessing for a fixed input size: ``LetterBox(new_shape, auto=False,
scaleup=True, center=True)`` (round-half-even sizes, ``round(d -/+ 0.1)`` padding,
``cv2.INTER_LINEAR``, pad 114), then BGR->RGB, ``float32 / 255``, HWC->CHW.

Pure numpy/OpenCV; no IO.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from models.errors import ModelError
from models.manifest import PreprocessSpec, check_input_tensor_bytes
from models.undistort import Undistorter

__all__ = [
    "FrameTransform",
    "LetterboxGeometry",
    "Tensor",
    "letterbox_geometry",
    "preprocess",
    "preprocess_batch",
    "tensor_sha256",
]

# A float32/float16 model-input or model-output array.
Tensor = npt.NDArray[np.floating[Any]]

_INTERPOLATION = {
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "area": cv2.INTER_AREA,
    "cubic": cv2.INTER_CUBIC,
}
_DTYPES: dict[str, type[np.floating[Any]]] = {
    "float32": np.float32,
    "float16": np.float16,
}


@dataclass(frozen=True)
class FrameTransform:
    """Maps model-input pixels back to original-frame pixels for one frame.

    ``x_orig = (x_input - pad_x) / scale_x + roi_x`` (likewise y); results are clipped
    to the region the model saw: the ROI when one was cropped (`roi_hw`), else the
    whole frame `orig_hw`. All values in pixels; `orig_hw` and `roi_hw` are (h, w).
    """

    orig_hw: tuple[int, int]
    roi_xy: tuple[int, int]
    scale_xy: tuple[float, float]
    pad_xy: tuple[float, float]
    roi_hw: tuple[int, int] | None = None

    def to_original(self, boxes_xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Map [K, 4] xyxy boxes in input pixels to original-frame pixels ([K, 4] float32).

        Same arithmetic as Ultralytics' ``scale_boxes`` + ``clip_boxes`` (subtract
        padding, divide by gain, clip to [0, w] x [0, h]), done in float32.
        """
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        pad_x, pad_y = self.pad_xy
        scale_x, scale_y = self.scale_xy
        pad = np.array([pad_x, pad_y, pad_x, pad_y], dtype=np.float32)
        gain = np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
        out = (boxes - pad) / gain
        h, w = self.roi_hw if self.roi_hw is not None else self.orig_hw
        np.clip(out[:, 0::2], 0.0, float(w), out=out[:, 0::2])
        np.clip(out[:, 1::2], 0.0, float(h), out=out[:, 1::2])
        roi_x, roi_y = self.roi_xy
        if roi_x or roi_y:
            out += np.array([roi_x, roi_y, roi_x, roi_y], dtype=np.float32)
        return out


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where a (src_h, src_w) image lands inside a (dst_h, dst_w) input, in pixels."""

    resized_wh: tuple[int, int]  # size after resize, before padding
    pad_ltrb: tuple[int, int, int, int]  # left, top, right, bottom padding
    scale_xy: tuple[float, float]  # resized / source, per axis


def letterbox_geometry(
    src_hw: tuple[int, int], dst_hw: tuple[int, int], resize: str = "letterbox"
) -> LetterboxGeometry:
    """Ultralytics' LetterBox arithmetic (auto=False, scaleup=True, center=True).

    ``r = min(dst_h/src_h, dst_w/src_w)``; resized = ``(max(round(w*r),1),
    max(round(h*r),1))``; padding split ``round(d/2 - 0.1)`` before and
    ``round(d/2 + 0.1)`` after. ``resize="stretch"`` resizes to dst exactly (no pad).
    The per-axis scale is resized/src, which is what Ultralytics' ``scale_boxes``
    divides by. Raises ModelError for empty sizes or an unknown mode.
    """
    src_h, src_w = src_hw
    dst_h, dst_w = dst_hw
    if min(src_h, src_w, dst_h, dst_w) <= 0:
        raise ModelError(f"letterbox: empty size (source {src_hw}, input {dst_hw})")
    if resize == "stretch":
        return LetterboxGeometry((dst_w, dst_h), (0, 0, 0, 0), (dst_w / src_w, dst_h / src_h))
    if resize != "letterbox":
        raise ModelError(f"letterbox: unknown resize mode {resize!r}")
    r = min(dst_h / src_h, dst_w / src_w)
    new_w, new_h = max(round(src_w * r), 1), max(round(src_h * r), 1)
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return LetterboxGeometry(
        (new_w, new_h), (left, top, right, bottom), (new_w / src_w, new_h / src_h)
    )


def _as_bgr(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """Validate a frame and return it as (H, W, 3) uint8 (grey is replicated)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ModelError(f"frame must be a uint8 numpy array, got {kind}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ModelError(f"frame must be (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ModelError(f"frame is empty: shape {image.shape}")
    return image


def _undistort(
    image: npt.NDArray[np.uint8], spec: PreprocessSpec, undistort: Undistorter | None
) -> npt.NDArray[np.uint8]:
    """The whole frame undistorted with the calibration the spec names (unchanged when
    it names none). Raises ModelError when `undistort` is missing or another camera's."""
    wanted = spec.undistort_calibration
    if wanted is None:
        return image
    if undistort is None:
        raise ModelError(
            f"preprocess.undistort_calibration names camera calibration {wanted[:16]}.. but "
            "no camera calibration was given to undistort with"
        )
    if undistort.calibration_hash != wanted:
        raise ModelError(
            f"preprocess.undistort_calibration names camera calibration {wanted[:16]}.. but "
            f"frames come with calibration {undistort.calibration_hash[:16]}.."
        )
    return undistort.apply(image)


def _crop(
    image: npt.NDArray[np.uint8], spec: PreprocessSpec
) -> tuple[npt.NDArray[np.uint8], tuple[int, int], tuple[int, int] | None]:
    if spec.roi_xywh is None:
        return image, (0, 0), None
    x, y, w, h = spec.roi_xywh
    frame_h, frame_w = image.shape[:2]
    if x + w > frame_w or y + h > frame_h:
        raise ModelError(
            f"preprocess.roi_xywh {spec.roi_xywh} lies outside the {frame_w}x{frame_h} frame"
        )
    return image[y : y + h, x : x + w], (x, y), (h, w)


def _divisor(scale: float) -> float | None:
    """1/scale when it is an integer (e.g. 255): x / 255 is what Ultralytics computes
    and differs from x * float32(1/255) in the last bit for about half of 0..255."""
    inverse = 1.0 / scale
    nearest = round(inverse)
    if nearest >= 1 and abs(inverse - nearest) <= 1e-9 * inverse:
        return float(nearest)
    return None


def _normalise_into(
    src_hwc: npt.NDArray[np.uint8],
    dst: Tensor,
    spec: PreprocessSpec,
) -> None:
    """Write ``((src[colour order] * scale) - mean) / std`` into `dst` (CHW or HWC view)."""
    if spec.layout == "nchw" and dst.dtype == np.float32:
        _normalise_planes_into(src_hwc, dst, spec)
        return
    view = src_hwc[:, :, ::-1] if spec.color_order == "rgb" else src_hwc
    chw = spec.layout == "nchw"
    if chw:
        view = view.transpose(2, 0, 1)
    work = dst if dst.dtype == np.float32 else np.empty(dst.shape, dtype=np.float32)
    divisor = _divisor(spec.scale)
    if divisor is not None:
        np.divide(view, np.float32(divisor), out=work, dtype=np.float32)
    else:
        np.multiply(view, np.float32(spec.scale), out=work, dtype=np.float32)
    shape = (3, 1, 1) if chw else (1, 1, 3)
    if any(spec.mean):
        work -= np.asarray(spec.mean, dtype=np.float32).reshape(shape)
    if any(s != 1.0 for s in spec.std):
        work /= np.asarray(spec.std, dtype=np.float32).reshape(shape)
    if work is not dst:
        dst[...] = work


def _normalise_planes_into(
    src_hwc: npt.NDArray[np.uint8], dst: Tensor, spec: PreprocessSpec
) -> None:
    """`_normalise_into` for float32 CHW, plane by plane: OpenCV splits the interleaved
    frame into contiguous planes (SIMD), so numpy's cast-and-divide runs on contiguous
    memory. The arithmetic per element is the same (uint8 -> float32, then the same
    float32 operations in the same order), so the bytes are identical."""
    planes = cv2.split(np.ascontiguousarray(src_hwc))
    order = (2, 1, 0) if spec.color_order == "rgb" else (0, 1, 2)
    divisor = _divisor(spec.scale)
    subtract = any(spec.mean)
    divide_std = any(s != 1.0 for s in spec.std)
    for c, source in enumerate(order):
        out = dst[c]
        if divisor is not None:
            np.divide(planes[source], np.float32(divisor), out=out, dtype=np.float32)
        else:
            np.multiply(planes[source], np.float32(spec.scale), out=out, dtype=np.float32)
        if subtract:
            out -= np.float32(spec.mean[c])
        if divide_std:
            out /= np.float32(spec.std[c])


def _tensor_shape(spec: PreprocessSpec, input_hw: tuple[int, int]) -> tuple[int, int, int]:
    h, w = input_hw
    return (3, h, w) if spec.layout == "nchw" else (h, w, 3)


def _fill_bands(dst: Tensor, value: Tensor, geo: LetterboxGeometry, chw: bool) -> None:
    """Fill the padding around the resized image (not the image area: it is written
    next) with `value`."""
    left, top, right, bottom = geo.pad_ltrb
    new_w, new_h = geo.resized_wh
    rows = dst if chw else dst.transpose(2, 0, 1)  # [3, H, W] view either way
    fill = value.reshape(3, 1, 1)
    if top:
        rows[:, :top, :] = fill
    if bottom:
        rows[:, top + new_h :, :] = fill
    if left:
        rows[:, top : top + new_h, :left] = fill
    if right:
        rows[:, top : top + new_h, left + new_w :] = fill


def _preprocess_into(
    image_bgr: npt.NDArray[np.uint8],
    spec: PreprocessSpec,
    input_hw: tuple[int, int],
    dst: Tensor,
    undistort: Undistorter | None = None,
) -> FrameTransform:
    image = _undistort(_as_bgr(image_bgr), spec, undistort)
    orig_hw = (int(image.shape[0]), int(image.shape[1]))
    crop, roi_xy, roi_hw = _crop(image, spec)
    src_hw = (int(crop.shape[0]), int(crop.shape[1]))
    geo = letterbox_geometry(src_hw, input_hw, spec.resize)
    if (src_hw[1], src_hw[0]) != geo.resized_wh:
        crop = np.asarray(
            cv2.resize(crop, geo.resized_wh, interpolation=_INTERPOLATION[spec.interpolation]),
            dtype=np.uint8,
        )
    left, top, right, bottom = geo.pad_ltrb
    if left or top or right or bottom:
        # Same pixels as copyMakeBorder; the pad colour goes through the same
        # arithmetic as the image, so a padded pixel equals a 114-grey image pixel.
        pad = np.full((1, 1, 3), spec.pad_value, dtype=np.uint8)
        pad_value = np.empty((3, 1, 1) if spec.layout == "nchw" else (1, 1, 3), dtype=dst.dtype)
        _normalise_into(pad, pad_value, spec)
        _fill_bands(dst, pad_value, geo, spec.layout == "nchw")
    new_w, new_h = geo.resized_wh
    inner = (
        dst[:, top : top + new_h, left : left + new_w]
        if spec.layout == "nchw"
        else dst[top : top + new_h, left : left + new_w, :]
    )
    _normalise_into(crop, inner, spec)
    return FrameTransform(
        orig_hw=orig_hw,
        roi_xy=roi_xy,
        scale_xy=geo.scale_xy,
        pad_xy=(float(left), float(top)),
        roi_hw=roi_hw,
    )


def preprocess(
    image_bgr: npt.NDArray[np.uint8],
    spec: PreprocessSpec,
    input_hw: tuple[int, int],
    undistort: Undistorter | None = None,
) -> tuple[Tensor, FrameTransform]:
    """Preprocess one BGR frame into a CHW (or HWC) array of `spec.dtype`, no batch dim.

    `image_bgr`: (H, W, 3) BGR, or grey (H, W) / (H, W, 1), uint8. `input_hw`: the
    model's input (height, width) in pixels. `undistort`: the camera's `Undistorter`,
    needed (and checked) when the spec names a calibration; boxes mapped back by the
    returned transform are then in undistorted-frame pixels. Raises ModelError for a
    bad frame, an ROI outside the frame, a missing or different calibration;
    ManifestError (a ModelError) for a tensor over `MAX_INPUT_TENSOR_BYTES`, before
    allocating it.
    """
    shape = _tensor_shape(spec, input_hw)
    check_input_tensor_bytes(shape, np.dtype(_DTYPES[spec.dtype]).itemsize, "preprocess")
    dst = np.empty(shape, dtype=_DTYPES[spec.dtype])
    transform = _preprocess_into(image_bgr, spec, input_hw, dst, undistort)
    return dst, transform


def preprocess_batch(
    images_bgr: Sequence[npt.NDArray[np.uint8]],
    spec: PreprocessSpec,
    input_hw: tuple[int, int],
    out: Tensor | None = None,
    undistort: Undistorter | None = None,
) -> tuple[Tensor, list[FrameTransform]]:
    """Preprocess frames into one NCHW (or NHWC) batch of `spec.dtype`; `undistort` as
    in `preprocess`.

    `out`, if given, is a preallocated C-contiguous array of shape [M, ...] with
    M >= len(images_bgr) and the right per-image shape and dtype; the result is the
    view ``out[:len(images_bgr)]`` (no allocation per batch). Raises ModelError for a
    bad frame or a mismatching `out`.
    """
    if not images_bgr:
        raise ModelError("preprocess_batch: no frames")
    n = len(images_bgr)
    shape = _tensor_shape(spec, input_hw)
    dtype = _DTYPES[spec.dtype]
    if out is None:
        check_input_tensor_bytes((n, *shape), np.dtype(dtype).itemsize, "preprocess_batch")
        batch = np.empty((n, *shape), dtype=dtype)
    else:
        if out.dtype != dtype or tuple(out.shape[1:]) != shape or out.shape[0] < n:
            raise ModelError(
                f"preprocess_batch: out has shape {out.shape} {out.dtype}, need "
                f"[>={n}, {', '.join(map(str, shape))}] {spec.dtype}"
            )
        if not out.flags.c_contiguous:
            raise ModelError("preprocess_batch: out must be C-contiguous")
        batch = out[:n]
    transforms = [
        _preprocess_into(image, spec, input_hw, batch[i], undistort)
        for i, image in enumerate(images_bgr)
    ]
    return batch, transforms


def tensor_sha256(tensor: npt.NDArray[np.generic]) -> str:
    """sha256 hex of a tensor's dtype, shape and C-order bytes (any layout in memory)."""
    array = np.ascontiguousarray(tensor)
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}{tuple(array.shape)}".encode("ascii"))
    digest.update(array.tobytes())
    return digest.hexdigest()

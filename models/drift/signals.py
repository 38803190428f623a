"""Per-frame drift signals: cheap image statistics and a small fixed embedding.

Pure functions over numpy arrays, shared by the appliance (every inspected frame), the
bundle builder (the reference from training and validation frames) and the benchmark,
so the three can never compute a signal two ways.

A frame is first brought to `work_width_px` wide (INTER_AREA); then, for the inspected
region (`roi`) and a fixed background region (`bg`): the grey mean (luma), two chroma
means (R - G, B - G: exactly zero for a grey camera, so a colour cast stands out), the
log grey spread (a contrast change moves it by the same amount on every image), the 5th
and 95th grey percentiles (a contrast change pulls them together; clipped-pixel
fractions were tried and dropped: few frames have any, so a window's mean jumps with a
handful of frames) and sharpness (log variance of the Laplacian); for the inspected
region also an 8-bin grey histogram, two structure-tensor orientation terms (rotation,
anisotropy) and an 8-dimensional fixed random projection of an 8 x 8 grey thumbnail
(the embedding); and the sharpness of the frame's outer border band (`edge.sharpness`:
a camera that moves or turns changes what the frame's edges show). `SIGNAL_NAMES` names
every entry of the vector; `SIGNALS_VERSION` changes whenever a signal's definition
does (a reference is only comparable with signals of its own version).

The detector-output channel (detections per frame, score statistics, per-class counts)
is kept apart in `output_signals`: a real change in the defect rate is not image drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

SIGNALS_VERSION: Final = "lineguard.drift-signals/2"
HIST_BINS: Final = 8
THUMB_PX: Final = 8
EMBED_DIMS: Final = 8
EMBED_SEED: Final = 20260101
# Detection boxes covering more of a region than this are not left out of it (too
# little would be left to compare).
MAX_EXCLUDED: Final = 0.6

# Width of the border band, as a fraction of the frame's shorter side.
EDGE_FRAC: Final = 0.03
_REGION_STATS: Final = ("luma", "chroma_rg", "chroma_bg", "log_std", "p05", "p95", "sharpness")
SIGNAL_NAMES: Final[tuple[str, ...]] = (
    *(f"roi.{s}" for s in _REGION_STATS),
    *(f"roi.hist{i}" for i in range(HIST_BINS)),
    "roi.orient_c",
    "roi.orient_s",
    *(f"bg.{s}" for s in _REGION_STATS),
    *(f"emb{i}" for i in range(EMBED_DIMS)),
    "edge.sharpness",
)
N_SIGNALS: Final = len(SIGNAL_NAMES)

OUTPUT_NAMES_FIXED: Final = ("detections", "score_mean", "score_max")

FracBox = tuple[float, float, float, float]


class SignalError(ValueError):
    """A frame or region that signals cannot be computed from (named in the message)."""


@dataclass(frozen=True)
class SignalSpec:
    """Where the signals look: regions as fractions (x1, y1, x2, y2) of the frame, and
    the working width the frame is resized to first."""

    roi_frac: FracBox = (0.15, 0.15, 0.85, 0.85)
    background_frac: FracBox = (0.0, 0.0, 1.0, 0.1)
    work_width_px: int = 320

    def __post_init__(self) -> None:
        for name, box in (("roi_frac", self.roi_frac), ("background_frac", self.background_frac)):
            x1, y1, x2, y2 = box
            if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
                raise SignalError(f"{name} {box} must satisfy 0 <= x1 < x2 <= 1, 0 <= y1 < y2 <= 1")
        if not 32 <= self.work_width_px <= 4096:
            raise SignalError(f"work_width_px {self.work_width_px} must be within 32..4096")


def embedding_projection() -> F32:
    """The fixed random projection [THUMB_PX**2, EMBED_DIMS] (same on every machine)."""
    rng = np.random.default_rng(EMBED_SEED)
    m = rng.standard_normal((THUMB_PX * THUMB_PX, EMBED_DIMS)) / np.sqrt(THUMB_PX * THUMB_PX)
    return np.asarray(m, np.float32)


_PROJECTION: Final = embedding_projection()


def _bounds(shape: tuple[int, ...], box: FracBox) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    x1, y1 = int(box[0] * w), int(box[1] * h)
    x2, y2 = max(x1 + 4, round(box[2] * w)), max(y1 + 4, round(box[3] * h))
    return x1, y1, min(x2, w), min(y2, h)


def _keep_mask(bounds: tuple[int, int, int, int], boxes: npt.NDArray[np.float64]
               ) -> U8 | None:
    """Pixels of a region outside every box (None: keep all). Boxes covering more than
    MAX_EXCLUDED of the region are ignored (too little would be left to compare)."""
    if len(boxes) == 0:
        return None
    x1, y1, x2, y2 = bounds
    keep = np.ones((y2 - y1, x2 - x1), np.uint8)
    for bx1, by1, bx2, by2 in boxes:
        # A defect's halo (shadow, blur, a raised rim) reaches past its box: widen it.
        mx, my = 2.0 + 0.15 * (bx2 - bx1), 2.0 + 0.15 * (by2 - by1)
        bx1, by1, bx2, by2 = bx1 - mx, by1 - my, bx2 + mx, by2 + my
        a, b = max(int(bx1) - x1, 0), max(int(by1) - y1, 0)
        c, d = min(int(np.ceil(bx2)) - x1, x2 - x1), min(int(np.ceil(by2)) - y1, y2 - y1)
        if c > a and d > b:
            keep[b:d, a:c] = 0
    kept = int(np.count_nonzero(keep))
    if kept == keep.size or kept < (1.0 - MAX_EXCLUDED) * keep.size:
        return None
    return keep


def _region_stats(bgr: U8, grey: U8, keep: U8 | None, out: F32, at: int
                  ) -> npt.NDArray[np.float32]:
    """Write the region's stats at out[at:at + 7]; returns its 256-bin grey histogram."""
    # OpenCV's masked reductions: a boolean-indexed copy of the pixels costs more.
    lap = cv2.Laplacian(grey, cv2.CV_32F, ksize=1)
    colour = bgr if bgr.ndim == 3 else cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    b, g, r = cv2.mean(colour, mask=keep)[:3]
    grey_mean, grey_sd = cv2.meanStdDev(grey, mask=keep)
    out[at] = float(grey_mean[0, 0]) / 255.0
    out[at + 1] = (r - g) / 255.0
    out[at + 2] = (b - g) / 255.0
    out[at + 3] = float(np.log(float(grey_sd[0, 0]) + 1.0)) / 4.0
    hist = np.asarray(cv2.calcHist([grey], [0], keep, [256], [0, 256]).ravel(), np.float32)
    cdf = np.cumsum(hist)
    total = max(float(cdf[-1]), 1.0)
    out[at + 4] = float(np.searchsorted(cdf, 0.05 * total)) / 255.0
    out[at + 5] = float(np.searchsorted(cdf, 0.95 * total)) / 255.0
    _, lap_sd = cv2.meanStdDev(lap, mask=keep)
    out[at + 6] = float(np.log(float(lap_sd[0, 0]) ** 2 + 1.0)) / 4.0
    return hist


def _downsample(grey: U8, keep: U8 | None, size_wh: tuple[int, int]) -> F32:
    """`grey` averaged down to `size_wh`; with `keep`, each cell is the mean of its kept
    pixels only (normalised convolution), so left-out boxes do not show in the shape."""
    if keep is None:
        return np.asarray(cv2.resize(grey, size_wh, interpolation=cv2.INTER_AREA), np.float32)
    k = keep.astype(np.float32)
    num = cv2.resize(grey.astype(np.float32) * k, size_wh, interpolation=cv2.INTER_AREA)
    den = cv2.resize(k, size_wh, interpolation=cv2.INTER_AREA)
    fill = float(num.sum() / max(float(den.sum()), 1e-6))
    return np.asarray(np.where(den > 0.05, num / np.maximum(den, 1e-6), fill), np.float32)


def frame_signals(image: U8, spec: SignalSpec,
                  exclude_xyxy: npt.ArrayLike | None = None) -> F32:
    """The signal vector [N_SIGNALS] (float32, order of SIGNAL_NAMES) of one frame.

    `image` is uint8, HxWx3 BGR or HxW grey, at least 16 x 16. `exclude_xyxy` [k, 4]:
    boxes (image pixels, x1 y1 x2 y2) left out of the statistics: the detections, so
    that a change in the defect rate does not move the image signals. Values are scaled
    to be of order 1 (means in 0..1, log sharpness / 4). Raises SignalError for another
    shape or dtype.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
        image.ndim == 3 and image.shape[2] != 3
    ):
        raise SignalError(f"frame must be uint8 HxW or HxWx3, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    if h < 16 or w < 16:
        raise SignalError(f"frame {w}x{h} is smaller than 16x16")
    boxes = np.zeros((0, 4)) if exclude_xyxy is None else \
        np.asarray(exclude_xyxy, np.float64).reshape(-1, 4)
    if w != spec.work_width_px:
        scale = spec.work_width_px / w
        nh = max(16, round(h * scale))
        image = np.asarray(cv2.resize(image, (spec.work_width_px, nh),
                                      interpolation=cv2.INTER_AREA), np.uint8)
        boxes = boxes * scale
    grey = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), np.uint8) if image.ndim == 3 \
        else image
    out = np.empty(N_SIGNALS, np.float32)
    rb = _bounds(image.shape, spec.roi_frac)
    roi, roi_grey = image[rb[1]:rb[3], rb[0]:rb[2]], grey[rb[1]:rb[3], rb[0]:rb[2]]
    keep = _keep_mask(rb, boxes)
    hist = _region_stats(roi, roi_grey, keep, out, 0).reshape(HIST_BINS, -1).sum(axis=1)
    out[7:7 + HIST_BINS] = hist / max(float(hist.sum()), 1.0)
    small = _downsample(roi_grey, keep, (64, 48))
    gx = small[:, 1:] - small[:, :-1]
    gy = small[1:, :] - small[:-1, :]
    gx, gy = gx[:-1, :], gy[:, :-1]
    jxx, jyy, jxy = float((gx * gx).mean()), float((gy * gy).mean()), float((gx * gy).mean())
    energy = jxx + jyy + 1e-3
    at = 7 + HIST_BINS
    out[at] = (jxx - jyy) / energy
    out[at + 1] = 2.0 * jxy / energy
    bb = _bounds(image.shape, spec.background_frac)
    _region_stats(image[bb[1]:bb[3], bb[0]:bb[2]], grey[bb[1]:bb[3], bb[0]:bb[2]],
                  _keep_mask(bb, boxes), out, at + 2)
    thumb = _downsample(roi_grey, keep, (THUMB_PX, THUMB_PX))
    out[at + 9:at + 9 + EMBED_DIMS] = ((thumb.ravel() - 128.0) / 64.0) @ _PROJECTION
    out[-1] = _edge_sharpness(grey)
    return out


def _edge_sharpness(grey: U8) -> float:
    """Log variance of the Laplacian over the frame's outer band (all four sides,
    EDGE_FRAC of the shorter side wide), scaled like the regions' sharpness."""
    h, w = grey.shape
    band = max(2, round(EDGE_FRAC * min(h, w)))
    strips = (grey[:band + 2], grey[h - band - 2:], grey[:, :band + 2].T, grey[:, w - band - 2:].T)
    # Each strip keeps one pixel of context either side, so the Laplacian at its border
    # rows is the frame's own; only the band's rows are counted.
    acc = sq = 0.0
    count = 0
    for strip in strips:
        lap = cv2.Laplacian(np.ascontiguousarray(strip), cv2.CV_32F, ksize=1)[1:band + 1]
        acc += float(lap.sum())
        sq += float((lap * lap).sum())
        count += lap.size
    var = max(sq / count - (acc / count) ** 2, 0.0)
    return float(np.log(var + 1.0)) / 4.0


def output_names(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Names of the detector-output vector for a model with `classes`."""
    return (*OUTPUT_NAMES_FIXED, *(f"class.{c}" for c in classes))


def output_signals(scores: npt.NDArray[np.floating], class_ids: npt.NDArray[np.integer],
                   n_classes: int) -> F32:
    """The detector-output vector of one frame: detections, mean and max score (0 when
    none), then per-class counts [3 + n_classes]. Raises SignalError for a class id out
    of range."""
    out = np.zeros(3 + n_classes, np.float32)
    n = len(scores)
    out[0] = n
    if n:
        out[1] = float(np.mean(scores))
        out[2] = float(np.max(scores))
        ids = np.asarray(class_ids, np.int64)
        if ids.min() < 0 or ids.max() >= n_classes:
            raise SignalError(f"class id out of range 0..{n_classes - 1}: {ids.tolist()}")
        out[3:] = np.bincount(ids, minlength=n_classes)
    return out

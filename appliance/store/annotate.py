"""Drawing a verdict's detections on its frame: what the annotated copy of a kept `fail`
image shows (image keeper) and what `lineguard appliance show` writes.

Pure: a new image is returned, the input is never drawn on. Boxes are xyxy in the
frame's pixels (as stored); each class keeps one colour (a hash of its name picks it
from a fixed palette, so the same class looks the same on every image and every day).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

ImageBGR = npt.NDArray[np.uint8]

Detection = tuple[str, float, tuple[float, float, float, float]]
"""(class name, score in [0, 1], box_xyxy in frame pixels)."""

# BGR; saturated colours that read on grey metal and on dark backgrounds alike
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 255), (0, 200, 255), (255, 0, 255), (0, 255, 0), (255, 128, 0),
    (0, 128, 255), (255, 255, 0), (128, 0, 255), (0, 255, 200), (200, 100, 255),
)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_colour(class_name: str) -> tuple[int, int, int]:
    """The BGR colour `class_name` is drawn in (stable across runs and machines)."""
    digest = hashlib.blake2b(class_name.encode("utf-8"), digest_size=2).digest()
    return PALETTE[int.from_bytes(digest, "big") % len(PALETTE)]


def _text_colour(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    b, g, r = bgr
    return (0, 0, 0) if 0.114 * b + 0.587 * g + 0.299 * r > 110 else (255, 255, 255)


def annotate(image_bgr: ImageBGR, detections: Sequence[Detection]) -> ImageBGR:
    """A copy of `image_bgr` (H x W x 3, or H x W grey, uint8) with every detection's box
    and a `class score` label drawn on it. Boxes are clipped to the image; a label goes
    above its box, or inside it at the top edge of the image."""
    out = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR) if image_bgr.ndim == 2 \
        else image_bgr.copy()
    height, width = out.shape[:2]
    size = min(height, width)
    thickness = max(2, round(size / 320))  # 1 px lines do not survive JPEG
    scale = max(0.35, size / 900)
    for class_name, score, (x1, y1, x2, y2) in detections:
        colour = class_colour(class_name)
        left, top = int(np.clip(round(x1), 0, width - 1)), int(np.clip(round(y1), 0, height - 1))
        right = int(np.clip(round(x2), 0, width - 1))
        bottom = int(np.clip(round(y2), 0, height - 1))
        cv2.rectangle(out, (left, top), (right, bottom), colour, thickness)
        label = f"{class_name} {score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, _FONT, scale, 1)
        box_h = text_h + baseline + 2
        label_top = top - box_h if top - box_h >= 0 else top
        label_left = min(left, max(0, width - text_w - 2))
        cv2.rectangle(out, (label_left, label_top), (label_left + text_w + 2, label_top + box_h),
                      colour, cv2.FILLED)
        cv2.putText(out, label, (label_left + 1, label_top + text_h + 1), _FONT, scale,
                    _text_colour(colour), 1, cv2.LINE_AA)
    return np.ascontiguousarray(out, dtype=np.uint8)

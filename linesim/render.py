"""Rendering of one part under the camera, with exact ground-truth defect boxes.

Pure functions of a numpy Generator: the same generator state gives the same image
and labels. Every defect is drawn through its own alpha mask, and its box is the
bounding box of that mask's visible pixels (after camera geometry), so labels are exact
by construction rather than guessed from the drawing parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from linesim.config import CLASSES, Drift, LineConfig, Variant

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

_MIN_BOX_PX = 3.0
_MIN_VISIBLE_FRACTION = 0.4


@dataclass(frozen=True)
class DefectBox:
    """One labelled defect: class and box in pixels, xyxy (x1, y1, x2, y2), exclusive."""

    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def class_name(self) -> str:
        return CLASSES[self.class_id]

    def yolo(self, width_px: int, height_px: int) -> tuple[float, float, float, float]:
        """Normalised (cx, cy, w, h) as in Ultralytics label files."""
        return (
            (self.x1 + self.x2) / 2 / width_px,
            (self.y1 + self.y2) / 2 / height_px,
            (self.x2 - self.x1) / width_px,
            (self.y2 - self.y1) / height_px,
        )


@dataclass(frozen=True)
class RenderedPart:
    """A camera frame (BGR, uint8, H x W x 3) and its defects."""

    image_bgr: U8
    defects: tuple[DefectBox, ...]
    variant: Variant


def _brushed_texture(rng: np.random.Generator, h: int, w: int, angle_deg: float) -> F32:
    """Zero-mean brushed-metal texture, roughly unit amplitude."""
    small = rng.standard_normal((h // 2 + 1, w // 2 + 1)).astype(np.float32)
    k = np.zeros((15, 15), np.float32)
    k[7, :] = 1.0 / 15.0
    rot = cv2.getRotationMatrix2D((7.0, 7.0), angle_deg, 1.0)
    k = np.asarray(cv2.warpAffine(k, rot, (15, 15)), np.float32)
    k /= max(float(k.sum()), 1e-6)
    streaks = cv2.filter2D(small, -1, k)
    streaks = cv2.resize(streaks, (w, h), interpolation=cv2.INTER_LINEAR)
    blotch = cv2.resize(rng.standard_normal((6, 8)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    return (2.5 * streaks + 0.6 * blotch).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> F32:
    """Conveyor belt: dark, with belt seams and fine noise; grey, shape (h, w)."""
    base = float(rng.uniform(35, 70))
    rows = np.arange(h, dtype=np.float32)[:, None]
    period = float(rng.uniform(40, 90))
    seams = 10.0 * (np.sin(rows * 2 * np.pi / period + rng.uniform(0, 6.28)) > 0.93)
    noise = rng.standard_normal((h, w)).astype(np.float32) * 4.0
    out: F32 = (base + seams + noise).astype(np.float32)
    return out


def _part_mask(rng: np.random.Generator, h: int, w: int, variant: Variant) -> F32:
    """Where the part is (0..1, anti-aliased edge)."""
    mask = np.zeros((h, w), np.uint8)
    cx = w / 2 + rng.uniform(-0.06, 0.06) * w
    cy = h / 2 + rng.uniform(-0.06, 0.06) * h
    if variant == "disc":
        r = rng.uniform(0.36, 0.45) * min(h, w)
        cv2.circle(mask, (round(cx), round(cy)), round(r), 255, -1, cv2.LINE_AA)
    else:
        pw = rng.uniform(0.62, 0.8) * w
        ph = rng.uniform(0.62, 0.8) * h
        angle = rng.uniform(-8, 8)
        pts = cv2.boxPoints(((cx, cy), (pw, ph), angle)).astype(np.int32)
        cv2.fillConvexPoly(mask, pts, 255, cv2.LINE_AA)
    return (mask.astype(np.float32) / 255.0).astype(np.float32)


def _sample_inside(rng: np.random.Generator, part: F32, margin_px: int) -> tuple[int, int]:
    """A point well inside the part (at least `margin_px` from its edge)."""
    h, w = part.shape
    inner = cv2.erode((part > 0.99).astype(np.uint8), np.ones((3, 3), np.uint8),
                      iterations=max(1, margin_px // 2))
    ys, xs = np.nonzero(inner)
    if len(xs) == 0:
        return w // 2, h // 2
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def _scratch(rng: np.random.Generator, h: int, w: int, c: tuple[int, int]) -> F32:
    mask = np.zeros((h, w), np.uint8)
    length = rng.uniform(40, 190)
    theta = rng.uniform(0, np.pi)
    pts = [np.array(c, np.float64)]
    for _ in range(int(rng.integers(2, 4))):
        theta += rng.uniform(-0.15, 0.15)
        seg = length / 3
        pts.append(pts[-1] + seg * np.array([np.cos(theta), np.sin(theta)]))
    poly = np.round(np.array(pts)).astype(np.int32)
    cv2.polylines(mask, [poly], False, 255, int(rng.integers(3, 6)), cv2.LINE_AA)
    return (mask.astype(np.float32) / 255.0).astype(np.float32)


def _pit(rng: np.random.Generator, h: int, w: int, c: tuple[int, int]) -> F32:
    mask = np.zeros((h, w), np.uint8)
    n = int(rng.integers(1, 6))
    spread = rng.uniform(4, 20)
    for _ in range(n):
        dx, dy = rng.normal(0, spread, 2)
        r = int(rng.integers(4, 11))
        cv2.circle(mask, (round(c[0] + dx), round(c[1] + dy)), r, 255, -1, cv2.LINE_AA)
    return (mask.astype(np.float32) / 255.0).astype(np.float32)


def _crack(rng: np.random.Generator, h: int, w: int, c: tuple[int, int]) -> F32:
    mask = np.zeros((h, w), np.uint8)
    theta = rng.uniform(0, 2 * np.pi)
    for branch in range(int(rng.integers(1, 4))):
        p = np.array(c, np.float64)
        steps = int(rng.integers(8, 20)) if branch == 0 else int(rng.integers(3, 8))
        t = theta + (0 if branch == 0 else rng.uniform(-1.2, 1.2))
        pts = [p.copy()]
        for _ in range(steps):
            t += rng.uniform(-0.7, 0.7)
            p = p + rng.uniform(5, 10) * np.array([np.cos(t), np.sin(t)])
            pts.append(p.copy())
        poly = np.round(np.array(pts)).astype(np.int32)
        cv2.polylines(mask, [poly], False, 255, int(rng.integers(2, 4)), cv2.LINE_AA)
    return (mask.astype(np.float32) / 255.0).astype(np.float32)


def _stain(rng: np.random.Generator, h: int, w: int, c: tuple[int, int]) -> F32:
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        dx, dy = rng.normal(0, 12, 2)
        axes = (int(rng.integers(10, 35)), int(rng.integers(8, 25)))
        cv2.ellipse(mask, (round(c[0] + dx), round(c[1] + dy)), axes,
                    float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), float(rng.uniform(3, 7)))
    return np.where(soft > 0.12, soft, 0.0).astype(np.float32)


_DRAW = (_scratch, _pit, _crack, _stain)


def _colour(rng: np.random.Generator, class_id: int, base: float) -> tuple[float, float, float]:
    """BGR colour a defect blends towards, with class-typical contrast."""
    if class_id == 0:  # scratch: bright or dark groove
        d = rng.uniform(35, 85) * (1 if rng.random() < 0.6 else -1)
        return (base + d, base + d, base + d)
    if class_id == 1:  # pit: dark hole
        v = base - rng.uniform(50, 110)
        return (v, v, v)
    if class_id == 2:  # crack: very dark
        v = base - rng.uniform(70, 130)
        return (v, v, v)
    # stain: brown/rust tint, low contrast
    return (base - rng.uniform(50, 90), base - rng.uniform(25, 50), base - rng.uniform(0, 20))


def render_part(rng: np.random.Generator, cfg: LineConfig) -> RenderedPart:
    """Render one part as the camera sees it, with exact boxes; see module docstring."""
    h, w = cfg.height_px, cfg.width_px
    drift = cfg.drift
    variant: Variant = drift.variant or cfg.variants[int(rng.integers(len(cfg.variants)))]
    bg = _background(rng, h, w)
    part = _part_mask(rng, h, w, variant)
    metal_base = float(rng.uniform(120, 190))
    metal = metal_base + 6.0 * _brushed_texture(rng, h, w, rng.uniform(-10, 10))
    if variant == "ribbed":
        cols = np.arange(w, dtype=np.float32)[None, :]
        metal = metal + 18.0 * np.sin(cols * 2 * np.pi / rng.uniform(18, 30)).astype(np.float32)
    grey = bg * (1 - part) + metal * part
    img = np.repeat(grey[:, :, None], 3, axis=2)

    masks: list[tuple[int, F32]] = []
    if rng.random() >= cfg.defect_free_fraction:
        for _ in range(int(rng.integers(1, cfg.max_defects_per_part + 1))):
            class_id = int(rng.integers(len(CLASSES)))
            centre = _sample_inside(rng, part, margin_px=30)
            alpha = _DRAW[class_id](rng, h, w, centre) * part
            strength = float(rng.uniform(0.55, 1.0))
            colour = np.array(_colour(rng, class_id, metal_base), np.float32)
            a = (alpha * strength)[:, :, None]
            img = img * (1 - a) + colour[None, None, :] * a
            if class_id == 1:  # pits catch light on their lower rim
                rim = np.roll(alpha, 2, axis=0) - alpha
                img += (np.clip(rim, 0, 1) * 40.0 * strength)[:, :, None]
            masks.append((class_id, alpha))

    img, masks = _apply_drift(rng, img, masks, drift)
    boxes = tuple(b for b in (_box(cid, m) for cid, m in masks) if b is not None)
    out = np.clip(img, 0, 255).astype(np.uint8)
    return RenderedPart(image_bgr=out, defects=boxes, variant=variant)


def _box(class_id: int, alpha: F32) -> DefectBox | None:
    """Bounding box of the visible part of a defect mask, or None if too little shows."""
    visible = alpha > 0.25
    if not visible.any():
        return None
    ys, xs = np.nonzero(visible)
    x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
    if x2 - x1 < _MIN_BOX_PX or y2 - y1 < _MIN_BOX_PX:
        return None
    return DefectBox(class_id, x1, y1, x2, y2)


def _apply_drift(
    rng: np.random.Generator, img: F32, masks: list[tuple[int, F32]], drift: Drift
) -> tuple[F32, list[tuple[int, F32]]]:
    """Photometric and geometric drift; masks follow the geometry, and masks of defects
    pushed mostly out of frame are dropped."""
    if drift.is_identity:
        return img, masks
    h, w = img.shape[:2]
    img = (img - 128.0) * drift.contrast + 128.0 + 255.0 * drift.brightness
    img = img * np.array(drift.color_cast, np.float32)[None, None, :]
    if drift.dirty_lens > 0:
        smudge = np.zeros((h, w), np.float32)
        n = max(1, round(drift.dirty_lens * 12))
        for _ in range(n):
            r = int(rng.uniform(0.05, 0.15) * min(h, w) * (0.5 + drift.dirty_lens))
            cv2.circle(smudge, (int(rng.integers(w)), int(rng.integers(h))), r, 1.0, -1)
        smudge = np.asarray(cv2.GaussianBlur(smudge, (0, 0), max(h, w) / 40), np.float32)
        img = img * (1 - 0.7 * np.clip(smudge, 0, 1))[:, :, None]
    if drift.blur_sigma_px > 0:
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), drift.blur_sigma_px), np.float32)
    if drift.shift_px != (0.0, 0.0) or drift.rotation_deg != 0.0:
        m = cv2.getRotationMatrix2D((w / 2, h / 2), drift.rotation_deg, 1.0)
        m[:, 2] += np.array(drift.shift_px, np.float64)
        img = np.asarray(cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_REPLICATE), np.float32)
        moved: list[tuple[int, F32]] = []
        for cid, a in masks:
            before = float((a > 0.25).sum())
            a2 = np.asarray(cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0),
                            np.float32)
            if before > 0 and float((a2 > 0.25).sum()) / before >= _MIN_VISIBLE_FRACTION:
                moved.append((cid, a2))
        masks = moved
    if drift.noise_sigma > 0:
        img = img + rng.standard_normal(img.shape).astype(np.float32) * drift.noise_sigma
    return img.astype(np.float32), masks


def apply_drift(rng: np.random.Generator, image_bgr: U8, drift: Drift) -> U8:
    """`drift` applied to any BGR uint8 image (e.g. a real photo), as on rendered parts;
    `rng` draws the dirty-lens smudges and the noise."""
    img, _ = _apply_drift(rng, image_bgr.astype(np.float32), [], drift)
    return np.clip(img, 0, 255).astype(np.uint8)

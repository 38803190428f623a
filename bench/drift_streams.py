"""Streams of frame signals for bench/drift.py: real NEU-DET images and linesim parts,
with drifts of nine kinds at three severities starting at a known frame, and no-drift
streams with normal variation.

Frames are drawn from pools whose signals are computed once: a no-drift pool per
dataset, and for every (kind, severity) the same pool frames with that drift applied
(one fixed dirty-lens smudge per drift, as a real lens has). A stream is a random draw
of pool frames, so streams differ in order and content while the costly image work is
done once per pool frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

import linesim
from models.drift.signals import SignalSpec, frame_signals

F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

NEU_DIR: Final = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "neu-det"
SEVERITIES: Final = ("low", "medium", "high")
NEU_HELD_OUT_CLASS: Final = "crazing"  # the "new product variant" of the real stream

# Drift knobs per kind and severity (images at 320 px for linesim, 200 px for NEU-DET).
DRIFTS: Final[dict[str, tuple[str, str, str]]] = {
    "brightness": ("brightness=0.02", "brightness=0.05", "brightness=0.1"),
    "contrast": ("contrast=0.95", "contrast=0.88", "contrast=0.75"),
    "blur": ("blur_sigma_px=0.6", "blur_sigma_px=1.0", "blur_sigma_px=2.0"),
    "noise": ("noise_sigma=3", "noise_sigma=6", "noise_sigma=12"),
    "rotation": ("rotation_deg=1", "rotation_deg=3", "rotation_deg=8"),
    "translation": ("shift_px=3:2", "shift_px=8:5", "shift_px=20:12"),
    "colour_cast": ("color_cast=1.03:1:0.97", "color_cast=1.06:1:0.94",
                    "color_cast=1.12:1:0.88"),
    # linesim's smudges are small: 0.3 is four soft spots of about a tenth of the frame.
    "dirty_lens": ("dirty_lens=0.3", "dirty_lens=0.5", "dirty_lens=0.8"),
    # Share of frames that are the new variant after the onset.
    "variant": ("0.25", "0.5", "1.0"),
}


@dataclass
class Dataset:
    """Signal pools of one data source."""

    name: str
    # Every pool is [n, D + 1]: signals, then defects per frame.
    reference: F64  # frames the model's reference is built from, in capture order
    normal: F64  # no-drift pool (stream frames)
    normal_alt: F64  # no-drift pool with normal variation (defect rate change)
    variant: F64  # frames of a new product variant
    drifted: dict[tuple[str, str], F64]  # (kind, severity) -> drifted normal pool


# A frame and its defect boxes (xyxy pixels): the ground truth stands in for the
# detector's boxes, which the appliance leaves out of the image signals.
Framed = tuple[U8, F64]


def _signals(images: list[Framed], spec: SignalSpec) -> F64:
    """[n, D + 1]: each frame's signals, then its number of defects (the last column
    stands in for the detector's count, the output channel)."""
    return np.asarray([[*frame_signals(im, spec, boxes), len(boxes)] for im, boxes in images],
                      np.float64)


def _drifted(images: list[Framed], spec: SignalSpec, seed: int) -> dict[tuple[str, str], F64]:
    out: dict[tuple[str, str], F64] = {}
    for kind, knobs in DRIFTS.items():
        if kind == "variant":
            continue
        for sev, text in zip(SEVERITIES, knobs, strict=True):
            drift = linesim.Drift.parse(text)
            frames = []
            for i, (im, boxes) in enumerate(images):
                # One smudge pattern per drift (a lens is dirty the same way every frame);
                # sensor noise differs per frame. (Geometric drifts move the defects a
                # few pixels off their boxes: a detector would follow them.)
                smudge_seed = seed if kind == "dirty_lens" else seed + i
                frames.append((linesim.apply_drift(np.random.default_rng(smudge_seed), im, drift),
                               boxes))
            out[(kind, sev)] = _signals(frames, spec)
    return out


def neu_dataset(pool: int, spec: SignalSpec, seed: int, normal_pool: int = 0
                ) -> Dataset | None:
    """NEU-DET: reference from train images, streams from val images (both without the
    held-out class; half of them mirrored); the held-out class is the new variant; the
    normal variation is every image mirrored. None when absent."""
    if not (NEU_DIR / "images" / "val").is_dir():
        return None
    rng = np.random.default_rng(seed)

    def load(split: str, held_out: bool, limit: int, flip: float) -> list[Framed]:
        paths = sorted((NEU_DIR / "images" / split).glob("*.jpg"))
        paths = [p for p in paths if p.stem.startswith(NEU_HELD_OUT_CLASS) == held_out]
        pick = rng.permutation(len(paths))[:limit]
        out: list[Framed] = []
        for i in pick:
            grey = cv2.imread(str(paths[i]), cv2.IMREAD_GRAYSCALE)
            if grey is None:
                raise OSError(f"cannot read {paths[i]}")
            img: U8 = np.asarray(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), np.uint8)
            h, w = grey.shape
            label = NEU_DIR / "labels" / split / (paths[i].stem + ".txt")
            rows = np.loadtxt(label, ndmin=2) if label.exists() else np.zeros((0, 5))
            boxes: F64 = np.zeros((0, 4)) if rows.size == 0 else np.stack([
                (rows[:, 1] - rows[:, 3] / 2) * w, (rows[:, 2] - rows[:, 4] / 2) * h,
                (rows[:, 1] + rows[:, 3] / 2) * w, (rows[:, 2] + rows[:, 4] / 2) * h], axis=1)
            if rng.random() < flip:  # position variation: the strip runs the other way
                img = img[:, ::-1].copy()
                boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]],
                                 axis=1) if len(boxes) else boxes
            out.append((img, boxes))
        return out

    ref = load("train", False, 4 * max(pool, normal_pool), 0.5)
    normal = load("val", False, max(pool, normal_pool), 0.5)
    return Dataset(
        "neu-det", _signals(ref, spec), _signals(normal, spec),
        _signals(load("val", False, max(pool, normal_pool), 1.0), spec),
        _signals(load("val", True, pool, 0.5), spec), _drifted(normal[:pool], spec, seed),
    )


def linesim_dataset(pool: int, spec: SignalSpec, seed: int, normal_pool: int = 0) -> Dataset:
    """linesim at 320x240: reference and stream pools from different seeds; normal
    variation is the simulator's own (part position, variant plate/disc, defects), plus
    a pool with a different defect rate; the new variant is `ribbed`."""
    base = linesim.LineConfig(width_px=320, height_px=240, seed=seed)

    def render(cfg: linesim.LineConfig, n: int, first: int = 0) -> list[Framed]:
        parts = [linesim.render(cfg, first + i) for i in range(n)]
        return [(p.image_bgr, np.array([(d.x1, d.y1, d.x2, d.y2) for d in p.defects],
                                       np.float64).reshape(-1, 4)) for p in parts]

    normal = render(base, max(pool, normal_pool))
    alt = linesim.LineConfig(width_px=320, height_px=240, seed=seed + 2, defect_free_fraction=0.9)
    variant = linesim.LineConfig(width_px=320, height_px=240, seed=seed + 3,
                                 drift=linesim.Drift(variant="ribbed"))
    ref_cfg = linesim.LineConfig(width_px=320, height_px=240, seed=seed + 1)
    return Dataset(
        "linesim", _signals(render(ref_cfg, 4 * max(pool, normal_pool)), spec),
        _signals(normal, spec), _signals(render(alt, max(pool, normal_pool)), spec),
        _signals(render(variant, pool), spec), _drifted(normal[:pool], spec, seed),
    )


def drift_stream(ds: Dataset, kind: str, severity: str, onset: int, length: int,
                 rng: np.random.Generator) -> F64:
    """[length, D] frame signals: no drift before `onset`, the drift from it on."""
    pre = ds.normal[rng.integers(0, len(ds.normal), size=onset)]
    n_post = length - onset
    if kind == "variant":
        share = float(DRIFTS["variant"][SEVERITIES.index(severity)])
        is_new = rng.random(n_post) < share
        post = np.where(is_new[:, None],
                        ds.variant[rng.integers(0, len(ds.variant), size=n_post)],
                        ds.normal[rng.integers(0, len(ds.normal), size=n_post)])
    else:
        pool = ds.drifted[(kind, severity)]
        post = pool[rng.integers(0, len(pool), size=n_post)]
    return np.vstack([pre, post])


def no_drift_stream(ds: Dataset, length: int, rng: np.random.Generator) -> F64:
    """[length, D]: normal frames, switching to the other defect rate at a random frame."""
    switch = int(rng.integers(length // 4, 3 * length // 4))
    first = ds.normal[rng.integers(0, len(ds.normal), size=switch)]
    second = ds.normal_alt[rng.integers(0, len(ds.normal_alt), size=length - switch)]
    return np.vstack([first, second])

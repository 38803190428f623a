"""Drift signals and a bundle's drift reference: the signal table, the reference file
in a bundle (covered by the manifest's sha256), a tampered reference refused."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import linesim
from cloud.drift.references import BundleReferences
from models.bundle import load_bundle, write_bundle
from models.drift.reference import (
    REFERENCE_FILE,
    DriftReferenceError,
    read_reference,
    reference_from_dataset,
    reference_from_signals,
    write_reference,
)
from models.drift.signals import (
    N_SIGNALS,
    SIGNAL_NAMES,
    SignalError,
    SignalSpec,
    frame_signals,
    output_signals,
)
from models.yolo_dataset import load_data_yaml
from protocol.fields import ModelRef

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo" / "bundle"
PART = linesim.render(linesim.LineConfig(width_px=320, height_px=240, seed=1), 0)


def test_signals_are_finite_and_leave_detections_out() -> None:
    spec = SignalSpec()
    plain = frame_signals(PART.image_bgr, spec)
    assert plain.shape == (N_SIGNALS,) and np.isfinite(plain).all()
    boxes = [(d.x1, d.y1, d.x2, d.y2) for d in PART.defects]
    masked = frame_signals(PART.image_bgr, spec, boxes)
    assert np.isfinite(masked).all()
    if boxes:
        assert not np.allclose(plain, masked)
    # A frame at another width is brought to 320 px first: nearly the same signals.
    big = np.repeat(np.repeat(PART.image_bgr, 2, axis=0), 2, axis=1)
    assert np.allclose(frame_signals(big, spec)[:7], plain[:7], atol=0.05)
    grey = frame_signals(PART.image_bgr[:, :, 1].copy(), spec)
    chroma = [SIGNAL_NAMES.index(n) for n in SIGNAL_NAMES if "chroma" in n]
    assert len(chroma) == 4 and (grey[chroma] == 0.0).all()  # a grey camera: exactly 0
    cast = PART.image_bgr.astype(np.float32) * np.array([0.9, 1.0, 1.1], np.float32)
    warm = frame_signals(np.clip(cast, 0, 255).astype(np.uint8), spec)
    at = SIGNAL_NAMES.index
    assert warm[at("roi.chroma_rg")] > plain[at("roi.chroma_rg")] + 0.01
    assert warm[at("roi.chroma_bg")] < plain[at("roi.chroma_bg")] - 0.01


def test_contrast_and_a_shifted_frame_move_their_signals() -> None:
    """A contrast cut pulls the grey percentiles together and lowers the log spread;
    a frame shifted with replicated edges (a moved camera) loses border sharpness."""
    spec, at = SignalSpec(), SIGNAL_NAMES.index
    plain = frame_signals(PART.image_bgr, spec)
    flat = ((PART.image_bgr.astype(np.float32) - 128.0) * 0.8 + 128.0).astype(np.uint8)
    low = frame_signals(flat, spec)
    assert low[at("roi.p95")] - low[at("roi.p05")] < plain[at("roi.p95")] - plain[at("roi.p05")]
    assert low[at("roi.log_std")] < plain[at("roi.log_std")]
    # A textured surface filling the frame (as a steel strip does).
    texture = np.random.default_rng(0).integers(60, 200, (240, 320, 3)).astype(np.uint8)
    texture = cv2.GaussianBlur(texture, (0, 0), 1.0)
    m = np.float32([[1, 0, 12], [0, 1, 8]])
    moved = cv2.warpAffine(texture, m, (320, 240), borderMode=cv2.BORDER_REPLICATE)
    assert frame_signals(moved, spec)[at("edge.sharpness")] < \
        frame_signals(texture, spec)[at("edge.sharpness")] - 0.02


@pytest.mark.parametrize(("image", "message"), [
    (np.zeros((8, 8, 3), np.uint8), "smaller than 16x16"),
    (np.zeros((32, 32, 3), np.float32), "uint8"),
    (np.zeros((32, 32, 4), np.uint8), "uint8 HxW or HxWx3"),
])
def test_bad_frames_are_refused(image: np.ndarray, message: str) -> None:
    with pytest.raises(SignalError, match=message):
        frame_signals(image, SignalSpec())


def test_bad_regions_and_class_ids_are_refused() -> None:
    with pytest.raises(SignalError, match="roi_frac"):
        SignalSpec(roi_frac=(0.5, 0.5, 0.4, 0.9))
    with pytest.raises(SignalError, match="class id"):
        output_signals(np.array([0.9]), np.array([7]), 4)
    out = output_signals(np.array([0.9, 0.5]), np.array([1, 1]), 4)
    assert out.tolist() == pytest.approx([2, 0.7, 0.9, 0, 2, 0, 0])


def test_reference_from_a_dataset_lives_in_the_bundle(tmp_path: Path) -> None:
    cfg = linesim.LineConfig(width_px=160, height_px=120, seed=3)
    data_yaml = linesim.export_yolo(tmp_path / "ds", cfg, n_train=12, n_val=4)
    ref = reference_from_dataset(load_data_yaml(data_yaml), SignalSpec())
    assert len(ref.frames) == 16 and ref.source == "bundle"
    path = write_reference(ref, tmp_path / REFERENCE_FILE)
    assert read_reference(path) == ref
    demo = load_bundle(DEMO)
    m = demo.manifest
    root = tmp_path / "bundles" / m.name / str(m.version)
    files = {name: demo.path_of(name) for name in m.files} | {REFERENCE_FILE: path}
    bundle = write_bundle(root, m, files)
    assert REFERENCE_FILE in bundle.manifest.files
    refs = BundleReferences(tmp_path / "bundles")
    assert refs(ModelRef(name=m.name, version=m.version)) == ref
    assert refs(ModelRef(name=m.name, version=m.version + 1)) is None
    # Tampered: the manifest's sha256 no longer matches, the reference is not used.
    (root / REFERENCE_FILE).write_text(path.read_text().replace("bundle", "line"))
    assert BundleReferences(tmp_path / "bundles")(ModelRef(name=m.name, version=m.version)) \
        is None


def test_bad_references_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DriftReferenceError, match="expected"):
        reference_from_signals(np.zeros((5, 3)), "bundle")
    with pytest.raises(DriftReferenceError, match="non-finite"):
        reference_from_signals(np.full((5, N_SIGNALS), np.inf), "bundle")
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(DriftReferenceError, match="not a drift reference"):
        read_reference(tmp_path / "x.json")

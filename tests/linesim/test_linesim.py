"""linesim: determinism, exact labels, drift knobs, rate and YOLO export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linesim import CLASSES, ConfigError, Drift, LineConfig, SimulatedLine, export_yolo, render


def test_same_seed_same_part_any_order() -> None:
    cfg = LineConfig(seed=3)
    a = render(cfg, 5)
    line = SimulatedLine(cfg).take(6)
    assert np.array_equal(a.image_bgr, line[5].part.image_bgr)
    assert a.defects == line[5].part.defects
    assert not np.array_equal(render(LineConfig(seed=4), 5).image_bgr, a.image_bgr)


def test_parts_are_varied_and_boxes_lie_in_frame() -> None:
    cfg = LineConfig(seed=1, width_px=320, height_px=240)
    parts = [render(cfg, k) for k in range(60)]
    n_defects = [len(p.defects) for p in parts]
    assert min(n_defects) == 0, "some parts must be defect-free"
    assert max(n_defects) >= 2, "some parts must carry several defects"
    classes = {d.class_id for p in parts for d in p.defects}
    assert classes == set(range(len(CLASSES)))
    sizes = []
    for p in parts:
        assert p.image_bgr.shape == (240, 320, 3)
        assert p.image_bgr.dtype == np.uint8
        for d in p.defects:
            assert 0 <= d.x1 < d.x2 <= 320
            assert 0 <= d.y1 < d.y2 <= 240
            sizes.append(max(d.x2 - d.x1, d.y2 - d.y1))
    assert max(sizes) / min(sizes) > 4, "defects must vary in size"


def test_boxes_hold_visible_defects_and_defect_free_knob_works() -> None:
    part = render(LineConfig(seed=2, defect_free_fraction=0.0), 0)
    assert part.defects
    for d in part.defects:
        x1, y1, x2, y2 = int(d.x1), int(d.y1), int(np.ceil(d.x2)), int(np.ceil(d.y2))
        patch = part.image_bgr[y1:y2, x1:x2].astype(np.float32)
        assert patch.std() > 4.0, f"{d.class_name} box holds no visible structure"
    assert render(LineConfig(seed=2, defect_free_fraction=1.0), 0).defects == ()


@pytest.mark.parametrize(
    ("drift", "check"),
    [
        (Drift(brightness=0.3), lambda a, b: b.mean() > a.mean() + 30),
        (Drift(contrast=0.4), lambda a, b: b.std() < a.std() * 0.6),
        (Drift(blur_sigma_px=3.0), lambda a, b: np.abs(np.diff(b.astype(float), axis=1)).mean()
         < 0.7 * np.abs(np.diff(a.astype(float), axis=1)).mean()),
        (Drift(noise_sigma=20.0), lambda a, b: np.abs(b.astype(float) - a).mean() > 8),
        (Drift(color_cast=(1.0, 1.0, 1.4)), lambda a, b: b[..., 2].mean() > a[..., 2].mean() + 20),
        (Drift(dirty_lens=0.6), lambda a, b: b.mean() < a.mean() - 3),
    ],
)
def test_photometric_drift_changes_image_not_labels(drift: Drift, check: object) -> None:
    base = LineConfig(seed=5, defect_free_fraction=0.0)
    a, b = render(base, 1), render(base.with_drift(drift), 1)
    assert check(a.image_bgr, b.image_bgr)  # type: ignore[operator]
    assert [d.class_id for d in a.defects] == [d.class_id for d in b.defects]
    if drift.noise_sigma == 0 and drift.dirty_lens == 0:
        assert a.defects == b.defects


def test_camera_shift_moves_boxes_with_the_image() -> None:
    base = LineConfig(seed=6, defect_free_fraction=0.0)
    a = render(base, 2)
    b = render(base.with_drift(Drift(shift_px=(12.0, -7.0))), 2)
    moved = {(d.class_id, round(d.x1 + 12), round(d.y1 - 7)) for d in a.defects}
    for d in b.defects:
        assert any(c == d.class_id and abs(x - d.x1) <= 1 and abs(y - d.y1) <= 1
                   for c, x, y in moved), d


def test_new_variant_looks_different() -> None:
    a = render(LineConfig(seed=8), 0)
    b = render(LineConfig(seed=8, drift=Drift(variant="ribbed")), 0)
    assert b.variant == "ribbed"
    assert a.variant != "ribbed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Drift()),
        ("brightness=0.2,blur_sigma_px=1.5", Drift(brightness=0.2, blur_sigma_px=1.5)),
        ("shift_px=10:-3,variant=ribbed", Drift(shift_px=(10.0, -3.0), variant="ribbed")),
        ("color_cast=1:1:1.2", Drift(color_cast=(1.0, 1.0, 1.2))),
    ],
)
def test_drift_parse(text: str, expected: Drift) -> None:
    assert Drift.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("brightness=2", "brightness"),
        ("fog=1", "fog is not a drift knob"),
        ("blur_sigma_px", "knob=value"),
        ("noise_sigma=abc", "noise_sigma is not a number"),
        ("variant=cube", "variant"),
    ],
)
def test_drift_parse_errors_name_the_knob(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Drift.parse(text)


def test_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="parts_per_minute"):
        LineConfig(parts_per_minute=0)
    with pytest.raises(ConfigError, match="width_px"):
        LineConfig(width_px=10)


def test_realtime_line_paces_on_injected_clock() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    line = SimulatedLine(LineConfig(parts_per_minute=120, width_px=64, height_px=64),
                         realtime=True, clock=lambda: now[0], sleep=sleep)
    frames = line.take(3)
    assert [f.timestamp_s for f in frames] == [100.0, 100.5, 101.0]
    assert [f.part_id for f in frames] == [0, 1, 2]
    assert sum(slept) == pytest.approx(1.0)


def test_export_yolo_dataset(tmp_path: Path) -> None:
    cfg = LineConfig(seed=9, width_px=160, height_px=120)
    data_yaml = export_yolo(tmp_path / "ds", cfg, n_train=6, n_val=3)
    text = data_yaml.read_text()
    assert "train: images/train" in text and "0: scratch" in text
    train = sorted((tmp_path / "ds" / "images" / "train").glob("*.png"))
    val = sorted((tmp_path / "ds" / "images" / "val").glob("*.png"))
    assert len(train) == 6 and len(val) == 3
    assert not {p.stem.split("_")[1] for p in train} & {p.stem.split("_")[1] for p in val}
    for img in train:
        label = tmp_path / "ds" / "labels" / "train" / f"{img.stem}.txt"
        part = render(cfg, int(img.stem.split("_")[1]))
        rows = [r.split() for r in label.read_text().splitlines()]
        assert len(rows) == len(part.defects)
        for row, d in zip(rows, part.defects, strict=True):
            assert int(row[0]) == d.class_id
            cx, _cy, w, h = map(float, row[1:])
            assert 0 < w <= 1 and 0 < h <= 1
            assert cx == pytest.approx((d.x1 + d.x2) / 2 / 160, abs=1e-5)
            assert h == pytest.approx((d.y2 - d.y1) / 120, abs=1e-5)


def test_drift_onset_part_changes_the_variant_from_that_part_on() -> None:
    from linesim.config import Drift, LineConfig
    from linesim.line import render

    drift = Drift.parse("variant=ribbed,onset_part=5")
    assert drift.onset_part == 5 and drift.variant == "ribbed"
    cfg = LineConfig(seed=3, drift=drift)
    plain = LineConfig(seed=3)
    for k in range(5):  # before the onset: exactly the undrifted line
        assert (render(cfg, k).image_bgr == render(plain, k).image_bgr).all()
    assert all(render(cfg, k).variant == "ribbed" for k in range(5, 9))
    assert Drift(onset_part=7).is_identity


def test_drift_onset_part_must_be_a_whole_number() -> None:
    from linesim.config import ConfigError, Drift

    with pytest.raises(ConfigError, match="onset_part"):
        Drift.parse("onset_part=1.5")
    with pytest.raises(ConfigError, match="onset_part"):
        Drift(onset_part=-1)

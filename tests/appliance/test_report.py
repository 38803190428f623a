"""Issue 8 item 11 on the appliance: `lineguard appliance report` and `show` answer from
a real store file without SQL (indexed queries), fails per class are counted by part,
and a kept fail image gets an annotated copy beside it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from appliance.cli import main
from appliance.config import ApplianceConfig, load_config
from appliance.records import DefectRecord, InspectionRecord, Verdict
from appliance.store import Store
from appliance.store.annotate import annotate, class_colour
from appliance.store.report import (
    BY_PART_SQL,
    FAILED_PARTS_BY_CLASS_SQL,
    STATION_COUNTS_SQL,
    open_store_reader,
)

NOW = time.time()
SHAPE = (120, 160, 3)


def record(station: str, seq: int, verdict: Verdict, *, classes: tuple[str, ...] = (),
           reason: str | None = None, age_s: float = 60.0, image: bool = False,
           part: str | None = None) -> InspectionRecord:
    defects = tuple(DefectRecord(0 if c == "scratch" else 1, c, 0.9,
                                 (20.0 + 10 * k, 30.0, 60.0 + 10 * k, 70.0))
                    for k, c in enumerate(classes))
    judged = NOW - age_s
    return InspectionRecord(
        frame_id=f"{station}:{seq}", station=station, part_id=part or f"P{seq}",
        captured_at=judged - 0.01, judged_at=judged, verdict=verdict, reason=reason,
        model_version="tiny:1", preprocess_hash=None, latency_ms={"total": 12.5},
        defects=defects,
        image_bgr=np.full(SHAPE, 90, np.uint8) if image else None)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> ApplianceConfig:
    root = tmp_path_factory.mktemp("line")
    cfg = load_config(None, {"data_dir": str(root / "data"),
                             "store": {"images": {"keep_pass_fraction": 0.0,
                                                  "min_free_disk_bytes": 0}}})
    records = [
        record("top", 0, "pass"), record("top", 1, "pass"), record("top", 2, "pass"),
        # three scratch boxes and a dent on one part: one scratch fail, one dent fail
        record("top", 3, "fail", classes=("scratch", "scratch", "scratch", "dent"),
               image=True, part="A7"),
        record("top", 4, "fail", classes=("scratch",)),
        record("top", 5, "uninspected", reason="dropped"),
        record("top", 6, "uninspected", reason="deadline"),
        record("side", 0, "pass"),
        record("side", 1, "fail", classes=("dent", "dent"), image=True, part="A7"),
        # two hours ago: outside `--since 1h`
        record("top", 7, "fail", classes=("scratch",), age_s=7200.0),
        record("side", 2, "pass", age_s=7200.0),
    ]
    with Store(cfg.store) as store:
        for r in records:
            store.submit(r)
        store.flush()
    return cfg


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_report_counts_fails_per_class_by_part_per_station(
    line: ApplianceConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    data = run_json(capsys, "report", "--data-dir", str(line.data_dir), "--since", "1h",
                    "--json")
    assert isinstance(data, dict)
    top, side, total = data["stations"]["top"], data["stations"]["side"], data["total"]
    assert (top["parts"], top["passed"], top["failed"], top["uninspected"]) == (7, 3, 2, 2)
    assert top["uninspected_by_reason"] == {"deadline": 1, "dropped": 1}
    assert top["failed_parts_by_class"] == {"dent": 1, "scratch": 2}  # parts, not boxes
    assert top["yield_pct"] == pytest.approx(100 * 3 / 7, abs=1e-3)
    assert side["failed_parts_by_class"] == {"dent": 1}
    assert (total["parts"], total["passed"], total["failed"]) == (9, 4, 3)
    assert total["failed_parts_by_class"] == {"dent": 2, "scratch": 2}
    everything = run_json(capsys, "report", "--data-dir", str(line.data_dir), "--since",
                          "all", "--json")
    assert isinstance(everything, dict)
    assert everything["total"]["parts"] == 11 and everything["since"] is None

    assert main(["report", "--data-dir", str(line.data_dir), "--since", "1h"]) == 0
    text = capsys.readouterr().out
    assert "top" in text and "uninspected: deadline 1, dropped 1" in text
    assert "failed parts by class: dent 1, scratch 2" in text
    assert "42.9 %" in text  # top's yield


def test_report_queries_use_the_indexes(line: ApplianceConfig) -> None:
    conn = open_store_reader(line.store.path)
    try:
        def plan(sql: str, params: tuple[object, ...]) -> str:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {sql}", params).fetchall()
            return " | ".join(str(r[-1]) for r in rows)

        window = "judged_at >= ? AND judged_at < ?"
        assert "inspections_judged_at" in plan(STATION_COUNTS_SQL.format(where=window),
                                               (NOW - 3600, NOW))
        failed = plan(FAILED_PARTS_BY_CLASS_SQL.format(
            where="i.judged_at >= ? AND i.judged_at < ?"), (NOW - 3600, NOW))
        assert "inspections_fail_judged_at" in failed and "defects_inspection_id" in failed
        assert "inspections_part_id" in plan(BY_PART_SQL, ("A7", 20))
    finally:
        conn.close()


def test_report_without_a_store_says_so(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--data-dir", str(tmp_path)]) == 1
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "lineguard.db").exists()  # a report never creates one


def test_a_kept_fail_image_has_an_annotated_copy_beside_it(line: ApplianceConfig) -> None:
    with Store(line.store) as store:
        failures = {f["frame_id"]: f for f in store.recent_failures()}
        usage = store.image_usage()
    kept = failures["top:3"]
    assert kept["image_path"] is not None and kept["annotated_image_path"] is not None
    original, copy = Path(kept["image_path"]), Path(kept["annotated_image_path"])
    assert copy.parent == original.parent and copy.name.endswith(".annotated.jpg")
    assert usage["live_bytes"] == original.stat().st_size + copy.stat().st_size + sum(
        Path(p).stat().st_size for f in failures.values() if f["frame_id"] != "top:3"
        for p in (f["image_path"], f["annotated_image_path"]) if p)
    image = cv2.imread(str(copy))
    assert image is not None and image.shape == SHAPE
    # the box edge of the first scratch (x 20..60, y 30..70) is drawn in its class colour
    # (after JPEG: close to it, far from the grey part)
    edge = image[50, 20].astype(int)
    colour = np.array(class_colour("scratch"))
    assert np.abs(edge - colour).sum() < np.abs(edge - 90).sum()
    assert int(cv2.imread(str(original))[50, 20].astype(int).sum()) < 3 * 100  # plain grey


def test_show_prints_the_verdict_and_writes_the_annotated_image(
    line: ApplianceConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "top3.png"
    capsys.readouterr()
    assert main(["show", "top:3", "--data-dir", str(line.data_dir), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "frame top:3 (part A7), station top: fail" in text
    assert "scratch 0.90 at x 20-60, y 30-70 px" in text and f"image with boxes: {out}" in text
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == SHAPE
    assert not np.array_equal(drawn[50, 20], np.array([90, 90, 90], np.uint8))

    # a part id: the verdict of every station that saw it, one image each
    data = run_json(capsys, "show", "A7", "--data-dir", str(line.data_dir), "--out",
                    str(tmp_path / "a7.jpg"), "--json")
    assert isinstance(data, list)
    assert sorted(v["frame_id"] for v in data) == ["side:1", "top:3"]
    assert all(Path(v["written"]).is_file() for v in data)
    assert {Path(v["written"]).name for v in data} == {"a7-side.jpg", "a7-top.jpg"}

    # a pass frame without a kept image: the verdict, and says no image was kept
    assert main(["show", "top:0", "--data-dir", str(line.data_dir)]) == 0
    assert "station top: pass" in capsys.readouterr().out
    assert main(["show", "nope:1", "--data-dir", str(line.data_dir)]) == 1
    assert "no frame or part 'nope:1'" in capsys.readouterr().err


def test_annotate_draws_boxes_and_labels_on_a_copy() -> None:
    image = np.zeros((64, 96, 3), np.uint8)
    drawn = annotate(image, [("pit", 0.5, (10.0, 20.0, 40.0, 50.0)),
                             ("stain", 1.0, (-5.0, 0.0, 200.0, 80.0))])  # clipped
    assert not image.any()  # the input is never drawn on
    assert tuple(int(v) for v in drawn[35, 10]) == class_colour("pit")
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    grey = annotate(np.zeros((30, 30), np.uint8), [("pit", 0.5, (1.0, 1.0, 9.0, 9.0))])
    assert grey.shape == (30, 30, 3)

"""The pipeline end to end with real ONNX models, a real SQLite store and in-memory
sources: verdicts, every frame exactly one row (also when forced to drop), ROI per
station, batching across stations, no-model, deadlines and worker preprocessing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from appliance.capture import ReplaySource
from appliance.pipeline.source_stage import Station
from appliance.records import UninspectedReason
from models.bundle import Bundle
from tests.appliance.pipeline_helpers import (
    BLACK,
    RAW_WHITE_DEFECTS,
    WHITE,
    SlowDetector,
    db_rows,
    defect_set,
    engine_for,
    make_pipeline,
    make_store,
    run_until_done,
    seq_of,
    tiny_bundle,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundles"))


@pytest.mark.parametrize("preprocess", ["engine", "worker"])
def test_every_frame_judged_once_with_the_right_verdict(
    tmp_path: Path, bundle: Bundle, preprocess: str
) -> None:
    engine = engine_for()
    model = engine.load(bundle)
    store = make_store(tmp_path)
    source = ReplaySource([WHITE, BLACK], part_ids=["p-white", "p-black"])
    pipeline, records, _ = make_pipeline(
        [Station("cam", source)], store, model, engine, max_frames=40,
        overflow="block", preprocess=preprocess,
    )
    run_until_done(pipeline)
    store.stop()

    rows = db_rows(store_path(tmp_path))
    assert len(rows) == 40
    assert sorted(seq_of(r[0]) for r in rows) == list(range(40))
    by_id = records.by_id()
    for seq in range(40):
        record = by_id[f"cam:{seq}"]
        assert record.model_version == "tiny:1"
        assert record.preprocess_hash == bundle.manifest.preprocess.version_hash()
        if seq % 2 == 0:
            assert record.part_id == "p-white"
            assert record.verdict == "fail"
            assert defect_set(record) == RAW_WHITE_DEFECTS
        else:
            assert record.verdict == "pass" and record.defects == ()
        assert set(record.latency_ms) == {"queue", "preprocess", "batch_wait", "infer",
                                          "postprocess", "total"}
        assert all(v >= 0 for v in record.latency_ms.values())
    stats = pipeline.stats()
    assert stats.frames == 40
    assert stats.verdicts == {"pass": 20, "fail": 20, "uninspected": 0}
    assert stats.defects == {"dent": 20, "scratch": 20}
    assert stats.stations["cam"].state == "ended"
    assert pipeline.preprocess_mode == preprocess


def store_path(root: Path) -> Path:
    return root / "db" / "lineguard.db"


def test_forced_drops_every_frame_still_has_exactly_one_row(tmp_path: Path,
                                                            bundle: Bundle) -> None:
    slow = type("Slow", (SlowDetector,), {"delay_s": 0.01})
    engine = engine_for(slow, warmup_runs=0)
    model = engine.load(bundle, verify=False)
    store = make_store(tmp_path)
    n = 150
    pipeline, records, _ = make_pipeline(
        [Station("cam", ReplaySource([WHITE, BLACK]))], store, model, engine, max_frames=n,
        queue_frames=2, max_batch=2, post_queue_batches=1, overflow="drop",
    )
    run_until_done(pipeline)
    store.stop()

    rows = db_rows(store_path(tmp_path))
    assert len(rows) == n
    assert sorted(seq_of(r[0]) for r in rows) == list(range(n))
    dropped = [r for r in rows if r[1] == "uninspected"]
    assert dropped, "the slow engine should have forced drops"
    assert {r[2] for r in dropped} == {"dropped"}
    judged = [r for r in rows if r[1] != "uninspected"]
    assert judged and all(r[3] == "tiny:1" for r in judged)
    stats = pipeline.stats()
    assert stats.stations["cam"].dropped == len(dropped)
    assert stats.uninspected == {"dropped": len(dropped)}
    assert len(records.records) == n


def test_station_roi_crops_before_preprocessing_and_maps_boxes_back(
    tmp_path: Path, bundle: Bundle
) -> None:
    engine = engine_for()
    model = engine.load(bundle)
    store = make_store(tmp_path)
    frame = np.zeros((200, 300, 3), dtype=np.uint8)
    frame[50:114, 100:164] = 255  # a white 64x64 patch: the ROI sees only white
    stations = [
        Station("roi", ReplaySource([frame], max_fps=200.0), roi_xywh=(100, 50, 64, 64)),
        Station("full", ReplaySource([frame], max_fps=200.0)),
    ]
    pipeline, records, _ = make_pipeline(stations, store, model, engine, max_frames=10,
                                         overflow="block")
    run_until_done(pipeline)
    store.stop()

    roi = [r for r in records.records if r.station == "roi"]
    full = [r for r in records.records if r.station == "full"]
    assert roi and full and len(roi) + len(full) == 10
    shifted = {(name, (x1 + 100, y1 + 50, x2 + 100, y2 + 50))
               for name, (x1, y1, x2, y2) in RAW_WHITE_DEFECTS}
    for record in roi:
        assert record.verdict == "fail"
        assert defect_set(record) == shifted
        assert record.image_bgr is not None and record.image_bgr.shape == (200, 300, 3)
    # the whole frame is mostly black: mean too low for any score above threshold
    assert all(r.verdict == "pass" for r in full)


def test_roi_outside_the_frame_is_uninspected_with_one_alarm(tmp_path: Path,
                                                             bundle: Bundle) -> None:
    engine = engine_for()
    store = make_store(tmp_path)
    pipeline, records, events = make_pipeline(
        [Station("cam", ReplaySource([WHITE]), roi_xywh=(0, 0, 100, 100))], store,
        engine.load(bundle), engine, max_frames=5, overflow="block",
    )
    run_until_done(pipeline)
    store.stop()
    assert [r.reason for r in records.records] == ["engine_failure"] * 5
    assert len(events.alarms("roi_outside_frame")) == 1


def test_batches_mix_stations_in_arrival_order(tmp_path: Path, bundle: Bundle) -> None:
    slow = type("Slow", (SlowDetector,), {"delay_s": 0.02})
    engine = engine_for(slow, warmup_runs=0)
    store = make_store(tmp_path)
    stations = [Station(name, ReplaySource([WHITE, BLACK], max_fps=200.0))
                for name in ("a", "b", "c")]
    pipeline, records, _ = make_pipeline(stations, store, engine.load(bundle, verify=False),
                                         engine, max_frames=60, overflow="block",
                                         max_batch=6, max_wait_ms=5)
    batches: list[tuple[str, ...]] = []
    order: list[tuple[str, ...]] = []

    def on_batch(info: object) -> None:
        batches.append(info.stations)  # type: ignore[attr-defined]
        order.append(info.frame_ids)  # type: ignore[attr-defined]

    pipeline.add_batch_listener(on_batch)
    run_until_done(pipeline)
    store.stop()
    assert len(records.records) == 60
    assert any(len(set(b)) > 1 for b in batches), batches
    assert max(len(b) for b in batches) <= 6
    # order preserved per station: within the batch sequence each station's seqs ascend
    seen: dict[str, int] = {}
    for frame_id in (f for ids in order for f in ids):
        station, seq = frame_id.split(":")
        assert seq_of(frame_id) > seen.get(station, -1)
        seen[station] = int(seq)


def test_without_a_model_every_frame_is_uninspected_no_model(tmp_path: Path) -> None:
    engine = engine_for()
    store = make_store(tmp_path)
    pipeline, records, _ = make_pipeline([Station("cam", ReplaySource([WHITE]))], store,
                                         None, engine, max_frames=12, overflow="block")
    run_until_done(pipeline)
    store.stop()
    assert len(records.records) == 12
    assert {(r.verdict, r.reason) for r in records.records} == {("uninspected", "no_model")}


def test_deadline_missed_becomes_uninspected_and_late_results_never_overwrite(
    tmp_path: Path, bundle: Bundle
) -> None:
    slow = type("Slow", (SlowDetector,), {"delay_s": 0.08})
    engine = engine_for(slow, warmup_runs=0)
    store = make_store(tmp_path)
    pipeline, records, _ = make_pipeline(
        [Station("cam", ReplaySource([WHITE], max_fps=100.0))], store,
        engine.load(bundle, verify=False), engine, max_frames=20, overflow="block",
        max_batch=1, verdict_deadline_ms=40.0,
    )
    run_until_done(pipeline)
    store.stop()
    rows = db_rows(store_path(tmp_path))
    assert len(rows) == 20 and len({r[0] for r in rows}) == 20
    reasons = {r[2] for r in rows if r[1] == "uninspected"}
    assert reasons == {"deadline"}
    assert len(records.records) == 20  # one delivery per frame, late results discarded
    for record in records.records:
        if record.reason == UninspectedReason.DEADLINE:
            assert record.latency_ms["total"] >= 35.0  # delivered at its deadline
    assert pipeline.book.late + pipeline.book.expired >= pipeline.book.expired > 0


def test_stop_drains_queued_frames(tmp_path: Path, bundle: Bundle) -> None:
    slow = type("Slow", (SlowDetector,), {"delay_s": 0.005})
    engine = engine_for(slow, warmup_runs=0)
    store = make_store(tmp_path)
    pipeline, _records, _ = make_pipeline(
        [Station("cam", ReplaySource([WHITE, BLACK]))], store,
        engine.load(bundle, verify=False), engine, overflow="block", queue_frames=16,
    )
    pipeline.start()
    time.sleep(0.3)
    pipeline.stop()
    store.stop()
    rows = db_rows(store_path(tmp_path))
    stats = pipeline.stats()
    assert len(rows) == stats.frames > 0
    assert sorted(seq_of(r[0]) for r in rows) == list(range(stats.frames))
    # with time to drain, the queued frames were judged, not written off
    assert all(r[1] != "uninspected" for r in rows)

"""Hot swap: frames keep flowing, every frame is judged by exactly one complete model
version (its defects are exactly that version's), the switch happens between batches
in frame order, and none is lost. A bundle that cannot load leaves the old model."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from appliance.capture import ReplaySource
from appliance.errors import EngineError
from appliance.pipeline.source_stage import Station
from appliance.records import InspectionRecord
from models.bundle import Bundle
from models.runtime import OnnxDetector
from tests.appliance.pipeline_helpers import (
    E2E_WHITE_DEFECTS,
    RAW_WHITE_DEFECTS,
    WHITE,
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
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Bundle]:
    root = tmp_path_factory.mktemp("bundles")
    return tiny_bundle(root, version=1), tiny_bundle(root, version=2, output_format="end2end")


@pytest.mark.parametrize("preprocess", ["engine", "worker"])
def test_hot_swap_mid_stream_judges_every_frame_by_one_complete_model(
    tmp_path: Path, bundles: tuple[Bundle, Bundle], preprocess: str
) -> None:
    v1, v2 = bundles
    engine = engine_for()
    store = make_store(tmp_path)
    n = 160
    pipeline, records, events = make_pipeline(
        [Station("cam", ReplaySource([WHITE], max_fps=400.0))], store, engine.load(v1),
        engine, max_frames=n, overflow="block", preprocess=preprocess, max_batch=4,
    )
    seen = threading.Event()
    count = {"n": 0}

    def trigger(record: InspectionRecord) -> None:
        count["n"] += 1
        if count["n"] == 40:
            seen.set()

    pipeline.add_listener(trigger)
    swapped: dict[str, object] = {}

    def swap() -> None:
        seen.wait(20)
        swapped["previous"] = pipeline.swap_model(v2)
        swapped["at"] = count["n"]

    swapper = threading.Thread(target=swap)
    swapper.start()
    run_until_done(pipeline)
    swapper.join(20)
    store.stop()

    assert swapped["previous"] is not None
    assert swapped["previous"].version_id == "tiny:1"  # type: ignore[attr-defined]
    rows = db_rows(tmp_path / "db" / "lineguard.db")
    assert len(rows) == n
    assert sorted(seq_of(r[0]) for r in rows) == list(range(n))
    ordered = sorted(records.records, key=lambda r: seq_of(r.frame_id))
    versions = [r.model_version for r in ordered]
    assert all(r.verdict == "fail" for r in ordered)  # no frame lost or uninspected
    for record in ordered:
        expected = RAW_WHITE_DEFECTS if record.model_version == "tiny:1" else E2E_WHITE_DEFECTS
        assert defect_set(record) == expected, record
    first_v2 = versions.index("tiny:2")
    assert first_v2 >= 40
    assert versions == ["tiny:1"] * first_v2 + ["tiny:2"] * (n - first_v2)
    changes = [e for e in events.events if e.kind == "model_change"]
    assert [(e.data["previous"], e.data["current"], e.data["reason"]) for e in changes] == [
        ("tiny:1", "tiny:2", "swap")
    ]


def test_a_bundle_that_fails_to_load_leaves_the_running_model(
    tmp_path: Path, bundles: tuple[Bundle, Bundle]
) -> None:
    v1, v2 = bundles
    engine = engine_for()
    store = make_store(tmp_path)
    pipeline, records, events = make_pipeline(
        [Station("cam", ReplaySource([WHITE], max_fps=400.0))], store, engine.load(v1),
        engine, max_frames=60, overflow="block",
    )

    def wrong_model(path: Path, providers: object, intra: int, inter: int) -> OnnxDetector:
        return OnnxDetector(v1.model_path, None, intra_op_threads=1)  # raw model, e2e bundle

    pipeline.start()
    engine._factory = wrong_model  # type: ignore[assignment]
    with pytest.raises(EngineError, match="tiny:2"):
        pipeline.swap_model(v2)
    assert pipeline.model is not None and pipeline.model.version_id == "tiny:1"
    assert pipeline.sources_finished.wait(20)
    pipeline.stop()
    store.stop()
    assert len(records.records) == 60
    assert {r.model_version for r in records.records} == {"tiny:1"}
    assert not [e for e in events.events if e.kind == "model_change"]


def test_a_batch_taken_before_a_swap_to_a_smaller_fixed_batch_is_split(
    tmp_path: Path, bundles: tuple[Bundle, Bundle]
) -> None:
    from appliance.capture import Frame
    from appliance.pipeline.job import Job
    from models.golden import build_bundle
    from tests.models.onnx_builders import (
        build_yolo_raw_model,
        simple_raw_detections,
        tiny_lineage,
    )

    boxes, scores = simple_raw_detections(3)
    onnx_path = build_yolo_raw_model(tmp_path / "fixed2.onnx", boxes, scores, batch=2)
    fixed = build_bundle(tmp_path / "fixed", onnx_path, name="fixed", version=2, label="f",
                         classes=["dent", "scratch", "stain"], input_hw=(64, 64),
                         lineage=tiny_lineage(),  # type: ignore[arg-type]
                         golden_images=[WHITE], providers=["cpu"])
    engine = engine_for()
    store = make_store(tmp_path)
    pipeline, records, _ = make_pipeline([Station("cam", ReplaySource([WHITE]))], store,
                                         engine.load(bundles[0]), engine)
    jobs = [(float(i), Job(Frame(f"cam:{i}", "cam", i, 0.0, None, WHITE), WHITE, (0, 0), 0.0))
            for i in range(5)]
    for _, job in jobs:
        pipeline.book.open(job.frame)
    pipeline.activate(engine.load(fixed))  # after the engine "took" 5 frames
    pipeline.infer.run_batch(jobs)
    while (batch := pipeline.post.inbox.get(0.0)) is not None:
        pipeline.post.finish(batch)
    store.stop()
    assert len(records.records) == 5
    assert {(r.verdict, r.model_version) for r in records.records} == {("fail", "fixed:2")}
    assert all(defect_set(r) == RAW_WHITE_DEFECTS for r in records.records)

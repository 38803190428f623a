"""Failures inside the pipeline: an engine that fails at run time (uninspected + alarm,
never a pass), a GPU provider that fails (CPU fallback + alarm), a stage that dies
(restarted, event, no frame lost), a source that is lost and comes back (events)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from appliance.capture import ReplaySource, SourceLost
from appliance.capture.source import SourceRead
from appliance.pipeline.source_stage import Station
from models.bundle import Bundle
from protocol.backoff import BackoffConfig
from tests.appliance.pipeline_helpers import (
    BLACK,
    RAW_WHITE_DEFECTS,
    WHITE,
    FailingDetector,
    FakeGpuDetector,
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


def test_engine_failure_at_run_time_gives_uninspected_and_one_alarm_never_a_pass(
    tmp_path: Path, bundle: Bundle
) -> None:
    failing = type("Failing", (FailingDetector,), {"ok_runs": 10**9, "runs": 0})
    engine = engine_for(failing, warmup_runs=0)
    model = engine.load(bundle, verify=False)
    failing.ok_runs = failing.runs + 3  # three good batches after loading, then it breaks
    store = make_store(tmp_path)
    pipeline, records, events = make_pipeline(
        [Station("cam", ReplaySource([BLACK]))], store, model, engine, max_frames=30,
        overflow="block", max_batch=1,
    )
    run_until_done(pipeline)
    store.stop()

    rows = db_rows(tmp_path / "db" / "lineguard.db")
    assert len(rows) == 30
    ordered = sorted(rows, key=lambda r: seq_of(r[0]))
    assert [r[1] for r in ordered[:3]] == ["pass"] * 3
    assert {(r[1], r[2]) for r in ordered[3:]} == {("uninspected", "engine_failure")}
    assert len(events.alarms("engine_failure")) == 1  # once, not once per batch
    assert pipeline.stats().engine_failures == 27
    assert all(r.verdict != "pass" for r in records.records
               if seq_of(r.frame_id) >= 3)


def test_gpu_failure_falls_back_to_cpu_with_an_alarm_and_loses_nothing(
    tmp_path: Path, bundle: Bundle
) -> None:
    gpu = type("Gpu", (FakeGpuDetector,), {"armed": False})

    def factory(path: Path, providers: object, intra: int, inter: int) -> FakeGpuDetector:
        cls = gpu if providers != ["cpu"] else FakeGpuDetector.__mro__[1]
        return cls(path, None, intra_op_threads=intra, inter_op_threads=inter)  # type: ignore[no-any-return]

    engine = engine_for(io_binding="off")
    engine._factory = factory  # type: ignore[assignment]
    model = engine.load(bundle)
    assert model.on_gpu
    gpu.armed = True
    store = make_store(tmp_path)
    pipeline, records, events = make_pipeline(
        [Station("cam", ReplaySource([WHITE, BLACK]))], store, model, engine,
        max_frames=20, overflow="block", preprocess="engine",
    )
    run_until_done(pipeline)
    store.stop()

    assert len(records.records) == 20
    assert all(r.verdict in ("pass", "fail") for r in records.records)
    for r in records.records:
        assert r.verdict == ("fail" if seq_of(r.frame_id) % 2 == 0 else "pass")
        if r.verdict == "fail":
            assert defect_set(r) == RAW_WHITE_DEFECTS
    assert len(events.alarms("engine_fallback")) == 1
    changes = [e for e in events.events if e.kind == "model_change"]
    assert changes and changes[-1].data["reason"] == "cpu_fallback"
    stats = pipeline.stats()
    assert stats.engine_fallbacks == 1
    assert stats.providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(("preprocess", "dying_stage"), [
    ("worker", "postprocess"),  # postprocessing in its own thread
    ("engine", "engine"),  # CPU layout: the engine thread postprocesses its batches
])
def test_a_stage_that_dies_is_restarted_with_an_event_and_no_frame_is_lost(
    tmp_path: Path, bundle: Bundle, preprocess: str, dying_stage: str
) -> None:
    engine = engine_for()
    store = make_store(tmp_path)
    pipeline, _records, events = make_pipeline(
        [Station("cam", ReplaySource([WHITE]))], store, engine.load(bundle), engine,
        max_frames=30, overflow="block", restart_backoff={"initial_s": 0.01},
        preprocess=preprocess,
    )
    original = pipeline.post.finish
    calls = {"n": 0}

    def dying_finish(batch: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected bug in the postprocess stage")
        original(batch)  # type: ignore[arg-type]

    pipeline.post.finish = dying_finish  # type: ignore[method-assign]
    run_until_done(pipeline)
    store.stop()

    rows = db_rows(tmp_path / "db" / "lineguard.db")
    assert len(rows) == 30
    assert sorted(seq_of(r[0]) for r in rows) == list(range(30))
    restarts = [e for e in events.events if e.kind == "stage_restart"]
    assert len(restarts) == 1 and restarts[0].data["stage"] == dying_stage
    lost = [r for r in rows if r[1] == "uninspected"]
    assert lost and {r[2] for r in lost} == {"engine_failure"}
    assert len(lost) == restarts[0].data["frames_lost_to_engine_failure"]
    assert pipeline.stats().stage_restarts == {dying_stage: 1}


class FlakySource:
    """Delivers `before` frames, loses the device once, then delivers forever."""

    def __init__(self, before: int) -> None:
        self.before = before
        self.reads = 0
        self.lost = False
        self.lock = threading.Lock()

    def open(self) -> None:
        return None

    def read(self) -> SourceRead:
        self.reads += 1
        if self.reads == self.before + 1 and not self.lost:
            self.lost = True
            raise SourceLost("injected: cable pulled")
        return WHITE, None, None

    def close(self) -> None:
        return None


def test_source_loss_and_reconnect_are_events(tmp_path: Path, bundle: Bundle) -> None:
    engine = engine_for()
    store = make_store(tmp_path)
    station = Station("cam", FlakySource(5),
                      reconnect=BackoffConfig(initial_s=0.01, max_s=0.02))
    pipeline, records, events = make_pipeline([station], store, engine.load(bundle), engine,
                                              max_frames=12, overflow="block")
    run_until_done(pipeline)
    store.stop()
    assert len(records.records) == 12
    states = [(e.data["old"], e.data["new"], e.severity) for e in events.events
              if e.kind == "source_state"]
    assert ("streaming", "lost", "alarm") in states
    reconnect = [e for e in events.events if e.kind == "source_state"
                 and e.data["new"] == "streaming" and e.data["reconnects"] == 1]
    assert reconnect and reconnect[0].data["gap_s"] is not None
    assert pipeline.stats().stations["cam"].reconnects == 1


class DownForAWhileSource:
    """Delivers `before` frames, loses the device, refuses `refusals` reopens (a camera
    that is off for a while), then delivers forever."""

    def __init__(self, before: int, refusals: int) -> None:
        self.before = before
        self.refusals = refusals
        self.reads = 0
        self.down = False

    def open(self) -> None:
        if self.down and self.refusals > 0:
            self.refusals -= 1
            raise SourceLost("injected: connection refused")
        self.down = False

    def read(self) -> SourceRead:
        self.reads += 1
        if self.reads == self.before + 1:
            self.down = True
            raise SourceLost("injected: camera powered off")
        return WHITE, None, None

    def close(self) -> None:
        return None


def test_an_outage_with_failed_reopens_is_one_lost_alarm(tmp_path: Path,
                                                         bundle: Bundle) -> None:
    """Issue 9 (streams): the gap is one event. On main the first failed reopen after a
    read loss was recorded as a second `lost` alarm."""
    engine = engine_for()
    store = make_store(tmp_path)
    station = Station("cam", DownForAWhileSource(5, refusals=3),
                      reconnect=BackoffConfig(initial_s=0.01, max_s=0.02))
    pipeline, records, events = make_pipeline([station], store, engine.load(bundle), engine,
                                              max_frames=12, overflow="block")
    run_until_done(pipeline)
    store.stop()
    assert len(records.records) == 12
    moves = [(e.data["old"], e.data["new"], e.severity) for e in events.events
             if e.kind == "source_state"]
    assert moves == [("connecting", "streaming", "info"), ("streaming", "lost", "alarm"),
                     ("connecting", "streaming", "info"), ("streaming", "ended", "info")]
    assert pipeline.stats().stations["cam"].reconnects == 1

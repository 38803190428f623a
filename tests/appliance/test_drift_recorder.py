"""Drift windows on the line: signals per inspected frame, windows as `drift/2`
messages, no double counting, a restart mid-window resumes it from the store, and the
cloud's `cmd/alert` shown as an alarm once."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

import linesim
from appliance.drift.alerts import AlertListener
from appliance.drift.config import DriftConfig
from appliance.drift.recorder import DriftRecorder, ModelFacts
from appliance.drift.state import WindowStateStore
from appliance.records import DefectRecord, InspectionRecord
from appliance.store.schema.migrations import MIGRATIONS
from models.drift.signals import SIGNAL_NAMES
from protocol import decode, encode
from protocol.alerts import AlertCommand
from protocol.drift import DriftSketchV2
from protocol.fields import ModelRef
from tests.appliance.store_rig import open_store

MODEL = ModelRef(name="demo", version=3)
FACTS = ModelFacts(MODEL, ("scratch", "pit", "crack", "stain"))
LINE_CFG = linesim.LineConfig(width_px=320, height_px=240, seed=5)
IMAGES = [linesim.render(LINE_CFG, i) for i in range(8)]


def record(seq: int, station: str = "cam", verdict: str = "fail") -> InspectionRecord:
    part = IMAGES[seq % len(IMAGES)]
    defects = tuple(DefectRecord(d.class_id, d.class_name, 0.8, (d.x1, d.y1, d.x2, d.y2))
                    for d in part.defects) if verdict == "fail" else ()
    return InspectionRecord(
        frame_id=f"{station}:{seq}", station=station, part_id=None, captured_at=1e9 + seq,
        judged_at=1e9 + seq + 0.05, verdict=verdict if defects or verdict != "fail" else "pass",
        reason=None, model_version="demo:3", preprocess_hash=None, latency_ms={},
        defects=defects, image_bgr=part.image_bgr)


class Sent:
    def __init__(self) -> None:
        self.messages: list[DriftSketchV2] = []

    def __call__(self, message: DriftSketchV2) -> bool:
        self.messages.append(message)
        return True


def recorder(sent: Sent, **kw: object) -> DriftRecorder:
    cfg = DriftConfig(window_frames=kw.pop("window_frames", 10), persist_every_frames=5)  # type: ignore[arg-type]
    return DriftRecorder(cfg, site="plant1", line="line-3", publish=sent,
                         models=lambda vid: FACTS if vid == "demo:3" else None,
                         clock=lambda: 1e9, **kw)  # type: ignore[arg-type]


def test_windows_are_valid_messages_and_never_count_a_frame_twice() -> None:
    sent = Sent()
    rec = recorder(sent)
    for seq in [*range(0, 12), 5, 11, *range(12, 20)]:
        rec.handle(record(seq))
    assert [(m.first_frame_id, m.last_frame_id, m.frame_count) for m in sent.messages] == [
        (0, 9, 10), (10, 19, 10)]
    m = sent.messages[0]
    assert len(encode(m)) < 64 * 1024
    assert decode("lineguard/plant1/line-3/drift", encode(m)) == m
    assert m.image is not None and m.image.names == list(SIGNAL_NAMES)
    assert len(m.image.samples) == 10 and m.ref_model == MODEL and m.station == "cam"
    assert m.output is not None and m.output.names[:3] == ["detections", "score_mean", "score_max"]
    detections = sum(len(record(s).defects) for s in range(10))
    assert m.output.sums[0] == pytest.approx(detections)
    means = np.asarray(m.image.sums) / m.frame_count
    assert np.all(np.isfinite(means))


def test_uninspected_frames_and_unknown_models_are_not_counted() -> None:
    sent = Sent()
    rec = recorder(sent)
    rec.on_verdict(InspectionRecord(
        frame_id="cam:0", station="cam", part_id=None, captured_at=1.0, judged_at=1.0,
        verdict="uninspected", reason="deadline", model_version=None, preprocess_hash=None,
        latency_ms={}))
    other = record(1)
    rec.handle(InspectionRecord(**{**{f: getattr(other, f) for f in (
        "frame_id", "station", "part_id", "captured_at", "judged_at", "verdict", "reason",
        "preprocess_hash", "latency_ms", "defects", "image_bgr")}, "model_version": "x:1"}))
    assert rec.counted == 0


def test_a_restart_mid_window_resumes_it(tmp_path: Path) -> None:
    """Counted frames are saved every 5 frames and at stop; the next run resumes the
    window: a window of exactly 10 frames, none twice, none lost."""
    sent = Sent()
    store = open_store(tmp_path)
    try:
        rec = recorder(sent, save=WindowStateStore(store, lambda: 1e9).save)
        for seq in range(7):
            rec.handle(record(seq))
        rec.stop()
        store.flush()
    finally:
        store.stop()
    assert sent.messages == []
    store = open_store(tmp_path)
    try:
        saved = WindowStateStore(store, lambda: 1e9).load()
        assert saved["cam"].frames == 7
        rec = recorder(sent, save=WindowStateStore(store, lambda: 1e9).save, saved=saved)
        for seq in range(5, 15):  # 5 and 6 are seen again after the restart
            rec.handle(record(seq))
    finally:
        store.stop()
    assert [(m.first_frame_id, m.last_frame_id, m.frame_count) for m in sent.messages] == [
        (0, 9, 10)]
    assert len(MIGRATIONS) >= 7


def test_the_recorder_thread_keeps_up_and_is_bounded() -> None:
    sent = Sent()
    rec = DriftRecorder(DriftConfig(window_frames=10, queue_max_frames=4), site="plant1",
                        line="line-3", publish=sent, models=lambda vid: FACTS)
    for seq in range(40):  # not started: the queue fills and the rest are skipped
        rec.on_verdict(record(seq))
    assert rec.skipped_busy == 36
    rec.start()
    rec.stop()
    assert rec.counted == 4


def test_a_fast_station_is_measured_at_most_max_frames_per_s() -> None:
    """At 100 frames/s (by capture time) and a 30 frames/s cap, one frame in four is
    measured (the first at least 1/30 s after the last taken), per station."""
    rec = DriftRecorder(DriftConfig(window_frames=10, queue_max_frames=1000,
                                    max_frames_per_s=30.0),
                        site="plant1", line="line-3", publish=Sent(), models=lambda vid: FACTS)
    for seq in range(40):
        for station in ("a", "b"):
            r = record(seq, station)
            rec.on_verdict(replace(r, captured_at=1e9 + seq * 0.01))
    assert (rec.skipped_rate, rec.skipped_busy) == (60, 0)
    assert rec._queue.qsize() == 20
    slow = DriftRecorder(DriftConfig(queue_max_frames=1000, max_frames_per_s=30.0),
                         site="plant1", line="line-3", publish=Sent(), models=lambda vid: FACTS)
    for seq in range(40):  # one frame a second: every one is measured
        slow.on_verdict(record(seq))
    assert slow.skipped_rate == 0 and slow._queue.qsize() == 40


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
def test_the_signal_thread_runs_at_a_lower_priority() -> None:
    """Drift is background work: its thread yields the CPU to the pipeline's."""
    rec = DriftRecorder(DriftConfig(thread_nice=5), site="plant1", line="line-3",
                        publish=Sent(), models=lambda vid: FACTS)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base + 5 > 19:
        pytest.skip("the tests already run at the lowest priority")
    rec.start()
    try:
        thread = rec._thread
        assert thread is not None and thread.native_id is not None
        deadline = time.monotonic() + 5.0
        while os.getpriority(os.PRIO_PROCESS, thread.native_id) != base + 5:
            assert time.monotonic() < deadline, "the drift thread kept its priority"
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the process's is unchanged
    finally:
        rec.stop()


def alert(alert_id: str = "drift-0123456789abcdef", **kw: object) -> AlertCommand:
    fields: dict[str, object] = dict(
        msg_id="ab" * 16, site="plant1", line="line-3", sent_at=datetime.now(UTC),
        alert_id=alert_id, code="drift", severity="info", message="image drift: roi.std",
        station="cam", model=MODEL, channels=["roi.std"], raised_at=datetime.now(UTC),
        issued_by="drift-monitor")
    fields.update(kw)
    return AlertCommand(**fields)  # type: ignore[arg-type]


def test_alert_becomes_one_alarm() -> None:
    raised: list[tuple[str, str, str | None, str]] = []
    listener = AlertListener(lambda code, message, station=None, severity="warning":
                             raised.append((code, message, station, severity)),
                             site="plant1", line="line-3")
    listener(alert())
    listener(alert())  # QoS 1 redelivery: shown once
    listener(alert("drift-1111111111111111", line="line-4"))  # not ours
    listener(object())  # another command: ignored
    assert len(raised) == 1
    code, message, station, severity = raised[0]
    assert (code, station, severity) == ("drift", "cam", "warning")
    assert "roi.std" in message and "drift-0123456789abcdef" in message
    assert listener.ignored == 1

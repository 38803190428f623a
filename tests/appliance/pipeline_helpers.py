"""Shared helpers of the pipeline, engine and app tests: tiny bundles, stores, frames,
and detectors with injected behaviour (slow, failing, pretending to be on a GPU).

The tiny yolo_raw bundle (tests.models.onnx_builders) scores every anchor with
``base * mean(input)``: a white 64x64 frame yields exactly two defects (dent 0.9 at
input box xyxy (10, 10, 30, 30), scratch 0.7 at (10, 11, 30, 31)), a black frame none.
The end2end variant yields dent 0.9 at (10, 10, 30, 30) and stain 0.6 at
(12, 12, 40, 44) for a white frame.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from appliance.app import build_pipeline
from appliance.config import EngineConfig, PipelineConfig
from appliance.pipeline import Pipeline
from appliance.pipeline.engine import Engine, LoadedModel
from appliance.pipeline.source_stage import Station
from appliance.records import EventRecord, InspectionRecord
from appliance.store import ImageKeepConfig, Store, StoreConfig
from models.bundle import Bundle
from models.errors import ModelError
from models.preprocess import Tensor
from models.runtime import OnnxDetector
from tests.models.onnx_builders import build_tiny_bundle

WHITE = np.full((64, 64, 3), 255, dtype=np.uint8)
BLACK = np.zeros((64, 64, 3), dtype=np.uint8)

RAW_WHITE_DEFECTS = {("dent", (10.0, 10.0, 30.0, 30.0)), ("scratch", (10.0, 11.0, 30.0, 31.0))}
E2E_WHITE_DEFECTS = {("dent", (10.0, 10.0, 30.0, 30.0)), ("stain", (12.0, 12.0, 40.0, 44.0))}


def tiny_bundle(root: Path, *, version: int = 1, output_format: str = "yolo_raw") -> Bundle:
    bundle = build_tiny_bundle(root / f"bundle-v{version}", root / f"work-v{version}",
                               output_format=output_format, version=version)
    assert isinstance(bundle, Bundle)
    return bundle


def store_config(root: Path, **kw: object) -> StoreConfig:
    return StoreConfig(path=root / "db" / "lineguard.db",
                       images=ImageKeepConfig(dir=root / "images", min_free_disk_bytes=0),
                       flush_interval_ms=10, **kw)  # type: ignore[arg-type]


def make_store(root: Path) -> Store:
    store = Store(store_config(root))
    store.start()
    return store


class SlowDetector(OnnxDetector):
    """Sleeps `delay_s` before every run (a slow engine)."""

    delay_s = 0.0

    def run(self, batch: Tensor) -> Tensor:
        time.sleep(self.delay_s)
        return super().run(batch)


class FailingDetector(OnnxDetector):
    """Works for `ok_runs` runs, then raises ModelError on every run."""

    ok_runs = 0
    runs = 0

    def run(self, batch: Tensor) -> Tensor:
        type(self).runs += 1
        if type(self).runs > type(self).ok_runs:
            raise ModelError("injected: device lost")
        return super().run(batch)


class FakeGpuDetector(OnnxDetector):
    """Claims to run on CUDA and fails every live run (warm-up and checks pass)."""

    armed = False

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, batch: Tensor) -> Tensor:
        if type(self).armed:
            raise ModelError("injected: CUDA error: an illegal memory access was encountered")
        return super().run(batch)


def factory_of(cls: type[OnnxDetector]):  # type: ignore[no-untyped-def]
    def factory(path: Path, providers: Sequence[str] | None, intra: int,
                inter: int) -> OnnxDetector:
        return cls(path, providers, intra_op_threads=intra, inter_op_threads=inter)
    return factory


def engine_for(cls: type[OnnxDetector] = OnnxDetector, max_batch: int = 8,
               **cfg: object) -> Engine:
    base = {"intra_op_threads": 1, "warmup_runs": 1}
    return Engine(EngineConfig(**{**base, **cfg}), max_batch=max_batch,  # type: ignore[arg-type]
                  factory=factory_of(cls))


class EventLog:
    """Collects pipeline events (listener) for assertions."""

    def __init__(self) -> None:
        self.events: list[EventRecord] = []
        self._lock = threading.Lock()

    def __call__(self, event: EventRecord) -> None:
        with self._lock:
            self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def alarms(self, name: str | None = None) -> list[EventRecord]:
        return [e for e in self.events
                if e.kind == "alarm" and (name is None or e.data.get("alarm") == name)]


class RecordLog:
    """Collects delivered verdicts (listener)."""

    def __init__(self) -> None:
        self.records: list[InspectionRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: InspectionRecord) -> None:
        with self._lock:
            self.records.append(record)

    def by_id(self) -> dict[str, InspectionRecord]:
        return {r.frame_id: r for r in self.records}


def make_pipeline(
    stations: Sequence[Station], store: Store, model: LoadedModel | None, engine: Engine,
    *, max_frames: int | None = None, **cfg: object,
) -> tuple[Pipeline, RecordLog, EventLog]:
    pipeline = build_pipeline(PipelineConfig(**cfg), stations, engine, store,  # type: ignore[arg-type]
                              model=model, max_frames=max_frames)
    records, events = RecordLog(), EventLog()
    pipeline.add_listener(records)
    pipeline.add_event_listener(events)
    return pipeline, records, events


def run_until_done(pipeline: Pipeline, timeout_s: float = 20.0) -> None:
    """Start, wait for the sources to finish (frame budget / end), stop (drain)."""
    pipeline.start()
    assert pipeline.sources_finished.wait(timeout_s), "sources did not finish in time"
    pipeline.stop()


def db_rows(db_path: Path) -> list[tuple[str, str, str | None, str | None]]:
    """(frame_id, verdict, reason, model_version) of every inspection row."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute(
            "SELECT frame_id, verdict, reason, model_version FROM inspections ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def seq_of(frame_id: str) -> int:
    return int(frame_id.rsplit(":", 1)[1])


def defect_set(record: InspectionRecord) -> set[tuple[str, tuple[float, ...]]]:
    return {(d.class_name, tuple(round(v, 3) for v in d.box_xyxy)) for d in record.defects}


def frames_of(*images: npt.NDArray[np.uint8]) -> list[npt.NDArray[np.uint8]]:
    return list(images)

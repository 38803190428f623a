"""Composing the frame path (called by `App.start`; tests and benchmarks call
`build_pipeline` directly): one `SourceStage` per station, preprocess workers in worker
mode, the dynamic batcher, the engine and postprocess stages, the verdict book and its
sinks. Also what the engine needs of the stations (`station_optics`) and opening the
configured bundle (`open_model_bundle`).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from appliance.capture import Frame, FrameSource, make_source
from appliance.config import PipelineConfig, StationConfig
from appliance.errors import ConfigError
from appliance.pipeline.batcher import DynamicBatcher
from appliance.pipeline.cpu import CpuMeter
from appliance.pipeline.engine import Engine, LoadedModel, StationOptics
from appliance.pipeline.events import Events
from appliance.pipeline.health import EngineHealth
from appliance.pipeline.inbox import Inbox, Inline, Outbox
from appliance.pipeline.infer_stage import InferStage
from appliance.pipeline.job import Batch, Job
from appliance.pipeline.pipeline import Pipeline
from appliance.pipeline.post_stage import PostprocessStage
from appliance.pipeline.preprocess_stage import PreprocessStage
from appliance.pipeline.slot import ModelSlot
from appliance.pipeline.source_stage import FrameBudget, SourceStage, Station, StationsDone
from appliance.pipeline.stats import VerdictCounters
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.pipeline.verdicts import VerdictBook
from appliance.records import EventRecord, InspectionRecord
from appliance.records import UninspectedReason as Reason
from calibration.camera_model import load_camera
from calibration.errors import CalibrationError
from models.bundle import Bundle, open_bundle


class VerdictStore(Protocol):
    """What the frame path needs from the store (appliance.store.Store fits)."""

    def submit(self, record: InspectionRecord) -> None: ...

    def record_event(self, event: EventRecord) -> None: ...


def build_pipeline(
    cfg: PipelineConfig,
    stations: Sequence[Station],
    engine: Engine,
    store: VerdictStore,
    *,
    model: LoadedModel | None,
    max_frames: int | None = None,
    events: Events | None = None,
    on_captured: Callable[[Frame], None] | None = None,
    withhold_pass: Callable[[], Reason | None] | None = None,
    thresholds: ThresholdOverrides | None = None,
    clock: Callable[[], float] = time.time,
) -> Pipeline:
    """Compose the frame path (see the module docstring) for `stations`, judged by
    `model` (None: every frame is `uninspected: no_model` until a model is activated),
    its verdicts going to `store`; `max_frames` stops the sources after that many
    frames in all; `on_captured(frame)` is told of every frame before it can get a verdict
    (the store's captured high-water mark); while `withhold_pass()` names a reason, a
    `pass` is recorded as `uninspected: <reason>` (the store cannot commit);
    `thresholds` are the engineer's per-class overrides (the panel). Raises
    ValueError without stations."""
    if not stations:
        raise ValueError("a pipeline needs at least one station")
    events = events or Events(store, clock=clock)
    slot = ModelSlot(model)
    health = EngineHealth(events)
    counters = VerdictCounters()
    book = VerdictBook(
        [store.submit, counters.add],
        deadline_s=None if cfg.verdict_deadline_ms is None else cfg.verdict_deadline_ms / 1e3,
        keep_images=cfg.keep_images,
        clock=clock,
        on_open=on_captured,
        withhold_pass=withhold_pass,
    )
    batcher: DynamicBatcher[Job] = DynamicBatcher(
        max_batch=min(cfg.max_batch, model.max_batch if model else cfg.max_batch),
        max_wait_s=cfg.max_wait_ms / 1000.0,
        capacity=cfg.queue_frames,
        adaptive=cfg.batch_policy == "adaptive",
    )
    mode = cfg.preprocess
    if mode == "auto":
        mode = "worker" if model is not None and model.on_gpu else "engine"
    draining, abort = threading.Event(), threading.Event()
    cpu = CpuMeter()
    budget, done = FrameBudget(max_frames), StationsDone(len(stations))
    sources: list[SourceStage] = []
    workers: list[PreprocessStage] = []
    for station in stations:
        outbox: Outbox[Job] = batcher
        if mode == "worker":
            outbox = Inbox[Job](cfg.queue_frames)
        source = SourceStage(station, outbox=outbox, book=book, events=events, budget=budget,
                             done=done, overflow=cfg.overflow, abort=abort, cpu=cpu,
                             clock=clock)
        sources.append(source)
        if isinstance(outbox, Inbox):
            workers.append(PreprocessStage(station.name, inbox=outbox, outbox=batcher,
                                           slot=slot, book=book,
                                           upstream_finished=source.finished, abort=abort,
                                           cpu=cpu))
    # Worker mode (GPU): postprocessing overlaps with inference in its own thread. Engine
    # mode (CPU): the engine thread postprocesses its own batches (see `Inline`).
    infer_finished = threading.Event()
    post = PostprocessStage(inbox=Inbox[Batch](cfg.post_queue_batches), book=book,
                            health=health, upstream_finished=infer_finished, abort=abort,
                            keep_images=cfg.keep_images, cpu=cpu, clock=clock,
                            thresholds=thresholds,
                            sizing={s.name: s.sizing for s in stations if s.sizing})
    post_outbox: Outbox[Batch] = post.inbox if mode == "worker" else Inline(post.finish_batch)
    infer = InferStage(inbox=batcher, outbox=post_outbox, engine=engine, slot=slot, book=book,
                       events=events, health=health, draining=draining, abort=abort,
                       finished=infer_finished, cpu=cpu)
    return Pipeline(cfg, engine=engine, slot=slot, book=book, counters=counters,
                    events=events, health=health, batcher=batcher, sources=sources,
                    workers=workers, infer=infer, post=post, sources_finished=done.event,
                    draining=draining, abort=abort, cpu=cpu, clock=clock)


def build_stations(stations: Sequence[StationConfig], sources: Mapping[str, FrameSource],
                   next_sequence: Callable[[str], int]) -> list[Station]:
    """The configured stations, each reading `sources[name]` when given (benchmarks and
    tests pass in-memory ones) else the source its config names, and numbering frames
    from `next_sequence(name)` (the store's, so ids continue across restarts). Raises
    CaptureError/ConfigError when a source cannot be built."""
    return [
        Station(
            name=s.name,
            source=sources.get(s.name) or make_source(s.source),
            roi_xywh=s.roi_px,
            first_seq=next_sequence(s.name),
            reconnect=s.source.reconnect,
            min_frame_px=s.min_frame_px,
            frame_wh=s.frame_wh,
            sizing=s.calibration.sizing() if s.calibration else None,
        )
        for s in stations
    ]


def station_optics(stations: Sequence[StationConfig]) -> dict[str, StationOptics]:
    """Each station's camera calibration (read from its camera.json) and whether it
    crops, for the engine's check of bundles that undistort. Raises ConfigError when a
    camera.json cannot be read or is invalid."""
    optics = {}
    for s in stations:
        camera = None
        if s.calibration is not None and s.calibration.camera_json is not None:
            try:
                camera = load_camera(s.calibration.camera_json)
            except CalibrationError as e:
                raise ConfigError(f"stations[{s.name}].calibration.camera_json: {e}") from None
        optics[s.name] = StationOptics(camera=camera, crops=s.roi_px is not None)
    return optics


def open_model_bundle(path: Path, bundles_dir: Path, max_unpacked_bytes: int) -> Bundle:
    """A bundle directory, or a .tar/.tar.gz unpacked (safely, at most
    `max_unpacked_bytes`) under `bundles_dir`; a refused one leaves nothing there.
    Raises ModelError."""
    if path.is_dir():
        return open_bundle(path, bundles_dir)
    work_dir = bundles_dir / path.name.replace(".", "_")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    return open_bundle(path, work_dir, max_unpacked_bytes=max_unpacked_bytes)

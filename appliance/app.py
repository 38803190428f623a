"""The appliance process, wired in one place (Frigate's app.py): this module builds every
collaborator from the configuration and passes it in; nothing else builds stages.

`App.start` opens the store, loads the model, then `build_pipeline` composes the frame
path (one `SourceStage` per station, preprocess workers in worker mode, the dynamic
batcher, the engine and postprocess stages, the verdict book and its sinks) and the
pipeline starts them; `App.stop` stops them in reverse, then flushes and closes the
store. `App.run` is what `lineguard appliance run` and `lineguard demo` call: it runs
until the stop event is set (SIGTERM/SIGINT in the CLI), the frame budget is used up,
or every source ended, and returns a `RunSummary`.

Frame ids continue per station across restarts: a station's first seq is one more than
the highest seq it has in the store (`Store.next_sequence`, an indexed query; ids are
``"{station}:{seq}"``, UNIQUE in the store), so a restarted appliance never reuses an id.
A run that was killed (or stopped on a full disk) left frames captured without a verdict:
the store finds them from its captured high-water marks when it opens and records them
as `uninspected: crash` (appliance/store/marks.py) before the first seq is read.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from appliance.alarm_rules import AlarmInputs, AlarmMonitor, alarm_inputs
from appliance.alarms import AlarmBook
from appliance.capture import Frame, FrameSource, make_source
from appliance.capture.probe import require_file_sources
from appliance.config import ApplianceConfig, PipelineConfig, StationConfig
from appliance.drift.alerts import AlertListener
from appliance.drift.recorder import DriftRecorder
from appliance.drift.wiring import start_drift
from appliance.errors import ConfigError, EngineError, NoModelError, UpdateRejected
from appliance.labels import LabelBook
from appliance.panel.metrics import PrometheusExporter, state_from_app
from appliance.panel.ports import NoRollback, RollbackControl, RollbackUnavailable
from appliance.panel.service import Panel
from appliance.pipeline.batcher import DynamicBatcher
from appliance.pipeline.behind import BehindMonitor
from appliance.pipeline.cpu import CpuMeter
from appliance.pipeline.engine import (
    DetectorFactory,
    Engine,
    LoadedModel,
    ModelInfo,
    StationOptics,
    default_detector_factory,
)
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
from appliance.pipeline.stats import PipelineStats, VerdictCounters
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.pipeline.verdicts import VerdictBook
from appliance.readiness import Readiness, readiness_of
from appliance.records import EventRecord, EventValue, InspectionRecord, Severity
from appliance.records import UninspectedReason as Reason
from appliance.store import Store
from appliance.telemetry import Telemetry, TelemetryError, pipeline_gauges
from appliance.telemetry.messages import model_ref_from_version_id
from appliance.updater.panel_control import AgentRollback
from appliance.updater.service import Updates
from appliance.uploads.service import Uploads
from appliance.uploads.wiring import start_uploads
from appliance.users import UserBook
from appliance.watchdog import Notifier, Progress, Watchdog
from calibration.camera_model import load_camera
from calibration.errors import CalibrationError
from models.bundle import Bundle, open_bundle
from models.errors import ModelError
from protocol.app_version import app_version
from protocol.model_report import UpdateProgress

logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class RunSummary:
    """What a run did (printed by the CLI, `--json` prints `as_dict`)."""

    stopped_by: str
    """"frames" (budget used up), "signal" (stop event), or "sources_ended"."""
    duration_s: float
    frames: int
    verdicts: dict[str, int]
    uninspected: dict[str, int]
    defects: dict[str, int]
    throughput_fps: float
    latency_ms: dict[str, dict[str, float]]
    stations: dict[str, dict[str, Any]]
    model: dict[str, Any] | None
    providers: list[str]
    batches: int
    mean_batch: float
    store_path: str
    store_inspections: int
    """Rows in the store's inspections table after the run (all runs of this database)."""
    late_results: int
    engine_failures: int
    engine_fallbacks: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class App:
    """One appliance process. `sources` replaces the configured source of the named
    stations (benchmarks and tests pass in-memory ones); `listeners` get every verdict
    (see `Pipeline.add_listener`); `require_model` says whether a bundle that cannot
    load is an error at start (`NoModelError`) or a run of `uninspected: no_model` with
    the `no_model` alarm (None: as the config says, `model.allow_start_without_model`);
    `detector_factory` is the seam in front of ONNX Runtime; `rollback` is the panel's
    rollback control (the updater's; None: there is no previous bundle)."""

    def __init__(
        self,
        cfg: ApplianceConfig,
        *,
        max_frames: int | None = None,
        sources: Mapping[str, FrameSource] | None = None,
        listeners: Sequence[Callable[[InspectionRecord], None]] = (),
        require_model: bool | None = None,
        detector_factory: DetectorFactory = default_detector_factory,
        rollback: RollbackControl | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = sorted(set(sources or {}) - {s.name for s in cfg.stations})
        if unknown:
            raise ConfigError(f"sources given for stations not in the config: {unknown}")
        self.cfg = cfg
        self._max_frames = max_frames
        self._sources = dict(sources or {})
        self._listeners = list(listeners)
        self._require_model = (not cfg.model.allow_start_without_model
                               if require_model is None else require_model)
        self._clock = clock
        self.engine = Engine(cfg.engine, max_batch=cfg.pipeline.max_batch,
                             factory=detector_factory, stations=station_optics(cfg.stations))
        self.store: Store | None = None
        self.events: Events | None = None
        self.telemetry: Telemetry | None = None
        self.pipeline: Pipeline | None = None
        self.panel: Panel | None = None
        self.thresholds = ThresholdOverrides(cfg.thresholds_file)
        self._rollback = rollback
        self._behind: BehindMonitor | None = None
        self.alarms: AlarmBook | None = None
        """The alarm book (the panel's alarms), set while started."""
        self._alarm_rules: AlarmMonitor | None = None
        self.updates: Updates | None = None
        self._watchdog: Watchdog | None = None
        self._drift: DriftRecorder | None = None
        self.uploads: Uploads | None = None
        """Sample uploads to the cloud (appliance/uploads/), set while started."""
        self._started_at = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Pipeline:
        """Open the store, load the model, build the stations, start the pipeline
        (returned).
        Raises StoreError (store cannot open) or CaptureError/ConfigError (a source
        cannot be built, a video file or image folder that cannot be opened). A model
        that cannot load raises NoModelError unless starting without one is allowed
        (see the class docstring); then frames are recorded as `uninspected: no_model`
        and the `no_model` alarm is raised."""
        cfg = self.cfg
        self._started_at = time.monotonic()
        # A video file or image folder that cannot be opened is a config error before
        # anything is written; a camera or stream that is down is retried (and alarmed).
        require_file_sources([s.source for s in cfg.stations if s.name not in self._sources])
        self.store = Store(cfg.store, clock=self._clock)
        self.store.start()
        self.events = Events(self.store, clock=self._clock)
        try:
            self._event("appliance_start", "info", "app",
                        f"appliance {cfg.site}/{cfg.line} starting", site=cfg.site,
                        line=cfg.line, stations=len(cfg.stations))
            if cfg.updates is not None and cfg.updates.enabled:
                self.updates = Updates(cfg.updates, cfg.updates_dir, site=cfg.site,
                                       line=cfg.line,
                                       max_unpacked_bytes=cfg.model.max_unpacked_bytes)
                self.updates.open()
            model = self._load_model(cfg.model.bundle)
            stations = [
                Station(
                    name=s.name,
                    source=self._sources.get(s.name) or make_source(s.source),
                    roi_xywh=s.roi_px,
                    first_seq=self.store.next_sequence(s.name),
                    reconnect=s.source.reconnect,
                    min_frame_px=s.min_frame_px,
                    frame_wh=s.frame_wh,
                    sizing=s.calibration.sizing() if s.calibration else None,
                )
                for s in cfg.stations
            ]
            self.pipeline = build_pipeline(cfg.pipeline, stations, self.engine, self.store,
                                           model=model, max_frames=self._max_frames,
                                           events=self.events,
                                           on_captured=self._note_captured(self.store),
                                           withhold_pass=self._store_full(self.store),
                                           thresholds=self.thresholds, clock=self._clock)
            if model is not None:
                self._event("model_change", "info", "engine",
                            f"model {model.version_id} active at start", previous=None,
                            current=model.version_id, reason="start",
                            providers=",".join(model.info.providers))
            for listener in self._listeners:
                self.pipeline.add_listener(listener)
            self.alarms = AlarmBook(self.store, clock=self._clock)
            self.uploads = start_uploads(cfg.uploads, self.store, self.alarms,
                                         site=cfg.site, line=cfg.line,
                                         data_dir=cfg.data_dir, model=self._current_model,
                                         add_listener=self.pipeline.add_listener,
                                         clock=self._clock)
            self.telemetry = self._start_telemetry(self.store)
            if self.telemetry is not None:
                self.telemetry.attach(self.pipeline)
                self._count_crash_gaps(self.telemetry, self.store)
                pipeline = self.pipeline
                if cfg.drift.enabled and not cfg.pipeline.keep_images:
                    # The signals are computed from the frame a verdict carries.
                    logger.warning("drift signals are on but pipeline.keep_images is off: "
                                   "verdicts carry no frames, so no drift windows are sent")
                self._drift = start_drift(
                    cfg.drift, site=cfg.site, line=cfg.line, store=self.store,
                    publish=self.telemetry.publish, current_model=lambda: pipeline.model,
                    add_listener=pipeline.add_listener, clock=self._clock)
                # The cloud's alerts (cmd/alert, e.g. drift) become alarms on the panel.
                self.telemetry.command_listeners.append(
                    AlertListener(self.alarms.raise_alarm, site=cfg.site, line=cfg.line))
            self.panel = self._start_panel(self.store, self.pipeline, self.events, self.alarms)
            self.pipeline.start()
            self._behind = BehindMonitor(cfg.pipeline.behind, self.pipeline.stats,
                                         self.events, clock=self._clock)
            self._behind.start()
            self._alarm_rules = AlarmMonitor(cfg.alarms, self.alarms, self._alarm_inputs)
            self._alarm_rules.start()
            if self.updates is not None:
                self.updates.start_agent(self.pipeline, self.engine, self.events,
                                         roi_of={s.name: s.roi_xywh for s in cfg.stations},
                                         report=self._report_model)
                if self.telemetry is not None:
                    self.telemetry.command_listeners.append(self.updates.on_command)
            self._watchdog = Watchdog(Notifier(), self._progress)
            self._watchdog.start()
        except BaseException:
            if self._alarm_rules is not None:
                self._alarm_rules.stop()
                self._alarm_rules = None
            if self.panel is not None:
                self.panel.stop()
                self.panel = None
            if self.updates is not None:
                self.updates.stop()
                self.updates = None
            if self.uploads is not None:
                self.uploads.stop()
                self.uploads = None
            if self.telemetry is not None:
                self.telemetry.stop()
                self.telemetry = None
            self.store.stop()
            self.store = None
            raise
        return self.pipeline

    def _current_model(self) -> LoadedModel | None:
        return self.pipeline.model if self.pipeline is not None else None

    @staticmethod
    def _note_captured(store: Store) -> Callable[[Frame], None]:
        def note(frame: Frame) -> None:
            store.note_captured(frame.station, frame.seq, frame.captured_at)
        return note

    @staticmethod
    def _store_full(store: Store) -> Callable[[], Reason | None]:
        def withhold() -> Reason | None:
            return Reason.STORE_FULL if store.unwritable else None
        return withhold

    def _progress(self) -> Progress:
        pipeline, store = self.pipeline, self.store
        if pipeline is None or store is None:
            return Progress(0, 0, 0)
        return Progress(pipeline.book.delivered, store.stats().committed, pipeline.book.pending)

    def _report_model(self, current: str | None, previous: str | None,
                      update: UpdateProgress | None) -> None:
        if self.telemetry is not None:
            self.telemetry.publish_model(model_ref_from_version_id(current),
                                         model_ref_from_version_id(previous), update)

    def _start_telemetry(self, store: Store) -> Telemetry | None:
        """MQTT telemetry when configured. A telemetry that cannot start (outbox or TLS
        files) is an alarm, never a reason to stop inspecting parts."""
        cfg = self.cfg
        if cfg.telemetry is None:
            return None
        telemetry = Telemetry(cfg.telemetry, store, pipeline_gauges(self.stats, store),
                              site=cfg.site, line=cfg.line, clock=self._clock,
                              record_event=store.record_event, app_version=app_version())
        try:
            telemetry.start()
        except TelemetryError as e:
            logger.error("telemetry disabled: %s", e)
            self._event("alarm", "alarm", "telemetry", f"telemetry cannot start: {e}",
                        alarm="telemetry")
            return None
        return telemetry

    def _start_panel(self, store: Store, pipeline: Pipeline, events: Events,
                     alarms: AlarmBook) -> Panel | None:
        """The operator panel when configured (served until `stop`)."""
        cfg = self.cfg
        if cfg.panel is None:
            return None
        def classes() -> tuple[str, ...]:  # the active model's, after a hot swap too
            model = pipeline.model
            return model.info.classes if model is not None else ()
        exporter = PrometheusExporter(lambda: state_from_app(self))
        pipeline.add_listener(exporter.observe)
        panel = Panel(cfg.panel, pipeline=pipeline, db_path=cfg.store.path,
                      images_dir=cfg.store.images.dir,
                      stations=tuple(s.name for s in cfg.stations), users=UserBook(store),
                      alarms=alarms, labels=LabelBook(store, classes, clock=self._clock),
                      exporter=exporter,
                      readiness=self.readiness, thresholds=self.thresholds,
                      rollback=self._panel_rollback(), record_event=events.record,
                      clock=self._clock)
        panel.start()
        return panel

    def _panel_rollback(self) -> RollbackControl:
        """The panel's rollback control: the one given, else the update agent's when
        updates are configured, else none (no previous bundle)."""
        if self._rollback is not None:
            return self._rollback
        if self.cfg.updates is not None and self.cfg.updates.enabled:
            return AgentRollback(lambda: self.updates, RollbackUnavailable)
        return NoRollback()

    def _count_crash_gaps(self, telemetry: Telemetry, store: Store) -> None:
        """The parts a killed run left without a verdict (recorded at open as
        `uninspected: crash`) count in the first telemetry window of this run."""
        now = self._clock()
        for gap in store.crash_gaps:
            for i in range(gap.missing):
                telemetry.on_verdict(InspectionRecord(
                    frame_id=f"{gap.station}:{gap.first_seq + i}", station=gap.station,
                    part_id=None, captured_at=now, judged_at=now, verdict="uninspected",
                    reason=str(Reason.CRASH), model_version=None, preprocess_hash=None,
                    latency_ms={}))

    def _load_model(self, path: Path) -> LoadedModel | None:
        try:
            if self.updates is not None and self.events is not None:
                return self.updates.load_model(
                    self.engine, lambda: open_model_bundle(path, self.cfg.bundles_dir,
                                                           self.cfg.model.max_unpacked_bytes),
                    events=self.events, verify=self.cfg.model.verify_golden)
            bundle = open_model_bundle(path, self.cfg.bundles_dir,
                                       self.cfg.model.max_unpacked_bytes)
            return self.engine.load(bundle, verify=self.cfg.model.verify_golden)
        except (ModelError, EngineError, UpdateRejected) as e:
            if self._require_model:
                raise NoModelError(
                    f"cannot load model bundle {path}: {e}. A line without a model cannot "
                    "judge parts: fix model.bundle, or set model.allow_start_without_model: "
                    "true to start and wait for the first update") from e
            logger.error("starting without a model (model.allow_start_without_model): "
                         "cannot load %s: %s; every part is uninspected: no_model", path, e)
            self._event("alarm", "alarm", "engine",
                        f"cannot load model bundle {path}: {e}; started without a model "
                        "(model.allow_start_without_model), parts are recorded as "
                        "uninspected: no_model", alarm="no_model", bundle=str(path))
            return None

    @property
    def drift_recorder(self) -> DriftRecorder | None:
        """The running drift recorder (its counters), None when drift is off."""
        return self._drift

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the pipeline (drain), then flush and close the store. Idempotent."""
        if self._alarm_rules is not None:
            self._alarm_rules.stop()
            self._alarm_rules = None
        if self._watchdog is not None:
            self._watchdog.stopping()
            self._watchdog = None
        if self.updates is not None:
            self.updates.stop()
            self.updates = None
        if self._behind is not None:
            self._behind.stop()
        if self.pipeline is not None:
            self.pipeline.stop(timeout_s)
        if self._drift is not None:
            self._drift.stop()  # saves the open windows while the store is still up
            self._drift = None
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        if self.panel is not None:
            self.panel.stop()
            self.panel = None
        if self.uploads is not None:
            self.uploads.stop()
            self.uploads = None
        if self.store is not None:
            self._event("appliance_stop", "info", "app", "appliance stopped")
            self.store.stop()
            self.store = None

    def swap_model(self, bundle_path: Path, *, verify: bool = True) -> ModelInfo | None:
        """Hot swap to the bundle at `bundle_path` (see `Pipeline.swap_model`).
        Raises ModelError / EngineError; the running model then stays."""
        if self.pipeline is None:
            raise EngineError("the appliance is not running")
        bundle = open_model_bundle(bundle_path, self.cfg.bundles_dir,
                                   self.cfg.model.max_unpacked_bytes)
        return self.pipeline.swap_model(bundle, verify=verify)

    def stats(self) -> PipelineStats:
        """Live statistics (see `PipelineStats`). Raises EngineError if not started."""
        if self.pipeline is None:
            raise EngineError("the appliance is not running")
        stats = self.pipeline.stats()
        if self._behind is None:
            return stats
        return replace(stats, behind=self._behind.state)

    def readiness(self) -> Readiness:
        """Whether this appliance can judge parts now, and if not why: the hook for the
        panel's `/readyz` (not ready: 503 with the reasons)."""
        if self.pipeline is None:
            return Readiness(ready=False, reasons=("not_started",))
        return readiness_of(self.pipeline.stats(),
                            store_unwritable=self.store is not None and self.store.unwritable)

    def _alarm_inputs(self) -> AlarmInputs | None:
        """What the alarm rules look at now (None while not running)."""
        if self.pipeline is None or self.store is None:
            return None
        telemetry = self.telemetry.stats() if self.telemetry is not None else None
        return alarm_inputs(self.stats(), self.store, self.cfg.engine, telemetry)

    def _event(self, kind: str, severity: Severity, source: str, message: str,
               **data: EventValue) -> None:
        if self.events is not None and self.store is not None:
            self.events.record(kind, severity, source, message, **data)

    # ------------------------------------------------------------------ run
    def run(
        self,
        stop: threading.Event,
        *,
        on_status: Callable[[PipelineStats], None] | None = None,
        status_interval_s: float = 1.0,
    ) -> RunSummary:
        """Start, run until `stop` is set, the frame budget is used or every source
        ended, then stop in order. `on_status(stats)` is called every
        `status_interval_s` from this thread. Returns the summary."""
        pipeline = self.start()
        stopped_by = "signal"
        next_status = time.monotonic() + status_interval_s
        try:
            while not stop.wait(min(0.1, status_interval_s)):
                if on_status is not None and time.monotonic() >= next_status:
                    next_status += status_interval_s
                    on_status(self.stats())
                if pipeline.sources_finished.is_set():
                    budget_used = self._max_frames is not None and \
                        pipeline.stats().frames >= self._max_frames
                    stopped_by = "frames" if budget_used else "sources_ended"
                    break
        finally:
            store = self.store
            self.stop()
        return self._summary(pipeline, stopped_by, store)

    def _summary(self, pipeline: Pipeline, stopped_by: str, store: Store | None) -> RunSummary:
        s = pipeline.stats()
        duration_s = time.monotonic() - self._started_at
        inspected = s.verdicts["pass"] + s.verdicts["fail"]
        return RunSummary(
            stopped_by=stopped_by,
            duration_s=round(duration_s, 3),
            frames=s.frames,
            verdicts=s.verdicts,
            uninspected=s.uninspected,
            defects=s.defects,
            throughput_fps=round(inspected / duration_s, 2) if duration_s > 0 else 0.0,
            latency_ms=s.latency_ms,
            stations={k: asdict(v) for k, v in s.stations.items()},
            model=s.model.as_dict() if s.model else None,
            providers=list(s.providers),
            batches=s.batches,
            mean_batch=s.mean_batch,
            store_path=str(self.cfg.store.path),
            store_inspections=store.inspection_count() if store is not None else 0,
            late_results=s.late_results,
            engine_failures=s.engine_failures,
            engine_fallbacks=s.engine_fallbacks,
        )

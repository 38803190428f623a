"""The appliance process, wired in one place (Frigate's app.py): this module is the
composition root. It builds every collaborator from the configuration and passes it in;
how each part is built lives beside the part (`appliance/*/wiring.py`):

    pipeline/wiring.py   build_pipeline (the frame path), station_optics, open_model_bundle
    updater/wiring.py    open_updates, load_start_model (the model the line starts with)
    uploads/wiring.py    start_uploads          telemetry/wiring.py  start_telemetry
    drift/wiring.py      start_drift            panel/wiring.py      start_panel
    summary.py           RunSummary

`App.start` opens the store, loads the model, composes the pipeline and starts it with
its side parts (uploads, telemetry, drift, panel, the falling-behind monitor, the alarm
rules, the update agent, the systemd watchdog); `App.stop` stops them in reverse, then
flushes and closes the store. `App.run` is what `lineguard appliance run` and
`lineguard demo` call: it runs until the stop event is set (SIGTERM/SIGINT in the CLI),
the frame budget is used up, or every source ended, and returns a `RunSummary`.

Frame ids continue per station across restarts: a station's first seq is one more than
the highest seq it has in the store (`Store.next_sequence`, an indexed query; ids are
``"{station}:{seq}"``, UNIQUE in the store), so a restarted appliance never reuses an id.
A run that was killed (or stopped on a full disk) left frames captured without a verdict:
the store finds them from its captured high-water marks when it opens and records them
as `uninspected: crash` (appliance/store/marks.py) before the first seq is read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from appliance.alarm_rules import AlarmInputs, AlarmMonitor, alarm_inputs
from appliance.alarms import AlarmBook
from appliance.capture import Frame, FrameSource
from appliance.capture.probe import require_file_sources
from appliance.config import ApplianceConfig
from appliance.drift.alerts import AlertListener
from appliance.drift.recorder import DriftRecorder
from appliance.drift.wiring import start_drift
from appliance.errors import ConfigError, EngineError
from appliance.panel.metrics import state_from_app
from appliance.panel.ports import NoRollback, RollbackControl, RollbackUnavailable
from appliance.panel.service import Panel
from appliance.panel.wiring import start_panel
from appliance.pipeline.behind import BehindMonitor
from appliance.pipeline.engine import (
    DetectorFactory,
    Engine,
    LoadedModel,
    ModelInfo,
    default_detector_factory,
)
from appliance.pipeline.events import Events
from appliance.pipeline.pipeline import Pipeline
from appliance.pipeline.stats import PipelineStats
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.pipeline.wiring import (
    VerdictStore,
    build_pipeline,
    build_stations,
    open_model_bundle,
    station_optics,
)
from appliance.readiness import Readiness, readiness_of
from appliance.records import EventValue, InspectionRecord, Severity
from appliance.records import UninspectedReason as Reason
from appliance.store import Store
from appliance.summary import RunSummary, summarize
from appliance.telemetry import Telemetry
from appliance.telemetry.messages import model_ref_from_version_id
from appliance.telemetry.wiring import start_telemetry
from appliance.updater.panel_control import AgentRollback
from appliance.updater.service import Updates
from appliance.updater.wiring import load_start_model, open_updates
from appliance.uploads.service import Uploads
from appliance.uploads.wiring import start_uploads
from appliance.watchdog import Notifier, Progress, Watchdog
from protocol.model_report import UpdateProgress

__all__ = ["App", "RunSummary", "VerdictStore", "build_pipeline", "open_model_bundle",
           "station_optics"]

logger = logging.getLogger(__name__)


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
            self.alarms = AlarmBook(self.store, clock=self._clock)
            self.updates = open_updates(cfg.updates, cfg.updates_dir, site=cfg.site,
                                        line=cfg.line,
                                        max_unpacked_bytes=cfg.model.max_unpacked_bytes)
            model = load_start_model(self.engine, cfg.model.bundle,
                                     bundles_dir=cfg.bundles_dir,
                                     max_unpacked_bytes=cfg.model.max_unpacked_bytes,
                                     verify=cfg.model.verify_golden, updates=self.updates,
                                     events=self.events, alarms=self.alarms,
                                     require=self._require_model)
            stations = build_stations(cfg.stations, self._sources, self.store.next_sequence)
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
            self.uploads = start_uploads(cfg.uploads, self.store, self.alarms,
                                         site=cfg.site, line=cfg.line,
                                         data_dir=cfg.data_dir, model=self._current_model,
                                         add_listener=self.pipeline.add_listener,
                                         clock=self._clock)
            self.telemetry = start_telemetry(cfg.telemetry, self.store, self.pipeline,
                                             self.stats, self.events, site=cfg.site,
                                             line=cfg.line, clock=self._clock)
            if self.telemetry is not None:
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
            self.panel = start_panel(cfg.panel, store=self.store,
                                     stations=[s.name for s in cfg.stations],
                                     pipeline=self.pipeline, events=self.events,
                                     alarms=self.alarms,
                                     metrics_state=lambda: state_from_app(self),
                                     readiness=self.readiness, thresholds=self.thresholds,
                                     rollback=self._panel_rollback(), clock=self._clock)
            self.pipeline.start()
            self._behind = BehindMonitor(cfg.pipeline.behind, self.pipeline.stats,
                                         self.alarms, clock=self._clock)
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

    def _panel_rollback(self) -> RollbackControl:
        """The panel's rollback control: the one given, else the update agent's when
        updates are configured, else none (no previous bundle)."""
        if self._rollback is not None:
            return self._rollback
        if self.cfg.updates is not None and self.cfg.updates.enabled:
            return AgentRollback(lambda: self.updates, RollbackUnavailable)
        return NoRollback()

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
        return summarize(pipeline.stats(), stopped_by=stopped_by,
                         duration_s=time.monotonic() - self._started_at,
                         store_path=self.cfg.store.path,
                         store_inspections=store.inspection_count() if store is not None
                         else 0)

"""The appliance process, wired in one place: store -> engine and model -> stations ->
pipeline, started in that order and stopped in reverse (Frigate's app.py).

Nothing else builds stages from configuration. `App.run` is what `lineguard appliance
run` and `lineguard demo` call: it runs until the stop event is set (SIGTERM/SIGINT in
the CLI), the frame budget is used up, or every source ended; then it stops the
pipeline (queued frames are judged, the rest recorded as shutdown) and flushes and
closes the store, and returns a `RunSummary`.

Frame ids continue per station across restarts: a station's first seq is one more than
the highest seq it has in the store (ids are ``"{station}:{seq}"``, UNIQUE in the
store), so a restarted appliance never reuses an id.
"""

from __future__ import annotations

import logging
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.capture import FrameSource, make_source
from appliance.config import ApplianceConfig
from appliance.engine import (
    DetectorFactory,
    Engine,
    LoadedModel,
    ModelInfo,
    default_detector_factory,
)
from appliance.errors import ConfigError, EngineError, StoreError
from appliance.intake import Station
from appliance.pipeline import Pipeline
from appliance.records import EventRecord, InspectionRecord
from appliance.stats import PipelineStats
from appliance.store import Store
from appliance.store.queries import open_reader
from appliance.telemetry import Telemetry, TelemetryError, pipeline_gauges
from models.bundle import Bundle, open_bundle
from models.errors import ModelError

logger = logging.getLogger(__name__)

SEQ_LOOKBACK_ROWS = 100_000
"""Rows (newest first) searched for a station's highest seq; far more than can be in
flight, since verdicts reach the store at most that far out of capture order."""


def next_frame_seq(db_path: Path, station: str) -> int:
    """One more than the highest seq of `station`'s frame ids among the newest
    `SEQ_LOOKBACK_ROWS` inspections (0 for a new database or station).
    Raises StoreError if the database cannot be read."""
    if not db_path.exists():
        return 0
    pattern = re.compile(re.escape(station) + r":(\d+)$")
    try:
        conn = open_reader(db_path)
        try:
            rows = conn.execute(
                "SELECT frame_id FROM inspections WHERE station = ? ORDER BY id DESC LIMIT ?",
                (station, SEQ_LOOKBACK_ROWS),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise StoreError(f"{db_path}: cannot read the last frame ids: {e}") from e
    seqs = [int(m.group(1)) for (frame_id,) in rows if (m := pattern.match(frame_id))]
    return max(seqs) + 1 if seqs else 0


def open_model_bundle(path: Path, bundles_dir: Path) -> Bundle:
    """A bundle directory, or a .tar/.tar.gz unpacked (safely) under `bundles_dir`.
    Raises ModelError."""
    if path.is_dir():
        return open_bundle(path, bundles_dir)
    work_dir = bundles_dir / path.name.replace(".", "_")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    return open_bundle(path, work_dir)


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
    (see `Pipeline.add_listener`); `require_model` makes a bundle that cannot load an
    error at start instead of a run of `uninspected: no_model`; `detector_factory` is
    the seam in front of ONNX Runtime."""

    def __init__(
        self,
        cfg: ApplianceConfig,
        *,
        max_frames: int | None = None,
        sources: Mapping[str, FrameSource] | None = None,
        listeners: Sequence[Callable[[InspectionRecord], None]] = (),
        require_model: bool = False,
        detector_factory: DetectorFactory = default_detector_factory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = sorted(set(sources or {}) - {s.name for s in cfg.stations})
        if unknown:
            raise ConfigError(f"sources given for stations not in the config: {unknown}")
        self.cfg = cfg
        self._max_frames = max_frames
        self._sources = dict(sources or {})
        self._listeners = list(listeners)
        self._require_model = require_model
        self._clock = clock
        self.engine = Engine(cfg.engine, max_batch=cfg.pipeline.max_batch,
                             factory=detector_factory)
        self.store: Store | None = None
        self.telemetry: Telemetry | None = None
        self.pipeline: Pipeline | None = None
        self._started_at = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Pipeline:
        """Open the store, load the model, build the stations, start the pipeline
        (returned).
        Raises StoreError (store cannot open) or CaptureError/ConfigError (a source
        cannot be built). A model that cannot load raises EngineError with
        `require_model`; otherwise frames are recorded as `uninspected: no_model` and
        an alarm is raised."""
        cfg = self.cfg
        self._started_at = time.monotonic()
        self.store = Store(cfg.store, clock=self._clock)
        self.store.start()
        try:
            self._event("appliance_start", "info", "app",
                        f"appliance {cfg.site}/{cfg.line} starting", site=cfg.site,
                        line=cfg.line, stations=len(cfg.stations))
            model = self._load_model(cfg.model.bundle)
            stations = [
                Station(
                    name=s.name,
                    source=self._sources.get(s.name) or make_source(s.source),
                    roi_xywh=s.roi_xywh,
                    first_seq=next_frame_seq(cfg.store.path, s.name),
                    backoff_initial_s=s.source.backoff_initial_s,
                    backoff_max_s=s.source.backoff_max_s,
                )
                for s in cfg.stations
            ]
            self.pipeline = Pipeline(cfg.pipeline, stations, self.engine, self.store,
                                     model=model, max_frames=self._max_frames,
                                     clock=self._clock)
            if model is not None:
                self._event("model_change", "info", "engine",
                            f"model {model.version_id} active at start", previous=None,
                            current=model.version_id, reason="start",
                            providers=",".join(model.info.providers))
            for listener in self._listeners:
                self.pipeline.add_listener(listener)
            self.telemetry = self._start_telemetry(self.store)
            if self.telemetry is not None:
                self.telemetry.attach(self.pipeline)
            self.pipeline.start()
        except BaseException:
            if self.telemetry is not None:
                self.telemetry.stop()
                self.telemetry = None
            self.store.stop()
            self.store = None
            raise
        return self.pipeline

    def _start_telemetry(self, store: Store) -> Telemetry | None:
        """MQTT telemetry when configured. A telemetry that cannot start (outbox or TLS
        files) is an alarm, never a reason to stop inspecting parts."""
        cfg = self.cfg
        if cfg.telemetry is None:
            return None
        telemetry = Telemetry(cfg.telemetry, store, pipeline_gauges(self.stats, store),
                              site=cfg.site, line=cfg.line, clock=self._clock,
                              record_event=store.record_event)
        try:
            telemetry.start()
        except TelemetryError as e:
            logger.error("telemetry disabled: %s", e)
            self._event("alarm", "alarm", "telemetry", f"telemetry cannot start: {e}",
                        alarm="telemetry")
            return None
        return telemetry

    def _load_model(self, path: Path) -> LoadedModel | None:
        try:
            bundle = open_model_bundle(path, self.cfg.bundles_dir)
            return self.engine.load(bundle, verify=self.cfg.model.verify_golden)
        except (ModelError, EngineError) as e:
            if self._require_model:
                raise EngineError(f"cannot load model bundle {path}: {e}") from e
            logger.error("no model: %s", e)
            self._event("alarm", "alarm", "engine",
                        f"cannot load model bundle {path}: {e}; parts are recorded as "
                        "uninspected", alarm="no_model", bundle=str(path))
            return None

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the pipeline (drain), then flush and close the store. Idempotent."""
        if self.pipeline is not None:
            self.pipeline.stop(timeout_s)
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        if self.store is not None:
            self._event("appliance_stop", "info", "app", "appliance stopped")
            self.store.stop()
            self.store = None

    def swap_model(self, bundle_path: Path, *, verify: bool = True) -> ModelInfo | None:
        """Hot swap to the bundle at `bundle_path` (see `Pipeline.swap_model`).
        Raises ModelError / EngineError; the running model then stays."""
        if self.pipeline is None:
            raise EngineError("the appliance is not running")
        bundle = open_model_bundle(bundle_path, self.cfg.bundles_dir)
        return self.pipeline.swap_model(bundle, verify=verify)

    def stats(self) -> PipelineStats:
        """Live statistics (see `PipelineStats`). Raises EngineError if not started."""
        if self.pipeline is None:
            raise EngineError("the appliance is not running")
        return self.pipeline.stats()

    def _event(self, kind: str, severity: Any, source: str, message: str, **data: Any) -> None:
        if self.store is None:
            return
        try:
            self.store.record_event(EventRecord(at=self._clock(), kind=kind,
                                                severity=severity, source=source,
                                                message=message, data=data))
        except StoreError:
            logger.exception("could not record event %s", kind)

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
                    on_status(pipeline.stats())
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

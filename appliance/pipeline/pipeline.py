"""The running frame path: the stages `pipeline.wiring.build_pipeline` composed, started in
order, supervised, drained on stop, and read for statistics.

    SourceStage (one per station) -> [PreprocessStage (worker mode)] -> DynamicBatcher
      -> InferStage -> Inbox -> PostprocessStage -> VerdictBook -> store, stats, listeners

Each stage runs in a supervised thread: a stage that dies is restarted with backoff, the
frames it held are closed as `uninspected: engine_failure`, and the restart is recorded
as a `stage_restart` event.

Invariants:
- every frame a source produced gets exactly one verdict (the `VerdictBook` ledger;
  frames left over at stop are closed as `uninspected: shutdown` by sealing the book);
- every batch is judged by the one `LoadedModel` the engine read when it took the batch;
  `swap_model` / `activate` replace that reference between two batches, so no frame
  meets a half-loaded model and none is lost during a swap;
- `stop` is orderly: sources stop, queued frames are judged (up to `drain_timeout_s`),
  the rest are recorded as shutdown; the store is flushed by its owner (`App`). Once the
  drain budget is spent the engine takes no further batch, and `stop` returns only after
  the run in flight ended (an ONNX Runtime run alive at interpreter exit aborts it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from appliance.config import PipelineConfig
from appliance.errors import EngineError
from appliance.pipeline.batcher import DynamicBatcher
from appliance.pipeline.cpu import CpuMeter
from appliance.pipeline.engine import Engine, LoadedModel, ModelInfo
from appliance.pipeline.events import Events
from appliance.pipeline.health import EngineHealth
from appliance.pipeline.infer_stage import InferStage
from appliance.pipeline.job import BatchInfo, Job
from appliance.pipeline.post_stage import PostprocessStage
from appliance.pipeline.preprocess_stage import PreprocessStage
from appliance.pipeline.slot import ModelSlot
from appliance.pipeline.source_stage import SourceStage
from appliance.pipeline.stats import PipelineStats, StationStats, VerdictCounters
from appliance.pipeline.supervisor import SupervisedThread
from appliance.pipeline.verdicts import VerdictBook
from appliance.records import EventRecord, InspectionRecord
from appliance.records import UninspectedReason as Reason
from models.bundle import Bundle

logger = logging.getLogger(__name__)


class Stage(Protocol):
    """A stage as the pipeline runs it."""

    @property
    def name(self) -> str: ...

    def run(self) -> None: ...

    def take_lost(self) -> list[Job]: ...


class Pipeline:
    """See the module docstring. Built by `appliance.pipeline.wiring.build_pipeline`."""

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        engine: Engine,
        slot: ModelSlot,
        book: VerdictBook,
        counters: VerdictCounters,
        events: Events,
        health: EngineHealth,
        batcher: DynamicBatcher[Job],
        sources: Sequence[SourceStage],
        workers: Sequence[PreprocessStage],
        infer: InferStage,
        post: PostprocessStage,
        sources_finished: threading.Event,
        draining: threading.Event,
        abort: threading.Event,
        cpu: CpuMeter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.cpu = cpu
        self._engine = engine
        self._slot = slot
        self.book = book
        self.counters = counters
        self.events = events
        self._health = health
        self._batcher = batcher
        self.sources = list(sources)
        self.workers = list(workers)
        self.infer = infer
        self.post = post
        self.preprocess_mode = "worker" if self.workers else "engine"
        """Where frames are preprocessed: in per-station workers (the postprocess stage
        then runs in its own thread too) or in the engine thread (which then also
        postprocesses its batches: see `appliance.pipeline.inbox.Inline`)."""
        self.sources_finished = sources_finished
        """Set once every station stopped producing (source ended, frame budget used up,
        or stop); `App` then stops the pipeline."""
        self._draining = draining
        self._abort = abort
        self._sources_stop = threading.Event()
        self._clock = clock
        self._threads: dict[str, SupervisedThread] = {}
        self._stages: dict[str, Stage] = {}
        self._closed = False
        self._started_at = time.monotonic()

    # ------------------------------------------------------------------ public API
    @property
    def model(self) -> LoadedModel | None:
        """The model the next batch will be judged by."""
        return self._slot.current

    def add_listener(self, sink: Callable[[InspectionRecord], None]) -> None:
        """Call `sink(record)` for every verdict (in a pipeline thread: keep it fast;
        the record carries the frame in `image_bgr` when images are kept)."""
        self.book.add_sink(sink)

    def add_batch_listener(self, listener: Callable[[BatchInfo], None]) -> None:
        """Call `listener(info)` after every batch (in the postprocess thread)."""
        self.post.batch_listeners.append(listener)

    def add_event_listener(self, listener: Callable[[EventRecord], None]) -> None:
        """Call `listener(event)` for every event recorded (alarms...)."""
        self.events.add_listener(listener)

    def swap_model(self, bundle: Bundle, *, verify: bool = True) -> ModelInfo | None:
        """Hot swap: load, verify (golden set) and warm `bundle` beside the running model
        in the caller's thread, then switch to it between two batches. Frames keep
        flowing meanwhile; none is lost or judged by a half-loaded model. Returns the
        replaced model's info (None if there was none). Raises EngineError if the new
        bundle cannot be loaded (the running model then stays), or if the pipeline
        stopped before the new model was ready (a swap that meets a shutdown)."""
        if self._closed:
            raise EngineError("the pipeline is stopped; no model swap")
        loaded = self._engine.load(bundle, verify=verify)
        if self._closed or self._abort.is_set():
            raise EngineError(f"the pipeline stopped while {loaded.version_id} loaded; "
                              "not activated")
        return self.activate(loaded, reason="swap")

    def activate(self, model: LoadedModel, *, reason: str = "swap") -> ModelInfo | None:
        """Make `model` (built by this pipeline's `Engine`) the one the next batch uses.
        Records a `model_change` event; returns the replaced model's info."""
        self._batcher.max_batch = min(self.cfg.max_batch, model.max_batch)
        old = self._slot.replace(model)
        old_id = old.version_id if old else None
        self.events.record("model_change", "info", "engine",
                           f"model {old_id} -> {model.version_id} ({reason})",
                           previous=old_id, current=model.version_id, reason=reason,
                           providers=",".join(model.info.providers))
        return old.info if old else None

    def start(self) -> None:
        """Start the stages: postprocess, engine, workers, then the sources."""
        self.book.start()
        # In engine mode the engine thread postprocesses its own batches (`Inline`): no
        # postprocess thread is started.
        stages: list[tuple[Stage, threading.Event]] = [
            *([(self.post, self._abort)] if self.workers else []), (self.infer, self._abort),
            *((w, self._abort) for w in self.workers),
            *((s, self._sources_stop) for s in self.sources),
        ]
        for stage, stop in stages:
            thread = SupervisedThread(stage.name, stage.run, stop=stop,
                                      on_restart=self._on_restart,
                                      backoff=self.cfg.restart_backoff)
            self._stages[stage.name] = stage
            self._threads[stage.name] = thread
            thread.start()
        model = self._slot.current
        logger.info("pipeline started: %d station(s), model %s, preprocess in %s, "
                    "max batch %d, max wait %.1f ms (%s)", len(self.sources),
                    model.version_id if model else None, self.preprocess_mode,
                    self._batcher.max_batch, self.cfg.max_wait_ms, self.cfg.batch_policy)

    def stop(self, timeout_s: float | None = None) -> None:
        """Orderly stop: stop the sources, judge what is queued (within `timeout_s`,
        default `drain_timeout_s`), record the rest as `uninspected: shutdown`."""
        if self._closed:
            return
        budget_s = self.cfg.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s
        self._sources_stop.set()
        for source in self.sources:
            source.stop_event.set()
        upstream: list[SourceStage | PreprocessStage] = [*self.sources, *self.workers]
        for stage in upstream:
            thread = self._threads.get(stage.name)
            if thread is not None and not thread.join(max(0.5, deadline - time.monotonic())):
                logger.warning("stage %s did not stop in time", stage.name)
            elif isinstance(stage, SourceStage):
                stage.finished.set()  # ended (even by dying while stopped): no more frames
        self._batcher.set_draining()
        self._draining.set()
        # The engine ends once the batcher is empty, the postprocess stage once the
        # engine ended and its inbox is empty. Both stay supervised (restarted if they
        # die) until the drain budget is spent; only then does `abort` end them.
        for name in (self.infer.name, self.post.name):
            thread = self._threads.get(name)
            if thread is not None and not thread.join(max(0.1, deadline - time.monotonic())):
                logger.warning("drain timed out after %.1f s in %s; the rest is recorded as "
                               "shutdown", budget_s, name)
                break
        self._abort.set()
        # Stages see `abort` within one poll; the engine after the run in flight (one
        # batch). Joining it matters: an interpreter that exits while an ONNX Runtime run
        # is in flight tears its thread pool down under it (SIGABRT).
        for name, thread in self._threads.items():
            if not thread.join(5.0):
                logger.error("stage %s still running 5 s after the drain ended", name)
        self._closed = True
        self.book.stop()
        self.book.seal(Reason.SHUTDOWN)
        logger.info("pipeline stopped: %d frames, %d verdicts",
                    sum(s.produced for s in self.sources), self.book.delivered)

    def stats(self) -> PipelineStats:
        """A snapshot of counters, rates, latency percentiles, queues, sources, model."""
        verdicts, reasons, defects = self.counters.counts()
        model = self._slot.current
        stations = {}
        for s in self.sources:
            rs = s.source
            stations[s.station.name] = StationStats(
                name=s.station.name, state=str(rs.state), frames=s.produced,
                dropped=s.dropped, reconnects=rs.reconnects, last_gap_s=rs.last_gap_s,
                last_error=rs.last_error,
            )
        depths = {"batcher": len(self._batcher), "post": len(self.post.inbox),
                  "pending": self.book.pending}
        depths.update({f"intake:{w.name.split(':', 1)[1]}": len(w.inbox) for w in self.workers})
        batches = self._batcher.batches
        return PipelineStats(
            at=self._clock(),
            uptime_s=round(time.monotonic() - self._started_at, 3),
            frames=sum(s.produced for s in self.sources),
            verdicts=verdicts,
            uninspected=reasons,
            defects=defects,
            fps=round(self.counters.rate.rate(), 2),
            latency_ms=self.counters.latency.percentiles(),
            queue_depths=depths,
            stations=stations,
            model=model.info if model else None,
            providers=model.info.providers if model else (),
            batches=batches,
            mean_batch=round((self._batcher.offered - len(self._batcher)) / batches, 3)
            if batches else 0.0,
            late_results=self.book.late,
            engine_failures=self._health.failures,
            engine_fallbacks=self._health.fallbacks,
            stage_restarts={n: t.restarts for n, t in self._threads.items() if t.restarts},
            sink_errors=self.book.sink_errors,
            stage_cpu_ms=self.cpu.ms(),
            recent_latency_ms=self.counters.recent_latency_ms,
        )

    def _on_restart(self, stage: str, restarts: int, error: BaseException, delay_s: float) -> None:
        lost = self._stages[stage].take_lost()
        if lost:
            self.book.close_uninspected([j.frame for j in lost], Reason.ENGINE_FAILURE)
        self.events.record("stage_restart", "warning", stage,
                           f"stage {stage} died ({error!r}); restart {restarts} in "
                           f"{delay_s:.1f} s", stage=stage, restarts=restarts,
                           error=repr(error), delay_s=delay_s,
                           frames_lost_to_engine_failure=len(lost))

"""The inspection pipeline: stations -> [preprocess workers] -> dynamic batcher ->
engine (preprocess, infer) -> postprocess + judge -> verdict book -> sinks.

Threads (each supervised: a stage that dies is restarted with backoff and the restart
recorded as a `stage_restart` event):
- one per station: reads its source, crops the ROI, opens the frame in the verdict book
  and queues it (`overflow: drop` records a frame that finds the queue full as
  `uninspected: dropped`; `block` waits for room);
- in worker mode one preprocess worker per station (frames wait in a bounded per-station
  queue, with the same overflow rule);
- the engine: takes the next batch when it is free, preprocesses it into the model's
  preallocated input buffer (engine mode) and runs it; a GPU failure reloads the model
  on CPU (alarm) and retries the batch; any other failure makes the batch `uninspected:
  engine_failure` (alarm once until inference works again). Never a `pass` without a
  result;
- postprocess: decode + NMS + judge, records to the book (which delivers each frame's
  one verdict to the store, the statistics and the listeners).

Invariants:
- every frame a source produced gets exactly one verdict (the `VerdictBook` ledger;
  frames left over at stop are closed as `uninspected: shutdown`);
- every batch is judged by the one `LoadedModel` the engine read when it took the batch;
  `swap_model` / `activate` replace that reference between two batches, so no frame
  meets a half-loaded model and none is lost during a swap;
- `stop` is orderly: sources stop, queued frames are judged (up to `drain_timeout_s`),
  the rest are recorded as shutdown; the store is flushed by its owner (`App`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from appliance.batcher import DynamicBatcher
from appliance.capture import Frame, ResilientSource, SourceState
from appliance.config import PipelineConfig
from appliance.engine import Engine, LoadedModel, ModelInfo
from appliance.errors import StoreError
from appliance.inference import POLL_S, BatchInfo, InferenceStages, ModelSlot
from appliance.intake import FrameBudget, Job, Station, crop_to_roi
from appliance.judge import uninspected_record
from appliance.records import EventRecord, EventValue, InspectionRecord, Severity
from appliance.records import UninspectedReason as Reason
from appliance.stage import SupervisedThread
from appliance.stats import PipelineStats, StationStats, VerdictCounters
from appliance.verdicts import VerdictBook
from models.bundle import Bundle

logger = logging.getLogger(__name__)



class VerdictStore(Protocol):
    """What the pipeline needs from the store (appliance.store.Store fits)."""

    def submit(self, record: InspectionRecord) -> None: ...

    def record_event(self, event: EventRecord) -> None: ...


class Pipeline:
    """See the module docstring. Build with the stations, a started store, an `Engine`
    and the model to start with (None: every frame is `uninspected: no_model` until a
    model is activated). `max_frames` stops the sources after that many frames in all.
    """

    def __init__(
        self,
        cfg: PipelineConfig,
        stations: Sequence[Station],
        engine: Engine,
        store: VerdictStore,
        *,
        model: LoadedModel | None,
        max_frames: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not stations:
            raise ValueError("a pipeline needs at least one station")
        self.cfg = cfg
        self.stations = list(stations)
        self._engine = engine
        self._store = store
        self._slot = ModelSlot(model)
        self._clock = clock
        self._budget = FrameBudget(max_frames)
        self.counters = VerdictCounters()
        self.book = VerdictBook(
            [store.submit, self.counters.add],
            deadline_s=None if cfg.verdict_deadline_ms is None else cfg.verdict_deadline_ms / 1e3,
            keep_images=cfg.keep_images,
            clock=clock,
        )
        self._batcher: DynamicBatcher[Job] = DynamicBatcher(
            max_batch=min(cfg.max_batch, model.max_batch if model else cfg.max_batch),
            max_wait_s=cfg.max_wait_ms / 1000.0,
            capacity=cfg.queue_frames,
            adaptive=cfg.batch_policy == "adaptive",
        )
        mode = cfg.preprocess
        if mode == "auto":
            mode = "worker" if model is not None and model.on_gpu else "engine"
        self.preprocess_mode = mode
        self._intake_q: dict[str, queue.Queue[Job]] = {}
        self._sources_stop = threading.Event()
        self._station_stop = {s.name: threading.Event() for s in self.stations}
        self._draining = threading.Event()
        self._abort = threading.Event()
        self.sources_finished = threading.Event()
        """Set once every station stopped producing (source ended, frame budget used up,
        or stop); `App` then stops the pipeline."""
        self._closed = False
        self._resilient: dict[str, ResilientSource] = {}
        self._next_seq = {s.name: s.first_seq for s in self.stations}
        self._produced = dict.fromkeys(self._next_seq, 0)
        self._dropped = dict.fromkeys(self._next_seq, 0)
        self._stations_done: set[str] = set()
        self._roi_alarmed: set[str] = set()
        self._event_listeners: list[Callable[[EventRecord], None]] = []
        self._threads: dict[str, SupervisedThread] = {}
        self._stages = InferenceStages(
            cfg, engine, self._slot, self._batcher, self.book, event=self._event,
            abort=self._abort, draining=self._draining, alive=self._alive, clock=clock,
        )
        self._started_at = time.monotonic()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ public API
    @property
    def model(self) -> LoadedModel | None:
        """The model the next batch will be judged by."""
        return self._slot.current

    def _alive(self, stage: str) -> bool:
        thread = self._threads.get(stage)
        return thread is not None and thread.alive

    def add_listener(self, sink: Callable[[InspectionRecord], None]) -> None:
        """Call `sink(record)` for every verdict (in a pipeline thread: keep it fast;
        the record carries the frame in `image_bgr` when images are kept)."""
        self.book.add_sink(sink)

    def add_batch_listener(self, listener: Callable[[BatchInfo], None]) -> None:
        """Call `listener(info)` after every batch (in the postprocess thread)."""
        self._stages.batch_listeners.append(listener)

    def add_event_listener(self, listener: Callable[[EventRecord], None]) -> None:
        """Call `listener(event)` for every event the pipeline records (alarms...)."""
        self._event_listeners.append(listener)

    def swap_model(self, bundle: Bundle, *, verify: bool = True) -> ModelInfo | None:
        """Hot swap: load, verify (golden set) and warm `bundle` beside the running model
        in the caller's thread, then switch to it between two batches. Frames keep
        flowing meanwhile; none is lost or judged by a half-loaded model. Returns the
        replaced model's info (None if there was none). Raises EngineError if the new
        bundle cannot be loaded; the running model then stays."""
        return self.activate(self._engine.load(bundle, verify=verify), reason="swap")

    def activate(self, model: LoadedModel, *, reason: str = "swap") -> ModelInfo | None:
        """Make `model` (built by this pipeline's `Engine`) the one the next batch uses.
        Records a `model_change` event; returns the replaced model's info."""
        self._batcher.max_batch = min(self.cfg.max_batch, model.max_batch)
        old = self._slot.replace(model)
        old_id = old.version_id if old else None
        self._event("model_change", "info", "engine",
                    f"model {old_id} -> {model.version_id} ({reason})",
                    previous=old_id, current=model.version_id, reason=reason,
                    providers=",".join(model.info.providers))
        return old.info if old else None

    def start(self) -> None:
        """Start the stages (post, engine, workers, then the sources)."""
        cfg, model = self.cfg, self._slot.current
        self.book.start()

        def supervised(name: str, target: Callable[[], None], stop: threading.Event) -> None:
            thread = SupervisedThread(
                name, target, stop=stop, on_restart=self._on_restart,
                backoff=cfg.restart_backoff,
            )
            self._threads[name] = thread
            thread.start()

        supervised("postprocess", self._stages.post_main, self._abort)
        supervised("engine", self._stages.engine_main, self._abort)
        for st in self.stations:
            if self.preprocess_mode == "worker":
                self._intake_q[st.name] = queue.Queue(maxsize=cfg.queue_frames)
                supervised(f"preprocess:{st.name}", partial(self._worker_main, st), self._abort)
            supervised(f"source:{st.name}", partial(self._source_main, st), self._sources_stop)
        logger.info("pipeline started: %d station(s), model %s, preprocess in %s, "
                    "max batch %d, max wait %.1f ms (%s)", len(self.stations),
                    model.version_id if model else None, self.preprocess_mode,
                    self._batcher.max_batch, cfg.max_wait_ms, cfg.batch_policy)

    def stop(self, timeout_s: float | None = None) -> None:
        """Orderly stop: stop the sources, judge what is queued (within `timeout_s`,
        default `drain_timeout_s`), record the rest as `uninspected: shutdown`."""
        if self._closed:
            return
        budget_s = self.cfg.drain_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget_s
        self._sources_stop.set()
        for event in self._station_stop.values():
            event.set()
        for name, thread in self._threads.items():
            left_s = max(0.5, deadline - time.monotonic())
            if name.startswith("source:") and not thread.join(left_s):
                logger.warning("stage %s did not stop in time", name)
        for name, thread in self._threads.items():
            if name.startswith("preprocess:"):
                thread.join(max(0.1, deadline - time.monotonic()))
        self._batcher.set_draining()
        self._draining.set()
        # The engine ends once the queue is empty and then sends the end marker; the
        # postprocess stage ends on that marker. Both stay supervised (restarted if they
        # die) until the drain budget is spent; only then does `abort` end them.
        for name in ("engine", "postprocess"):
            stage = self._threads.get(name)
            if stage is not None and not stage.join(max(0.1, deadline - time.monotonic())):
                logger.warning("drain timed out after %.1f s in %s; the rest is recorded as "
                               "shutdown", budget_s, name)
                break
        self._abort.set()
        for name in ("engine", "postprocess"):
            if name in self._threads:
                self._threads[name].join(5.0)
        self._closed = True
        leftovers = self._batcher.drain()
        for q in self._intake_q.values():
            while True:
                try:
                    leftovers.append(q.get_nowait())
                except queue.Empty:
                    break
        self.book.close_frames([j.frame for j in leftovers], Reason.SHUTDOWN)
        self.book.stop()
        self.book.close_all(Reason.SHUTDOWN)
        logger.info("pipeline stopped: %d frames, %d verdicts", sum(self._produced.values()),
                    self.book.delivered)

    def stats(self) -> PipelineStats:
        """A snapshot of counters, rates, latency percentiles, queues, sources, model."""
        verdicts, reasons, defects = self.counters.counts()
        model = self._slot.current
        stations = {}
        for st in self.stations:
            rs = self._resilient.get(st.name)
            stations[st.name] = StationStats(
                name=st.name,
                state=str(rs.state) if rs else str(SourceState.CONNECTING),
                frames=self._produced[st.name],
                dropped=self._dropped[st.name],
                reconnects=rs.reconnects if rs else 0,
                last_gap_s=rs.last_gap_s if rs else None,
                last_error=rs.last_error if rs else None,
            )
        depths = {"batcher": len(self._batcher), "post": self._stages.post_q.qsize(),
                  "pending": self.book.pending}
        depths.update({f"intake:{k}": q.qsize() for k, q in self._intake_q.items()})
        batches = self._batcher.batches
        return PipelineStats(
            at=self._clock(),
            uptime_s=round(time.monotonic() - self._started_at, 3),
            frames=sum(self._produced.values()),
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
            engine_failures=self._stages.engine_failures,
            engine_fallbacks=self._stages.engine_fallbacks,
            stage_restarts={n: t.restarts for n, t in self._threads.items() if t.restarts},
            sink_errors=self.book.sink_errors,
        )

    # ------------------------------------------------------------------ events
    def _event(self, kind: str, severity: Severity, source: str, message: str,
               **data: EventValue) -> None:
        event = EventRecord(at=self._clock(), kind=kind, severity=severity, source=source,
                            message=message, data=data)
        try:
            self._store.record_event(event)
        except StoreError:
            logger.exception("could not record event %s: %s", kind, message)
        for listener in self._event_listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("event listener %r failed", listener)

    def _on_restart(self, stage: str, restarts: int, error: BaseException, delay_s: float) -> None:
        lost = self._stages.take_lost(stage)
        if lost:
            self.book.close_frames([j.frame for j in lost], Reason.ENGINE_FAILURE)
        self._event("stage_restart", "warning", stage,
                    f"stage {stage} died ({error!r}); restart {restarts} in {delay_s:.1f} s",
                    stage=stage, restarts=restarts, error=repr(error), delay_s=delay_s,
                    frames_lost_to_engine_failure=len(lost))

    def _on_source_state(self, station: str, old: SourceState, new: SourceState,
                         detail: str) -> None:
        rs = self._resilient.get(station)
        if new == SourceState.CONNECTING or (new == SourceState.LOST and old ==
                                             SourceState.CONNECTING and rs and rs.attempts > 1):
            return  # retries of one outage: the LOST that started it was recorded
        severity: Severity = "alarm" if new == SourceState.LOST else "info"
        self._event("source_state", severity, f"source:{station}",
                    f"station {station}: {old} -> {new} ({detail})", station=station,
                    old=str(old), new=str(new), reconnects=rs.reconnects if rs else 0,
                    gap_s=rs.last_gap_s if rs and new == SourceState.STREAMING else None)

    # ------------------------------------------------------------------ sources
    def _source_main(self, st: Station) -> None:
        stop = self._station_stop[st.name]
        rs = ResilientSource(
            st.name, st.source, reconnect=st.reconnect, clock=self._clock,
            on_state=self._on_source_state, first_seq=self._next_seq[st.name],
        )
        self._resilient[st.name] = rs
        frames = rs.frames_until(stop)
        try:
            while True:
                if not self._budget.reserve():
                    # Budget used up: stop this source the way a stop does (state ENDED);
                    # with `stop` set the generator ends without reading another frame.
                    stop.set()
                    for frame in frames:  # pragma: no cover - defensive, still recorded
                        self._intake(st, frame)
                    break
                try:
                    frame = next(frames)
                except StopIteration:
                    self._budget.release()
                    break
                self._next_seq[st.name] = frame.seq + 1
                self._intake(st, frame)
        finally:
            frames.close()
        with self._lock:
            self._stations_done.add(st.name)
            if len(self._stations_done) == len(self.stations):
                self.sources_finished.set()

    def _intake(self, st: Station, frame: Frame) -> None:
        self._produced[st.name] += 1
        if self._closed:  # a straggler read after stop: recorded, never lost
            self.book.deliver(uninspected_record(frame, Reason.SHUTDOWN,
                                                 judged_at=self._clock()))
            return
        self.book.open(frame)
        cropped = crop_to_roi(frame.image_bgr, st.roi_xywh)
        if cropped is None:
            self._roi_outside(st, frame)
            return
        job = Job(frame, cropped[0], cropped[1], time.perf_counter())
        if self.preprocess_mode == "worker":
            q = self._intake_q[st.name]
            try:
                q.put_nowait(job)
                return
            except queue.Full:
                if self.cfg.overflow == "block" and self._put_blocking(q, job):
                    return
        elif self._batcher.offer(job) or (
            self.cfg.overflow == "block" and self._batcher.put(job, self._abort)
        ):
            return
        self._dropped[st.name] += 1
        self.book.close(uninspected_record(frame, Reason.DROPPED, judged_at=self._clock(),
                                           keep_image=self.cfg.keep_images))

    def _put_blocking(self, q: queue.Queue[Job], job: Job) -> bool:
        while not self._abort.is_set():
            try:
                q.put(job, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _roi_outside(self, st: Station, frame: Frame) -> None:
        h, w = frame.image_bgr.shape[:2]
        if st.name not in self._roi_alarmed:
            self._roi_alarmed.add(st.name)
            self._event("alarm", "alarm", f"source:{st.name}",
                        f"station {st.name}: ROI {st.roi_xywh} lies outside its {w}x{h} "
                        "frames; they are recorded as uninspected", alarm="roi_outside_frame",
                        station=st.name)
        self.book.close(uninspected_record(frame, Reason.ENGINE_FAILURE,
                                           judged_at=self._clock()))

    def _worker_main(self, st: Station) -> None:
        q = self._intake_q[st.name]
        while not self._abort.is_set():
            try:
                job = q.get(timeout=POLL_S)
            except queue.Empty:
                source = self._threads.get(f"source:{st.name}")
                if source is not None and source.finished.is_set():
                    return
                continue
            model = self._slot.current
            if model is not None:
                started = time.perf_counter()
                try:
                    tensor, transforms = model.preprocess([job.image])
                    job.tensor, job.transform = tensor[0], transforms[0]
                    job.pre_key = model.preprocess_hash + repr(model.input_hw)
                except Exception:  # noqa: BLE001 - the engine retries and reports it
                    logger.debug("frame %s: worker preprocessing failed", job.frame.frame_id)
                job.pre_ms = (time.perf_counter() - started) * 1000.0
            if not self._batcher.put(job, self._abort):
                self.book.close_frames([job.frame], Reason.SHUTDOWN)

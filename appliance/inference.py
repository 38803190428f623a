"""The engine and postprocess stages of the pipeline, and the slot holding the model.

The engine thread takes the next batch from the batcher whenever it is free, reads the
model from the `ModelSlot` once for that batch, preprocesses (into the model's
preallocated input buffer, or by copying tensors the preprocess workers made for the
same preprocessing), runs it and hands the output to the postprocess thread over a
bounded queue. The postprocess thread decodes, applies NMS, judges and closes the
frames in the verdict book.

Failures: a GPU run failure reloads the model on CPU (alarm, `model_change` event) and
retries the batch; any other engine or postprocess failure makes the batch's frames
`uninspected: engine_failure`, with one alarm until inference works again
(`alarm_cleared`). A frame is never passed without a result.

Invariants:
- a batch is judged entirely by the one model read from the slot when it was taken;
- the frames a stage holds when it dies are handed back by `take_lost` (the pipeline
  closes them as engine failures when the supervisor restarts the stage).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.batcher import DynamicBatcher
from appliance.config import PipelineConfig
from appliance.engine import Engine, LoadedModel
from appliance.errors import EngineError
from appliance.intake import Job
from appliance.judge import inspected_record
from appliance.records import EventValue, Severity
from appliance.records import UninspectedReason as Reason
from appliance.verdicts import VerdictBook
from models.postprocess import Detections
from models.preprocess import FrameTransform, Tensor

logger = logging.getLogger(__name__)

POLL_S = 0.05

EventFn = Callable[..., None]
"""`event(kind, severity, source, message, **data)`: records a pipeline event."""


class ModelSlot:
    """The model the next batch is judged by. Replacing it is atomic."""

    def __init__(self, model: LoadedModel | None) -> None:
        self._model = model
        self._lock = threading.Lock()

    @property
    def current(self) -> LoadedModel | None:
        return self._model

    def replace(self, model: LoadedModel) -> LoadedModel | None:
        """Install `model`; returns the one it replaced."""
        with self._lock:
            old, self._model = self._model, model
            return old

    def replace_if(self, expected: LoadedModel, model: LoadedModel) -> bool:
        """Install `model` only if `expected` is still current (a swap in between wins)."""
        with self._lock:
            if self._model is not expected:
                return False
            self._model = model
            return True


@dataclass(frozen=True)
class BatchInfo:
    """One engine batch, for batch listeners (debugging, telemetry)."""

    model_version: str | None
    frame_ids: tuple[str, ...]
    stations: tuple[str, ...]
    infer_ms: float
    failure: str | None


@dataclass(slots=True)
class Batch:
    """A batch between the engine and the postprocess stage (perf_counter seconds)."""

    jobs: list[Job]
    arrivals: list[float]
    model: LoadedModel | None
    output: Tensor | None
    transforms: list[FrameTransform]
    ready_t: float
    dispatch_t: float
    infer_done_t: float
    pre_ms: float
    infer_ms: float
    failure: Reason | None


_END = object()


class InferenceStages:
    """The engine and postprocess loops (run as supervised threads by the pipeline)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        engine: Engine,
        slot: ModelSlot,
        batcher: DynamicBatcher[Job],
        book: VerdictBook,
        *,
        event: EventFn,
        abort: threading.Event,
        draining: threading.Event,
        alive: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self._engine = engine
        self._slot = slot
        self._batcher = batcher
        self.book = book
        self._event_fn = event
        self._abort = abort
        self._draining = draining
        self._alive = alive
        self._clock = clock
        self.post_q: queue.Queue[object] = queue.Queue(maxsize=cfg.post_queue_batches)
        self.batch_listeners: list[Callable[[BatchInfo], None]] = []
        self._in_engine: list[Job] = []
        self._in_post: Batch | None = None
        self._engine_ready_t = time.perf_counter()
        self._engine_healthy = True
        self._fallback_failed: LoadedModel | None = None
        self.engine_failures = 0
        self.engine_fallbacks = 0

    def _event(self, kind: str, severity: Severity, source: str, message: str,
               **data: EventValue) -> None:
        self._event_fn(kind, severity, source, message, **data)

    def take_lost(self, stage: str) -> list[Job]:
        """The jobs a dead stage held (called when the supervisor restarts it)."""
        if stage == "engine":
            lost, self._in_engine = self._in_engine, []
            return lost
        if stage == "postprocess" and self._in_post is not None:
            lost_batch, self._in_post = self._in_post, None
            return lost_batch.jobs
        return []

    # ------------------------------------------------------------------ engine
    def engine_main(self) -> None:
        while True:
            pairs = self._batcher.next_batch(POLL_S)
            if pairs:
                self._run_batch(pairs)
            elif self._abort.is_set() or (self._draining.is_set() and not len(self._batcher)):
                break
        self._post_put(_END)

    def _run_batch(self, pairs: list[tuple[float, Job]]) -> None:
        dispatch_t = time.perf_counter()
        ready_t = self._engine_ready_t
        if self.book.deadline_s is not None:  # past their deadline already: not worth a run
            pairs = [p for p in pairs if self.book.is_pending(p[1].frame.frame_id)]
        model = self._slot.current
        # A swap to a model with a smaller (fixed) batch may meet a batch taken before it.
        size = model.max_batch if model is not None else max(len(pairs), 1)
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            jobs = [job for _, job in chunk]
            self._in_engine = jobs
            batch = Batch(jobs, [a for a, _ in chunk], model, None, [], ready_t, dispatch_t,
                          dispatch_t, 0.0, 0.0, None)
            if model is None:
                batch.failure = Reason.NO_MODEL
            else:
                try:
                    self._infer(batch, model)
                except EngineError as e:
                    batch.failure = Reason.ENGINE_FAILURE
                    self._engine_failed(model, jobs, e)
            self._post_put(batch)
            self._in_engine = []
        self._engine_ready_t = time.perf_counter()

    def _infer(self, batch: Batch, model: LoadedModel) -> None:
        started = time.perf_counter()
        key = model.preprocess_hash + repr(model.input_hw)
        if all(j.pre_key == key for j in batch.jobs):
            tensor = model.load_into_buffer([j.tensor for j in batch.jobs if j.tensor is not None])
            batch.transforms = [j.transform for j in batch.jobs if j.transform is not None]
        else:
            tensor, batch.transforms, bad = model.preprocess_robust([j.image for j in batch.jobs])
            if bad:
                for i, why in bad.items():
                    logger.warning("frame %s: preprocessing failed with model %s: %s",
                                   batch.jobs[i].frame.frame_id, model.version_id, why)
                self.book.close_frames([batch.jobs[i].frame for i in bad],
                                       Reason.ENGINE_FAILURE, model.version_id)
                batch.arrivals = [a for i, a in enumerate(batch.arrivals) if i not in bad]
                batch.jobs = [j for i, j in enumerate(batch.jobs) if i not in bad]
                if not batch.jobs:
                    return
        batch.pre_ms = (time.perf_counter() - started) * 1000.0
        started = time.perf_counter()
        try:
            batch.output = model.infer(tensor)
        except EngineError as e:
            if not (model.on_gpu and self._engine.cfg.cpu_fallback) or \
                    model is self._fallback_failed:
                raise
            model = self._fall_back_to_cpu(model, e)
            batch.model = model
            batch.output = model.infer(tensor)
        batch.infer_done_t = time.perf_counter()
        batch.infer_ms = (batch.infer_done_t - started) * 1000.0
        if not self._engine_healthy:
            self._engine_healthy = True
            self._event("alarm_cleared", "info", "engine",
                        f"inference works again with {model.version_id}",
                        alarm="engine_failure", model=model.version_id)

    def _fall_back_to_cpu(self, model: LoadedModel, error: EngineError) -> LoadedModel:
        self._event("alarm", "alarm", "engine",
                    f"GPU inference failed ({error}); falling back to CPU",
                    alarm="engine_fallback", model=model.version_id,
                    providers=",".join(model.info.providers))
        try:
            cpu = self._engine.load_on_cpu(model)
        except EngineError:
            self._fallback_failed = model  # do not reload for every batch
            raise
        self.engine_fallbacks += 1
        self._slot.replace_if(model, cpu)  # a swap in between wins
        self._event("model_change", "warning", "engine",
                    f"model {model.version_id} now runs on CPU (fallback)",
                    previous=model.version_id, current=cpu.version_id,
                    reason="cpu_fallback", providers=",".join(cpu.info.providers))
        return cpu

    def _engine_failed(self, model: LoadedModel, jobs: list[Job], error: EngineError) -> None:
        self.engine_failures += 1
        logger.error("model %s: batch of %d frames (%s..) failed: %s", model.version_id,
                     len(jobs), jobs[0].frame.frame_id, error)
        if self._engine_healthy:
            self._engine_healthy = False
            self._event("alarm", "alarm", "engine",
                        f"inference failed with {model.version_id}: {error}; parts are "
                        "recorded as uninspected", alarm="engine_failure",
                        model=model.version_id, error=str(error))

    def _post_put(self, item: object) -> None:
        while True:
            try:
                self.post_q.put(item, timeout=POLL_S)
                return
            except queue.Full:
                if self._abort.is_set() and not self._alive("postprocess"):
                    if isinstance(item, Batch):
                        self.book.close_frames([j.frame for j in item.jobs], Reason.SHUTDOWN)
                    return

    # ------------------------------------------------------------------ postprocess
    def post_main(self) -> None:
        while True:
            try:
                item = self.post_q.get(timeout=POLL_S)
            except queue.Empty:
                if self._abort.is_set() and not self._alive("engine"):
                    return
                continue
            if item is _END:
                return
            if isinstance(item, Batch):
                self._in_post = item
                self.finish(item)
                self._in_post = None

    def finish(self, b: Batch) -> None:
        model = b.model
        version = model.version_id if model else None
        if b.failure is None and model is not None and b.output is not None:
            try:
                detections = model.postprocess(b.output, b.transforms)
            except Exception as e:  # noqa: BLE001 - any failure here is an engine failure
                b.failure = Reason.ENGINE_FAILURE
                self._engine_failed(model, b.jobs, EngineError(f"postprocess: {e!r}"))
            else:
                self._judge(b, model, detections)
        if b.failure is not None:
            self.book.close_frames([j.frame for j in b.jobs], b.failure, version)
        info = BatchInfo(version, tuple(j.frame.frame_id for j in b.jobs),
                         tuple(j.frame.station for j in b.jobs), b.infer_ms,
                         str(b.failure) if b.failure else None)
        for listener in self.batch_listeners:
            try:
                listener(info)
            except Exception:
                logger.exception("batch listener %r failed", listener)

    def _judge(self, b: Batch, model: LoadedModel, detections: Sequence[Detections]) -> None:
        judged_at = self._clock()
        post_ms = (time.perf_counter() - b.infer_done_t) * 1000.0
        records = []
        for job, arrival, found in zip(b.jobs, b.arrivals, detections, strict=True):
            verdict, defects = model.judge.verdict(found, job.offset_xy)
            start = max(arrival, b.ready_t)
            records.append(inspected_record(
                job.frame, verdict, defects, judged_at=judged_at,
                model_version=model.version_id, preprocess_hash=model.preprocess_hash,
                latency_ms={
                    "queue": max(0.0, start - arrival) * 1000.0,
                    "preprocess": b.pre_ms + job.pre_ms,
                    "batch_wait": max(0.0, b.dispatch_t - start) * 1000.0,
                    "infer": b.infer_ms,
                    "postprocess": post_ms,
                    "total": max(0.0, judged_at - job.frame.captured_at) * 1000.0,
                },
                keep_image=self.cfg.keep_images,
            ))
        self.book.close_many(records)

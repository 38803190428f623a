"""The engine stage: takes the next batch from its inbox (the dynamic batcher) whenever
it is free, reads the model from the `ModelSlot` once for that batch, preprocesses it
into the model's preallocated input buffer (or copies in the tensors the preprocess
workers made for the same preprocessing), runs it and hands the output to the
postprocess stage's inbox.

Failures: a GPU run failure reloads the model on CPU (alarm, `model_change` event) and
retries the batch; any other failure makes the batch `uninspected: engine_failure`
(one alarm per outage, see `EngineHealth`); a batch with no model is
`uninspected: no_model`. A frame is never passed without a result.

Invariants:
- a batch is judged entirely by the one model read from the slot when it was taken
  (a batch larger than that model's fixed batch is split, same model);
- every job taken is handed on in a `Batch` (with its failure, if any) or closed;
- the jobs the stage holds when it dies are handed back by `take_lost`.
"""

from __future__ import annotations

import logging
import threading
import time

from appliance.errors import EngineError
from appliance.pipeline.batcher import DynamicBatcher
from appliance.pipeline.cpu import CpuMeter, thread_cpu_s
from appliance.pipeline.engine import Engine, LoadedModel
from appliance.pipeline.events import Events
from appliance.pipeline.health import EngineHealth
from appliance.pipeline.inbox import POLL_S, Outbox
from appliance.pipeline.job import Batch, Job
from appliance.pipeline.slot import ModelSlot
from appliance.pipeline.verdicts import VerdictBook
from appliance.records import UninspectedReason as Reason

logger = logging.getLogger(__name__)


class InferStage:
    """See the module docstring. `run` ends once `draining` is set and the batcher is
    empty, or at `abort` (after the batch in flight, never taking another)."""

    name = "engine"

    def __init__(
        self,
        *,
        inbox: DynamicBatcher[Job],
        outbox: Outbox[Batch],
        engine: Engine,
        slot: ModelSlot,
        book: VerdictBook,
        events: Events,
        health: EngineHealth,
        draining: threading.Event,
        abort: threading.Event,
        finished: threading.Event,
        cpu: CpuMeter,
    ) -> None:
        self.inbox = inbox
        self._cpu = cpu
        self._outbox = outbox
        self._engine = engine
        self._slot = slot
        self._book = book
        self._events = events
        self._health = health
        self._draining = draining
        self._abort = abort
        self.finished = finished
        """Set when `run` returned normally (no batch will follow)."""
        self._holding: list[Job] = []
        self._ready_t = time.perf_counter()
        self._fallback_failed: LoadedModel | None = None

    def take_lost(self) -> list[Job]:
        """The jobs this stage held when it died."""
        lost, self._holding = self._holding, []
        return lost

    def run(self) -> None:
        while not self._abort.is_set():
            # Abort is checked before every batch: once the drain budget is spent no new
            # batch is taken (what is queued is sealed as shutdown), however long the
            # backlog; only the run in flight finishes.
            pairs = self.inbox.next_batch(POLL_S)
            if pairs:
                self.run_batch(pairs)
            elif self._draining.is_set() and not len(self.inbox):
                break
        self.finished.set()

    def run_batch(self, pairs: list[tuple[float, Job]]) -> None:
        """Run one batch of (arrival, job) pairs and hand it on."""
        dispatch_t = time.perf_counter()
        ready_t = self._ready_t
        if self._book.deadline_s is not None:  # past their deadline already: not worth a run
            pairs = [p for p in pairs if self._book.is_pending(p[1].frame.frame_id)]
        model = self._slot.current
        # A swap to a model with a smaller (fixed) batch may meet a batch taken before it.
        size = model.max_batch if model is not None else max(len(pairs), 1)
        for start in range(0, len(pairs), size):
            chunk = pairs[start : start + size]
            jobs = [job for _, job in chunk]
            self._holding = jobs
            batch = Batch(jobs, [a for a, _ in chunk], model, None, [], ready_t, dispatch_t,
                          dispatch_t, 0.0, 0.0, None)
            if model is None:
                batch.failure = Reason.NO_MODEL
            else:
                try:
                    self._infer(batch, model)
                except EngineError as e:
                    batch.failure = Reason.ENGINE_FAILURE
                    self._health.failed(model.version_id, jobs[0].frame.frame_id, len(jobs), e)
            if batch.jobs and not self._outbox.put(batch, self._abort):
                self._book.close_uninspected([j.frame for j in batch.jobs], Reason.SHUTDOWN)
            self._holding = []
        self._ready_t = time.perf_counter()

    def _infer(self, batch: Batch, model: LoadedModel) -> None:
        started, cpu_started = time.perf_counter(), thread_cpu_s()
        key = model.preprocess_key
        if all(j.pre_key == key for j in batch.jobs):
            tensor = model.load_into_buffer([j.tensor for j in batch.jobs if j.tensor is not None])
            batch.transforms = [j.transform for j in batch.jobs if j.transform is not None]
        else:
            tensor, batch.transforms, bad = model.preprocess_robust([j.image for j in batch.jobs])
            if bad:
                for i, why in bad.items():
                    logger.warning("frame %s: preprocessing failed with model %s: %s",
                                   batch.jobs[i].frame.frame_id, model.version_id, why)
                self._book.close_uninspected([batch.jobs[i].frame for i in bad],
                                             Reason.ENGINE_FAILURE, model.version_id)
                batch.arrivals = [a for i, a in enumerate(batch.arrivals) if i not in bad]
                batch.jobs = [j for i, j in enumerate(batch.jobs) if i not in bad]
                if not batch.jobs:
                    return
        batch.pre_ms = (time.perf_counter() - started) * 1000.0
        cpu_pre = thread_cpu_s()
        self._cpu.add("preprocess", cpu_pre - cpu_started)
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
        self._cpu.add("infer", thread_cpu_s() - cpu_pre)
        self._health.ran(model.version_id)

    def _fall_back_to_cpu(self, model: LoadedModel, error: EngineError) -> LoadedModel:
        self._events.record("alarm", "alarm", "engine",
                            f"GPU inference failed ({error}); falling back to CPU",
                            alarm="engine_fallback", model=model.version_id,
                            providers=",".join(model.info.providers))
        try:
            cpu = self._engine.load_on_cpu(model)
        except EngineError:
            self._fallback_failed = model  # do not reload for every batch
            raise
        self._health.fell_back()
        self._slot.replace_if(model, cpu)  # a swap in between wins
        self._events.record("model_change", "warning", "engine",
                            f"model {model.version_id} now runs on CPU (fallback)",
                            previous=model.version_id, current=cpu.version_id,
                            reason="cpu_fallback", providers=",".join(cpu.info.providers))
        return cpu

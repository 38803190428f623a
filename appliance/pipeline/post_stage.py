"""The postprocess stage: takes batches from its inbox, decodes the model output, applies
NMS, judges every frame with the batch's model's thresholds and closes the frames in
the verdict book (which delivers each verdict to the store, the statistics and the
listeners).

Judging happens here, not in the model: a `Judge` (per-class thresholds from the
manifest) is made once per model and kept while that model runs.

Invariants:
- a batch is judged entirely by its own model (`Batch.model`);
- a batch that failed upstream, or fails here, closes its frames as uninspected (a
  failure here counts as an engine failure); never a `pass` without a result;
- the batch the stage holds when it dies is handed back by `take_lost`;
- the stage ends once the engine stage finished and the inbox is empty, or at abort.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from appliance.errors import EngineError
from appliance.pipeline.cpu import CpuMeter, thread_cpu_s
from appliance.pipeline.engine import LoadedModel
from appliance.pipeline.health import EngineHealth
from appliance.pipeline.inbox import POLL_S, Inbox
from appliance.pipeline.job import Batch, BatchInfo, Job
from appliance.pipeline.judge import Judge, inspected_record
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.pipeline.verdicts import VerdictBook
from appliance.records import InspectionRecord
from appliance.records import UninspectedReason as Reason
from calibration.station import DefectSizing
from models.postprocess import Detections

logger = logging.getLogger(__name__)


class PostprocessStage:
    """See the module docstring. `clock` is unix seconds (judged_at)."""

    name = "postprocess"

    def __init__(
        self,
        *,
        inbox: Inbox[Batch],
        book: VerdictBook,
        health: EngineHealth,
        upstream_finished: threading.Event,
        abort: threading.Event,
        keep_images: bool,
        cpu: CpuMeter,
        clock: Callable[[], float] = time.time,
        thresholds: ThresholdOverrides | None = None,
        sizing: Mapping[str, DefectSizing] | None = None,
    ) -> None:
        self.inbox = inbox
        self._thresholds = thresholds
        self._sizing = dict(sizing or {})  # station name -> its defect-size rule
        self._cpu = cpu
        self._book = book
        self._health = health
        self._upstream_finished = upstream_finished
        self._abort = abort
        self._keep_images = keep_images
        self._clock = clock
        self.batch_listeners: list[Callable[[BatchInfo], None]] = []
        self._holding: Batch | None = None
        self._judge: tuple[LoadedModel, int, Judge] | None = None

    def take_lost(self) -> list[Job]:
        """The jobs of the batch this stage held when it died."""
        lost, self._holding = self._holding, None
        return lost.jobs if lost is not None else []

    def run(self) -> None:
        while True:
            # Seen finished before an empty get: nothing can arrive after that get.
            upstream_done = self._upstream_finished.is_set()
            batch = self.inbox.get(POLL_S)
            if batch is None:
                if upstream_done or self._abort.is_set():
                    return
                continue
            self._holding = batch
            self.finish(batch)
            self._holding = None

    def finish_batch(self, b: Batch) -> None:
        """`finish` looked up at call time (the `Inline` outbox of the engine stage
        holds this bound method; tests may replace `finish`)."""
        self.finish(b)

    def judge_for(self, model: LoadedModel) -> Judge:
        """The thresholds of `model` with the engineer's overrides (made once per model
        and overrides version)."""
        overrides = self._thresholds
        version = overrides.version if overrides is not None else 0
        if self._judge is None or self._judge[0] is not model or self._judge[1] != version:
            judge = Judge.from_manifest(model.manifest)
            if overrides is not None:
                judge = overrides.apply(judge)
            self._judge = (model, version, judge)
        return self._judge[2]

    def finish(self, b: Batch) -> None:
        """Postprocess, judge and close one batch; tell the batch listeners."""
        started = thread_cpu_s()
        model = b.model
        version = model.version_id if model else None
        if b.failure is None and model is not None and b.output is not None:
            try:
                detections = model.postprocess(b.output, b.transforms)
                records = self._records(b, model, detections)
            # Whatever breaks here (a bad output, a bug), this batch failed and the
            # frames must be closed as such.
            except Exception as e:  # noqa: BLE001
                b.failure = Reason.ENGINE_FAILURE
                self._health.failed(model.version_id, b.jobs[0].frame.frame_id, len(b.jobs),
                                    EngineError(f"postprocess: {e!r}"))
            else:
                delivering = thread_cpu_s()
                self._cpu.add("postprocess", delivering - started)
                self._book.close_inspected(records)
                started = thread_cpu_s()
                self._cpu.add("verdicts", started - delivering)
        if b.failure is not None:
            self._book.close_uninspected([j.frame for j in b.jobs], b.failure, version)
        if self.batch_listeners:
            info = BatchInfo(version, tuple(j.frame.frame_id for j in b.jobs),
                             tuple(j.frame.station for j in b.jobs), b.infer_ms,
                             str(b.failure) if b.failure else None)
            for listener in self.batch_listeners:
                try:
                    listener(info)
                except Exception:
                    logger.exception("batch listener %r failed", listener)
        self._cpu.add("postprocess", thread_cpu_s() - started)

    def _records(self, b: Batch, model: LoadedModel,
                 detections: Sequence[Detections]) -> list[InspectionRecord]:
        judge = self.judge_for(model)
        judged_at = self._clock()
        post_ms = (time.perf_counter() - b.infer_done_t) * 1000.0
        records = []
        for job, arrival, found in zip(b.jobs, b.arrivals, detections, strict=True):
            verdict, defects = judge.verdict(found, job.offset_xy,
                                             self._sizing.get(job.frame.station))
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
                keep_image=self._keep_images,
            ))
        return records

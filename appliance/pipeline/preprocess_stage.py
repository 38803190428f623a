"""Worker mode only (inference on a GPU): one preprocess worker per station, so
preprocessing overlaps with inference. It takes jobs from its inbox, preprocesses each
with the current model's spec and hands it to the engine's batcher.

Invariants:
- a job is handed on with its tensor, or without one when preprocessing failed (the
  engine stage then preprocesses it again and reports a bad frame); one that cannot be
  handed on because the pipeline aborts is closed as `uninspected: shutdown`;
- the stage ends once its upstream (the station) finished and its inbox is empty.
"""

from __future__ import annotations

import logging
import threading
import time

from appliance.pipeline.batcher import DynamicBatcher
from appliance.pipeline.cpu import CpuMeter, thread_cpu_s
from appliance.pipeline.inbox import POLL_S, Inbox
from appliance.pipeline.job import Job
from appliance.pipeline.slot import ModelSlot
from appliance.pipeline.verdicts import VerdictBook
from appliance.records import UninspectedReason as Reason
from models.errors import ModelError

logger = logging.getLogger(__name__)


class PreprocessStage:
    """See the module docstring."""

    def __init__(
        self,
        station: str,
        *,
        inbox: Inbox[Job],
        outbox: DynamicBatcher[Job],
        slot: ModelSlot,
        book: VerdictBook,
        upstream_finished: threading.Event,
        abort: threading.Event,
        cpu: CpuMeter,
    ) -> None:
        self.name = f"preprocess:{station}"
        self._cpu = cpu
        self.inbox = inbox
        self._outbox = outbox
        self._slot = slot
        self._book = book
        self._upstream_finished = upstream_finished
        self._abort = abort
        self._holding: Job | None = None

    def take_lost(self) -> list[Job]:
        """The job this stage held when it died."""
        lost, self._holding = self._holding, None
        return [lost] if lost is not None else []

    def run(self) -> None:
        while not self._abort.is_set():
            # Seen finished before an empty get: nothing can arrive after that get.
            upstream_done = self._upstream_finished.is_set()
            job = self.inbox.get(POLL_S)
            if job is None:
                if upstream_done:
                    return
                continue
            self._holding = job
            self._preprocess(job)
            if not self._outbox.put(job, self._abort):
                self._book.close_uninspected([job.frame], Reason.SHUTDOWN)
            self._holding = None

    def _preprocess(self, job: Job) -> None:
        model = self._slot.current
        if model is None:
            return
        started, cpu_started = time.perf_counter(), thread_cpu_s()
        try:
            job.tensor, job.transform = model.preprocess_one(job.image)
            job.pre_key = model.preprocess_key
        except ModelError as e:  # the engine stage preprocesses again and reports it
            logger.debug("frame %s: worker preprocessing failed: %s", job.frame.frame_id, e)
        job.pre_ms = (time.perf_counter() - started) * 1000.0
        self._cpu.add("preprocess", thread_cpu_s() - cpu_started)

"""`lineguard cloud retrain-worker`: runs queued retraining requests, one at a time,
and queues the scheduled ones.

Policy for a request of line L: the parent is the model L runs (the fleet store's
newest `status` / `model` report), which must be in the registry with weights; the
data is the newest version of the dataset configured for L (`retrain.lines`), or that
path when the configured value is a YOLO folder. A request that cannot be planned or
whose training fails ends `failed` with the reason; the worker goes on.

A drift request waits for new data: it stays queued until L's dataset has a version
made after the request (the operators' labels of the drifted frames, accepted from the
inbox), and fails after `drift_data_wait_h` without one. Schedule and manual requests
run on the newest version as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cloud.errors import CloudError
from cloud.fleet.views import LineView
from cloud.registry import ModelRef, ModelRegistry
from cloud.registry.where import model_of_line
from cloud.retrain.config import RetrainConfig
from cloud.retrain.data import DatasetSource
from cloud.retrain.errors import RetrainError
from cloud.retrain.pipeline import retrain
from cloud.retrain.requests import RetrainQueue, RetrainRequest

logger = logging.getLogger(__name__)


def due_lines(lines: Sequence[str], last_requested: dict[str, datetime], now: datetime,
              every: timedelta) -> list[str]:
    """The configured lines whose newest request is older than `every` (or absent)."""
    return [line for line in lines
            if line not in last_requested or now - last_requested[line] >= every]


@dataclass(frozen=True)
class Plan:
    parent: ModelRef
    data: str


def plan_request(request: RetrainRequest, config: RetrainConfig, lines: Sequence[LineView],
                 datasets: DatasetSource | None) -> Plan:
    """Parent and data for a request (see the module docstring). Raises RetrainError."""
    running = model_of_line(lines, request.site, request.line)
    if running is None:
        raise RetrainError(f"{request.line_key}: the fleet store knows no model it runs")
    setting = config.lines.get(request.line_key)
    if setting is None:
        raise RetrainError(f"{request.line_key}: no dataset configured (retrain.lines)")
    data = setting.dataset
    if not Path(data).exists():
        if datasets is None:
            raise RetrainError(f"{request.line_key}: dataset {data!r} needs the dataset index")
        try:
            data = datasets.resolve(data)[0]
        except (CloudError, LookupError) as e:
            raise RetrainError(f"{request.line_key}: dataset {data!r}: {e}") from e
    return Plan(ModelRef(*running), data)


class RetrainWorker:
    """Runs the queue; `lines` reads the fleet store's lines."""

    def __init__(self, queue: RetrainQueue, registry: ModelRegistry, config: RetrainConfig,
                 lines: Callable[[], list[LineView]], datasets: DatasetSource | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self._queue = queue
        self._registry = registry
        self._config = config
        self._lines = lines
        self._datasets = datasets
        self._progress = progress
        self._said_waiting: set[int] = set()

    def schedule(self, now: datetime) -> list[RetrainRequest]:
        """Queue a `schedule` request for every configured line that is due."""
        if self._config.schedule is None:
            return []
        every = timedelta(hours=self._config.schedule.every_h)
        queued = []
        for line in due_lines(sorted(self._config.lines), self._queue.last_requested(), now,
                              every):
            request = self._queue.request_retrain(line, "scheduled retrain", source="schedule")
            if request is not None:
                queued.append(request)
        return queued

    def waiting_for_data(self, request: RetrainRequest) -> str | None:
        """Why `request` cannot run yet (None: it can). Only drift requests wait, and
        only for a dataset of the index (a configured folder has no versions)."""
        setting = self._config.lines.get(request.line_key)
        if (request.source != "drift" or self._config.drift_data_wait_h <= 0
                or setting is None or self._datasets is None
                or Path(setting.dataset).exists()):
            return None
        try:
            made = self._datasets.created_at(setting.dataset)
        except (CloudError, LookupError):
            return None  # planning reports the unknown dataset
        if made > request.requested_at:
            return None
        why = (f"waiting for a version of {setting.dataset} newer than the request "
               f"(newest made {made:%Y-%m-%d %H:%M:%S} UTC)")
        if request.id not in self._said_waiting:
            self._said_waiting.add(request.id)
            logger.info("retrain request %d for %s: %s", request.id, request.line_key, why)
        return why

    def expire(self, now: datetime) -> list[RetrainRequest]:
        """Fail the drift requests that waited `drift_data_wait_h` for new data."""
        limit = timedelta(hours=self._config.drift_data_wait_h)
        dropped = []
        for request in self._queue.queued():
            why = self.waiting_for_data(request)
            if why is not None and now - request.requested_at >= limit:
                gone = self._queue.drop(request.id, f"no new data after "
                                        f"{self._config.drift_data_wait_h:g} h: {why}")
                if gone is not None:
                    logger.warning("retrain request %d for %s dropped: %s", gone.id,
                                   gone.line_key, gone.outcome)
                    dropped.append(gone)
        return dropped

    def run_once(self) -> RetrainRequest | None:
        """Claim and run the oldest queued request that does not wait for data; the
        finished request, or None when none could run."""
        request = self._queue.claim(lambda r: self.waiting_for_data(r) is None)
        if request is None:
            return None
        logger.info("running retrain request %d for %s (%s)", request.id, request.line_key,
                    request.reason)
        try:
            plan = plan_request(request, self._config, self._lines(), self._datasets)
            self._queue.set_plan(request.id, plan.parent, plan.data)
            result = retrain(self._registry, plan.parent, plan.data,
                             training=self._config.training, gate=self._config.gate,
                             work_dir=self._config.work_dir, datasets=self._datasets,
                             progress=self._progress, by=f"retrain-worker ({request.source})")
        except CloudError as e:
            logger.error("retrain request %d failed: %s", request.id, e)
            return self._queue.finish(request.id, ok=False, outcome=str(e))
        entry = result.candidate
        outcome = (f"{entry.ref} {entry.state}" + ("" if result.report.passed
                                                   else ": " + "; ".join(result.report.reasons)))
        return self._queue.finish(request.id, ok=True, outcome=outcome, candidate=entry.ref)

    def run(self, stop: threading.Event, now: Callable[[], datetime]) -> int:
        """Until `stop`: queue scheduled requests, run queued ones, wait `poll_s`."""
        while not stop.is_set():
            try:
                self.schedule(now())
                self.expire(now())
                while not stop.is_set() and self.run_once() is not None:
                    pass
            except CloudError as e:
                logger.error("retrain worker: %s (retrying in %.0f s)", e, self._config.poll_s)
            stop.wait(self._config.poll_s)
        return 0


def utc_now() -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(time.time(), UTC)

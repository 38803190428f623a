"""Several collector processes in one command: `collector.workers: K`.

Validation is CPU-bound Python, so one process tops out at one core. K worker
processes, each a full `Collector` with client id `<broker.client_id>-<k>` in the same shared
subscription group, split the fleet's messages between them (the broker deals them out)
and write to the same fleet store. This is the same thing as running K collectors by
hand, supervised by one parent.

Invariants:
- Workers are forked before the parent starts any thread (the parent only waits and
  supervises), so a child never inherits a lock held by a thread it does not have.
- A worker that dies is restarted with backoff (1 s doubling to 30 s, reset after a
  minute of health), and the restart is logged: its session (and the messages queued in
  it) is resumed under the same client id. A worker that exits with status 2 (refused
  subscription, bad settings) stops the whole command: restarting cannot help.
- Stop: SIGTERM to every worker (each commits, acks and disconnects), then SIGKILL
  what has not exited within `stop_timeout_s` + 5 s. A worker whose supervisor is
  killed notices within a second and stops the same way.
- Changing K leaves the sessions of removed ids on the broker, holding their share of
  anything published while they were down until the session expires: drain before
  lowering K (run with the old K until the queues are empty).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.context import ForkProcess
from typing import Final

from pydantic import SecretStr

from cloud.collector.service import Collector
from cloud.config import CollectorConfig, FleetStoreConfig
from cloud.db import DatabaseConfig
from cloud.errors import CloudError
from cloud.fleet import FleetStore

logger = logging.getLogger(__name__)

_BACKOFF_MIN_S: Final = 1.0
_BACKOFF_MAX_S: Final = 30.0
_HEALTHY_S: Final = 60.0
_FATAL_EXIT: Final = 2


def worker_config(cfg: CollectorConfig, index: int) -> CollectorConfig:
    """Worker `index`'s config: its own fixed client id, one worker."""
    broker = cfg.broker.model_copy(update={"client_id": f"{cfg.broker.client_id}-{index}"})
    return cfg.model_copy(update={"broker": broker, "workers": 1})


def run_collector(
    cfg: CollectorConfig, database: DatabaseConfig, store_cfg: FleetStoreConfig,
    password: SecretStr | None, stop: threading.Event,
) -> int:
    """One collector in this process until `stop`; returns its exit status."""
    try:
        store = FleetStore(database, store_cfg)
    except CloudError as e:
        logger.error("%s", e)
        return _FATAL_EXIT
    try:
        return Collector(cfg, store, password=password).run(stop)
    except CloudError as e:
        logger.error("%s", e)
        return _FATAL_EXIT
    finally:
        store.close()


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    # A worker whose supervisor died (SIGKILL) stops in order instead of living on.
    while not stop.wait(1.0):
        if os.getppid() != parent_pid:
            logger.error("the collector's supervisor is gone; stopping this worker")
            stop.set()


def _worker_main(cfg: CollectorConfig, database: DatabaseConfig, store_cfg: FleetStoreConfig,
                 password: SecretStr | None, parent_pid: int) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=_watch_parent, args=(parent_pid, stop), daemon=True).start()
    raise SystemExit(run_collector(cfg, database, store_cfg, password, stop))


@dataclass
class _Slot:
    index: int
    process: ForkProcess | None = None
    started_at: float = 0.0
    backoff_s: float = _BACKOFF_MIN_S
    restart_at: float | None = None


class WorkerPool:
    """K collector processes under one supervisor (see the module docstring)."""

    def __init__(self, cfg: CollectorConfig, database: DatabaseConfig,
                 store_cfg: FleetStoreConfig, password: SecretStr | None) -> None:
        self._cfg = cfg
        self._database = database
        self._store_cfg = store_cfg
        self._password = password
        self._ctx = multiprocessing.get_context("fork")
        self._slots = [_Slot(k) for k in range(cfg.workers)]

    def _start(self, slot: _Slot) -> None:
        cfg = worker_config(self._cfg, slot.index)
        process = self._ctx.Process(
            target=_worker_main,
            args=(cfg, self._database, self._store_cfg, self._password, os.getpid()),
            name=f"collector-{cfg.broker.client_id}",
        )
        process.start()
        slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None
        logger.info("started collector worker %s (pid %s)", cfg.broker.client_id, process.pid)

    def run(self, stop: threading.Event) -> int:
        """Start the workers and supervise them until `stop`; returns an exit status."""
        for slot in self._slots:
            self._start(slot)
        status = 0
        while not stop.wait(0.5):
            if (status := self._supervise()) != 0:
                break
        self._stop_all()
        return status

    def _supervise(self) -> int:
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is not None and process.exitcode is not None:
                process.join()
                slot.process = None
                if process.exitcode == _FATAL_EXIT:
                    logger.error("collector worker %d cannot run (exit status 2); stopping",
                                 slot.index)
                    return _FATAL_EXIT
                if now - slot.started_at > _HEALTHY_S:
                    slot.backoff_s = _BACKOFF_MIN_S
                logger.error("collector worker %d exited with status %s; restarting in %.0f s",
                             slot.index, process.exitcode, slot.backoff_s)
                slot.restart_at = now + slot.backoff_s
                slot.backoff_s = min(slot.backoff_s * 2.0, _BACKOFF_MAX_S)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
        return 0

    def _stop_all(self) -> None:
        running = [s.process for s in self._slots if s.process is not None]
        for process in running:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._cfg.stop_timeout_s + 5.0
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.error("collector worker %s did not stop in time; killing it",
                             process.name)
                process.kill()
                process.join(5.0)

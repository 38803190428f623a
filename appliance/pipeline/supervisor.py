"""Supervised stage threads: a stage that dies is restarted with backoff.

A stage is a function that runs until its work is done (returns) or raises. When it
raises, the supervisor logs it, calls `on_restart(name, restarts, error, delay_s)`
(the pipeline records a `stage_restart` event), waits the backoff on the stop event and
runs the function again. The wait follows `protocol.backoff` under the `backoff` bounds
and starts over once a run lasted longer than `healthy_after_s`.
(Frigate's watchdog restarts dead processes the same way.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from protocol.backoff import Backoff, BackoffConfig

logger = logging.getLogger(__name__)

RestartCallback = Callable[[str, int, BaseException, float], None]


class SupervisedThread:
    """One daemon thread running `target` under supervision. Thread-safe to query."""

    def __init__(
        self,
        name: str,
        target: Callable[[], None],
        *,
        stop: threading.Event,
        on_restart: RestartCallback | None = None,
        backoff: BackoffConfig | None = None,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.name = name
        self._target = target
        self._stop = stop
        self._on_restart = on_restart
        self._backoff = Backoff(backoff or BackoffConfig())
        self._healthy_after_s = healthy_after_s
        self.restarts = 0
        self.finished = threading.Event()
        """Set when the target returned normally or the supervisor gave up on stop."""
        self._thread = threading.Thread(target=self._supervise, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread; returns True if it ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _supervise(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    self._target()
                    return
                # Supervision is the point: whatever killed the stage is logged, reported
                # and the stage restarted; nothing is swallowed silently.
                except Exception as e:
                    if time.monotonic() - started > self._healthy_after_s:
                        self._backoff.reset()
                    delay_s = self._backoff.next_delay_s()
                    self.restarts += 1
                    logger.exception("stage %s died (restart %d in %.1f s)",
                                     self.name, self.restarts, delay_s)
                    if self._on_restart is not None:
                        try:
                            self._on_restart(self.name, self.restarts, e, delay_s)
                        except Exception:
                            logger.exception("stage %s: restart callback failed", self.name)
                    if self._stop.wait(delay_s):
                        return
        finally:
            self.finished.set()

"""Engine health, shared by the engine and postprocess stages: failure counts and one
`engine_failure` alarm per outage (cleared by the next batch that runs), so a broken
model raises one alarm, not one per batch.
"""

from __future__ import annotations

import logging
import threading

from appliance.pipeline.events import Events

logger = logging.getLogger(__name__)


class EngineHealth:
    """See the module docstring. Thread-safe."""

    def __init__(self, events: Events) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._healthy = True
        self.failures = 0
        """Batches that failed in the engine or in postprocessing."""
        self.fallbacks = 0
        """GPU-to-CPU fallbacks."""

    def failed(self, model_version: str, first_frame_id: str, frames: int,
               error: Exception) -> None:
        """A batch of `frames` frames failed; alarm if this starts an outage."""
        logger.error("model %s: batch of %d frames (%s..) failed: %s", model_version,
                     frames, first_frame_id, error)
        with self._lock:
            self.failures += 1
            starts_outage, self._healthy = self._healthy, False
        if starts_outage:
            self._events.record("alarm", "alarm", "engine",
                                f"inference failed with {model_version}: {error}; parts are "
                                "recorded as uninspected", alarm="engine_failure",
                                model=model_version, error=str(error))

    def ran(self, model_version: str) -> None:
        """A batch ran; clears the alarm of an outage."""
        if self._healthy:
            return
        with self._lock:
            ends_outage, self._healthy = not self._healthy, True
        if ends_outage:
            self._events.record("alarm_cleared", "info", "engine",
                                f"inference works again with {model_version}",
                                alarm="engine_failure", model=model_version)

    def fell_back(self) -> None:
        with self._lock:
            self.fallbacks += 1

"""The appliance's event log as the stages see it: every event is written to the store
and handed to the listeners (telemetry, tests).

A listener or a store that fails is logged; an event never takes a stage down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from appliance.errors import StoreError
from appliance.records import EventRecord, EventValue, Severity

logger = logging.getLogger(__name__)


class EventStore(Protocol):
    """Where events are kept (appliance.store.Store fits)."""

    def record_event(self, event: EventRecord) -> None: ...


class Events:
    """Records events (see the module docstring). `clock` is unix seconds."""

    def __init__(self, store: EventStore, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._listeners: list[Callable[[EventRecord], None]] = []

    def add_listener(self, listener: Callable[[EventRecord], None]) -> None:
        """Call `listener(event)` for every event (in the recording thread)."""
        self._listeners = [*self._listeners, listener]

    def record(self, kind: str, severity: Severity, source: str, message: str,
               **data: EventValue) -> None:
        """Write one event to the store and tell the listeners."""
        event = EventRecord(at=self._clock(), kind=kind, severity=severity, source=source,
                            message=message, data=data)
        try:
            self._store.record_event(event)
        except StoreError:
            logger.exception("could not record event %s: %s", kind, message)
        for listener in self._listeners:
            # A listener (telemetry, a test probe) must never take a stage down.
            try:
                listener(event)
            except Exception:
                logger.exception("event listener %r failed", listener)

"""`cmd/alert` on the line: the cloud's alarms (a drift alert) shown on the panel.

`AlertListener` is a command listener (it gets every decoded command the telemetry
connection receives on `cmd/#` and ignores the others) that raises an alarm through an
injected `raise_alarm(code, message, station=None, severity=...)` (the panel's alarm
book). A repeated delivery of one alert (QoS 1 is at least once) is shown once.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from protocol.alerts import AlertCommand

logger = logging.getLogger(__name__)

RaiseAlarm = Callable[..., object]
REMEMBERED_ALERTS = 256
# The panel's alarm book knows `warning` and `critical`.
_SEVERITY = {"info": "warning", "warning": "warning", "critical": "critical"}


class AlertListener:
    """See the module docstring. Thread-safe."""

    def __init__(self, raise_alarm: RaiseAlarm, *, site: str, line: str) -> None:
        self._raise = raise_alarm
        self._site, self._line = site, line
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.shown = 0
        self.ignored = 0

    def __call__(self, message: object) -> None:
        if not isinstance(message, AlertCommand):
            return
        if (message.site, message.line) != (self._site, self._line):
            self.ignored += 1
            logger.warning("alert %s for %s/%s ignored: this is %s/%s", message.alert_id,
                           message.site, message.line, self._site, self._line)
            return
        with self._lock:
            if message.alert_id in self._seen:
                return
            self._seen[message.alert_id] = None
            while len(self._seen) > REMEMBERED_ALERTS:
                self._seen.popitem(last=False)
        code = message.code.lower().replace("-", "_").replace(".", "_").replace(":", "_")
        text = f"{message.message} (cloud alert {message.alert_id})"
        try:
            self._raise(code, text, station=message.station,
                        severity=_SEVERITY[message.severity])
        except Exception:  # the alarm book is another component: log, forget, let a resend retry
            with self._lock:
                self._seen.pop(message.alert_id, None)
            logger.exception("alert %s could not be shown", message.alert_id)
            return
        self.shown += 1
        logger.warning("cloud alert %s shown as alarm %s: %s", message.alert_id, code,
                       message.message)

"""`lineguard cloud drift`: the drift monitor's MQTT side. Receives every line's `drift`
windows through a shared subscription (several monitors in one `group` split them),
hands them to the `DriftMonitor` on one worker thread, and publishes its alerts on the
line's `cmd/alert`.

Invariants:
- the session is persistent (fixed client id, clean start off), so windows published
  while the monitor is down are delivered when it is back;
- the network thread only queues (bounded); a full queue drops the window and counts it;
- a payload that does not validate is counted and logged, never processed (the
  collector stores it in its quarantine); `lineguard.drift/1` windows are skipped;
- `stop` drains the queue within `timeout_s`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from cloud.drift.config import DriftConfig
from cloud.drift.monitor import DriftMonitor
from protocol import ProtocolError, decode
from protocol.alerts import AlertCommand
from protocol.codec import prepare
from protocol.drift import DriftSketchV2
from protocol.mqtt_client import ClientFactory, ClientOptions, Inbound, MqttHandler, paho_client
from protocol.topics import TOPIC_ROOT, TopicKind

logger = logging.getLogger(__name__)

POLL_S: Final = 0.2
PUBLISH_TIMEOUT_S: Final = 10.0


class DriftService(MqttHandler):
    """See the module docstring. `build_monitor(publish)` makes the monitor once the
    client exists (the monitor publishes its alerts through it)."""

    def __init__(self, cfg: DriftConfig, build_monitor: Callable[[Callable[[AlertCommand], bool]],
                                                                 DriftMonitor],
                 *, client_factory: ClientFactory = paho_client) -> None:
        self._cfg = cfg
        self.topic_filter = f"$share/{cfg.group}/{TOPIC_ROOT}/+/+/{TopicKind.DRIFT.value}"
        self._queue: queue.Queue[tuple[Inbound, int]] = queue.Queue(cfg.queue_max_messages)
        self._stop = threading.Event()
        self.subscribed = threading.Event()
        self.counts = {"received": 0, "dropped": 0, "invalid": 0, "old_schema": 0,
                       "processed": 0, "failed": 0}
        self._client = client_factory(
            cfg.broker, ClientOptions(client_id=cfg.broker.client_id, clean_start=False,
                                      session_expiry_s=7 * 24 * 3600), self)
        self.monitor = build_monitor(self.publish)
        self._thread = threading.Thread(target=self._run, name="drift-monitor", daemon=True)

    # ------------------------------------------------------------------ MQTT thread
    def on_connect(self, session_present: bool) -> None:
        self._client.subscribe([self.topic_filter], 1)

    def on_subscribe_ack(self, mid: int, reasons: object) -> None:
        self.subscribed.set()

    def on_message(self, message: Inbound) -> None:
        self.counts["received"] += 1
        try:
            self._queue.put_nowait((message, int(time.time() * 1000)))
        except queue.Full:
            self.counts["dropped"] += 1

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread.start()
        self._client.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        self._client.stop()

    def publish(self, command: AlertCommand) -> bool:
        """Publish an alert on the line's `cmd/alert`; False if not acknowledged in time."""
        return self._client.publish_and_wait(prepare(command), PUBLISH_TIMEOUT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                inbound, received_ms = self._queue.get(timeout=POLL_S)
            except queue.Empty:
                continue
            self.handle(inbound, received_ms)

    def handle(self, inbound: Inbound, received_ms: int) -> None:
        """Validate one delivery and feed it to the monitor (the worker's job)."""
        if inbound.topic is None:
            self.counts["invalid"] += 1
            return
        try:
            message = decode(inbound.topic, inbound.payload)
        except ProtocolError as e:
            self.counts["invalid"] += 1
            logger.warning("drift: invalid payload on %s: %s", inbound.topic, e)
            return
        if not isinstance(message, DriftSketchV2):
            self.counts["old_schema"] += 1
            return
        try:
            self.monitor.ingest(message, received_ms)
        except Exception:  # one bad window (or a database hiccup) must not stop the monitor
            self.counts["failed"] += 1
            logger.exception("drift: window %s of %s/%s failed", message.msg_id,
                             message.site, message.line)
            return
        self.counts["processed"] += 1

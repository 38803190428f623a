"""The collector: MQTT session -> bounded queue -> writer thread -> fleet store.

Wiring and lifecycle only (`start`, `run`, `stop`); the pieces are `MqttSession`
(cloud/collector/mqtt.py) and `BatchWriter` (cloud/collector/writer.py).

Invariants:
- QoS 1 deliveries are never dropped here: the queue holds at least `receive_maximum`
  (the most the broker sends before our acks), and paho's thread waits for room.
  Only QoS 0 deliveries (at most once by definition) are dropped, and counted
  (`dropped_qos0`), when the queue is full.
- An orderly stop commits and acknowledges what was queued, then disconnects; what the
  broker sent afterwards stays unacknowledged and comes back on the next run.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from pydantic import SecretStr

from cloud.collector.mqtt import MqttSession
from cloud.collector.validate import Delivery
from cloud.collector.writer import BatchWriter, WriterStats
from cloud.config import CollectorConfig
from cloud.fleet import FleetStore, IngestResult
from protocol.mqtt_client import ClientFactory, paho_client

logger = logging.getLogger(__name__)

_PUT_WAIT_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class CollectorStats:
    """A snapshot for logs and tests."""

    connected: bool
    subscribed: bool
    queue_depth: int
    dropped_qos0: int
    callback_errors: int
    """Exceptions our MQTT handlers raised on the client's thread (logged, not raised)."""
    writer: WriterStats


class Collector:
    """One collector instance. Raises CollectorError from `start` when the broker
    settings cannot be used; connection failures later are retried with backoff."""

    def __init__(
        self,
        cfg: CollectorConfig,
        store: FleetStore,
        *,
        password: SecretStr | None = None,
        clock: Callable[[], float] = time.time,
        on_committed: Callable[[Sequence[Delivery], IngestResult], None] | None = None,
        client_factory: ClientFactory = paho_client,
    ) -> None:
        self._cfg = cfg
        self._queue: queue.Queue[Delivery] = queue.Queue(maxsize=cfg.queue_max_messages)
        self._stopping = threading.Event()
        self._dropped_lock = threading.Lock()
        self._dropped_qos0 = 0
        self._dropped_unreported = 0
        self._session = MqttSession(cfg, password, self._deliver, clock=clock,
                                    client_factory=client_factory)
        self._writer = BatchWriter(
            self._queue, store, self._session.ack,
            collector_id=cfg.broker.client_id,
            batch_max_messages=cfg.batch_max_messages,
            batch_linger_ms=cfg.batch_linger_ms,
            retry=cfg.store_retry,
            busy_linger_ms=cfg.busy_linger_ms,
            take_counters=self._take_counters,
            on_committed=on_committed,
        )
        self._started = False

    # paho's thread
    def _deliver(self, delivery: Delivery) -> None:
        if delivery.qos == 0:
            try:
                self._queue.put_nowait(delivery)
            except queue.Full:
                with self._dropped_lock:
                    self._dropped_qos0 += 1
                    self._dropped_unreported += 1
            return
        while not self._stopping.is_set():
            try:
                self._queue.put(delivery, timeout=_PUT_WAIT_S)
                return
            except queue.Full:
                continue
        # Stopping: left unacknowledged, so the broker sends it again next time.

    def _take_counters(self) -> dict[str, int]:
        with self._dropped_lock:
            dropped, self._dropped_unreported = self._dropped_unreported, 0
        return {"dropped_qos0": dropped} if dropped else {}

    @property
    def session(self) -> MqttSession:
        return self._session

    def stats(self) -> CollectorStats:
        return CollectorStats(
            connected=self._session.connected.is_set(),
            subscribed=self._session.subscribed.is_set(),
            queue_depth=self._queue.qsize(),
            dropped_qos0=self._dropped_qos0,
            callback_errors=self._session.callback_errors,
            writer=self._writer.stats,
        )

    def start(self) -> None:
        """Start the writer, then connect (in the background). Raises CollectorError."""
        self._writer.start()
        self._session.start()
        self._started = True

    def wait_subscribed(self, timeout_s: float) -> bool:
        """True once the subscription is acknowledged (for tests and readiness)."""
        return self._session.subscribed.wait(timeout_s)

    def run(self, stop: threading.Event) -> int:
        """Start, then serve until `stop` is set; stop in order. Returns an exit status:
        0 after an orderly stop, 1 if the writer died, 2 if the subscription is refused."""
        self.start()
        status = 0
        next_log = time.monotonic() + self._cfg.log_interval_s
        while not stop.wait(0.2):
            if not self._writer.alive:
                logger.error("the writer thread died; stopping (its batch is not acknowledged)")
                status = 1
                break
            if self._session.failure is not None:
                status = 2
                break
            if self._cfg.log_interval_s and time.monotonic() >= next_log:
                self.log_stats()
                next_log = time.monotonic() + self._cfg.log_interval_s
        self.stop()
        return status

    def log_stats(self) -> None:
        s = self.stats()
        w = s.writer
        logger.info(
            "collector %s: received %d, stored %d, duplicates %d, quarantined %d %s, "
            "dropped qos0 %d, acked %d, batches %d, store retries %d, queue %d, connected %s, "
            "handler errors %d",
            self._cfg.broker.client_id, w.received, w.stored, w.duplicates, w.quarantined,
            w.quarantined_by_reason or "", s.dropped_qos0, w.acked, w.batches,
            w.store_retries, s.queue_depth, s.connected, s.callback_errors,
        )

    def stop(self) -> None:
        """Orderly stop: commit and ack what is queued, disconnect. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._stopping.set()
        if not self._writer.stop(self._cfg.stop_timeout_s):
            logger.error("the writer did not finish within %.1f s", self._cfg.stop_timeout_s)
        if self._session.connected.is_set() and not self._session.flush():
            logger.warning("the broker did not confirm the last acks; it may resend "
                           "those messages (the store will count them as duplicates)")
        self._session.stop()
        self.log_stats()

"""The collector's MQTT session: what is specific to a collector on top of the shared
MQTT client (protocol/mqtt_client.py): a persistent MQTT 5 shared subscription whose
QoS 1 messages are acknowledged only when the caller says so.

Invariants:
- clean_start is off and the session expires `session_expiry_s` after we go away, with
  a fixed client id, so the broker queues what is published while we are down and
  resends what we received but did not acknowledge.
- The client never acknowledges on its own (manual acks); `ack` is called after the
  batch is committed. An ack is sent only on the connection that delivered the message
  (the broker resends unacknowledged messages on the next one).
- We never unsubscribe: dropping the subscription from the session would lose what is
  published while we are away.
- Besides the shared subscription, each collector subscribes (not shared) to every
  line's retained `status` and `model`, which MQTT 5 never sends to shared
  subscriptions; those messages then arrive more than once, and the store keeps one.
- Nothing here raises into the client's network thread (the shared client logs and
  counts what a handler raises); a refused connection or subscription is logged (and
  the latter reported through `failure`), never taken for success.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from pydantic import SecretStr

from cloud.collector.validate import UNDECODABLE_TOPIC, Delivery
from cloud.config import CollectorConfig
from cloud.errors import CollectorError
from protocol import TopicKind, shared_fleet_filter
from protocol.mqtt_client import (
    ClientFactory,
    ClientOptions,
    Inbound,
    MqttClient,
    MqttHandler,
    Reason,
    paho_client,
)
from protocol.mqtt_config import BrokerSetupError
from protocol.topics import TOPIC_ROOT

logger = logging.getLogger(__name__)

_QOS: Final = 1
# Never subscribed: unsubscribing from it is a round trip with no effect (see `flush`).
_BARRIER_FILTER: Final = "lineguard-collector/flush-barrier"


class MqttSession(MqttHandler):
    """One collector's connection. `deliver` is called on the client's thread for every
    message; it must be quick."""

    def __init__(
        self,
        cfg: CollectorConfig,
        password: SecretStr | None,
        deliver: Callable[[Delivery], None],
        *,
        clock: Callable[[], float] = time.time,
        client_factory: ClientFactory = paho_client,
    ) -> None:
        self._cfg = cfg
        self._client_id = cfg.broker.client_id
        self._deliver = deliver
        self._clock = clock
        self.topic_filter = shared_fleet_filter(cfg.group)
        # Retained state (see CollectorConfig.retained_state): each collector gets every
        # status and model message this way as well; the store keeps each once.
        self.state_filters = (
            [f"{TOPIC_ROOT}/+/+/{kind.value}" for kind in (TopicKind.STATUS, TopicKind.MODEL)]
            if cfg.retained_state else []
        )
        self.generation = 0
        self.connected = threading.Event()
        self._barrier = threading.Condition()
        self._barriers_done: set[int] = set()
        self.subscribed = threading.Event()
        # Set (with a message) when the broker refuses our subscription: fatal.
        self.failure: str | None = None
        broker = cfg.broker
        if password is not None:  # read once by the caller (e.g. before forking workers)
            broker = broker.model_copy(update={"password": password, "password_file": None})
        options = ClientOptions(
            client_id=self._client_id, version="5", clean_start=False,
            session_expiry_s=cfg.session_expiry_s, receive_maximum=cfg.receive_maximum,
            manual_ack=True,
        )
        try:
            self._client: MqttClient = client_factory(broker, options, self)
        except BrokerSetupError as e:
            raise CollectorError(f"collector.broker: {e}") from e

    @property
    def callback_errors(self) -> int:
        """Exceptions raised by our handlers on the client's thread (logged)."""
        return self._client.callback_errors

    # ---- client events (the client's network thread)

    def on_connect_refused(self, reason: Reason) -> None:
        logger.error(
            "broker %s:%d refused the collector %s: %s; retrying with backoff",
            self._cfg.broker.host, self._cfg.broker.port, self._client_id, reason,
        )

    def on_connect(self, session_present: bool) -> None:
        self.generation += 1
        if self.generation > 1 and not session_present:
            logger.warning(
                "the broker had no session for %s (expired or broker state lost): messages "
                "published while the collector was away may be missing", self._client_id,
            )
        logger.info(
            "connected to %s:%d as %s (session present: %s)", self._cfg.broker.host,
            self._cfg.broker.port, self._client_id, session_present,
        )
        self.connected.set()
        # Always (re)subscribe: harmless when the session kept it, essential when not.
        self._client.subscribe([self.topic_filter, *self.state_filters], _QOS)

    def on_connect_fail(self) -> None:
        logger.warning(
            "cannot reach the broker %s:%d; retrying with backoff",
            self._cfg.broker.host, self._cfg.broker.port,
        )

    def on_disconnect(self, reason: Reason) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if reason.is_failure:
            logger.warning("disconnected from the broker: %s; reconnecting", reason)

    def on_subscribe_ack(self, mid: int, reasons: Sequence[Reason]) -> None:
        failed = [code for code in reasons if code.is_failure]
        if failed:
            self.failure = (
                f"the broker refused a subscription of {self.topic_filter} "
                f"{' '.join(self.state_filters)}: {failed[0]} "
                "(check the broker's ACL for this account)"
            )
            logger.error("%s", self.failure)
            return
        logger.info("subscribed to %s", " ".join((self.topic_filter, *self.state_filters)))
        self.subscribed.set()

    def on_unsubscribe_ack(self, mid: int) -> None:
        with self._barrier:
            self._barriers_done.add(mid)
            self._barrier.notify_all()

    def on_message(self, message: Inbound) -> None:
        self._deliver(Delivery(
            topic=UNDECODABLE_TOPIC if message.topic is None else message.topic,
            payload=message.payload, mid=message.mid, qos=message.qos,
            received_at_ms=int(self._clock() * 1000), generation=self.generation,
        ))

    # ---- API

    def start(self) -> None:
        """Start connecting in the background (the client's thread retries with backoff).

        Raises CollectorError if the broker address cannot even be used.
        """
        try:
            self._client.start()
        except BrokerSetupError as e:
            raise CollectorError(str(e)) from e

    def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge the QoS 1/2 deliveries of the current connection; return how many.

        Older connections' deliveries are skipped: the broker resends them, and the
        store de-duplicates them.
        """
        generation = self.generation
        ack = self._client.ack
        return sum(1 for d in deliveries
                   if d.qos > 0 and d.generation == generation and ack(d.mid, d.qos))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Return once the broker has processed everything sent before (our acks);
        False if not connected or no answer within `timeout_s`.

        Why: paho closes the socket right after writing DISCONNECT; with messages from
        the broker still unread, the kernel then resets the connection, and the broker
        drops what it had not read yet, acks included (they would come back as
        duplicates). A broker answers packets in order, so the answer to an UNSUBSCRIBE
        of a filter we never subscribed (no effect on the session) is that barrier.
        """
        if not self.connected.is_set():
            return False
        mid = self._client.unsubscribe(_BARRIER_FILTER)
        if mid is None:
            return False
        with self._barrier:
            done = self._barrier.wait_for(lambda: mid in self._barriers_done, timeout_s)
            self._barriers_done.discard(mid)
        return done

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send the queued acks, then DISCONNECT (the broker keeps the session) and
        stop the client's thread, waiting at most about `timeout_s`."""
        self._client.stop(timeout_s)
        self.connected.clear()

"""The collector's MQTT session (paho-mqtt 2, MQTT 5): a persistent shared subscription
whose QoS 1 messages are acknowledged only when the caller says so.

Invariants:
- clean_start is off and the session expires `session_expiry_s` after we go away, with
  a fixed client id, so the broker queues what is published while we are down and
  resends what we received but did not acknowledge.
- paho never acknowledges on its own (`manual_ack=True`); `ack` is called after the
  batch is committed. An ack is sent only on the connection that delivered the message
  (the broker resends unacknowledged messages on the next one).
- We never unsubscribe: dropping the subscription from the session would lose what is
  published while we are away.
- Besides the shared subscription, each collector subscribes (not shared) to every
  line's retained `status` and `model`, which MQTT 5 never sends to shared
  subscriptions; those messages then arrive more than once, and the store keeps one.
- paho's callbacks never raise; a refused connection or subscription is logged (and the
  latter reported through `failure`), never taken for success.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import SecretStr

from cloud.collector.validate import UNDECODABLE_TOPIC, Delivery
from cloud.config import CollectorConfig
from cloud.errors import CollectorError
from protocol import TopicKind, shared_fleet_filter
from protocol.topics import TOPIC_ROOT

logger = logging.getLogger(__name__)

_QOS: Final = 1
# Never subscribed: unsubscribing from it is a round trip with no effect (see `flush`).
_BARRIER_FILTER: Final = "lineguard-collector/flush-barrier"


class MqttSession:
    """One collector's connection. `deliver` is called on paho's thread for every
    message; it must be quick and must not raise."""

    def __init__(
        self,
        cfg: CollectorConfig,
        password: SecretStr | None,
        deliver: Callable[[Delivery], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._cfg = cfg
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
        self._client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
            manual_ack=True,
        )
        broker = cfg.broker
        if broker.username is not None:
            self._client.username_pw_set(
                broker.username, password.get_secret_value() if password else None
            )
        if broker.tls is not None:
            try:
                self._client.tls_set(
                    ca_certs=str(broker.tls.ca_file) if broker.tls.ca_file else None,
                    certfile=str(broker.tls.cert_file) if broker.tls.cert_file else None,
                    keyfile=str(broker.tls.key_file) if broker.tls.key_file else None,
                )
            except (OSError, ssl.SSLError, ValueError) as e:
                raise CollectorError(f"cannot set up TLS to the broker: {e}") from e
        self._client.reconnect_delay_set(broker.reconnect_min_s, broker.reconnect_max_s)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_unsubscribe = self._on_unsubscribe

    # ---- paho callbacks (paho's network thread; never raise)

    def _on_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            logger.error(
                "broker %s:%d refused the collector %s: %s; retrying with backoff",
                self._cfg.broker.host, self._cfg.broker.port, self._cfg.client_id, reason_code,
            )
            return
        self.generation += 1
        if self.generation > 1 and not flags.session_present:
            logger.warning(
                "the broker had no session for %s (expired or broker state lost): messages "
                "published while the collector was away may be missing", self._cfg.client_id,
            )
        logger.info(
            "connected to %s:%d as %s (session present: %s)", self._cfg.broker.host,
            self._cfg.broker.port, self._cfg.client_id, flags.session_present,
        )
        self.connected.set()
        # Always (re)subscribe: harmless when the session kept it, essential when not.
        options = SubscribeOptions(qos=_QOS)
        client.subscribe([(f, options) for f in (self.topic_filter, *self.state_filters)])

    def _on_connect_fail(self, client: Client, userdata: object) -> None:
        logger.warning(
            "cannot reach the broker %s:%d; retrying with backoff",
            self._cfg.broker.host, self._cfg.broker.port,
        )

    def _on_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        if was_connected and reason_code.is_failure:
            logger.warning("disconnected from the broker: %s; reconnecting", reason_code)

    def _on_subscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [code for code in reason_codes if code.is_failure]
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

    def _on_unsubscribe(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._barrier:
            self._barriers_done.add(mid)
            self._barrier.notify_all()

    def _on_message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = UNDECODABLE_TOPIC
        self._deliver(Delivery(
            topic=topic, payload=bytes(message.payload), mid=message.mid, qos=message.qos,
            received_at_ms=int(self._clock() * 1000), generation=self.generation,
        ))

    # ---- API

    def start(self) -> None:
        """Start connecting in the background (paho's thread retries with backoff).

        Raises CollectorError if the broker address cannot even be used.
        """
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._cfg.session_expiry_s
        properties.ReceiveMaximum = self._cfg.receive_maximum
        broker = self._cfg.broker
        try:
            self._client.connect_async(
                broker.host, broker.port, keepalive=broker.keepalive_s, clean_start=False,
                properties=properties,
            )
        except (OSError, ValueError) as e:
            raise CollectorError(f"cannot connect to {broker.host}:{broker.port}: {e}") from e
        self._client.loop_start()

    def ack(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge the QoS 1/2 deliveries of the current connection; return how many.

        Older connections' deliveries are skipped: the broker resends them, and the
        store de-duplicates them.
        """
        generation = self.generation
        sent = 0
        for d in deliveries:
            if (
                d.qos > 0
                and d.generation == generation
                and self._client.ack(d.mid, d.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS
            ):
                sent += 1
        return sent

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
        rc, mid = self._client.unsubscribe(_BARRIER_FILTER)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        with self._barrier:
            done = self._barrier.wait_for(lambda: mid in self._barriers_done, timeout_s)
            self._barriers_done.discard(mid)
        return done

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send the queued acks, then DISCONNECT (the broker keeps the session) and
        stop paho's thread, waiting at most about `timeout_s`."""
        self._client.disconnect()
        deadline = time.monotonic() + timeout_s
        while self.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._client.loop_stop()

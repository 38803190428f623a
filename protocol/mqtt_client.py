"""The MQTT client both processes use: a seam (`MqttClient`, `MqttHandler`) and its one
implementation over paho-mqtt 2 (`PahoClient`, built by `paho_client`).

The owner (the appliance's broker connection, the collector's session, a test probe)
implements `MqttHandler` and receives plain, paho-free events; it drives the client
through the small `MqttClient` protocol, so its logic can be tested against an
in-memory fake (tests/mqtt_fake.py) and run against a real broker unchanged.

Invariants:
- No handler method raises into paho: every paho callback is wrapped; an exception is
  logged with its traceback and counted (`callback_errors`), and paho's network
  thread carries on.
- A refused connection (CONNACK failure) is reported as refused, never as connected.
- Secrets are never logged: the password goes to paho and nowhere else.
- `start` connects in the background; paho's thread reconnects with the configured
  backoff until `stop`. `stop` waits (bounded) for the DISCONNECT to go out.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol

from paho.mqtt.client import (
    MQTT_CLEAN_START_FIRST_ONLY,
    CleanStartOption,
    Client,
    ConnectFlags,
    DisconnectFlags,
    MQTTMessage,
)
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol.codec import Outgoing
from protocol.mqtt_config import BrokerConfig, BrokerSetupError, ssl_context

logger = logging.getLogger(__name__)

MqttVersion = Literal["5", "3.1.1"]

# MQTT 5 PUBACK reason 0x10: the broker took the message but no subscription matched.
NO_MATCHING_SUBSCRIBERS: Final = 0x10
# CONNACK refusals that mean "this broker does not speak the protocol version asked
# for": MQTT 5 reason 0x84 (132), MQTT 3.1.1 return code 1.
UNSUPPORTED_PROTOCOL: Final = frozenset({132, 1})


class Reason(NamedTuple):
    """An MQTT reason code (CONNACK, PUBACK, SUBACK, DISCONNECT) without paho's types."""

    value: int
    name: str
    is_failure: bool

    def __str__(self) -> str:
        return self.name


SUCCESS: Final = Reason(0, "Success", False)


class Inbound(NamedTuple):
    """One received PUBLISH. `topic` is None when its bytes are not UTF-8. (A tuple:
    one is built per message on the network thread, and a tuple is built fastest.)"""

    topic: str | None
    payload: bytes
    mid: int
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What a client is built for (besides the broker settings)."""

    client_id: str
    version: MqttVersion = "5"
    clean_start: bool | None = None
    """False: resume the broker's session; True: always a new one; None: paho's default
    (MQTT 5: a new session on the first connect only; 3.1.1: always a new one)."""
    session_expiry_s: int | None = None
    """MQTT 5: how long the broker keeps the session after we go away."""
    receive_maximum: int | None = None
    """MQTT 5: QoS 1/2 messages the broker may send before our acknowledgements."""
    manual_ack: bool = False
    """Acknowledge received QoS 1/2 messages only through `MqttClient.ack`."""
    max_inflight: int = 20
    """Our own QoS 1/2 messages paho sends before their PUBACKs (it queues the rest)."""


class MqttHandler:
    """Events from a client, on its network thread: keep them quick. Subclass and
    override what you need; the defaults do nothing. A raise is logged and counted."""

    def will(self) -> Outgoing | None:
        """The last will to register before each connection attempt (None: none)."""
        return None

    def on_connect(self, session_present: bool) -> None:
        """The broker accepted the connection."""

    def on_connect_refused(self, reason: Reason) -> None:
        """The broker answered CONNACK with a failure; paho retries with backoff."""

    def on_connect_fail(self) -> None:
        """The broker could not be reached; paho retries with backoff."""

    def on_disconnect(self, reason: Reason) -> None:
        """An established connection ended (also after our own `stop`)."""

    def on_publish_ack(self, mid: int, reason: Reason) -> None:
        """A QoS 1 message of ours was acknowledged (QoS 0: handed to the socket)."""

    def on_subscribe_ack(self, mid: int, reasons: Sequence[Reason]) -> None:
        """SUBACK: one reason per filter, in order."""

    def on_unsubscribe_ack(self, mid: int) -> None:
        """UNSUBACK."""

    def on_message(self, message: Inbound) -> None:
        """A PUBLISH from the broker."""


class MqttClient(Protocol):
    """The seam: what the appliance and the collector need from an MQTT client."""

    @property
    def connected(self) -> bool: ...

    @property
    def version(self) -> MqttVersion: ...

    @property
    def callback_errors(self) -> int:
        """Handler exceptions caught (logged) so far."""
        ...

    def start(self) -> None:
        """Connect in the background; reconnect with backoff until `stop`."""
        ...

    def stop(self, timeout_s: float = 2.0, *, publish_will: bool = False) -> None:
        """Disconnect and end the network thread. With `publish_will` the broker
        publishes our last will (MQTT 5 asks for it; 3.1.1 drops the socket)."""
        ...

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Queue one message; its mid, or None if refused locally. A message published
        while disconnected is kept and sent after the reconnect."""
        ...

    def publish_and_wait(self, message: Outgoing, timeout_s: float) -> bool:
        """Publish now and wait for the acknowledgement; False if not connected or
        not acknowledged within `timeout_s`."""
        ...

    def subscribe(self, filters: Sequence[str], qos: int) -> int | None:
        """Subscribe to `filters` in one SUBSCRIBE; its mid, or None if not sent."""
        ...

    def unsubscribe(self, topic_filter: str) -> int | None:
        """Unsubscribe; its mid, or None if not sent."""
        ...

    def ack(self, mid: int, qos: int) -> bool:
        """Acknowledge a received message (manual acks); False if it was not sent."""
        ...


class ClientFactory(Protocol):
    """Builds an unstarted client. Raises BrokerSetupError for unusable settings."""

    def __call__(
        self, broker: BrokerConfig, options: ClientOptions, handler: MqttHandler
    ) -> MqttClient: ...


def _reason(code: ReasonCode) -> Reason:
    return Reason(code.value, str(code), code.is_failure)


class PahoClient:
    """`MqttClient` over one paho `Client` (callback API v2). See the module docstring."""

    def __init__(
        self, broker: BrokerConfig, options: ClientOptions, handler: MqttHandler
    ) -> None:
        self._broker = broker
        self._options = options
        self._handler = handler
        self._connected = False
        self._disconnected = threading.Event()
        self._disconnected.set()
        self._errors = 0
        self._errors_lock = threading.Lock()
        self._started = False
        version = MQTTProtocolVersion.MQTTv5 if options.version == "5" \
            else MQTTProtocolVersion.MQTTv311
        client = Client(
            CallbackAPIVersion.VERSION2, client_id=options.client_id, protocol=version,
            clean_session=None if options.version == "5" else options.clean_start,
            reconnect_on_failure=True, manual_ack=options.manual_ack,
        )
        if broker.username is not None:
            secret = broker.secret()
            client.username_pw_set(
                broker.username, secret.get_secret_value() if secret is not None else None)
        if broker.tls is not None:
            context: ssl.SSLContext = ssl_context(broker.tls)
            client.tls_set_context(context)
        # paho's hints say int; it does float arithmetic with both bounds.
        client.reconnect_delay_set(
            broker.reconnect.initial_s, broker.reconnect.max_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(options.max_inflight)
        client.max_queued_messages_set(0)
        client.on_pre_connect = self._pre_connect
        client.on_connect = self._connect
        client.on_connect_fail = self._connect_fail
        client.on_disconnect = self._disconnect
        client.on_publish = self._publish
        client.on_subscribe = self._subscribe
        client.on_unsubscribe = self._unsubscribe
        client.on_message = self._message
        self._client = client

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def version(self) -> MqttVersion:
        return self._options.version

    @property
    def callback_errors(self) -> int:
        return self._errors

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._started:
            return
        properties: Properties | None = None
        if self._options.version == "5":
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if self._options.session_expiry_s is not None:
                properties.SessionExpiryInterval = self._options.session_expiry_s
            if self._options.receive_maximum is not None:
                properties.ReceiveMaximum = self._options.receive_maximum
        clean_start: CleanStartOption = MQTT_CLEAN_START_FIRST_ONLY
        if self._options.version == "5" and self._options.clean_start is not None:
            clean_start = self._options.clean_start
        broker = self._broker
        try:
            self._client.connect_async(
                broker.host, broker.port, keepalive=broker.keepalive_s,
                clean_start=clean_start, properties=properties,
            )
        except (OSError, ValueError) as e:
            raise BrokerSetupError(f"cannot connect to {broker.host}:{broker.port}: {e}") from e
        self._client.loop_start()
        self._started = True

    def stop(self, timeout_s: float = 2.0, *, publish_will: bool = False) -> None:
        if not self._started:
            return
        self._started = False
        client = self._client
        if publish_will and self._options.version != "5":
            self._drop()
            return
        reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message") \
            if publish_will else None
        client.disconnect(reasoncode=reason)
        self._disconnected.wait(timeout_s)
        self._drop()  # paho's loop_stop leaves a socket it did not close (e.g. refused)

    def abort(self) -> None:
        """End the connection without a DISCONNECT, as a crash or a cut cable would: the
        broker publishes the last will. No reconnect follows."""
        if self._started:
            self._started = False
            self._drop()

    def _drop(self) -> None:
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        # paho wakes its loop through a TCP socket pair it closes only in Client.__del__;
        # our callbacks make the client part of a reference cycle, so the garbage
        # collector finalises those sockets first, unclosed (a ResourceWarning in
        # whatever runs then). Close them now; paho makes new ones on the next start.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset()
        self._connected = False

    # ------------------------------------------------------------------ requests
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        try:
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as e:  # an invalid topic or payload: a bug upstream
            logger.error("paho refused a message for %s: %s", topic, e)
            return None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("paho did not queue a message for %s: rc %s", topic, info.rc)
            return None
        return int(info.mid)

    def publish_and_wait(self, message: Outgoing, timeout_s: float) -> bool:
        if not self._connected:
            return False
        try:
            info = self._client.publish(message.topic, message.payload, qos=message.qos,
                                        retain=message.retain)
            info.wait_for_publish(timeout_s)
        except (ValueError, RuntimeError) as e:
            logger.warning("could not publish %s: %s", message.topic, e)
            return False
        return bool(info.is_published())

    def subscribe(self, filters: Sequence[str], qos: int) -> int | None:
        if self._options.version == "5":
            options = SubscribeOptions(qos=qos)
            rc, mid = self._client.subscribe([(f, options) for f in filters])
        else:
            rc, mid = self._client.subscribe([(f, qos) for f in filters])
        return mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def unsubscribe(self, topic_filter: str) -> int | None:
        rc, mid = self._client.unsubscribe(topic_filter)
        return mid if rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def ack(self, mid: int, qos: int) -> bool:
        return self._client.ack(mid, qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    # ------------------------------------------------------------------ paho callbacks
    def _call(self, what: str, handler: Callable[..., object], *args: object) -> None:
        """Run one handler method; an exception is logged and counted, never raised
        into paho's network thread."""
        try:
            handler(*args)
        except Exception:
            logger.exception("error in the MQTT %s handler (client %s)", what,
                             self._options.client_id)
            with self._errors_lock:
                self._errors += 1

    def _set_will(self, client: Client) -> None:
        will = self._handler.will()
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _pre_connect(self, client: Client, userdata: object) -> None:
        self._call("last will", self._set_will, client)

    def _connect(
        self, client: Client, userdata: object, flags: ConnectFlags, reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._call("connect", self._handler.on_connect_refused, _reason(reason_code))
            return
        self._connected = True
        self._disconnected.clear()
        self._call("connect", self._handler.on_connect, bool(flags.session_present))

    def _connect_fail(self, client: Client, userdata: object) -> None:
        self._call("connect-fail", self._handler.on_connect_fail)

    def _disconnect(
        self, client: Client, userdata: object, flags: DisconnectFlags,
        reason_code: ReasonCode, properties: Properties | None,
    ) -> None:
        was_connected, self._connected = self._connected, False
        self._disconnected.set()
        if was_connected:
            self._call("disconnect", self._handler.on_disconnect, _reason(reason_code))

    def _publish(
        self, client: Client, userdata: object, mid: int, reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call("publish", self._handler.on_publish_ack, mid, _reason(reason_code))

    def _subscribe(
        self, client: Client, userdata: object, mid: int, reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call("subscribe", self._handler.on_subscribe_ack, mid,
                   [_reason(code) for code in reason_codes])

    def _unsubscribe(
        self, client: Client, userdata: object, mid: int, reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call("unsubscribe", self._handler.on_unsubscribe_ack, mid)

    def _message(self, client: Client, userdata: object, message: MQTTMessage) -> None:
        self._call("message", self._deliver, message)

    def _deliver(self, message: MQTTMessage) -> None:
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        self._handler.on_message(Inbound(topic, bytes(message.payload), message.mid,
                                         message.qos, message.retain))


def paho_client(broker: BrokerConfig, options: ClientOptions, handler: MqttHandler) -> PahoClient:
    """The real client (a `ClientFactory`). Raises BrokerSetupError for an unreadable
    password file or TLS files."""
    return PahoClient(broker, options, handler)

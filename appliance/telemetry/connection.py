"""The MQTT client adapter: one paho-mqtt (callback API v2) client and its network thread.

This is the only module that touches paho. It turns configuration into a client (MQTT 5
or 3.1.1, TLS with optional client certificate, username and password, reconnect
backoff), registers a fresh last will before every connection attempt, publishes the
"first message" (the retained online `status`) inside the CONNACK handler so it goes out
before anything else on a new connection, and reports connection changes and
acknowledgements to its owner through three plain callbacks.

Invariants:
- No paho callback raises (they run on paho's network thread; an exception there would
  end it): every one is wrapped and logs instead.
- Secrets are never logged: the password goes to paho and nowhere else.
- QoS 1 messages handed to `publish` stay in paho's session while the connection is
  down and are re-sent (DUP) by paho after a reconnect; their acknowledgement then
  arrives through `on_ack` with the same mid. A replaced client (protocol fallback,
  supervision) loses them: `supervise` returns True and the owner must forget them.
- A PUBACK is one of three outcomes: "ok", "unrouted" (MQTT 5 reason 0x10, "no matching
  subscribers": the broker took the message but nobody will receive it) or "refused"
  (reason >= 0x80).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Literal

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.errors import TelemetryError
from protocol import Outgoing

logger = logging.getLogger(__name__)

# CONNACK refusals that mean "this broker does not speak the protocol version we asked
# for": MQTT 5 reason 0x84 (132), MQTT 3.1.1 return code 1.
_UNSUPPORTED_PROTOCOL = frozenset({132, 1})
# paho queues beyond its in-flight limit; ours is enforced by the publisher, so paho's
# limit only needs room for it plus a few status messages.
_PAHO_INFLIGHT_SLACK = 8
_WEDGED_MIN_S = 300.0
_NO_MATCHING_SUBSCRIBERS = 0x10

AckOutcome = Literal["ok", "unrouted", "refused"]


def ssl_context(cfg: TelemetryConfig) -> ssl.SSLContext:
    """The TLS context for `cfg.tls` (verifies the broker; loads the client certificate).

    Raises TelemetryError if a file cannot be read or is not a valid PEM.
    """
    tls = cfg.tls
    if tls is None:
        raise TelemetryError("telemetry.tls is not configured")
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_path) if tls.ca_path is not None else None
        )
        if tls.cert_path is not None and tls.key_path is not None:
            context.load_cert_chain(str(tls.cert_path), str(tls.key_path))
    except (OSError, ssl.SSLError) as e:
        raise TelemetryError(f"telemetry.tls: cannot load certificates: {e}") from e
    context.check_hostname = tls.check_hostname
    return context


class BrokerConnection:
    """See the module docstring.

    `first_message()` is called on every successful connect (paho's thread) and its
    result published before anything else; `will()` before every attempt. `on_up()` /
    `on_down(reason)` report connection changes, `on_ack(mid, outcome, reason)` every PUBACK
    (all on paho's thread: keep them quick, never raise).
    """

    def __init__(
        self,
        cfg: TelemetryConfig,
        *,
        client_id: str,
        will: Callable[[], Outgoing],
        first_message: Callable[[], Outgoing | None],
        on_up: Callable[[], None],
        on_down: Callable[[str], None],
        on_ack: Callable[[int, AckOutcome, str], None],
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._will = will
        self._first_message = first_message
        self._on_up = on_up
        self._on_down = on_down
        self._on_ack = on_ack
        self._v5 = cfg.protocol != "3.1.1"
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._connected = False
        self._fallback = False
        self._stopping = False
        self._wedged_after_s = max(_WEDGED_MIN_S, 5.0 * cfg.reconnect_max_s)
        self._down_since = time.monotonic()
        self.connects = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def protocol(self) -> str:
        """"5" or "3.1.1": what the current client speaks."""
        return "5" if self._v5 else "3.1.1"

    def down_for_s(self) -> float:
        """Seconds since the connection was last lost (0 while connected)."""
        return 0.0 if self._connected else time.monotonic() - self._down_since

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Build the client and start connecting in the background (paho's thread
        retries with backoff until `stop`). Raises TelemetryError for bad TLS files."""
        with self._lock:
            if self._client is None:
                self._client = self._build()
                self._client.connect_async(self._cfg.host, self._cfg.port, self._cfg.keepalive_s)
                self._client.loop_start()

    def stop(self, timeout_s: float = 2.0, *, publish_will: bool = False) -> None:
        """Disconnect and end paho's thread. The broker publishes the last will only if
        `publish_will` (an orderly stop whose own `offline` status was not acknowledged:
        MQTT 5 asks for it in the DISCONNECT, 3.1.1 closes the socket without one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        self._stopping = True
        if publish_will and not self._v5:
            client.loop_stop()
            sock = client.socket()
            if sock is not None:
                sock.close()
        else:
            reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message") \
                if publish_will else None
            client.disconnect(reasoncode=reason)
            deadline = time.monotonic() + timeout_s
            while self._connected and time.monotonic() < deadline:
                time.sleep(0.01)
            client.loop_stop()
        self._connected = False
        self._stopping = False

    def supervise(self) -> bool:
        """Replace a client that cannot do its job: one refused for its protocol version
        (auto mode falls back to 3.1.1), or one down for longer than five maximum
        reconnect delays, and at least 5 minutes (a wedged client or a dead network
        thread; paho would have reconnected long before). Call it from the
        owner's thread. Returns True if the client was replaced (its unacknowledged
        messages are gone)."""
        replace = False
        if self._fallback and self._v5 and self._cfg.protocol == "auto":
            logger.warning("broker %s:%d refused MQTT 5; falling back to MQTT 3.1.1",
                           self._cfg.host, self._cfg.port)
            self._v5 = False
            replace = True
        elif not self._connected and self.down_for_s() > self._wedged_after_s:
            logger.warning("MQTT client down for %.0f s; building a new one",
                           self.down_for_s())
            self._down_since = time.monotonic()
            replace = True
        self._fallback = False
        if replace:
            self.stop(timeout_s=1.0)
            self.start()
        return replace

    def _build(self) -> Client:
        cfg = self._cfg
        protocol = MQTTProtocolVersion.MQTTv5 if self._v5 else MQTTProtocolVersion.MQTTv311
        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=protocol,
            reconnect_on_failure=True,
        )
        if cfg.username is not None:
            secret = cfg.password.get_secret_value() if cfg.password is not None else None
            client.username_pw_set(cfg.username, secret)
        if cfg.tls is not None:
            client.tls_set_context(ssl_context(cfg))
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.max_inflight_messages_set(cfg.inflight_max + _PAHO_INFLIGHT_SLACK)
        client.max_queued_messages_set(0)
        client.on_pre_connect = self._handle_pre_connect
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        return client

    # ------------------------------------------------------------------ publishing
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Hand one message to paho; returns its mid, or None if paho refused it (no
        client, or a local error). A message published while the connection is down is
        kept by paho and sent after the reconnect (still returns its mid)."""
        client = self._client
        if client is None:
            return None
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as e:  # an invalid topic or payload: a bug upstream
            logger.error("paho refused a message for %s: %s", topic, e)
            return None
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            logger.warning("paho did not queue a message for %s: rc %s", topic, info.rc)
            return None
        return int(info.mid)

    def publish_and_wait(self, message: Outgoing, timeout_s: float) -> bool:
        """Publish one message now (not through the outbox) and wait for its PUBACK up
        to `timeout_s`. Returns False if not connected or not acknowledged in time."""
        client = self._client
        if client is None or not self._connected:
            return False
        try:
            info = client.publish(message.topic, message.payload, qos=message.qos,
                                  retain=message.retain)
            info.wait_for_publish(timeout_s)
        except (ValueError, RuntimeError) as e:
            logger.warning("could not publish %s: %s", message.topic, e)
            return False
        return bool(info.is_published())

    # ------------------------------------------------------------------ paho callbacks
    def _handle_pre_connect(self, client: Client, userdata: object) -> None:
        try:
            will = self._will()
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        except Exception:  # never end paho's thread
            logger.exception("could not set the MQTT last will")

    def _handle_connect(
        self,
        client: Client,
        userdata: object,
        flags: ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            if reason_code.is_failure:
                self.last_error = f"connection refused: {reason_code}"
                if reason_code.value in _UNSUPPORTED_PROTOCOL and self._v5:
                    self._fallback = True
                logger.error("broker %s:%d refused the connection: %s", self._cfg.host,
                             self._cfg.port, reason_code)
                return
            self._connected = True
            self.connects += 1
            logger.info("connected to broker %s:%d (MQTT %s)", self._cfg.host,
                        self._cfg.port, self.protocol)
            first = self._first_message()
            if first is not None:
                client.publish(first.topic, first.payload, qos=first.qos, retain=first.retain)
        except Exception:
            logger.exception("error in the MQTT connect handler")
        if self._connected:
            try:
                self._on_up()
            except Exception:
                logger.exception("error in the MQTT connect handler")

    def _handle_connect_fail(self, client: Client, userdata: object) -> None:
        self.last_error = "broker unreachable"
        logger.debug("broker %s:%d unreachable; paho retries with backoff", self._cfg.host,
                     self._cfg.port)

    def _handle_disconnect(
        self,
        client: Client,
        userdata: object,
        flags: DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            was_connected, self._connected = self._connected, False
            if was_connected:
                self._down_since = time.monotonic()
                self.last_error = f"disconnected: {reason_code}"
                logger.log(logging.INFO if self._stopping else logging.WARNING,
                           "disconnected from broker %s:%d: %s", self._cfg.host,
                           self._cfg.port, reason_code)
                self._on_down(str(reason_code))
        except Exception:
            logger.exception("error in the MQTT disconnect handler")

    def _handle_publish(
        self,
        client: Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        try:
            outcome: AckOutcome = "refused" if reason_code.is_failure else (
                "unrouted" if reason_code.value == _NO_MATCHING_SUBSCRIBERS else "ok")
            self._on_ack(mid, outcome, str(reason_code))
        except Exception:
            logger.exception("error in the MQTT publish handler")

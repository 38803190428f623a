"""The appliance's broker connection: what is specific to a line on top of the shared
MQTT client (protocol/mqtt_client.py).

It builds the client through a `ClientFactory` (paho in production, an in-memory fake
in unit tests), registers a fresh last will before every connection attempt, publishes
the "first message" (the retained online `status`) inside the CONNACK handler so it
goes out before anything else on a new connection, falls back from MQTT 5 to 3.1.1
when a broker refuses the protocol version, replaces a client that stays down too long,
and reports connection changes and acknowledgements to its owner through three plain
callbacks.

Invariants:
- Nothing here raises into the client's network thread (the shared client logs and
  counts what a handler raises).
- QoS 1 messages handed to `publish` stay in the client's session while the connection
  is down and are re-sent (DUP) after a reconnect; their acknowledgement then arrives
  through `on_ack` with the same mid. A replaced client (protocol fallback,
  supervision) loses them: `supervise` returns True and the owner must forget them.
- A PUBACK is one of three outcomes: "ok", "unrouted" (MQTT 5 reason 0x10, "no matching
  subscribers": the broker took the message but nobody will receive it) or "refused"
  (reason >= 0x80).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final, Literal

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.errors import TelemetryError
from protocol import Outgoing
from protocol.mqtt_client import (
    NO_MATCHING_SUBSCRIBERS,
    UNSUPPORTED_PROTOCOL,
    ClientFactory,
    ClientOptions,
    Inbound,
    MqttClient,
    MqttHandler,
    MqttVersion,
    Reason,
    paho_client,
)
from protocol.mqtt_config import BrokerSetupError

logger = logging.getLogger(__name__)

# paho queues beyond its in-flight limit; ours is enforced by the publisher, so paho's
# limit only needs room for it plus a few status messages.
_PAHO_INFLIGHT_SLACK: Final = 8
_WEDGED_MIN_S: Final = 300.0

AckOutcome = Literal["ok", "unrouted", "refused"]


def ack_outcome(reason: Reason) -> AckOutcome:
    """What a PUBACK reason means for the outbox row it acknowledges."""
    if reason.is_failure:
        return "refused"
    return "unrouted" if reason.value == NO_MATCHING_SUBSCRIBERS else "ok"


class BrokerConnection(MqttHandler):
    """See the module docstring.

    `first_message()` is called on every successful connect (the client's thread) and its
    result published before anything else; `will()` before every attempt. `on_up()` /
    `on_down(reason)` report connection changes, `on_ack(mid, outcome, reason)` every PUBACK
    (all on the client's thread: keep them quick).
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
        client_factory: ClientFactory = paho_client,
        subscriptions: Sequence[str] = (),
        on_message: Callable[[Inbound], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._broker = cfg.broker
        self._client_id = client_id
        self._will = will
        self._first_message = first_message
        self._on_up = on_up
        self._on_down = on_down
        self._on_ack = on_ack
        self._factory = client_factory
        self._version: MqttVersion = "3.1.1" if cfg.protocol == "3.1.1" else "5"
        self._client: MqttClient | None = None
        self._lock = threading.Lock()
        self._fallback = False
        self._stopping = False
        self._wedged_after_s = max(_WEDGED_MIN_S, 5.0 * self._broker.reconnect.max_s)
        self._down_since = time.monotonic()
        self._callback_errors_before = 0  # of clients replaced so far
        self.connects = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.connected

    @property
    def protocol(self) -> str:
        """"5" or "3.1.1": what the current client speaks."""
        return self._version

    @property
    def callback_errors(self) -> int:
        """Exceptions raised by our handlers on the client's thread (logged), in total."""
        client = self._client
        return self._callback_errors_before + (client.callback_errors if client else 0)

    def down_for_s(self) -> float:
        """Seconds since the connection was last lost (0 while connected)."""
        return 0.0 if self.connected else time.monotonic() - self._down_since

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Build the client and start connecting in the background (its thread retries
        with backoff until `stop`). Raises TelemetryError for unusable broker settings
        (TLS files, password file)."""
        with self._lock:
            if self._client is not None:
                return
            options = ClientOptions(
                client_id=self._client_id, version=self._version,
                max_inflight=self._cfg.inflight_max + _PAHO_INFLIGHT_SLACK,
            )
            try:
                client = self._factory(self._broker, options, self)
            except BrokerSetupError as e:
                raise TelemetryError(f"telemetry.broker: {e}") from e
            self._client = client  # before start: the CONNACK handler publishes through it
            try:
                client.start()
            except BrokerSetupError as e:
                self._client = None
                raise TelemetryError(f"telemetry.broker: {e}") from e

    def stop(self, timeout_s: float = 2.0, *, publish_will: bool = False) -> None:
        """Disconnect and end the client's thread. The broker publishes the last will only
        if `publish_will` (an orderly stop whose own `offline` status was not
        acknowledged)."""
        with self._lock:
            client, self._client = self._client, None
        if client is None:
            return
        self._stopping = True
        try:
            client.stop(timeout_s, publish_will=publish_will)
        finally:
            self._callback_errors_before += client.callback_errors
            self._stopping = False

    def supervise(self) -> bool:
        """Replace a client that cannot do its job: one refused for its protocol version
        (auto mode falls back to 3.1.1), or one down for longer than five maximum
        reconnect delays, and at least 5 minutes (a wedged client or a dead network
        thread; paho would have reconnected long before). Call it from the
        owner's thread. Returns True if the client was replaced (its unacknowledged
        messages are gone)."""
        replace = False
        if self._fallback and self._version == "5" and self._cfg.protocol == "auto":
            logger.warning("broker %s:%d refused MQTT 5; falling back to MQTT 3.1.1",
                           self._broker.host, self._broker.port)
            self._version = "3.1.1"
            replace = True
        elif not self.connected and self.down_for_s() > self._wedged_after_s:
            logger.warning("MQTT client down for %.0f s; building a new one",
                           self.down_for_s())
            self._down_since = time.monotonic()
            replace = True
        self._fallback = False
        if replace:
            self.stop(timeout_s=1.0)
            self.start()
        return replace

    # ------------------------------------------------------------------ publishing
    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        """Hand one message to the client; returns its mid, or None if it was refused (no
        client, or a local error). A message published while the connection is down is
        kept by the client and sent after the reconnect (still returns its mid)."""
        client = self._client
        if client is None:
            return None
        return client.publish(topic, payload, qos, retain)

    def publish_and_wait(self, message: Outgoing, timeout_s: float) -> bool:
        """Publish one message now (not through the outbox) and wait for its PUBACK up
        to `timeout_s`. Returns False if not connected or not acknowledged in time."""
        client = self._client
        if client is None:
            return False
        return client.publish_and_wait(message, timeout_s)

    # ------------------------------------------------------------------ client events
    def will(self) -> Outgoing | None:
        return self._will()

    def on_connect_refused(self, reason: Reason) -> None:
        self.last_error = f"connection refused: {reason}"
        if reason.value in UNSUPPORTED_PROTOCOL and self._version == "5":
            self._fallback = True
        logger.error("broker %s:%d refused the connection: %s", self._broker.host,
                     self._broker.port, reason)

    def on_connect(self, session_present: bool) -> None:
        self.connects += 1
        logger.info("connected to broker %s:%d (MQTT %s)", self._broker.host,
                    self._broker.port, self._version)
        try:
            first = self._first_message()
            client = self._client
            if first is not None and client is not None:
                client.publish(first.topic, first.payload, first.qos, first.retain)
            if self._subscriptions and client is not None:
                client.subscribe(self._subscriptions, 1)
        finally:  # the owner hears of the connection even if the first message failed
            self._on_up()

    def on_connect_fail(self) -> None:
        self.last_error = "broker unreachable"
        logger.debug("broker %s:%d unreachable; paho retries with backoff",
                     self._broker.host, self._broker.port)

    def on_disconnect(self, reason: Reason) -> None:
        self._down_since = time.monotonic()
        self.last_error = f"disconnected: {reason}"
        logger.log(logging.INFO if self._stopping else logging.WARNING,
                   "disconnected from broker %s:%d: %s", self._broker.host,
                   self._broker.port, reason)
        self._on_down(str(reason))

    def on_publish_ack(self, mid: int, reason: Reason) -> None:
        self._on_ack(mid, ack_outcome(reason), str(reason))

    def on_message(self, message: Inbound) -> None:
        if self._on_message is not None:
            self._on_message(message)

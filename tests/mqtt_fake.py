"""An in-memory `MqttClient` (protocol/mqtt_client.py) for unit tests of the logic on
top of it: the appliance's broker connection and the collector's session.

The test drives the network side by hand (`connect`, `refuse`, `drop`, `puback`,
`suback`, `deliver`); handler methods run on the test's thread, synchronously, and an
exception in one propagates (a bug the test should see). Integration and must-hold
tests use the real client against a real Mosquitto (tests/mqtt_broker.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol import Outgoing
from protocol.mqtt_client import (
    SUCCESS,
    ClientOptions,
    Inbound,
    MqttHandler,
    MqttVersion,
    Reason,
)
from protocol.mqtt_config import BrokerConfig

LOST = Reason(0x80, "Unspecified error", True)


@dataclass
class FakeMqttClient:
    """What a client was asked to do, and buttons for what the broker does."""

    broker: BrokerConfig
    options: ClientOptions
    handler: MqttHandler
    started: bool = False
    published: list[Outgoing] = field(default_factory=list)
    published_mids: list[int] = field(default_factory=list)
    subscribed: list[list[str]] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    acked: list[int] = field(default_factory=list)
    wills: list[Outgoing | None] = field(default_factory=list)
    stopped_with_will: bool | None = None
    _connected: bool = False
    _mid: int = 0

    # ---- MqttClient
    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def version(self) -> MqttVersion:
        return self.options.version

    @property
    def callback_errors(self) -> int:
        return 0

    def start(self) -> None:
        self.started = True

    def stop(self, timeout_s: float = 2.0, *, publish_will: bool = False) -> None:
        self.started = False
        self.stopped_with_will = publish_will
        if self._connected:
            self._connected = False
            self.handler.on_disconnect(SUCCESS)

    def _next_mid(self) -> int:
        self._mid += 1
        return self._mid

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int | None:
        mid = self._next_mid()
        self.published.append(Outgoing(topic, payload, qos, retain))
        self.published_mids.append(mid)
        return mid

    def publish_and_wait(self, message: Outgoing, timeout_s: float) -> bool:
        if not self._connected:
            return False
        self.publish(*message)
        return True

    def subscribe(self, filters: Sequence[str], qos: int) -> int | None:
        self.subscribed.append(list(filters))
        return self._next_mid()

    def unsubscribe(self, topic_filter: str) -> int | None:
        self.unsubscribed.append(topic_filter)
        mid = self._next_mid()
        self.handler.on_unsubscribe_ack(mid)
        return mid

    def ack(self, mid: int, qos: int) -> bool:
        self.acked.append(mid)
        return self._connected

    # ---- the broker's side
    def connect(self, session_present: bool = False) -> None:
        """A connection attempt that the broker accepts."""
        self.wills.append(self.handler.will())
        self._connected = True
        self.handler.on_connect(session_present)

    def refuse(self, reason: Reason) -> None:
        self.wills.append(self.handler.will())
        self.handler.on_connect_refused(reason)

    def drop(self, reason: Reason = LOST) -> None:
        self._connected = False
        self.handler.on_disconnect(reason)

    def puback(self, mid: int, reason: Reason = SUCCESS) -> None:
        self.handler.on_publish_ack(mid, reason)

    def suback(self, mid: int, reasons: Sequence[Reason] = (SUCCESS,)) -> None:
        self.handler.on_subscribe_ack(mid, reasons)

    def deliver(self, topic: str, payload: bytes, qos: int = 1) -> int:
        mid = self._next_mid()
        self.handler.on_message(Inbound(topic, payload, mid, qos, False))
        return mid


class FakeClients:
    """A `ClientFactory` that keeps every client it built (the newest is `last`)."""

    def __init__(self) -> None:
        self.built: list[FakeMqttClient] = []

    def __call__(
        self, broker: BrokerConfig, options: ClientOptions, handler: MqttHandler
    ) -> FakeMqttClient:
        client = FakeMqttClient(broker, options, handler)
        self.built.append(client)
        return client

    @property
    def last(self) -> FakeMqttClient:
        return self.built[-1]

"""The appliance's broker connection against an in-memory client (no broker): last will,
first message, acknowledgement outcomes, protocol fallback."""

from __future__ import annotations

from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.connection import BrokerConnection
from protocol import Outgoing
from protocol.mqtt_client import SUCCESS, Reason
from tests.mqtt_fake import FakeClients

WILL = Outgoing("lineguard/p/l/status", b"offline", 1, True)
ONLINE = Outgoing("lineguard/p/l/status", b"online", 1, True)


class Owner:
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def connection(self, clients: FakeClients, **cfg: object) -> BrokerConnection:
        return BrokerConnection(
            TelemetryConfig.model_validate({"broker": {"client_id": "line-7"}, **cfg}),
            client_id="line-7", will=lambda: WILL, first_message=lambda: ONLINE,
            on_up=lambda: self.events.append(("up",)),
            on_down=lambda reason: self.events.append(("down", reason)),
            on_ack=lambda mid, outcome, reason: self.events.append(("ack", mid, outcome)),
            client_factory=clients,
        )


def test_will_before_each_attempt_and_the_first_message_before_anything_else() -> None:
    clients, owner = FakeClients(), Owner()
    conn = owner.connection(clients)
    conn.start()
    client = clients.last
    assert client.started and client.options.client_id == "line-7"
    assert client.options.version == "5"
    assert not conn.connected and conn.publish("t", b"queued", 1, False) == 1
    client.connect()
    assert client.wills == [WILL]
    assert client.published[1] == ONLINE  # right after the CONNACK ...
    assert owner.events == [("up",)]  # ... and before the owner hears of it
    assert conn.connected and conn.connects == 1 and conn.down_for_s() == 0.0
    client.drop()
    assert owner.events[-1][0] == "down" and not conn.connected
    assert conn.last_error is not None and "disconnected" in conn.last_error
    client.connect()
    assert client.wills == [WILL, WILL] and conn.connects == 2


def test_puback_outcomes() -> None:
    clients, owner = FakeClients(), Owner()
    conn = owner.connection(clients)
    conn.start()
    clients.last.connect()
    clients.last.puback(5)
    clients.last.puback(6, Reason(0x10, "No matching subscribers", False))
    clients.last.puback(7, Reason(0x87, "Not authorized", True))
    assert [e for e in owner.events if e[0] == "ack"] == [
        ("ack", 5, "ok"), ("ack", 6, "unrouted"), ("ack", 7, "refused")]


def test_auto_falls_back_to_mqtt_311_when_refused_for_the_version() -> None:
    clients, owner = FakeClients(), Owner()
    conn = owner.connection(clients)
    conn.start()
    clients.last.refuse(Reason(132, "Unsupported protocol version", True))
    assert conn.last_error is not None and "refused" in conn.last_error
    assert conn.supervise() is True  # replaced: its unacknowledged messages are gone
    assert len(clients.built) == 2 and clients.last.options.version == "3.1.1"
    assert conn.protocol == "3.1.1" and not clients.built[0].started
    assert conn.supervise() is False


def test_fixed_version_never_falls_back_and_stop_asks_for_the_will() -> None:
    clients, owner = FakeClients(), Owner()
    conn = owner.connection(clients, protocol="5")
    conn.start()
    clients.last.refuse(Reason(132, "Unsupported protocol version", True))
    assert conn.supervise() is False and len(clients.built) == 1
    clients.last.connect()
    assert conn.publish_and_wait(ONLINE, 1.0)
    client = clients.last
    conn.stop(publish_will=True)
    assert client.stopped_with_will is True and not conn.connected
    assert conn.publish("t", b"x", 1, False) is None
    assert not conn.publish_and_wait(ONLINE, 1.0)
    assert ("down", str(SUCCESS)) in owner.events

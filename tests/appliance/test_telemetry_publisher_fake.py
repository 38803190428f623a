"""The publisher's delivery logic against an in-memory MQTT client (no broker): a
message goes to the outbox, out on the connection, and leaves the outbox only on its
PUBACK; "no matching subscribers" keeps it. The real-broker versions of these are the
other test_telemetry_* files."""

from __future__ import annotations

from pathlib import Path

from appliance.telemetry.outbox import Outbox
from appliance.telemetry.publisher import Publisher
from protocol import Outgoing, topic_of
from protocol.mqtt_client import Reason
from tests.appliance.store_rig import open_store
from tests.appliance.telemetry_helpers import telemetry_cfg, wait_for
from tests.cloud import fleet_helpers as h
from tests.mqtt_fake import FakeClients

WILL = Outgoing("lineguard/plant1/line-1/status", b"offline", 1, True)
ONLINE = Outgoing("lineguard/plant1/line-1/status", b"online", 1, True)
WAIT_S = 20.0


def test_outbox_rows_leave_only_on_their_puback(tmp_path: Path) -> None:
    clients = FakeClients()
    store = open_store(tmp_path)
    outbox = Outbox(store, max_rows=100, hard_max_rows=1000)
    publisher = Publisher(telemetry_cfg(1883, metrics_interval_s=3600.0, unrouted_retry_s=0.2),
                          outbox, client_id="line-1", will=lambda: WILL,
                          first_message=lambda: ONLINE, client_factory=clients)
    event = h.defect(captured_at=h.T0)
    publisher.start()
    try:
        client = clients.last
        assert publisher.submit("events/defect", lambda: event)
        assert wait_for(lambda: outbox.depth == 1, WAIT_S)
        assert client.published == []  # not connected: it waits in the outbox
        client.connect()
        assert client.published[0] == ONLINE
        assert wait_for(lambda: len(client.published) == 2, WAIT_S)
        assert client.published[1].topic == topic_of(event)
        mid = client.published_mids[1]
        client.puback(mid, Reason(0x10, "No matching subscribers", False))
        assert wait_for(lambda: len(client.published) >= 3, WAIT_S)  # sent again later
        assert outbox.depth == 1
        client.puback(client.published_mids[-1])
        assert wait_for(lambda: outbox.depth == 0, WAIT_S)
        assert publisher.stats().acknowledged == 1
    finally:
        publisher.stop(1.0)
        publisher.connection.stop()
        outbox.close()
        store.stop()

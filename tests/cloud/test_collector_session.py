"""The collector's session and writer against an in-memory MQTT client (no broker):
subscriptions, commit-then-ack, generations, refused subscriptions. The real broker
versions of these are in test_collector_mqtt.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from cloud.collector import Collector, Delivery
from cloud.config import BrokerConfig, CollectorConfig
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore, IngestResult
from protocol.mqtt_client import Reason
from tests.cloud import fleet_helpers as h
from tests.mqtt_fake import FakeClients

WAIT_S = 30.0


def make(tmp_path, **cfg: object) -> tuple[Collector, FakeClients, FleetStore, list[int]]:
    clients = FakeClients()
    # SQLite only: these test the MQTT session against a fake client, not the database.
    store = FleetStore(DatabaseConfig(url=h.sqlite_url(tmp_path / "fleet.db")))
    committed: list[int] = []
    lock = threading.Lock()

    def on_committed(batch: Sequence[Delivery], result: IngestResult) -> None:
        with lock:
            committed.append(len(batch))

    config = CollectorConfig.model_validate({
        "broker": BrokerConfig(client_id="c-fake"), "group": "g", "log_interval_s": 0,
        **cfg,
    })
    return Collector(config, store, on_committed=on_committed, client_factory=clients), \
        clients, store, committed


def wait(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_persistent_shared_session_and_subscriptions(tmp_path) -> None:
    collector, clients, store, _ = make(tmp_path)
    client = clients.last
    options = client.options
    assert (options.client_id, options.clean_start, options.manual_ack) == ("c-fake", False, True)
    assert options.session_expiry_s == CollectorConfig().session_expiry_s
    assert options.receive_maximum == CollectorConfig().receive_maximum
    collector.start()
    try:
        client.connect()
        assert client.subscribed == [["$share/g/lineguard/+/+/#", "lineguard/+/+/status",
                                      "lineguard/+/+/model"]]
        assert not collector.wait_subscribed(0.01)
        client.suback(1, [Reason(1, "Granted QoS 1", False)] * 3)
        assert collector.wait_subscribed(1.0)
    finally:
        collector.stop()
        store.close()


def test_acks_follow_the_commit_and_only_on_the_delivering_connection(tmp_path) -> None:
    collector, clients, store, committed = make(tmp_path, retained_state=False)
    client = clients.last
    collector.start()
    try:
        client.connect()
        good = [client.deliver(*h.wire(h.metrics())) for _ in range(5)]
        bad = client.deliver("lineguard/plant1/line-1/metrics", b"{not json")
        wait(lambda: sum(committed) == 6, "a commit of all six")
        assert sorted(client.acked) == sorted([*good, bad])  # quarantined ones too
        assert len(h.stored_ids(store.url)) == 5
        # A message of the first connection, committed after a reconnect, is not
        # acknowledged on the new one (the broker resends it there).
        stale = Delivery("lineguard/plant1/line-1/metrics", h.wire(h.metrics())[1], 99, 1,
                         0, 1)
        client.drop()
        client.connect(session_present=True)
        assert collector.session.ack([stale]) == 0
        qos0 = client.deliver(*h.wire(h.metrics()), qos=0)
        wait(lambda: sum(committed) == 7, "the QoS 0 message")
        assert qos0 not in client.acked
    finally:
        collector.stop()
        store.close()


def test_a_refused_subscription_stops_the_collector(tmp_path) -> None:
    collector, clients, store, _ = make(tmp_path)
    clients.last.suback(1, [Reason(0x87, "Not authorized", True)])
    assert collector.session.failure is not None and "ACL" in collector.session.failure
    assert collector.run(threading.Event()) == 2
    store.close()


def test_stop_flushes_with_a_barrier_then_disconnects(tmp_path) -> None:
    collector, clients, store, _ = make(tmp_path)
    client = clients.last
    collector.start()
    client.connect()
    collector.stop()
    assert client.unsubscribed == ["lineguard-collector/flush-barrier"]
    assert not client.started and not collector.session.connected.is_set()
    store.close()

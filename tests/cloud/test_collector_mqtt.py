"""The collector in-process against a real mosquitto: de-duplication, ack after commit,
quarantine of generated junk, reconnect after a broker restart."""

from __future__ import annotations

import contextlib
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.collector import Collector, MqttSession
from cloud.config import BrokerConfig, CollectorConfig
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore
from protocol import MAX_PAYLOAD_BYTES
from protocol.backoff import BackoffConfig
from tests.cloud import fleet_helpers as h
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(300)]

WAIT_S = 60.0  # generous: the CI box is shared with training jobs


def collector_config(port: int, client_id: str = "c-test",
                     retained_state: bool = False) -> CollectorConfig:
    # retained_state off by default here: its second subscription delivers status and
    # model messages twice, which would blur the exact counts these tests check.
    return CollectorConfig(
        group="test", retained_state=retained_state,
        broker=BrokerConfig(port=port, client_id=client_id,
                            reconnect=BackoffConfig(initial_s=1, max_s=2)),
        log_interval_s=0, stop_timeout_s=5,
    )


def counter(store: FleetStore, name: str) -> int:
    return sum(c.counters.get(name, 0) for c in store.counters())


def started(cfg: CollectorConfig, store: FleetStore) -> Collector:
    collector = Collector(cfg, store)
    collector.start()
    assert collector.wait_subscribed(WAIT_S), "collector did not subscribe"
    return collector


@contextlib.contextmanager
def _rig(tmp_path, url: str):
    broker = start_broker(tmp_path, h.BROKER_CONF)
    store = FleetStore(DatabaseConfig(url=url))
    probe = MqttProbe(broker.port, "line-sim")
    assert not probe.connect().is_failure
    try:
        yield broker, store, probe
    finally:
        probe.close()
        store.close()
        broker.stop()


@pytest.fixture
def rig(tmp_path, database_url):
    """Broker, store and probe, on SQLite and on PostgreSQL: for what the store does."""
    with _rig(tmp_path, database_url) as parts:
        yield parts


@pytest.fixture
def sqlite_rig(tmp_path):
    """The same on SQLite only: for the MQTT session's behaviour (reconnects, acks,
    retained state), which does not depend on the database (test time)."""
    with _rig(tmp_path, h.sqlite_url(tmp_path / "fleet.db")) as parts:
        yield parts


def test_same_msg_id_twice_is_stored_once(rig):
    broker, store, probe = rig
    collector = started(collector_config(broker.port), store)
    try:
        first, second = h.metrics(), h.metrics()
        for message in (first, first, second):
            probe.publish(*h.wire(message))
        probe.publish(*h.wire(h.defect()), qos=0)  # QoS 0 is stored too (nothing to ack)
        h.wait_for(lambda: counter(store, "received") >= 4, WAIT_S, "4 deliveries")
        assert sorted(h.stored_ids(store.url)) == sorted(
            [first.msg_id, second.msg_id, *(e.msg_id for e in store.defect_events())]
        )
        assert counter(store, "duplicates") == 1
        assert counter(store, "stored") == 3
    finally:
        collector.stop()


def test_same_msg_id_with_other_content_is_quarantined_and_counted(rig):
    """Issue 9, defect 8: the second message with a known msg_id and different content
    is quarantined as `conflicting_duplicate`, in the collector's stats and the store."""
    broker, store, probe = rig
    collector = started(collector_config(broker.port), store)
    try:
        first = h.metrics()
        forged = first.model_copy(update={"fps": first.fps + 100.0})
        for message in (first, first, forged):
            probe.publish(*h.wire(message))
        # The writer's stats move after the commit that the store's counters are part of.
        h.wait_for(lambda: collector.stats().writer.received >= 3, WAIT_S, "3 deliveries")
        assert counter(store, "stored") == 1
        assert counter(store, "duplicates") == 1
        assert counter(store, "quarantined.conflicting_duplicate") == 1
        writer = collector.stats().writer
        assert writer.quarantined_by_reason == {"conflicting_duplicate": 1}
        assert (writer.stored, writer.duplicates, writer.quarantined) == (1, 1, 1)
        summary = store.quarantine()
        assert summary.by_reason == {"conflicting_duplicate": 1}
        assert first.msg_id in summary.recent[0].detail
    finally:
        collector.stop()


def test_committed_but_unacked_messages_come_back_and_are_not_stored_twice(
    rig, monkeypatch
):
    """A crash between commit and ack: the broker resends, the store de-duplicates."""
    broker, store, probe = rig
    cfg = collector_config(broker.port, "c-crashy")
    with monkeypatch.context() as m:
        m.setattr(MqttSession, "ack", lambda self, deliveries: 0)  # commits, never acks
        collector = started(cfg, store)
        messages = [h.metrics() for _ in range(30)]
        for message in messages:
            probe.publish(*h.wire(message))
        h.wait_for(lambda: counter(store, "stored") == 30, WAIT_S, "30 stored")
        collector.stop()
    assert counter(store, "duplicates") == 0
    # Same client id: the broker resends the 30 unacknowledged messages.
    collector = started(cfg, store)
    try:
        h.wait_for(lambda: counter(store, "duplicates") == 30, WAIT_S, "30 redelivered")
        assert sorted(h.stored_ids(store.url)) == sorted(m.msg_id for m in messages)
    finally:
        collector.stop()
    # Acknowledged this time: a third run gets nothing back.
    collector = started(cfg, store)
    try:
        sentinel = h.metrics()
        probe.publish(*h.wire(sentinel))
        h.wait_for(lambda: sentinel.msg_id in h.stored_ids(store.url), WAIT_S, "sentinel")
        assert counter(store, "duplicates") == 30
    finally:
        collector.stop()


def test_reconnects_after_a_broker_restart(sqlite_rig):
    broker, store, probe = sqlite_rig
    collector = started(collector_config(broker.port), store)
    try:
        probe.publish(*h.wire(h.metrics()))
        probe.close()
        broker.restart()
        h.wait_for(lambda: collector.stats().subscribed, WAIT_S, "resubscribe")
        probe = MqttProbe(broker.port, "line-sim-2")
        assert not probe.connect().is_failure
        after = h.metrics()
        probe.publish(*h.wire(after))
        h.wait_for(lambda: after.msg_id in h.stored_ids(store.url), WAIT_S, "stored after")
        assert counter(store, "stored") == 2
    finally:
        probe.close()
        collector.stop()


def test_oversized_payloads_are_quarantined_with_a_bounded_copy(sqlite_rig):
    broker, store, probe = sqlite_rig
    collector = started(collector_config(broker.port), store)
    try:
        topic = "lineguard/plant1/line-1/metrics"
        probe.publish(topic, b"{" + b" " * (MAX_PAYLOAD_BYTES + 10) + b"}")
        probe.publish(topic, b"x" * 1_000_000)
        h.wait_for(lambda: counter(store, "quarantined") == 2, WAIT_S, "2 quarantined")
        summary = store.quarantine()
        assert summary.by_reason == {"payload_too_large": 2}
        assert {q.payload_bytes for q in summary.recent} == {MAX_PAYLOAD_BYTES + 12, 1_000_000}
        assert all(len(q.payload_head_b64) <= 4 * 4096 // 3 + 4 for q in summary.recent)
        assert collector.stats().connected
    finally:
        collector.stop()


# ---- generated junk (hypothesis) through a real broker

_VALID_DOC = json.loads(h.wire(h.metrics())[1])

_mutations = st.sampled_from([
    ("fps", -1.0), ("fps", "fast"), ("window_s", 0), ("verdicts", {"passed": 1}),
    ("schema", "lineguard.metrics/99"), ("schema", "lineguard.status/1"), ("site", "other"),
    ("msg_id", "not-an-id"), ("sent_at", "2025-01-01T00:00:00"), ("extra_field", 1),
])
_wrong_schema = _mutations.map(lambda kv: json.dumps({**_VALID_DOC, kv[0]: kv[1]}).encode())
_json_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
).map(lambda v: json.dumps(v).encode())
_junk = st.one_of(st.binary(max_size=300), _json_junk, _wrong_schema)
_topics = st.sampled_from([
    "lineguard/plant1/line-1/metrics", "lineguard/plant1/line-1/status",
    "lineguard/plant1/line-1/events/defect", "lineguard/Plant1/line-1/metrics",
    "lineguard/plant1/line-1/no/such/kind",
])


@pytest.fixture(scope="module")
def shared_rig(tmp_path_factory, module_database_url):
    tmp = tmp_path_factory.mktemp("fuzz")
    broker = start_broker(tmp, h.BROKER_CONF)
    store = FleetStore(DatabaseConfig(url=module_database_url))
    collector = started(collector_config(broker.port, "c-fuzz"), store)
    probe = MqttProbe(broker.port, "fuzzer")
    assert not probe.connect().is_failure
    try:
        yield store, probe, collector
    finally:
        probe.close()
        collector.stop()
        store.close()
        broker.stop()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.lists(st.tuples(_topics, _junk), min_size=1, max_size=8),
       valid=st.integers(min_value=0, max_value=3))
def test_generated_junk_is_quarantined_and_valid_messages_still_stored(shared_rig, junk, valid):
    store, probe, collector = shared_rig
    before = {name: counter(store, name) for name in ("received", "stored", "quarantined")}
    messages = [h.metrics() for _ in range(valid)]
    for topic, payload in junk:
        probe.publish(topic, payload)
    for message in messages:
        probe.publish(*h.wire(message))
    total = len(junk) + valid
    h.wait_for(lambda: counter(store, "received") == before["received"] + total, WAIT_S,
               f"{total} deliveries")
    assert counter(store, "quarantined") == before["quarantined"] + len(junk)
    assert counter(store, "stored") == before["stored"] + valid
    assert set(m.msg_id for m in messages) <= set(h.stored_ids(store.url))
    assert collector.stats().connected
    # The writer's own stats are updated just after the commit the counters are part of.
    h.wait_for(lambda: collector.stats().writer.received == counter(store, "received"),
               WAIT_S, "writer stats")


def test_online_and_offline_come_from_status_and_the_last_will(rig):
    broker, store, _ = rig
    collector = started(collector_config(broker.port), store)
    line = MqttProbe(broker.port, "line.plant1.line-7")
    try:
        now = datetime.now(UTC)
        line.will_set(*h.wire(h.status(line="line-7", sent_at=now, will=True)), retain=True)
        assert not line.connect().is_failure
        line.publish(*h.wire(h.status(line="line-7", sent_at=now + timedelta(milliseconds=1))),
                     retain=True)
        h.wait_for(lambda: (v := store.line("plant1", "line-7")) is not None and bool(v.online),
                   WAIT_S, "line-7 online")
        line.drop()  # the connection dies: the broker publishes the will
        h.wait_for(lambda: (v := store.line("plant1", "line-7")) is not None
                   and v.online is False, WAIT_S, "line-7 offline by its will")
        view = store.line("plant1", "line-7")
        assert view is not None
        assert view.reason == "connection_lost"
    finally:
        line.close()
        collector.stop()


def test_retained_state_published_before_the_first_start_is_collected(sqlite_rig):
    broker, store, probe = sqlite_rig
    status = h.status(line="line-4")
    report = h.model_report(line="line-4", version=11)
    probe.publish(*h.wire(status), retain=True)
    probe.publish(*h.wire(report), retain=True)
    probe.publish(*h.wire(h.metrics(line="line-4")))  # not retained: nobody gets it
    collector = started(collector_config(broker.port, retained_state=True), store)
    try:
        h.wait_for(lambda: (v := store.line_model("plant1", "line-4")) is not None
                   and v.current is not None and v.current.version == 11, WAIT_S,
                   "the retained model report")
        view = store.line("plant1", "line-4")
        assert view is not None
        assert view.online is True
        later = h.status(line="line-4", sent_at=h.T0 + timedelta(minutes=1), online=False)
        probe.publish(*h.wire(later), retain=True)
        h.wait_for(lambda: (v := store.line("plant1", "line-4")) is not None
                   and v.online is False, WAIT_S, "the live status")
        # Through the shared and the state subscription, stored once.
        assert sorted(h.stored_ids(store.url)) == sorted(
            [status.msg_id, report.msg_id, later.msg_id])
    finally:
        collector.stop()


def test_an_orderly_stop_mid_stream_leaves_no_committed_message_unacknowledged(sqlite_rig):
    """Messages still arriving while the collector stops must not cost it the acks it
    already sent (a socket closed with unread input is reset, and the broker drops what
    it had not read yet): a restart then gets back only what was never committed."""
    broker, store, probe = sqlite_rig
    cfg = collector_config(broker.port, "c-orderly")
    for round_ in range(3):
        collector = started(cfg, store)
        messages = [h.metrics() for _ in range(150)]
        before = counter(store, "received")
        publisher = threading.Thread(
            target=lambda ms=messages: [probe.client.publish(*h.wire(m), 1, False) for m in ms])
        publisher.start()
        h.wait_for(lambda b=before: counter(store, "received") >= b + 20, WAIT_S, "a flow")
        collector.stop()
        publisher.join(WAIT_S)
        assert counter(store, "duplicates") == 0, f"round {round_}"
    collector = started(cfg, store)
    try:
        h.wait_for(lambda: counter(store, "stored") == 450, WAIT_S, "all 450")
        assert counter(store, "duplicates") == 0
    finally:
        collector.stop()

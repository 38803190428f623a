"""Two `lineguard cloud collect` processes (one shared-subscription group) writing one
PostgreSQL database: one is killed and restarted mid-stream, producers re-send some
messages, and every message is stored exactly once and counted once (issue 11, item 1).
Both start at once on an empty database: one migrates, the other waits and finds it done.
"""

from __future__ import annotations

import pytest

from tests.cloud import fleet_helpers as h
from tests.cloud.test_collector_kill import START_S, mixed_messages, wait_ready
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(600)]


def total(db: str, name: str) -> int:
    rows = h.query(db, "SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = ?", (name,))
    return int(rows[0][0]) if rows else 0


def test_two_collectors_one_killed_store_every_message_exactly_once(tmp_path, postgres_url):
    db = postgres_url
    broker = start_broker(tmp_path, h.BROKER_CONF)
    procs = [
        h.CollectorProcess(
            h.write_config(tmp_path / f"cloud-{name}.yaml", broker.port, db,
                           client_id=f"c-{name}", group="shared", retained_state=False),
            tmp_path / f"collector-{name}.log")
        for name in ("a", "b")
    ]
    probe = MqttProbe(broker.port, "line-sim")
    try:
        assert not probe.connect().is_failure
        for proc in procs:
            proc.start()  # both at once: a race for the first migration
        h.wait_for(lambda: all(p.log_text().count("subscribed to") >= 1 for p in procs),
                   START_S, "both collectors subscribed")
        wait_ready(probe, db)
        first = mixed_messages(200, "line-1")
        second = mixed_messages(200, "line-2")
        for i, message in enumerate(first):
            probe.publish(*h.wire(message))
            if i == 100:
                procs[0].kill()  # mid-stream: its un-acked share comes back to it
        # Producers re-send some (an outbox after a lost PUBACK) while `a` is down.
        resent = first[::10]
        for message in [*second, *resent]:
            probe.publish(*h.wire(message))
        procs[0].start()
        for message in resent:  # and again once both are up: either may get them
            probe.publish(*h.wire(message))
        everything = {m.msg_id for m in first + second}
        h.wait_for(lambda: everything <= set(h.stored_ids(db)), START_S,
                   "every message of both lines")
        sentinels = len(h.query(db, "SELECT msg_id FROM messages WHERE line = 'sentinel'"))
        h.wait_for(lambda: total(db, "received") >= len(everything) + 2 * len(resent)
                   + sentinels, START_S, "every delivery counted")
        ids = h.stored_ids(db)
        assert len(ids) == len(set(ids)) == len(everything) + sentinels
        for table, kind in [("metrics", "metrics"), ("defect_events", "events/defect"),
                            ("drift_sketches", "drift"), ("model_reports", "model")]:
            expected = sum(1 for m in first + second if m.KIND.value == kind)
            rows = h.query(db, f"SELECT COUNT(*) FROM {table} WHERE line != 'sentinel'")
            assert rows == [(expected,)], table
        # Stored once, counted once: the collectors' `stored` add up to the messages.
        assert total(db, "stored") == len(everything) + sentinels
        assert total(db, "duplicates") >= 2 * len(resent)
        assert total(db, "quarantined") == 0
        writers = {row[0] for row in h.query(
            db, "SELECT collector_id FROM counters WHERE name = 'stored' AND value > 0")}
        assert writers == {"c-a", "c-b"}, writers
        for proc in procs:
            assert proc.terminate() == 0
    finally:
        for proc in procs:
            proc.kill()
        probe.close()
        broker.stop()

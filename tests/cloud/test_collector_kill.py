"""`lineguard cloud collect` as a real process: SIGKILL loses nothing (persistent
session, QoS 1, ack after commit) and stores nothing twice; SIGTERM stops in order."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest

from tests.cloud import fleet_helpers as h
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(600)]

START_S = 120.0  # a cold interpreter on a loaded 2-core box can take a while


def wait_ready(probe: MqttProbe, db: object, timeout_s: float = START_S) -> None:
    """Publish sentinels until one is stored: the collector is up and subscribed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sentinel = h.metrics(line="sentinel")
        probe.publish(*h.wire(sentinel))
        try:
            h.wait_for(lambda sid=sentinel.msg_id: sid in h.stored_ids(db), 1.0, "sentinel")
            return
        except TimeoutError:
            continue
    raise TimeoutError("the collector did not start storing")


def mixed_messages(n: int, line: str, with_model: bool = True) -> list:
    makers = [h.metrics, h.defect, h.metrics, h.drift]
    kinds = itertools.cycle([*makers, h.model_report] if with_model else makers)
    return [next(kinds)(line=line) for _ in range(n)]


def test_sigkill_loses_nothing_and_stores_everything_once(tmp_path, database_url):
    broker = start_broker(tmp_path, h.BROKER_CONF)
    db = database_url
    config = h.write_config(tmp_path / "cloud.yaml", broker.port, db, client_id="c-kill")
    proc = h.CollectorProcess(config, tmp_path / "collector.log")
    probe = MqttProbe(broker.port, "line-sim")
    try:
        assert not probe.connect().is_failure
        proc.start()
        wait_ready(probe, db)
        while_up = mixed_messages(300, "line-1")
        for i, message in enumerate(while_up):
            probe.publish(*h.wire(message))
            if i == 150:
                proc.kill()  # mid-stream: some received, some committed but not acked
        while_down = mixed_messages(300, "line-2")
        for message in while_down:
            probe.publish(*h.wire(message))
        proc.start()
        everything = {m.msg_id for m in while_up + while_down}
        h.wait_for(lambda: everything <= set(h.stored_ids(db)), START_S,
                   "every message published before and during the outage")
        # A producer re-sending one (its outbox after a lost PUBACK) is a duplicate.
        probe.publish(*h.wire(while_up[0]))
        h.wait_for(lambda: h.query(db, "SELECT SUM(value) FROM counters "
                                       "WHERE name = 'duplicates'")[0][0] is not None,
                   START_S, "a counted duplicate")
        ids = h.stored_ids(db)
        assert len(ids) == len(set(ids))
        for table, kind in [("metrics", "metrics"), ("defect_events", "events/defect"),
                            ("drift_sketches", "drift"), ("model_reports", "model")]:
            expected = sum(1 for m in while_up + while_down if m.KIND.value == kind)
            rows = h.query(db, f"SELECT COUNT(*) FROM {table} WHERE line != 'sentinel'")
            assert rows == [(expected,)], table
        assert proc.terminate() == 0
        assert "collector c-kill: received" in proc.log_text()
    finally:
        proc.kill()
        probe.close()
        broker.stop()


def test_sigterm_commits_and_acks_then_exits_zero(tmp_path):
    broker = start_broker(tmp_path, h.BROKER_CONF)
    db = tmp_path / "fleet.db"  # the database is the same code path as above
    config = h.write_config(tmp_path / "cloud.yaml", broker.port, db, client_id="c-term")
    proc = h.CollectorProcess(config, tmp_path / "collector.log")
    probe = MqttProbe(broker.port, "line-sim")
    try:
        assert not probe.connect().is_failure
        proc.start()
        wait_ready(probe, db)
        # No model reports: they also arrive through the retained-state subscription,
        # as counted duplicates, and this test counts duplicates.
        messages = mixed_messages(100, "line-1", with_model=False)
        for message in messages:
            probe.publish(*h.wire(message))
        assert proc.terminate() == 0
        # Restart: whatever the orderly stop acknowledged does not come back.
        stored_before = set(h.stored_ids(db))
        proc.start()
        h.wait_for(lambda: {m.msg_id for m in messages} <= set(h.stored_ids(db)), START_S,
                   "all 100")
        wait_ready(probe, db)
        duplicates = h.query(db, "SELECT COALESCE(SUM(value), 0) FROM counters "
                                 "WHERE name = 'duplicates'")[0][0]
        assert duplicates == 0, "an orderly stop acknowledged everything it committed"
        assert stored_before <= set(h.stored_ids(db))
        assert proc.terminate() == 0
    finally:
        proc.kill()
        probe.close()
        broker.stop()


def test_workers_share_the_load_and_a_killed_worker_is_restarted(tmp_path, database_url):
    broker = start_broker(tmp_path, h.BROKER_CONF)
    db = database_url
    config = h.write_config(tmp_path / "cloud.yaml", broker.port, db, client_id="c-pool",
                            workers=2)
    proc = h.CollectorProcess(config, tmp_path / "collector.log")
    probe = MqttProbe(broker.port, "line-sim")
    try:
        assert not probe.connect().is_failure
        proc.start()
        h.wait_for(lambda: len(proc.children()) == 2, START_S, "2 workers")
        # Both workers must have subscribed before the load, or one gets it all.
        h.wait_for(lambda: proc.log_text().count("subscribed to") == 2, START_S,
                   "2 subscriptions")
        first = mixed_messages(200, "line-1")
        for message in first:
            probe.publish(*h.wire(message))
        h.wait_for(lambda: {m.msg_id for m in first} <= set(h.stored_ids(db)), START_S,
                   "first 200")
        per_worker = dict(h.query(db, "SELECT collector_id, value FROM counters "
                                      "WHERE name = 'stored'"))
        assert set(per_worker) == {"c-pool-0", "c-pool-1"}, per_worker
        assert sum(per_worker.values()) == 200
        victim = proc.children()[0]
        os.kill(victim, signal.SIGKILL)
        second = mixed_messages(200, "line-2")
        for message in second:
            probe.publish(*h.wire(message))
        h.wait_for(lambda: {m.msg_id for m in second} <= set(h.stored_ids(db)), START_S,
                   "second 200, including the killed worker's share after its restart")
        assert "restarting in" in proc.log_text()
        ids = h.stored_ids(db)
        assert len(ids) == len(set(ids)) == 400
        workers = proc.children()
        assert proc.terminate() == 0
        assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]
    finally:
        proc.kill()
        probe.close()
        broker.stop()

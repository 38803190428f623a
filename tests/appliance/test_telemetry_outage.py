"""A broker outage in the middle of a run: every event and model message reaches the
wire (at least once, unique msg_ids; duplicates are counted) and the real cloud collector's
fleet store exactly once; the producer never slows down while the broker is away, and
the per-window metrics add up to the totals.

The outage lasts 30 s as in the issue (`LINEGUARD_TEST_OUTAGE_S` overrides it, e.g. 5 for
a quick run); the whole test takes about outage + 15 s.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.store import Store
from appliance.telemetry import Gauges, Telemetry
from protocol import ModelRef, UpdateProgress, decode, model_topic
from tests.appliance.fleet_rig import FleetRig
from tests.appliance.store_rig import open_store
from tests.appliance.telemetry_helpers import (
    LINE,
    SITE,
    Collector,
    record,
    telemetry_cfg,
)
from tests.cloud.fleet_helpers import BROKER_CONF
from tests.mqtt_broker import MqttProbe, requires_mosquitto, start_broker

OUTAGE_S = float(os.environ.get("LINEGUARD_TEST_OUTAGE_S", "30"))
RATE_PER_S = 40.0  # failed parts per second (each one an events/defect message)
MODEL_EVERY = 40  # a model report every this many parts
LIVE_S = 2.0

pytestmark = [pytest.mark.mqtt, pytest.mark.slow, requires_mosquitto,
              pytest.mark.timeout(OUTAGE_S + 150)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """The appliance's store: its database holds the outbox, its writer writes it."""
    s = open_store(tmp_path)
    yield s
    s.stop()


MODEL = ModelRef(name="neu-det-yolo11n", version=7)


@dataclass
class Producer:
    """Feeds the telemetry like the pipeline's verdict sink at a fixed rate; records
    when each part was handed over and how long the call took."""

    telemetry: Telemetry
    rate_per_s: float
    stop: threading.Event = field(default_factory=threading.Event)
    at: list[float] = field(default_factory=list)
    longest_call_s: float = 0.0
    updates: list[str] = field(default_factory=list)

    def run(self) -> None:
        t0 = time.monotonic()
        i = 0
        while not self.stop.is_set():
            due = t0 + i / self.rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            start = time.monotonic()
            self.telemetry.on_verdict(record(i))
            self.telemetry.on_verdict(record(i, "pass", station="side"))
            if i % MODEL_EVERY == 0:
                update_id = f"upd-{i}"
                self.telemetry.publish_model(MODEL, update=UpdateProgress(
                    update_id=update_id, trigger="poll", step="health", state="running"))
                self.updates.append(update_id)
            self.longest_call_s = max(self.longest_call_s, time.monotonic() - start)
            self.at.append(start)
            i += 1

    def handed_over(self, since: float, until: float) -> int:
        return sum(since <= t < until for t in self.at)


def test_broker_outage_loses_nothing_and_never_blocks(tmp_path: Path, store: Store) -> None:
    broker = start_broker(tmp_path, BROKER_CONF)
    collector = Collector(broker.port)
    fleet = FleetRig(broker.port, tmp_path)
    events: list[str] = []
    telemetry = Telemetry(
        telemetry_cfg(broker.port, offline_alarm_s=min(10.0, OUTAGE_S / 2),
                      # well above the cloud collector's reconnect (1-2 s) on a busy CI box
                      reconnect_settle_s=8.0),
        store,
        lambda: Gauges(model=MODEL, sources={"top": "streaming", "side": "streaming"}),
        site=SITE, line=LINE, record_event=lambda e: events.append(e.kind),
    )
    producer = Producer(telemetry, RATE_PER_S)
    thread = threading.Thread(target=producer.run, name="producer")
    try:
        collector.connect()
        fleet.start()
        telemetry.start()
        thread.start()
        time.sleep(LIVE_S)
        assert collector.wait_until(lambda c: len(c.frame_ids()) > 0, 10), "nothing live"

        down_at = time.monotonic()
        broker.stop()
        time.sleep(OUTAGE_S)
        up_at = time.monotonic()
        stats = telemetry.stats()
        assert stats is not None and stats.outbox_depth > 0.5 * RATE_PER_S * OUTAGE_S
        broker.start()
        time.sleep(LIVE_S)  # live messages flow while the backlog drains
        producer.stop.set()
        thread.join(10)
        n = len(producer.at)
        assert collector.wait_until(lambda c: len(c.frame_ids()) == n, 60), (
            f"{len(collector.frame_ids())} of {n} events arrived; {telemetry.stats()}"
        )
        assert collector.wait_until(
            lambda c: {m.update.update_id for m in c.kind("model") if m.update} >=
            set(producer.updates), 30)
        telemetry.stop()
        # the last, partial metrics window is sent on stop
        assert collector.wait_until(
            lambda c: sum(m.verdicts.failed for m in c.kind("metrics")) == n, 30), (
            f"metrics count {sum(m.verdicts.failed for m in collector.kind('metrics'))} "
            f"failed parts of {n}"
        )
        in_fleet = fleet.wait_count("defect_events", n, 60)
        assert in_fleet == n, f"{in_fleet} of {n} events in the fleet store"
        retained = MqttProbe(broker.port, "late-monitor")
        retained.connect()
        retained.subscribe(model_topic(SITE, LINE))
        last_model = retained.get(5.0)
        retained.close()
    finally:
        producer.stop.set()
        if thread.is_alive():
            thread.join(10)
        telemetry.stop()
        collector.close()
        fleet.close()
        broker.stop()

    # every event once by frame (a re-sent message keeps its msg_id), none missing
    frames = collector.frame_ids()
    assert set(frames) == {f"top:{i}" for i in range(n)}
    assert max(frames.values()) == 1
    assert {m.update.update_id for m in collector.kind("model") if m.update} == \
        set(producer.updates)
    # the fleet store: every event and every model report exactly once
    assert fleet.event_frames() == {f"top:{i}": 1 for i in range(n)}
    assert fleet.update_ids() == {u: 1 for u in producer.updates}
    duplicates = collector.duplicates()
    assert duplicates <= 2 * telemetry.cfg.inflight_max  # only what was in flight at the cut
    # metrics: every part in exactly one window
    metrics = collector.kind("metrics")
    assert sum(m.verdicts.passed for m in metrics) == n
    assert sum(m.outbox.dropped for m in metrics if m.outbox) == 0
    # the producer kept its rate while the broker was away, and never waited on it
    during = producer.handed_over(down_at + 1.0, up_at - 1.0) / (up_at - down_at - 2.0)
    assert during >= 0.8 * RATE_PER_S, f"{during:.1f} parts/s while the broker was down"
    assert producer.longest_call_s < 0.5
    # the broker's retained model report is the newest one, not a backlog replay
    assert last_model is not None
    newest = decode(last_model.topic, last_model.payload)
    assert newest.update is not None and newest.update.update_id == producer.updates[-1]
    stats = telemetry.stats()
    assert stats is not None and stats.outbox_depth == 0 and stats.rejected == 0
    assert not collector.errors
    assert events == ["telemetry_offline", "telemetry_online"]  # recorded in the store
    print(f"outage {OUTAGE_S:.0f} s: {n} events, {len(producer.updates)} model reports, "
          f"{len(metrics)} metrics windows, {duplicates} duplicates, "
          f"{stats.published} published; events: {events}")

"""Messages the broker acknowledges with "no matching subscribers" (MQTT 5 reason 0x10)
stay in the outbox until someone subscribes.

The case that matters: Mosquitto restores a persistent session after a restart but not
its shared subscriptions, so until the cloud collector reconnects and subscribes again,
every event a line publishes is acknowledged and dropped by the broker. Found by the
broker-outage test with the real collector (12 of 1,364 events missing).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store import Store
from appliance.telemetry import Telemetry
from tests.appliance.fleet_rig import FleetRig
from tests.appliance.store_rig import open_store
from tests.appliance.telemetry_helpers import (
    LINE,
    SITE,
    record,
    telemetry_cfg,
    wait_for,
)
from tests.cloud.fleet_helpers import BROKER_CONF
from tests.mqtt_broker import requires_mosquitto, start_broker

pytestmark = [pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(180)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """The appliance's store: its database holds the outbox, its writer writes it."""
    s = open_store(tmp_path)
    yield s
    s.stop()




def test_nobody_subscribed_keeps_messages_and_probes_at_a_bounded_rate(
    tmp_path: Path, store: Store
) -> None:
    n = 200
    with start_broker(tmp_path, BROKER_CONF) as broker:
        telemetry = Telemetry(
            telemetry_cfg(broker.port, metrics_interval_s=3600.0, unrouted_retry_s=0.5),
            store, site=SITE, line=LINE)
        telemetry.start()
        fleet: FleetRig | None = None
        try:
            for i in range(n):
                telemetry.on_verdict(record(i))
            assert wait_for(lambda: (s := telemetry.stats()) is not None
                            and s.unrouted > 0 and s.outbox_depth == n, 15), telemetry.stats()
            time.sleep(3.0)  # about six pauses with nobody listening
            stats = telemetry.stats()
            assert stats is not None and stats.outbox_depth == n and stats.acknowledged == 0
            cfg = telemetry.cfg
            # each pause re-sends at most the backlog's share of the window, never all rows
            assert stats.published <= cfg.inflight_max + 8 * cfg.backlog_inflight_max, stats

            fleet = FleetRig(broker.port, tmp_path)
            fleet.start()
            assert fleet.wait_count("defect_events", n, 30) == n
            assert wait_for(lambda: (s := telemetry.stats()) is not None
                            and s.outbox_depth == 0, 15), telemetry.stats()
        finally:
            telemetry.stop()
            if fleet is not None:
                fleet.close()
    assert fleet.event_frames() == {f"top:{i}": 1 for i in range(n)}


def test_events_published_after_a_broker_restart_wait_for_the_shared_subscription(
    tmp_path: Path, store: Store
) -> None:
    n = 100
    with start_broker(tmp_path, BROKER_CONF) as broker:
        fleet = FleetRig(broker.port, tmp_path)
        fleet.start()  # a persistent session with a shared subscription
        fleet.close()  # the collector goes away (its session stays)
        broker.restart()  # orderly: sessions are saved, shared subscriptions are not
        telemetry = Telemetry(
            telemetry_cfg(broker.port, metrics_interval_s=3600.0, unrouted_retry_s=0.5),
            store, site=SITE, line=LINE)
        telemetry.start()
        fleet = FleetRig(broker.port, tmp_path)
        try:
            for i in range(n):
                telemetry.on_verdict(record(i))
            assert wait_for(lambda: (s := telemetry.stats()) is not None
                            and s.unrouted > 0, 15), telemetry.stats()
            fleet.start()  # the same client id: the session is back, and it subscribes
            assert fleet.wait_count("defect_events", n, 30) == n
        finally:
            telemetry.stop()
            fleet.close()
    assert fleet.event_frames() == {f"top:{i}": 1 for i in range(n)}

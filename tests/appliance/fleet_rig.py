"""The real cloud collector and fleet store beside an appliance telemetry test, so that
"reaches the fleet store exactly once" is checked where it is stored, not on the wire.

    rig = FleetRig(broker.port, tmp_path)
    rig.start()                          # subscribed (shared subscription, persistent)
    ...
    rig.wait_count("defect_events", n, timeout_s=60)
    rig.event_frames()                   # frame_id -> rows in defect_events
    rig.close()
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cloud.collector import Collector
from cloud.config import BrokerConfig, CollectorConfig
from cloud.db import DatabaseConfig
from cloud.fleet import FleetStore
from protocol.backoff import BackoffConfig

_COUNTED = {"defect_events", "model_reports", "metrics"}


class FleetRig:
    def __init__(self, port: int, directory: Path, client_id: str = "cloud-collector") -> None:
        # SQLite: these are appliance tests; the fleet store's own run on both back ends.
        self.store = FleetStore(DatabaseConfig(url=f"sqlite:///{directory / 'fleet.db'}"))
        # retained_state off: its second subscription would deliver status and model
        # messages twice (stored once either way, but counted as duplicates)
        self.collector = Collector(CollectorConfig(
            group="test", retained_state=False,
            broker=BrokerConfig(port=port, client_id=client_id,
                                reconnect=BackoffConfig(initial_s=1, max_s=2)),
            log_interval_s=0, stop_timeout_s=5,
        ), self.store)

    def start(self, timeout_s: float = 30.0) -> None:
        self.collector.start()
        assert self.collector.wait_subscribed(timeout_s), "the cloud collector did not subscribe"

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with self.store.engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql)]

    def wait_count(self, table: str, want: int, timeout_s: float) -> int:
        """Rows in `table` once there are `want` of them, or after `timeout_s`."""
        assert table in _COUNTED, table
        deadline = time.monotonic() + timeout_s
        while True:
            got = int(self.rows(f"SELECT count(*) FROM {table}")[0][0])
            if got >= want or time.monotonic() >= deadline:
                return got
            time.sleep(0.2)

    def event_frames(self) -> dict[str, int]:
        """frame_id -> how many defect events the fleet store holds for it."""
        return {str(f): int(c) for f, c in self.rows(
            "SELECT frame_id, count(*) FROM defect_events GROUP BY frame_id")}

    def update_ids(self) -> dict[str, int]:
        """update_id -> how many model reports the fleet store holds for it."""
        return {str(u): int(c) for u, c in self.rows(
            "SELECT update_id, count(*) FROM model_reports WHERE update_id IS NOT NULL "
            "GROUP BY update_id")}

    def close(self) -> None:
        self.collector.stop()
        self.store.close()

"""How the App builds the telemetry (one function, so appliance/app.py stays the
composition root): the MQTT outbox and publisher over the store, attached to the
pipeline, with the parts a killed run left without a verdict counted in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from appliance.pipeline import Pipeline, PipelineStats
from appliance.pipeline.events import Events
from appliance.records import InspectionRecord
from appliance.records import UninspectedReason as Reason
from appliance.store import Store
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.errors import TelemetryError
from appliance.telemetry.gauges import pipeline_gauges
from appliance.telemetry.service import Telemetry
from protocol.app_version import app_version

logger = logging.getLogger(__name__)


def start_telemetry(cfg: TelemetryConfig | None, store: Store, pipeline: Pipeline,
                    stats: Callable[[], PipelineStats], events: Events, *, site: str,
                    line: str, clock: Callable[[], float] = time.time) -> Telemetry | None:
    """MQTT telemetry when configured, started and listening to `pipeline`'s verdicts
    (`stats()` feeds its metrics); None without a `telemetry` section. A telemetry that
    cannot start (outbox or TLS files) is an alarm event and None, never a reason to
    stop inspecting parts."""
    if cfg is None:
        return None
    telemetry = Telemetry(cfg, store, pipeline_gauges(stats, store), site=site, line=line,
                          clock=clock, record_event=store.record_event,
                          app_version=app_version())
    try:
        telemetry.start()
    except TelemetryError as e:
        logger.error("telemetry disabled: %s", e)
        events.record("alarm", "alarm", "telemetry", f"telemetry cannot start: {e}",
                      alarm="telemetry")
        return None
    telemetry.attach(pipeline)
    count_crash_gaps(telemetry, store, clock())
    return telemetry


def count_crash_gaps(telemetry: Telemetry, store: Store, now: float) -> None:
    """The parts a killed run left without a verdict (recorded at open as
    `uninspected: crash`) count in the first telemetry window of this run."""
    for gap in store.crash_gaps:
        for i in range(gap.missing):
            telemetry.on_verdict(InspectionRecord(
                frame_id=f"{gap.station}:{gap.first_seq + i}", station=gap.station,
                part_id=None, captured_at=now, judged_at=now, verdict="uninspected",
                reason=str(Reason.CRASH), model_version=None, preprocess_hash=None,
                latency_ms={}))

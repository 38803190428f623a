"""The panel as one startable thing: the live tap, the context and the HTTP server.

appliance/panel/wiring.py (called by appliance/app.py) builds the collaborators (user,
alarm and label books over the store, the metrics exporter, the rollback control) and
passes them here; `start` attaches the live tap to the pipeline's verdicts and serves;
`stop` stops serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from appliance.panel.config import PanelConfig
from appliance.panel.context import PanelContext, RecordEvent
from appliance.panel.live import LiveFrames
from appliance.panel.ports import (
    AlarmDesk,
    LabelDesk,
    MetricsExporter,
    RollbackControl,
    UserDirectory,
)
from appliance.panel.server import PanelServer
from appliance.panel.web import create_app
from appliance.pipeline.pipeline import Pipeline
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.readiness import Readiness


class Panel:
    """See the module docstring."""

    def __init__(
        self,
        cfg: PanelConfig,
        *,
        pipeline: Pipeline,
        db_path: Path,
        images_dir: Path,
        stations: tuple[str, ...],
        users: UserDirectory,
        alarms: AlarmDesk,
        labels: LabelDesk,
        exporter: MetricsExporter,
        readiness: Callable[[], Readiness],
        thresholds: ThresholdOverrides,
        rollback: RollbackControl,
        record_event: RecordEvent,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.live = LiveFrames(rate_hz=cfg.live_rate_hz, jpeg_quality=cfg.live_jpeg_quality)
        self._pipeline = pipeline
        self.context = PanelContext(
            cfg=cfg, db_path=db_path, images_dir=images_dir, stations=stations,
            live=self.live, users=users, alarms=alarms, labels=labels, exporter=exporter,
            readiness=readiness, model=lambda: pipeline.model, thresholds=thresholds,
            rollback=rollback, record_event=record_event, clock=clock)
        self.server = PanelServer(cfg, create_app(self.context))

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        """Attach the live tap and serve. Raises ConfigError (address, TLS files)."""
        self._pipeline.add_listener(self.live.offer)
        self.server.start()

    def stop(self) -> None:
        self.live.close()  # live streams end within one interval
        self.server.stop()

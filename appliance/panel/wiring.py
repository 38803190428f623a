"""How the App builds the operator panel (one function, so appliance/app.py stays the
composition root): the Prometheus exporter, the user, alarm and label books over the
store, then the panel itself, started."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from appliance.alarms import AlarmBook
from appliance.labels import LabelBook
from appliance.panel.config import PanelConfig
from appliance.panel.metrics import MetricsState, PrometheusExporter
from appliance.panel.ports import RollbackControl
from appliance.panel.service import Panel
from appliance.pipeline import Pipeline
from appliance.pipeline.events import Events
from appliance.pipeline.thresholds import ThresholdOverrides
from appliance.readiness import Readiness
from appliance.store import Store
from appliance.users import UserBook


def start_panel(cfg: PanelConfig | None, *, store: Store, stations: Sequence[str],
                pipeline: Pipeline, events: Events, alarms: AlarmBook,
                metrics_state: Callable[[], MetricsState | None],
                readiness: Callable[[], Readiness], thresholds: ThresholdOverrides,
                rollback: RollbackControl,
                clock: Callable[[], float] = time.time) -> Panel | None:
    """The operator panel when configured, started (served until its `stop`); None
    without a `panel` section. `metrics_state()` is the live snapshot for `/metrics`;
    the exporter's latency histograms listen to the pipeline's verdicts."""
    if cfg is None:
        return None

    def classes() -> tuple[str, ...]:  # the active model's, after a hot swap too
        model = pipeline.model
        return model.info.classes if model is not None else ()

    exporter = PrometheusExporter(metrics_state)
    pipeline.add_listener(exporter.observe)
    panel = Panel(cfg, pipeline=pipeline, db_path=store.config.path,
                  images_dir=store.config.images.dir, stations=tuple(stations),
                  users=UserBook(store), alarms=alarms,
                  labels=LabelBook(store, classes, clock=clock), exporter=exporter,
                  readiness=readiness, thresholds=thresholds, rollback=rollback,
                  record_event=events.record, clock=clock)
    panel.start()
    return panel

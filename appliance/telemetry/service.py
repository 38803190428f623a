"""`Telemetry`: the appliance's MQTT reporting, wired from its parts.

    telemetry = Telemetry(cfg.telemetry, store, pipeline_gauges(app.stats, store),
                          site=cfg.site, line=cfg.line, record_event=store.record_event)
    telemetry.start()                  # after the Store starts (it migrates the outbox
                                       # table, and its writer writes it)
    pipeline.add_listener(telemetry.on_verdict)
    ...
    telemetry.stop()                   # before the Store stops

Threads: the publisher's worker and paho's network thread (see publisher.py), the
store's writer (it commits the outbox's writes: outbox.py), and a
ticker ("telemetry-ticker") that at start and then every `status_poll_s` reads the
gauges, publishes `status` when model, sources or alarms changed and a `model` report
when the model changed (the first tick always reports the model), and every
`metrics_interval_s` closes the metrics window. `stop` runs one last such check, so a
run shorter than `status_poll_s` still reports its model.

Invariants:
- Nothing here blocks a caller: `on_verdict` and every `publish_*` hand over in memory.
- `status` is state, not history: it is published directly (retained, QoS 1) on every
  connect, on every change and as `offline`/`shutdown` on stop, never from the outbox
  (an old status replayed after an outage would overwrite the current one). Every other
  message goes through the outbox.
- Every verdict is counted in exactly one `metrics` window; `stop` sends the last,
  partial window, so per-window counts add up to the totals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from appliance.errors import ConfigError
from appliance.records import EventRecord, EventValue, InspectionRecord, Severity
from appliance.telemetry.config import TelemetryConfig
from appliance.telemetry.messages import (
    DefectFacts,
    defect_event,
    defect_facts,
    model_ref_from_version_id,
    status_key,
    status_message,
    utc,
)
from appliance.telemetry.metrics import Gauges, GaugeSource, VerdictWindow, build_metrics
from appliance.telemetry.outbox import Outbox, OutboxDatabase
from appliance.telemetry.publisher import Build, Publisher, PublisherStats
from protocol import (
    DefectEvent,
    Message,
    MetricsMessage,
    ModelRef,
    ModelReport,
    Outgoing,
    ProtocolError,
    StatusMessage,
    UpdateProgress,
    command_filter,
    decode,
    last_will,
    line_client_id,
    new_msg_id,
    prepare,
    validate_id,
)
from protocol.mqtt_client import Inbound
from protocol.status import OfflineReason

logger = logging.getLogger(__name__)

_UNKNOWN_MODEL = ModelRef(name="unknown", version=0)


class VerdictSource(Protocol):
    """Where verdicts come from (appliance.pipeline.Pipeline fits)."""

    def add_listener(self, sink: Callable[[InspectionRecord], None]) -> None: ...


class Telemetry:
    """See the module docstring. `db` is the database the outbox lives in and its one
    writer (the running `Store`); `stats_source` gives the gauges (None: report counts
    only); `record_event` records telemetry's own events (the store's `record_event`).
    Raises TelemetryError from `start` if the outbox or the TLS files cannot be opened;
    the constructor raises ConfigError for a site or line id the topics cannot take.
    """

    def __init__(
        self,
        cfg: TelemetryConfig,
        db: OutboxDatabase,
        stats_source: GaugeSource | None = None,
        *,
        site: str,
        line: str,
        clock: Callable[[], float] = time.time,
        record_event: Callable[[EventRecord], None] | None = None,
        app_version: str | None = None,
    ) -> None:
        self.cfg = cfg
        try:
            self.site = validate_id(site, "site")
            self.line = validate_id(line, "line")
        except ProtocolError as e:
            raise ConfigError(f"telemetry: {e} (site and line become MQTT topic levels)") from e
        self._db = db
        self._stats_source = stats_source
        self._clock = clock
        self._record_event = record_event
        self._app_version = app_version
        self._client_id = cfg.broker.client_id or line_client_id(self.site, self.line)
        self.window = VerdictWindow()
        self._gauges: Gauges | None = None
        self._status_key: tuple[object, ...] | None = None
        self._model: ModelRef | None = None
        self._model_reported = False
        self._known_models: dict[str, ModelRef] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        self._started_at: datetime | None = None
        self._window_start = time.monotonic()
        self._window_frames: int | None = None  # frames captured when the window began
        self._outbox: Outbox | None = None
        self._publisher: Publisher | None = None
        self._last_publisher: Publisher | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._last_update: UpdateProgress | None = None
        self.command_listeners: list[Callable[[Message], None]] = []
        """Called with every valid `cmd/...` message for this line (on the MQTT network
        thread: keep them quick). Commands are hints; listeners decide nothing on them
        alone."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open the outbox, start connecting and publishing. Raises TelemetryError."""
        if self._publisher is not None:
            return
        cfg = self.cfg
        if not cfg.enabled:
            logger.info("telemetry disabled (telemetry.enabled: false)")
            return
        self._outbox = Outbox(self._db, max_rows=cfg.outbox_max_rows,
                              hard_max_rows=cfg.outbox_hard_max_rows,
                              busy_timeout_ms=cfg.busy_timeout_ms)
        self._started_at = utc(self._clock())
        self._window_start = time.monotonic()
        self._stop.clear()
        self._read_gauges()
        self._window_frames = self._gauges.frames_captured if self._gauges is not None else 0
        publisher = Publisher(cfg, self._outbox, client_id=self._client_id, will=self._will,
                              first_message=self._online_status, on_event=self._event,
                              clock=self._clock,
                              subscriptions=(command_filter(self.site, self.line),),
                              on_message=self._on_command)
        try:
            publisher.start()
        except BaseException:
            self._outbox.close()
            raise
        self._publisher = self._last_publisher = publisher
        self._ticker = threading.Thread(target=self._tick_main, name="telemetry-ticker",
                                        daemon=True)
        self._ticker.start()
        logger.info("telemetry for %s/%s: broker %s:%d, outbox %s (%d waiting)", self.site,
                    self.line, cfg.broker.host, cfg.broker.port, self._db.path,
                    self._outbox.depth)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send the last metrics window, write everything handed over to the outbox,
        give live messages `stop_grace_s` to be acknowledged, publish `offline` /
        `shutdown`, disconnect. Idempotent."""
        publisher = self._publisher
        if publisher is None:
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout_s)
        try:  # a model change since the last tick is reported before `offline`
            self._read_gauges()
            self._on_gauges()
        except Exception:
            logger.exception("could not report the final status and model")
        self._close_window()
        publisher.stop(timeout_s)
        offline = prepare(self._status("offline", "shutdown"))
        said_offline = publisher.connection.publish_and_wait(offline, timeout_s=1.0)
        if not said_offline:
            logger.info("offline status not acknowledged; the broker publishes the last will")
        publisher.connection.stop(publish_will=not said_offline)
        if self._outbox is not None and not publisher.alive:
            self._outbox.close()
        self._publisher = None

    def stats(self) -> PublisherStats | None:
        """The publisher's counters (None before start; the last ones after stop)."""
        return self._last_publisher.stats() if self._last_publisher is not None else None

    # ------------------------------------------------------------------ producers
    def on_verdict(self, record: InspectionRecord) -> None:
        """The pipeline's verdict sink: counts the verdict, and hands a `fail` over as an
        `events/defect` message. A few microseconds; never blocks."""
        if not self.cfg.enabled:
            return
        self.window.add(record)
        if record.verdict == "fail" and record.defects:
            self.publish_defect(record)

    def attach(self, source: VerdictSource) -> None:
        """Register `on_verdict` as a verdict sink of `source` (the pipeline)."""
        source.add_listener(self.on_verdict)

    def publish_defect(self, record: InspectionRecord) -> bool:
        """Hand one failed part over as `events/defect` (no image). False if refused."""
        facts = defect_facts(record)
        sent_at = self._clock()
        return self.publish("events/defect", lambda: self._defect_message(facts, sent_at))

    def publish_model(
        self,
        current: ModelRef | None,
        previous: ModelRef | None = None,
        update: UpdateProgress | None = None,
    ) -> bool:
        """Hand a `model` report over (at start, on each update step, on each model
        change). A report without `update` carries the latest step reported, so the
        retained copy never loses how the last update ended. False if refused."""
        if update is None:
            update = self._last_update
        else:
            self._last_update = update
        sent_at = utc(self._clock())
        return self.publish("model", lambda: ModelReport(
            msg_id=new_msg_id(), site=self.site, line=self.line, sent_at=sent_at,
            current=current, previous=previous, update=update,
        ))

    def publish(self, kind: str, build: Build) -> bool:
        """Hand any message over (e.g. a `drift` sketch): `build()` runs later on the
        telemetry worker and must return a message of this site and line. False if
        refused (stopped, or `pending_max` waiting); the loss is counted."""
        if self._publisher is None:
            logger.debug("telemetry not running; %s message not sent", kind)
            return False
        return self._publisher.submit(kind, build)

    def _on_command(self, inbound: Inbound) -> None:
        if inbound.topic is None or not self.command_listeners:
            return
        try:
            message = decode(inbound.topic, inbound.payload)
        except ProtocolError as e:
            logger.warning("ignored an invalid command on %s: %s", inbound.topic, e)
            return
        if (message.site, message.line) != (self.site, self.line):
            return
        for listener in self.command_listeners:
            listener(message)

    def publish_status(self) -> None:
        """Re-read the gauges and publish `status` now (if connected)."""
        self._read_gauges()
        self._send_status()

    # ------------------------------------------------------------------ messages
    def _defect_message(self, facts: DefectFacts, sent_at: float) -> DefectEvent:
        # On the worker thread: the frame-size and model caches are only used here.
        if facts.image_size_wh is not None:
            self._sizes[facts.station] = facts.image_size_wh
        vid = facts.model_version or ""
        model = self._known_models.get(vid) or model_ref_from_version_id(vid) or _UNKNOWN_MODEL
        return defect_event(facts, site=self.site, line=self.line, model=model,
                            msg_id=new_msg_id(), sent_at=utc(sent_at),
                            size_fallback_wh=self._sizes.get(facts.station))

    def _status(self, state: str, reason: OfflineReason | None = None) -> StatusMessage:
        return status_message(
            site=self.site, line=self.line, msg_id=new_msg_id(), sent_at=utc(self._clock()),
            state="online" if state == "online" else "offline", reason=reason,
            app_version=self._app_version, started_at=self._started_at, gauges=self._gauges,
        )

    def _online_status(self) -> Outgoing | None:
        self._status_key = status_key(self._gauges) if self._gauges is not None else None
        return prepare(self._status("online"))

    def _will(self) -> Outgoing:
        return prepare(last_will(self.site, self.line, utc(self._clock()), self._app_version))

    def _send_status(self) -> None:
        publisher = self._publisher
        if publisher is None or not publisher.connection.connected:
            return  # the next connect publishes the current status first
        out = prepare(self._status("online"))
        publisher.connection.publish(out.topic, out.payload, out.qos, out.retain)

    def _metrics(self, window_s: float) -> MetricsMessage:
        # `outbox` is filled in by the publisher when the message is written.
        publisher = self._publisher
        counts = self.window.take()
        frames = self._gauges.frames_captured if self._gauges is not None else None
        captured = None if frames is None or self._window_frames is None else \
            frames - self._window_frames
        self._window_frames = frames
        dropped = publisher.take_dropped() if publisher is not None else {}
        if dropped:
            precious = {k: n for k, n in dropped.items() if k != "metrics"}
            logger.warning("telemetry outbox dropped messages: %s", dropped)
            self._event("telemetry_dropped", "alarm" if precious else "warning",
                        f"telemetry dropped {sum(dropped.values())} messages: {dropped}",
                        {f"dropped_{k.replace('/', '_')}": n for k, n in dropped.items()})
        return build_metrics(
            site=self.site, line=self.line, msg_id=new_msg_id(), sent_at=utc(self._clock()),
            window_s=window_s, counts=counts, gauges=self._gauges, outbox_depth=0,
            outbox_dropped=0, telemetry_pending=publisher.pending if publisher else 0,
            frames_captured=captured,
        )

    def _close_window(self) -> None:
        now = time.monotonic()
        window_s, self._window_start = now - self._window_start, now
        try:
            message = self._metrics(window_s)
        except ValueError as e:  # pydantic's ValidationError: a gauge the wire refuses
            logger.error("metrics message could not be built: %s", e)
            return
        if self._publisher is not None:
            self._publisher.submit_metrics(message)

    # ------------------------------------------------------------------ ticker
    def _read_gauges(self) -> None:
        if self._stats_source is None:
            return
        try:
            gauges = self._stats_source()
        except Exception:  # a stats source that fails must not end telemetry
            logger.exception("could not read the appliance's gauges")
            return
        if gauges is None:
            return
        self._gauges = gauges
        if gauges.model is not None:
            m = gauges.model
            self._known_models[f"{m.name}:{m.version}"] = m

    def _tick_main(self) -> None:
        # The first tick runs at once: the `model` report must not wait `status_poll_s`
        # (a short run could end before it).
        cfg = self.cfg
        while True:
            try:
                self._read_gauges()
                self._on_gauges()
                if time.monotonic() - self._window_start >= cfg.metrics_interval_s:
                    self._close_window()
            except Exception:  # keep ticking: the next window or status may work
                logger.exception("telemetry ticker failed")
            if self._stop.wait(cfg.status_poll_s):
                return

    def _on_gauges(self) -> None:
        gauges = self._gauges
        if gauges is None:
            return  # nothing read yet (the pipeline is starting)
        key = status_key(gauges)
        if key != self._status_key:
            self._status_key = key
            self._send_status()
        if not self._model_reported or gauges.model != self._model:
            previous = self._model if self._model_reported else None
            self._model, self._model_reported = gauges.model, True
            self.publish_model(gauges.model, previous)

    def _event(
        self, kind: str, severity: Severity, message: str, data: dict[str, EventValue]
    ) -> None:
        if self._record_event is None:
            return
        try:
            self._record_event(EventRecord(at=self._clock(), kind=kind, severity=severity,
                                           source="telemetry", message=message, data=data))
        except Exception:  # e.g. the store stopped first: the event is logged instead
            logger.exception("could not record telemetry event %s: %s", kind, message)

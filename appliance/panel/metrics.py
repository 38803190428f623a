"""`/metrics`: the appliance's live state in the Prometheus text format, through
prometheus-client with a custom collector (no global registry: each exporter has its own
`CollectorRegistry`).

Every scrape calls `state_fn()` once and turns that snapshot into metric families;
nothing is cached, so a scrape always shows the state of that moment. Stage latencies
are real histograms: `StageHistograms.observe` is a verdict listener
(`Pipeline.add_listener`) that adds each inspected part's stage latencies to fixed
buckets (a bisect per stage, microseconds per part).

Names follow Prometheus conventions: prefix `lineguard_`, counters end in `_total`,
durations in `_seconds`, sizes in `_bytes`:

    lineguard_frames_total                         frames captured, all stations
    lineguard_verdicts_total{verdict}              pass / fail / uninspected
    lineguard_defects_total{class_name}            detections on failed parts, by class
    lineguard_uninspected_total{reason}            uninspected parts by reason
    lineguard_stage_latency_seconds{stage}         histogram per pipeline stage
    lineguard_throughput_parts_per_second          verdicts per second (last 10 s)
    lineguard_queue_depth{queue}                   frames/batches waiting per queue
    lineguard_source_state{station,state}          1 for the station's current state
    lineguard_execution_provider{provider}         1 for the provider the model runs on
    lineguard_model_info{version}                  1 for the active model
    lineguard_engine_failures_total, lineguard_engine_fallbacks_total,
    lineguard_late_results_total
    lineguard_telemetry_outbox_depth               messages waiting for the broker
    lineguard_telemetry_connected                  1 while the broker is connected
    lineguard_disk_used_bytes{what}                database (with WAL), images
    lineguard_disk_free_bytes, lineguard_image_quota_bytes
    lineguard_alarms_active{severity}              active alarms by severity
    lineguard_alarm_active{code,station,severity}  1 per active alarm
    lineguard_uptime_seconds
    lineguard_uploads_*                            sample uploads (appliance/uploads/metrics.py)
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from appliance.capture.source import SourceState
from appliance.errors import ApplianceError
from appliance.pipeline.stats import PipelineStats
from appliance.records import STAGES, InspectionRecord
from appliance.telemetry.gauges import store_disk_usage
from appliance.uploads.metrics import upload_metrics
from appliance.uploads.service import UploadStats

if TYPE_CHECKING:  # read through attributes only: no import cycle with the App
    from appliance.app import App

logger = logging.getLogger(__name__)

LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds of the stage latency buckets, seconds (+Inf is added)."""


@dataclass(frozen=True)
class HistogramSnapshot:
    """Per-bucket (not cumulative) counts, the +Inf overflow last, and the sum (s)."""

    counts: tuple[int, ...]
    sum_s: float


class StageHistograms:
    """Latency histograms per pipeline stage, fed by `observe` (a verdict listener).
    Thread-safe."""

    def __init__(self, buckets_s: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.buckets_s = tuple(sorted(buckets_s))
        self._counts = {stage: [0] * (len(self.buckets_s) + 1) for stage in STAGES}
        self._sums = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def observe(self, record: InspectionRecord) -> None:
        """Add an inspected part's stage latencies (uninspected parts have none)."""
        if record.verdict == "uninspected":
            return
        buckets = self.buckets_s
        with self._lock:
            for stage, ms in record.latency_ms.items():
                counts = self._counts.get(stage)
                if counts is None:
                    continue
                seconds = ms / 1000.0
                counts[bisect.bisect_left(buckets, seconds)] += 1
                self._sums[stage] += seconds

    def snapshot(self) -> dict[str, HistogramSnapshot]:
        with self._lock:
            return {s: HistogramSnapshot(tuple(c), self._sums[s])
                    for s, c in self._counts.items()}


@dataclass(frozen=True)
class MetricsState:
    """One snapshot of what `/metrics` shows (sizes in bytes; None: unknown or off)."""

    stats: PipelineStats
    db_bytes: int | None = None
    images_bytes: int | None = None
    free_disk_bytes: int | None = None
    image_quota_bytes: int | None = None
    store_queue: int | None = None
    outbox_depth: int | None = None
    broker_connected: bool | None = None
    alarms: Sequence[tuple[str, str | None, str]] = field(default_factory=tuple)
    """Active alarms: (code, station, severity)."""
    uploads: UploadStats | None = None
    """Sample upload counters (None: uploads off)."""


def _fmt(bound: float) -> str:
    return repr(float(bound))


class AppCollector(Collector):
    """Turns `state_fn()` (None: not running) and the histograms into metric families."""

    def __init__(self, state_fn: Callable[[], MetricsState | None],
                 histograms: StageHistograms) -> None:
        self._state_fn = state_fn
        self._histograms = histograms

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("lineguard_up", "1 while the pipeline runs")
        state = self._state_fn()
        up.add_metric([], 0.0 if state is None else 1.0)
        yield up
        if state is None:
            return
        yield from _pipeline_metrics(state.stats)
        yield self._latency()
        yield from _store_metrics(state)
        yield from _alarm_metrics(state.alarms)
        if state.uploads is not None:
            yield from upload_metrics(state.uploads)

    def _latency(self) -> Metric:
        h = HistogramMetricFamily("lineguard_stage_latency_seconds",
                                  "Latency of each pipeline stage per inspected part",
                                  labels=["stage"])
        bounds = [*map(_fmt, self._histograms.buckets_s), "+Inf"]
        for stage, snap in self._histograms.snapshot().items():
            running, cumulative = 0, []
            for bound, n in zip(bounds, snap.counts, strict=True):
                running += n
                cumulative.append((bound, float(running)))
            h.add_metric([stage], cumulative, sum_value=snap.sum_s)
        return h


def _counter(name: str, doc: str, value: float) -> Metric:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def _gauge(name: str, doc: str, value: float) -> Metric:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g


def _labelled(family: CounterMetricFamily | GaugeMetricFamily,
              values: Mapping[str, float]) -> Metric:
    for key, value in sorted(values.items()):
        family.add_metric([key], float(value))
    return family


def _pipeline_metrics(s: PipelineStats) -> Iterator[Metric]:
    yield _counter("lineguard_frames", "Frames captured, all stations", s.frames)
    yield _labelled(CounterMetricFamily("lineguard_verdicts", "Parts judged, by verdict",
                                        labels=["verdict"]), s.verdicts)
    yield _labelled(CounterMetricFamily("lineguard_defects",
                                        "Detections on failed parts, by class",
                                        labels=["class_name"]), s.defects)
    yield _labelled(CounterMetricFamily("lineguard_uninspected", "Uninspected parts by reason",
                                        labels=["reason"]), s.uninspected)
    yield _gauge("lineguard_throughput_parts_per_second", "Verdicts per second (last 10 s)",
                 s.fps)
    yield _labelled(GaugeMetricFamily("lineguard_queue_depth", "Items waiting per queue",
                                      labels=["queue"]), s.queue_depths)
    states = GaugeMetricFamily("lineguard_source_state",
                               "1 for the current state of each station's source",
                               labels=["station", "state"])
    for name, station in sorted(s.stations.items()):
        for known in SourceState:
            states.add_metric([name, known.value], float(str(station.state) == known.value))
    yield states
    provider = GaugeMetricFamily("lineguard_execution_provider",
                                 "1 for the execution provider the model runs on",
                                 labels=["provider"])
    if s.providers:
        provider.add_metric([s.providers[0]], 1.0)
    yield provider
    model = GaugeMetricFamily("lineguard_model_info", "1 for the active model",
                              labels=["version"])
    if s.model is not None:
        model.add_metric([s.model.version_id], 1.0)
    yield model
    yield _counter("lineguard_engine_failures", "Batches inference failed on",
                   s.engine_failures)
    yield _counter("lineguard_engine_fallbacks", "GPU-to-CPU fallbacks", s.engine_fallbacks)
    yield _counter("lineguard_late_results",
                   "Results that came after their part's deadline verdict", s.late_results)
    yield _gauge("lineguard_uptime_seconds", "Seconds since the pipeline started", s.uptime_s)


def _store_metrics(state: MetricsState) -> Iterator[Metric]:
    used = GaugeMetricFamily("lineguard_disk_used_bytes", "Disk used by the store",
                             labels=["what"])
    for what, value in (("database", state.db_bytes), ("images", state.images_bytes)):
        if value is not None:
            used.add_metric([what], float(value))
    yield used
    if state.free_disk_bytes is not None:
        yield _gauge("lineguard_disk_free_bytes", "Free disk under the store",
                     state.free_disk_bytes)
    if state.image_quota_bytes is not None:
        yield _gauge("lineguard_image_quota_bytes", "Byte quota of kept images",
                     state.image_quota_bytes)
    if state.store_queue is not None:
        yield _gauge("lineguard_store_queue_depth", "Records waiting for the store's writer",
                     state.store_queue)
    if state.outbox_depth is not None:
        yield _gauge("lineguard_telemetry_outbox_depth",
                     "Telemetry messages waiting for the broker", state.outbox_depth)
    if state.broker_connected is not None:
        yield _gauge("lineguard_telemetry_connected", "1 while the MQTT broker is connected",
                     float(state.broker_connected))


def _alarm_metrics(alarms: Sequence[tuple[str, str | None, str]]) -> Iterator[Metric]:
    by_severity = {"warning": 0, "critical": 0}
    each = GaugeMetricFamily("lineguard_alarm_active", "1 per active alarm",
                             labels=["code", "station", "severity"])
    for code, station, severity in sorted(alarms, key=lambda a: (a[0], a[1] or "")):
        by_severity[severity] = by_severity.get(severity, 0) + 1
        each.add_metric([code, station or "", severity], 1.0)
    yield _labelled(GaugeMetricFamily("lineguard_alarms_active", "Active alarms by severity",
                                      labels=["severity"]), by_severity)
    yield each


class PrometheusExporter:
    """`render()` -> (body, content type) for `/metrics`. `state_fn` returns the live
    snapshot (None while not running); register `observe` as a verdict listener to fill
    the latency histograms."""

    def __init__(self, state_fn: Callable[[], MetricsState | None],
                 histograms: StageHistograms | None = None) -> None:
        self.histograms = histograms or StageHistograms()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(AppCollector(state_fn, self.histograms))

    def observe(self, record: InspectionRecord) -> None:
        """The verdict listener (`Pipeline.add_listener`)."""
        self.histograms.observe(record)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def state_from_app(app: App) -> MetricsState | None:
    """The App's live state for `/metrics` (None while it is not running). Reads the
    pipeline's statistics, the store's counters and disk use, the telemetry publisher's
    outbox and connection, and the active alarms (one indexed query)."""
    store = app.store
    if app.pipeline is None or store is None:
        return None
    try:
        stats = app.stats()
        disk = store_disk_usage(store)
        store_stats = store.stats()
        alarms = app.alarms.active() if app.alarms is not None else []
    except ApplianceError as e:  # stopping under our feet, or the store failed
        logger.warning("metrics: %s", e)
        return None
    telemetry = app.telemetry.stats() if app.telemetry is not None else None
    return MetricsState(
        stats=stats,
        db_bytes=None if disk is None else max(0, disk.used_bytes - store_stats.images_bytes),
        images_bytes=store_stats.images_bytes,
        free_disk_bytes=None if disk is None else disk.free_bytes,
        image_quota_bytes=store.config.images.quota_bytes,
        store_queue=store_stats.queued,
        outbox_depth=None if telemetry is None else telemetry.outbox_depth,
        broker_connected=None if telemetry is None else telemetry.connected,
        alarms=[(a.code, a.station, a.severity) for a in alarms],
        uploads=app.uploads.stats() if app.uploads is not None else None,
    )

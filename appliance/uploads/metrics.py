"""The uploads' counters as Prometheus metric families (for the panel's /metrics,
appliance/panel/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from appliance.uploads.service import UploadStats

REASONS = ("random", "near_threshold", "rare_class", "operator")


def upload_metrics(s: UploadStats) -> Iterator[Metric]:
    depth = GaugeMetricFamily("lineguard_uploads_queue_depth",
                              "Samples waiting for upload to the cloud")
    depth.add_metric([], float(s.queue_depth))
    yield depth
    size = GaugeMetricFamily("lineguard_uploads_queue_bytes",
                             "Bytes of sample images waiting for upload")
    size.add_metric([], float(s.queue_bytes))
    yield size
    sampled = CounterMetricFamily("lineguard_uploads_sampled_total",
                                  "Frames sampled for labelling, by reason", labels=["reason"])
    for reason in REASONS:
        sampled.add_metric([reason], float(s.sampled.get(reason, 0)))
    yield sampled
    for name, doc, value in (
            ("lineguard_uploads_sent_total", "Samples the cloud acknowledged", s.sent),
            ("lineguard_uploads_failed_total", "Upload tries that failed (kept, retried)",
             s.failed),
            ("lineguard_uploads_rejected_total", "Samples the cloud refused for good",
             s.rejected)):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], float(value))
        yield counter
    dropped = CounterMetricFamily("lineguard_uploads_dropped_total",
                                  "Samples dropped before upload", labels=["why"])
    dropped.add_metric(["queue_full"], float(s.dropped_full))
    dropped.add_metric(["busy"], float(s.dropped_busy))
    yield dropped

"""`/metrics`: the Prometheus exposition of the App's live state, parsed back with
prometheus_client's own parser; names follow the conventions; histograms are real."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import load_config
from appliance.panel.metrics import (
    LATENCY_BUCKETS_S,
    MetricsState,
    PrometheusExporter,
    StageHistograms,
    state_from_app,
)
from appliance.pipeline.stats import PipelineStats, StationStats
from tests.appliance.pipeline_helpers import BLACK, WHITE, tiny_bundle
from tests.appliance.test_store_writer import rec


def parse(body: bytes) -> dict[str, list[Sample]]:
    """Samples by sample name (counters as `<name>_total`)."""
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name] if all(s.labels.get(k) == v
                                                    for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def pipeline_stats(**change: object) -> PipelineStats:
    base: dict[str, object] = dict(
        at=0.0, uptime_s=12.5, frames=10, verdicts={"pass": 6, "fail": 3, "uninspected": 1},
        uninspected={"dropped": 1}, defects={"pit": 2, "scratch": 3}, fps=4.5,
        latency_ms={}, queue_depths={"batcher": 2, "post": 0, "pending": 1},
        stations={"s1": StationStats("s1", "streaming", 10, 0, 0, None, None),
                  "s2": StationStats("s2", "lost", 0, 0, 3, None, "cable")},
        model=None, providers=("CPUExecutionProvider",), batches=5, mean_batch=2.0,
        late_results=0, engine_failures=1, engine_fallbacks=0)
    base.update(change)
    return PipelineStats(**base)  # type: ignore[arg-type]


def test_exposition_of_a_snapshot() -> None:
    state = MetricsState(stats=pipeline_stats(), db_bytes=4096, images_bytes=1000,
                         free_disk_bytes=10**9, image_quota_bytes=2 * 10**9, store_queue=3,
                         outbox_depth=7, broker_connected=False,
                         alarms=[("camera_lost", "s2", "critical"),
                                 ("uninspected_parts", None, "warning")])
    exporter = PrometheusExporter(lambda: state)
    body, content_type = exporter.render()
    assert content_type.startswith("text/plain; version=")  # the text format
    m = parse(body)
    assert value(m, "lineguard_up") == 1
    assert value(m, "lineguard_frames_total") == 10
    assert value(m, "lineguard_verdicts_total", verdict="fail") == 3
    assert value(m, "lineguard_defects_total", class_name="scratch") == 3
    assert value(m, "lineguard_uninspected_total", reason="dropped") == 1
    assert value(m, "lineguard_queue_depth", queue="batcher") == 2
    assert value(m, "lineguard_source_state", station="s2", state="lost") == 1
    assert value(m, "lineguard_source_state", station="s2", state="streaming") == 0
    assert value(m, "lineguard_execution_provider", provider="CPUExecutionProvider") == 1
    assert value(m, "lineguard_engine_failures_total") == 1
    assert value(m, "lineguard_disk_used_bytes", what="database") == 4096
    assert value(m, "lineguard_disk_free_bytes") == 10**9
    assert value(m, "lineguard_telemetry_outbox_depth") == 7
    assert value(m, "lineguard_telemetry_connected") == 0
    assert value(m, "lineguard_alarms_active", severity="critical") == 1
    assert value(m, "lineguard_alarm_active", code="camera_lost", station="s2") == 1
    assert value(m, "lineguard_uptime_seconds") == 12.5
    assert value(m, "lineguard_throughput_parts_per_second") == 4.5


def test_names_follow_prometheus_conventions() -> None:
    body, _ = PrometheusExporter(lambda: MetricsState(stats=pipeline_stats())).render()
    families = list(text_string_to_metric_families(body.decode()))
    assert families
    for family in families:
        assert family.name.startswith("lineguard_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if "latency" in family.name:
            assert family.name.endswith("_seconds") and family.type == "histogram"
        if "disk" in family.name or "quota" in family.name:
            assert family.name.endswith("_bytes")


def test_not_running_is_only_up_zero() -> None:
    m = parse(PrometheusExporter(lambda: None).render()[0])
    assert set(m) == {"lineguard_up"} and value(m, "lineguard_up") == 0


def test_histograms_count_each_stage_in_cumulative_buckets() -> None:
    h = StageHistograms()
    for ms in (0.5, 3.0, 3.0, 40.0, 20_000.0):
        h.observe(rec(0, "pass", latency_ms={"total": ms, "infer": 1.0}))
    h.observe(rec(1, "uninspected", latency_ms={"total": 1.0}))  # no latency to count
    exporter = PrometheusExporter(lambda: MetricsState(stats=pipeline_stats()), h)
    m = parse(exporter.render()[0])
    bucket = {s.labels["le"]: s.value for s in m["lineguard_stage_latency_seconds_bucket"]
              if s.labels["stage"] == "total"}
    assert bucket["0.001"] == 1 and bucket["0.005"] == 3 and bucket["0.05"] == 4
    assert bucket["10.0"] == 4 and bucket["+Inf"] == 5
    assert len(bucket) == len(LATENCY_BUCKETS_S) + 1
    assert value(m, "lineguard_stage_latency_seconds_count", stage="total") == 5
    assert value(m, "lineguard_stage_latency_seconds_sum", stage="total") == \
        pytest.approx((0.5 + 3 + 3 + 40 + 20_000) / 1000)
    assert value(m, "lineguard_stage_latency_seconds_count", stage="infer") == 5
    assert value(m, "lineguard_stage_latency_seconds_count", stage="queue") == 0


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.timeout(120)
def test_metrics_of_a_running_app(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "bundles")
    cfg = load_config(None, {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim"}}],
        "model": {"bundle": str(bundle.root)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block"},
    })
    holder: list[App] = []
    exporter = PrometheusExporter(lambda: state_from_app(holder[0]))
    app = App(cfg, sources={"cam": ReplaySource([WHITE, BLACK], max_fps=200.0)},
              listeners=[exporter.observe])
    holder.append(app)
    assert value(parse(exporter.render()[0]), "lineguard_up") == 0
    app.start()
    try:
        wait_for(lambda: app.stats().frames >= 20)
        assert app.alarms is not None
        app.alarms.raise_alarm("drift", "drift on the line")
        m = parse(exporter.render()[0])
        judged = sum(value(m, "lineguard_verdicts_total", verdict=v)
                     for v in ("pass", "fail", "uninspected"))
        assert value(m, "lineguard_frames_total") >= judged >= 20
        inspected = judged - value(m, "lineguard_verdicts_total", verdict="uninspected")
        # the histogram is read after the counters within a scrape, and each part reaches
        # the counters just before the histogram (one verdict thread): at most the part in
        # flight is missing
        assert value(m, "lineguard_stage_latency_seconds_count", stage="total") >= \
            inspected - 1
        assert value(m, "lineguard_source_state", station="cam", state="streaming") == 1
        assert value(m, "lineguard_execution_provider", provider="CPUExecutionProvider") == 1
        assert value(m, "lineguard_model_info", version="tiny:1") == 1
        assert value(m, "lineguard_disk_used_bytes", what="database") > 0
        assert value(m, "lineguard_alarm_active", code="drift", station="") == 1
        assert "lineguard_telemetry_outbox_depth" not in m  # telemetry is off

        def scrape() -> None:
            for _ in range(20):
                exporter.render()

        threads = [threading.Thread(target=scrape) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        app.stop()
    assert value(parse(exporter.render()[0]), "lineguard_up") == 0

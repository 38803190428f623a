"""The App with an `uploads:` section: frames are sampled from the verdict path while
the cloud is unreachable (kept, tries counted), the counters are on /metrics, and a
stop leaves the queue for the next start."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.app import App
from appliance.capture import ReplaySource
from appliance.config import load_config
from appliance.panel.metrics import PrometheusExporter, state_from_app
from tests.appliance.pipeline_helpers import BLACK, WHITE, tiny_bundle
from tests.appliance.test_panel_metrics import parse, value
from tests.mqtt_broker import free_port


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_app_samples_frames_and_exports_upload_counters(tmp_path: Path) -> None:
    bundle = tiny_bundle(tmp_path / "bundles")
    (tmp_path / "upload.token").write_text("t0ken\n")
    cfg = load_config(None, {
        "data_dir": str(tmp_path / "data"),
        "stations": [{"name": "cam", "source": {"kind": "sim"}}],
        "model": {"bundle": str(bundle.root)},
        "engine": {"intra_op_threads": 1},
        "pipeline": {"overflow": "block"},
        "uploads": {"url": f"http://127.0.0.1:{free_port()}",  # nobody listens
                    "token_file": str(tmp_path / "upload.token"),
                    "random_fraction": 1.0, "budget_per_hour": 1000,
                    "shares": {"random": 1.0, "near_threshold": 0, "rare_class": 0},
                    "backoff": {"initial_s": 0.05, "max_s": 0.2}},
    })
    holder: list[App] = []
    exporter = PrometheusExporter(lambda: state_from_app(holder[0]))
    app = App(cfg, sources={"cam": ReplaySource([WHITE, BLACK], max_fps=100.0)})
    holder.append(app)
    app.start()
    try:
        assert app.uploads is not None
        uploads = app.uploads
        wait_for(lambda: uploads.stats().queue_depth >= 3 and uploads.stats().failed >= 2)
        m = parse(exporter.render()[0])
        assert value(m, "lineguard_uploads_sampled_total", reason="random") >= 3
        assert value(m, "lineguard_uploads_queue_depth") >= 3
        assert value(m, "lineguard_uploads_failed_total") >= 2
        assert value(m, "lineguard_uploads_sent_total") == 0
    finally:
        app.stop()
    assert app.uploads is None
    spooled = list((tmp_path / "data" / "uploads").iterdir())
    assert len(spooled) >= 3  # kept for the next start

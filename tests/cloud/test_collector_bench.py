"""Smoke run of the telemetry benchmark (bench/telemetry.py --quick): it runs end to end
and every message reaches both consumers. It asserts no speed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cloud.fleet_helpers import REPO
from tests.mqtt_broker import requires_mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.mqtt, requires_mosquitto, pytest.mark.timeout(600)]


def test_quick_benchmark_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "telemetry.py"), "--quick", "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=540, check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "telemetry"
    assert summary["complete"] is True
    assert set(summary["phases"]) == {"n1", "n10", "burst"}
    for phase in summary["phases"].values():
        assert phase["ratio"] is not None
        assert phase["collector"]["lag_p99_ms"] >= phase["collector"]["lag_p50_ms"] >= 0

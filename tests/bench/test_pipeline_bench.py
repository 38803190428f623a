"""Smoke test of bench/pipeline.py: a tiny run of columns (a), (b) and the half-load
latency run end to end on the demo bundle (no INT8, no Ultralytics: both are slow to
set up); checks the JSON shape, never speeds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.mqtt_broker import requires_mosquitto

BENCH = Path(__file__).resolve().parents[2] / "bench" / "pipeline.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pipeline", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_pipeline"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(300)
def test_tiny_run_writes_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    out = tmp_path / "result.json"
    rc = bench.main(["--sizes", "320", "--batches", "2", "--frames", "6", "--datasets",
                     "linesim", "--threads", "1", "--repeat", "1", "--latency-s", "0.5",
                     "--no-int8", "--no-ultralytics", "--json-out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["bench"] == "pipeline"
    (row,) = result["rows"]
    assert (row["dataset"], row["size"], row["batch"]) == ("linesim", 320, 2)
    assert row["a_fps"] > 0 and row["b_fps"] > 0
    assert row["c_fps"] is None and row["d_fps"] is None
    assert sum(row["b_verdicts"].values()) == 6
    assert row["b_verdicts"]["uninspected"] == 0
    assert row["latency_p99_ms"] >= row["latency_p50_ms"] > 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == out.read_text().strip()


@pytest.mark.mqtt
@pytest.mark.timeout(300)
@requires_mosquitto
def test_telemetry_column(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "result.json"
    rc = bench.main(["--sizes", "320", "--batches", "2", "--frames", "6", "--datasets",
                     "linesim", "--threads", "1", "--repeat", "1", "--latency-s", "0.5",
                     "--no-int8", "--no-ultralytics", "--telemetry", "--json-out", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["e_fps"] > 0 and row["e/b"] is not None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_panel_column(tmp_path: Path) -> None:
    bench = _load()
    out = tmp_path / "result.json"
    rc = bench.main(["--sizes", "320", "--batches", "2", "--frames", "12", "--datasets",
                     "linesim", "--threads", "1", "--repeat", "1", "--latency-s", "0.5",
                     "--no-int8", "--no-ultralytics", "--panel", "--panel-clients", "2",
                     "--json-out", str(out)])
    assert rc == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["b_img_fps"] > 0 and row["f_fps"] > 0 and row["f/b_img"] is not None
    clients = row["f_clients"]
    assert clients["clients"] == 2 and clients["requests"] > 0 and clients["errors"] == 0

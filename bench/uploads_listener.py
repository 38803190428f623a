"""Benchmark: what the sample uploader costs the verdict path. `Uploads.on_verdict` is a
verdict listener; it must only count (the sampler) and hand a sampled frame over without
waiting. Measured per verdict, in microseconds, for: a frame that is no candidate, a
candidate over the budget, a sampled frame handed over (the sampler thread not running,
so the in-memory queue fills and the rest are dropped: the worst case of a stalled
encoder), and, as the yardstick within this run, the panel's latency histogram listener
(`StageHistograms.observe`).

    .venv/bin/python bench/uploads_listener.py [--n 20000] [--repeat 3]

Prints the CPU model and thread count, a table (best of `--repeat`) with ratios to the
yardstick, and one JSON line (`{"bench": "uploads_listener", ...}`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from appliance.panel.metrics import StageHistograms
from appliance.records import DefectRecord, InspectionRecord
from appliance.store import ImageKeepConfig, Store, StoreConfig
from appliance.uploads.config import UploadsConfig
from appliance.uploads.service import Uploads
from bench.machine import cpu_model, cpu_threads, machine_header


def records(n: int) -> list[InspectionRecord]:
    image = np.zeros((480, 640, 3), np.uint8)
    defect = DefectRecord(1, "pit", 0.9, (10.0, 10.0, 40.0, 30.0))
    return [InspectionRecord(
        frame_id=f"s1:{i}", station="s1", part_id=None, captured_at=1e9 + i,
        judged_at=1e9 + i, verdict="fail", reason=None, model_version="demo:3",
        preprocess_hash="x", latency_ms={"total": 5.0, "infer": 3.0}, defects=(defect,),
        image_bgr=image) for i in range(n)]


def per_call_us(fn: Callable[[InspectionRecord], None], recs: list[InspectionRecord],
                repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for r in recs:
            fn(r)
        best = min(best, (time.perf_counter() - t0) / len(recs) * 1e6)
    return best


def uploads(store: Store, tmp: Path, **cfg: object) -> Uploads:
    config = UploadsConfig.model_validate({"url": "http://127.0.0.1:9",
                                           "token_file": tmp / "t", **cfg})
    return Uploads(config, store, site="s", line="l", spool_dir=tmp / "spool",
                   thresholds=lambda: {"pit": 0.5, "scratch": 0.5})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    recs = records(args.n)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        store = Store(StoreConfig(path=tmp / "s.db", images=ImageKeepConfig(
            dir=tmp / "images", min_free_disk_bytes=0)))
        clean = [dataclasses.replace(r, defects=()) for r in recs]
        cases: dict[str, tuple[Callable[[InspectionRecord], None], list[InspectionRecord]]] = {
            "histogram (yardstick)": (StageHistograms().observe, recs),
            "no candidate": (uploads(store, tmp, random_fraction=0.0).on_verdict, clean),
            "over budget": (uploads(store, tmp, budget_per_hour=0,
                                    random_fraction=1.0).on_verdict, recs),
            "sampled, handed over": (uploads(store, tmp, budget_per_hour=100_000,
                                             random_fraction=1.0,
                                             shares={"random": 1.0, "near_threshold": 0,
                                                     "rare_class": 0}).on_verdict, recs),
        }
        result = {name: per_call_us(fn, rs, args.repeat) for name, (fn, rs) in cases.items()}
        store.stop()
    base = result["histogram (yardstick)"]
    print(f"{machine_header()}; {args.n} verdicts, best of {args.repeat}")
    print(f"{'case':<24} {'us/verdict':>10} {'x yardstick':>12}")
    for name, us in result.items():
        print(f"{name:<24} {us:>10.2f} {us / base:>12.2f}")
    print(json.dumps({"bench": "uploads_listener", "cpu": cpu_model(),
                      "threads": cpu_threads(), "n": args.n,
                      "us_per_verdict": {k: round(v, 3) for k, v in result.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

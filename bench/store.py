"""Micro-benchmark of the store's writer: committed inspections per second.

Submits N synthetic InspectionRecords (about 30 % with 1-3 defects, no images) from one
thread and times first submit -> flush complete; compares with a naive writer that
commits one transaction per record (same schema, same WAL/synchronous settings) on a few
thousand records. Target: >= 20,000 inspections/s.

    .venv/bin/python bench/store.py [--n 100000] [--baseline-n 3000] [--batch-max-rows 1000]
                                    [--repeat 3]

Each run uses a fresh database; the best and the median of `--repeat` runs are reported,
with the process's CPU seconds over the same span (on a shared machine, records per
CPU-second is the number that does not depend on the neighbours) and the CPU time of the
writer thread alone (CPython runs the submitting and writing threads' Python code one at
a time). Prints a small table and one JSON line (`{"bench": "store", ...}`).
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from appliance.records import DefectRecord, InspectionRecord
from appliance.store import ImageKeepConfig, Store, StoreConfig
from appliance.store.batch import INSERT_DEFECT, INSERT_INSPECTION
from appliance.store.store import open_writer_db

TARGET_PER_S = 20_000
CLASSES = ("scratch", "pit", "crack", "stain")


def synthetic_records(n: int, seed: int = 0, prefix: str = "line1") -> list[InspectionRecord]:
    """`n` records, ~30 % `fail` with 1-3 defects, ~1 % `uninspected`, the rest `pass`."""
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    out: list[InspectionRecord] = []
    for i in range(n):
        u = rng.random()
        defects: tuple[DefectRecord, ...] = ()
        verdict = "pass"
        reason = None
        if u < 0.30:
            verdict = "fail"
            defects = tuple(
                DefectRecord(
                    class_id=(c := rng.randrange(4)),
                    class_name=CLASSES[c],
                    score=rng.uniform(0.3, 1.0),
                    box_xyxy=(x := rng.uniform(0, 500), y := rng.uniform(0, 400),
                              x + rng.uniform(5, 100), y + rng.uniform(5, 60)),
                )
                for _ in range(rng.randint(1, 3))
            )
        elif u < 0.31:
            verdict, reason = "uninspected", "dropped"
        total = rng.uniform(5.0, 40.0)
        out.append(
            InspectionRecord(
                frame_id=f"{prefix}:{i}",
                station=prefix,
                part_id=f"P{i:08d}",
                captured_at=t0 + i * 0.01,
                judged_at=t0 + i * 0.01 + total / 1000.0,
                verdict=verdict,  # type: ignore[arg-type]
                reason=reason,
                model_version="7",
                preprocess_hash="3f2a9c",
                latency_ms={"queue": 0.4, "preprocess": 1.2, "batch_wait": 2.0,
                            "infer": total * 0.6, "postprocess": 0.8, "total": total},
                defects=defects,
            )
        )
    return out


def bench_store(
    records: list[InspectionRecord], workdir: Path, batch_max_rows: int
) -> tuple[float, float, float]:
    """Seconds from the first submit to the flush that commits the last record, the CPU
    seconds of the whole process over that span (submitting and writing), and the CPU
    seconds the writer thread itself spent writing batches."""
    cfg = StoreConfig(
        path=workdir / "store.db",
        batch_max_rows=batch_max_rows,
        images=ImageKeepConfig(dir=workdir / "images"),
    )
    store = Store(cfg)
    store.start()
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for r in records:
            store.submit(r)
        store.flush(timeout_s=600.0)
        elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        writer_cpu_s = store.stats().writer_cpu_s
        if store.inspection_count() != len(records):
            raise RuntimeError("benchmark lost records")
    finally:
        store.stop()
    return elapsed, cpu_s, writer_cpu_s


def bench_naive(records: list[InspectionRecord], workdir: Path) -> float:
    """One transaction per record, same schema and pragmas (the baseline)."""
    path = workdir / "naive.db"
    Store(StoreConfig(path=path, images=ImageKeepConfig(dir=workdir / "img2"))).stop()
    db = open_writer_db(path)
    conn: sqlite3.Connection = db.conn
    t0 = time.perf_counter()
    for i, r in enumerate(records, start=1):
        lat = r.latency_ms
        conn.execute("BEGIN")
        conn.execute(
            INSERT_INSPECTION,
            (i, r.frame_id, r.station, r.part_id, r.captured_at, r.judged_at, r.verdict,
             r.reason, r.model_version, r.preprocess_hash, lat.get("queue"),
             lat.get("preprocess"), lat.get("batch_wait"), lat.get("infer"),
             lat.get("postprocess"), lat.get("total"), len(r.defects), i - 1),
        )
        for d in r.defects:
            conn.execute(INSERT_DEFECT, (i, d.class_id, d.class_name, d.score, *d.box_xyxy))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--baseline-n", type=int, default=3_000)
    parser.add_argument("--batch-max-rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    records = synthetic_records(args.n)
    n_defects = sum(len(r.defects) for r in records)
    runs: list[float] = []
    cpu_runs: list[float] = []
    process_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="lineguard-bench-store-") as tmp:
        for k in range(max(1, args.repeat)):
            run_dir = Path(tmp) / f"run{k}"
            run_dir.mkdir()
            elapsed, cpu_s, writer_cpu_s = bench_store(records, run_dir, args.batch_max_rows)
            runs.append(elapsed)
            process_cpu.append(cpu_s)
            cpu_runs.append(writer_cpu_s)
        naive_s = bench_naive(records[: args.baseline_n], Path(tmp))
    store_s = min(runs)
    median_s = statistics.median(runs)
    store_rate = args.n / store_s
    naive_rate = args.baseline_n / naive_s
    print(f"{'writer':<30}{'records':>10}{'seconds':>10}{'records/s':>12}")
    print(f"{'batched (Store), best':<30}{args.n:>10}{store_s:>10.3f}{store_rate:>12,.0f}")
    print(f"{'batched (Store), median':<30}{args.n:>10}{median_s:>10.3f}"
          f"{args.n / median_s:>12,.0f}")
    print(f"{'submit + write, CPU s, best':<30}{args.n:>10}{min(process_cpu):>10.3f}"
          f"{args.n / min(process_cpu):>12,.0f}")
    print(f"{'writer thread CPU s, best':<30}{args.n:>10}{min(cpu_runs):>10.3f}"
          f"{args.n / min(cpu_runs):>12,.0f}")
    print(f"{'one transaction per record':<30}{args.baseline_n:>10}{naive_s:>10.3f}"
          f"{naive_rate:>12,.0f}")
    best = runs.index(store_s)
    cpu_share = process_cpu[best] / store_s  # < 1: the CPU was shared with other work
    per_cpu_s = args.n / min(process_cpu)
    print(f"defect rows: {n_defects}; batched/naive: {store_rate / naive_rate:.1f}x; "
          f"CPU share of the best run: {cpu_share:.0%}")
    print(f"target >= {TARGET_PER_S:,}/s: wall {'met' if store_rate >= TARGET_PER_S else 'MISSED'}"
          f", per CPU-second {'met' if per_cpu_s >= TARGET_PER_S else 'MISSED'}")
    print(json.dumps({
        "bench": "store", "n": args.n, "defects": n_defects, "seconds": round(store_s, 4),
        "per_s": round(store_rate), "median_per_s": round(args.n / median_s),
        "runs_s": [round(r, 4) for r in runs], "process_cpu_s": round(min(process_cpu), 4),
        "per_cpu_s": round(per_cpu_s), "cpu_share": round(cpu_share, 3),
        "writer_cpu_s": round(min(cpu_runs), 4),
        "writer_per_cpu_s": round(args.n / min(cpu_runs)), "naive_n": args.baseline_n,
        "naive_per_s": round(naive_rate), "ratio": round(store_rate / naive_rate, 2),
        "target_per_s": TARGET_PER_S, "met": store_rate >= TARGET_PER_S,
        "met_per_cpu_s": per_cpu_s >= TARGET_PER_S,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Drift detection benchmark: our detector against river's ADWIN and Page-Hinkley and a
windowed KS test with Bonferroni correction, on the same per-frame signals.

Streams (bench/drift_streams.py): real NEU-DET images and linesim parts; nine drift
kinds x three severities starting at a known frame; no-drift streams with normal
variation (part position, product mix, a change of the defect rate mid-stream).
Every method sees the stream as windows of `--window` frames, as the cloud does:
- ours: cloud/drift/detector.py (MCUSUM and per-signal CUSUMs on whitened window
  means, thresholds calibrated jointly by block bootstrap on the reference to
  `--target` false alarms per 10,000 frames, confirmed by an MMD permutation test on the
  frames each window samples; the cloud's defaults);
- adwin, page_hinkley: one river detector per signal over the window means (Page-
  Hinkley on means standardised by the reference; ADWIN testing after every window),
  an alarm when any fires;
- ks: per signal, the reference frames against the frames of the last two windows,
  two-sample KS p-value < alpha / D (Bonferroni).
Each baseline's sensitivity (ADWIN delta, Page-Hinkley threshold, KS alpha) is picked
from a grid as the most sensitive value with no false alarm on calibration streams
drawn from the reference, the same data ours calibrates on (defaults are far too
sensitive with 32 signals). A method "detects" a drift stream when its first alarm is
at or after the onset; an alarm before it is a false alarm; delay is in frames.

Prints the CPU and threads, a table, writes a PNG of median delay against severity
per drift kind, and ends with one JSON line (`{"bench": "drift", "methods": ...}`).

    .venv/bin/python bench/drift.py [--quick] [--streams S] [--png FILE] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import kolmogorov

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.drift_streams import (
    DRIFTS,
    SEVERITIES,
    Dataset,
    drift_stream,
    linesim_dataset,
    neu_dataset,
    no_drift_stream,
)
from bench.machine import cpu_model
from cloud.drift.detector import (
    Baseline,
    DetectorConfig,
    DriftDetector,
    Window,
    build_baseline,
)
from models.drift.signals import SIGNAL_NAMES, SignalSpec

F64 = npt.NDArray[np.float64]
D = len(SIGNAL_NAMES)  # stream columns: D signals, then defects per frame
# A method run over one stream: the frame index of its first alarm, or None.
Runner = Callable[[F64], int | None]


def windows_of(stream: F64, n: int) -> list[tuple[int, F64]]:
    return [(end, stream[end - n:end]) for end in range(n, len(stream) + 1, n)]


def ours(baseline: Baseline, config: DetectorConfig, n: int, sample_k: int,
         seed: int) -> Runner:
    def run(stream: F64) -> int | None:
        det = DriftDetector(baseline, config, seed=seed)
        rng = np.random.default_rng(seed)
        for end, frames in windows_of(stream, n):
            window = Window.of(frames[:, :D], sample_k, rng, end, detections=frames[:, D])
            if det.update(window) is not None:
                return end
        return None
    return run


def adwin(delta: float, n: int) -> Runner:
    from river.drift import ADWIN

    def run(stream: F64) -> int | None:
        # clock=1: test for a change after every window (river's default, every 32
        # updates, tests a 35-window stream about once and so never finds anything).
        dets = [ADWIN(delta=delta, clock=1)  # type: ignore[no-untyped-call]
                for _ in range(D)]
        for end, frames in windows_of(stream, n):
            m = frames[:, :D].mean(axis=0)
            hit = False
            for d, v in zip(dets, m, strict=True):
                d.update(float(v))  # type: ignore[no-untyped-call]
                hit |= d.drift_detected
            if hit:
                return end
        return None
    return run


def page_hinkley(threshold: float, n: int, mu: F64, sd: F64) -> Runner:
    from river.drift import PageHinkley

    def run(stream: F64) -> int | None:
        dets = [PageHinkley(min_instances=5, delta=0.1, threshold=threshold)
                for _ in range(D)]
        for end, frames in windows_of(stream, n):
            m = (frames[:, :D].mean(axis=0) - mu) / sd
            hit = False
            for d, v in zip(dets, m, strict=True):
                d.update(float(v))  # type: ignore[no-untyped-call]
                hit |= d.drift_detected
            if hit:
                return end
        return None
    return run


def _ks_pvalues(ref_sorted: F64, recent: F64) -> F64:
    """Two-sample KS p-values per column (asymptotic), vectorised over columns."""
    m, k = len(ref_sorted), len(recent)
    rec = np.sort(recent, axis=0)
    grid = np.vstack([ref_sorted, rec])
    d = np.zeros(ref_sorted.shape[1])
    for j in range(ref_sorted.shape[1]):
        g = grid[:, j]
        f1 = np.searchsorted(ref_sorted[:, j], g, side="right") / m
        f2 = np.searchsorted(rec[:, j], g, side="right") / k
        d[j] = np.abs(f1 - f2).max()
    en = np.sqrt(m * k / (m + k))
    return np.asarray(kolmogorov((en + 0.12 + 0.11 / en) * d), np.float64)


def ks(alpha: float, n: int, reference: F64) -> Runner:
    ref_sorted = np.sort(reference, axis=0)
    bonferroni = alpha / reference.shape[1]

    def run(stream: F64) -> int | None:
        for end in range(2 * n, len(stream) + 1, n):
            if (_ks_pvalues(ref_sorted, stream[end - 2 * n:end, :D]) < bonferroni).any():
                return end
        return None
    return run


def false_alarms(run: Runner, streams: list[F64]) -> float:
    """False alarms per 10,000 frames (a method restarts after each alarm)."""
    alarms, frames = 0, 0
    for s in streams:
        pos = 0
        while pos < len(s):
            hit = run(s[pos:])
            if hit is None:
                break
            alarms += 1
            pos += hit
        frames += len(s)
    return 1e4 * alarms / max(frames, 1)


def calibration_streams(ds: Dataset, count: int, length: int, seed: int) -> list[F64]:
    rng = np.random.default_rng(seed)
    return [ds.reference[rng.integers(0, len(ds.reference), size=length)] for _ in range(count)]


def pick(grid: list[float], make: Callable[[float], Runner], calib: list[F64]) -> float:
    """The most sensitive grid value (grid goes from most to least sensitive) with no
    false alarm on the calibration streams; the least sensitive if none is clean."""
    for value in grid:
        if false_alarms(make(value), calib) == 0.0:
            return value
    return grid[-1]


def evaluate(ds: Dataset, args: argparse.Namespace, log: Callable[[str], None]
             ) -> dict[str, dict[str, Any]]:
    n, config = args.window, DetectorConfig(false_alarms_per_10k=args.target)
    t0 = time.perf_counter()
    base = build_baseline(ds.reference[:, :D], SIGNAL_NAMES, n, config, seed=args.seed,
                          detections=ds.reference[:, D])
    log(f"  {ds.name}: baseline calibrated in {time.perf_counter() - t0:.1f} s "
        f"(h = {base.threshold:.2f})")
    wm = np.asarray([f[:, :D].mean(axis=0) for _, f in windows_of(ds.reference, n)])
    mu, sd = wm.mean(axis=0), wm.std(axis=0) + 1e-9
    calib = calibration_streams(ds, args.calib_streams, args.length, args.seed + 7)
    delta = pick([2e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12], lambda v: adwin(v, n), calib)
    lam = pick([5.0, 10.0, 20.0, 40.0, 80.0, 160.0], lambda v: page_hinkley(v, n, mu, sd), calib)
    alpha = pick([0.05, 1e-3, 1e-5, 1e-7, 1e-9], lambda v: ks(v, n, ds.reference[:, :D]), calib)
    log(f"  {ds.name}: baselines picked ADWIN delta={delta:g}, PH threshold={lam:g}, "
        f"KS alpha={alpha:g}")
    methods: dict[str, Runner] = {
        "ours": ours(base, config, n, args.sample_k, args.seed),
        "adwin": adwin(delta, n),
        "page_hinkley": page_hinkley(lam, n, mu, sd),
        "ks": ks(alpha, n, ds.reference[:, :D]),
    }
    rng = np.random.default_rng(args.seed + 11)
    quiet = [no_drift_stream(ds, args.no_drift_length, rng) for _ in range(args.no_drift_streams)]
    out: dict[str, dict[str, Any]] = {}
    for name, run in methods.items():
        t0 = time.perf_counter()
        res: dict[str, Any] = {"false_alarms_per_10k": false_alarms(run, quiet), "per_kind": {}}
        srng = np.random.default_rng(args.seed + 13)
        for kind in DRIFTS:
            for sev in SEVERITIES:
                hits, delays, early = 0, [], 0
                for _ in range(args.streams):
                    s = drift_stream(ds, kind, sev, args.onset, args.length, srng)
                    at = run(s)
                    if at is not None and at >= args.onset:
                        hits += 1
                        delays.append(at - args.onset)
                    elif at is not None:
                        early += 1
                res["per_kind"][f"{kind}/{sev}"] = {
                    "detected": hits, "streams": args.streams, "early_alarms": early,
                    "median_delay": float(np.median(delays)) if delays else None}
        out[name] = res
        log(f"  {ds.name}/{name}: {time.perf_counter() - t0:.1f} s, "
            f"false alarms/10k {res['false_alarms_per_10k']:.2f}")
    return out


def summarise(per_ds: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for name in ("ours", "adwin", "page_hinkley", "ks"):
        fa, frames = 0.0, 0
        rate, delay = {}, {}
        for sev in SEVERITIES:
            hits = total = 0
            delays: list[float] = []
            for res in per_ds.values():
                for key, r in res[name]["per_kind"].items():
                    if key.endswith("/" + sev):
                        hits += r["detected"]
                        total += r["streams"]
                        # one delay per detected stream, approximated by the kind's median
                        if r["median_delay"] is not None:
                            delays += [r["median_delay"]] * r["detected"]
            rate[sev] = round(hits / max(total, 1), 3)
            delay[sev] = float(np.median(delays)) if delays else None
        for res in per_ds.values():
            fa += res[name]["false_alarms_per_10k"]
            frames += 1
        methods[name] = {"false_alarms_per_10k": round(fa / max(frames, 1), 3),
                         "detection_rate": rate, "median_delay_frames": delay}
    return methods


def plot(per_ds: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(DRIFTS)
    fig, axes = plt.subplots(len(per_ds), len(kinds), figsize=(2.2 * len(kinds), 2.6 * len(per_ds)),
                             squeeze=False, sharey=True)
    for row, (ds, res) in enumerate(per_ds.items()):
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            for name, r in res.items():
                ys = [r["per_kind"][f"{kind}/{s}"]["median_delay"] for s in SEVERITIES]
                ax.plot(SEVERITIES, [np.nan if y is None else y for y in ys], marker="o",
                        label=name)
            ax.set_title(f"{ds}: {kind}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("median delay (frames)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def signal_cost(spec: SignalSpec) -> None:
    """CPU per frame of the line's signals at 320 px, one thread (the appliance budget
    is 2 ms), with and without detection boxes to leave out."""
    import cv2

    import linesim
    from models.drift.signals import frame_signals

    cv2.setNumThreads(1)
    cfg = linesim.LineConfig(width_px=320, height_px=240, seed=99)
    parts = [linesim.render(cfg, i) for i in range(60)]
    for label, with_boxes in (("without boxes", False), ("with boxes", True)):
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            for p in parts:
                boxes = [(d.x1, d.y1, d.x2, d.y2) for d in p.defects] if with_boxes else None
                frame_signals(p.image_bgr, spec, boxes)
            best = min(best, (time.process_time() - t0) / len(parts) * 1000.0)
        print(f"signals at 320x240, 1 thread, {label}: {best:.3f} ms CPU per frame "
              f"(budget 2 ms: {best / 2.0:.2f} of it)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller run (< 2 minutes)")
    p.add_argument("--streams", type=int, help="drift streams per kind and severity")
    p.add_argument("--window", type=int, default=20, help="frames per window")
    p.add_argument("--target", type=float, default=0.1,
                   help="our threshold's target: P(alarm within 10k no-drift frames)")
    p.add_argument("--sample-k", type=int, default=16, help="frames sampled per window")
    p.add_argument("--datasets", default="neu-det,linesim")
    p.add_argument("--png", type=Path, default=Path("drift-bench.png"))
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    quick = args.quick
    args.streams = args.streams or (4 if quick else 12)
    pool, normal_pool = (80, 250) if quick else (200, 600)
    args.onset, args.length = (200, 500) if quick else (300, 700)
    args.no_drift_streams = 4 if quick else 10
    args.no_drift_length = 2500 if quick else 5000
    args.calib_streams = 4 if quick else 8
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} threads (OMP_NUM_THREADS={threads}); "
          f"window {args.window} frames, target {args.target} false alarms/10k")

    def log(text: str) -> None:
        print(text, flush=True)

    spec = SignalSpec()
    signal_cost(spec)
    per_ds: dict[str, dict[str, dict[str, Any]]] = {}
    for name in args.datasets.split(","):
        t0 = time.perf_counter()
        data = neu_dataset(pool, spec, args.seed, normal_pool) if name == "neu-det" else \
            linesim_dataset(pool, spec, args.seed, normal_pool)
        if data is None:
            log(f"  {name}: dataset absent, skipped")
            continue
        log(f"  {name}: pools ready in {time.perf_counter() - t0:.1f} s")
        per_ds[name] = evaluate(data, args, log)
    print(f"{'dataset/method':24} {'FA/10k':>7} " + " ".join(f"{s:>14}" for s in SEVERITIES))
    for ds, res in per_ds.items():
        for name, r in res.items():
            cells = []
            for sev in SEVERITIES:
                items = [v for k, v in r["per_kind"].items() if k.endswith("/" + sev)]
                hit = sum(v["detected"] for v in items) / max(sum(v["streams"] for v in items), 1)
                d = [v["median_delay"] for v in items if v["median_delay"] is not None]
                cells.append(f"{hit:5.0%} {np.median(d) if d else float('nan'):6.0f}fr")
            print(f"{ds + '/' + name:24} {r['false_alarms_per_10k']:7.2f} " + " ".join(cells))
        for kind in DRIFTS:
            row = " ".join(
                f"{res['ours']['per_kind'][f'{kind}/{s}']['detected']}/{args.streams}"
                for s in SEVERITIES)
            print(f"  {ds} ours {kind:12} {row}")
    plot(per_ds, args.png)
    print(f"plot: {args.png}")
    print(json.dumps({"bench": "drift", "methods": summarise(per_ds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

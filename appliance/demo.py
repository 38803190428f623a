"""`lineguard demo`: the shipped demo bundle judging parts on the simulated line.

Loads `models/demo/bundle` (verifying its files and golden set), renders parts with
linesim, and prints one verdict line per part and a summary with the recall of the
defective parts against linesim's ground truth.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from models.bundle import load_bundle
from models.errors import ModelError
from models.golden import verify_golden
from models.postprocess import postprocess
from models.preprocess import preprocess_batch
from models.runtime import OnnxDetector, check_model_io

DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "models" / "demo" / "bundle"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lineguard demo", description=__doc__)
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE)
    parser.add_argument("--frames", type=int, default=40, help="parts to inspect")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7, help="simulated line seed")
    parser.add_argument("--drift", default="", help="linesim drift knobs, e.g. blur_sigma_px=2")
    args = parser.parse_args(argv)

    from linesim import ConfigError, Drift, LineConfig, SimulatedLine

    try:
        bundle = load_bundle(args.bundle)
        detector = OnnxDetector(bundle.model_path)
        check_model_io(detector, bundle.manifest)
        verify_golden(bundle, detector)
        line = SimulatedLine(LineConfig(seed=args.seed, drift=Drift.parse(args.drift)))
    except (ModelError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    m = bundle.manifest
    print(f"bundle {m.name} v{m.version} ({m.label}) classes={','.join(m.classes)} "
          f"providers={','.join(detector.providers)} preprocess={m.preprocess.version_hash()}")
    hw = (m.input.height, m.input.width)
    counts = {"pass": 0, "fail": 0}
    truth_defective = caught = false_alarms = 0
    infer_s = 0.0
    frames = line.take(args.frames)
    for start in range(0, len(frames), args.batch):
        chunk = frames[start:start + args.batch]
        batch, transforms = preprocess_batch([f.part.image_bgr for f in chunk], m.preprocess, hw)
        t0 = time.perf_counter()
        raw = detector.run(batch)
        infer_s += time.perf_counter() - t0
        for frame, dets in zip(chunk, postprocess(raw, m.postprocess, m.output.format,
                                                  m.classes, transforms), strict=True):
            verdict = "fail" if len(dets) else "pass"
            counts[verdict] += 1
            defective = bool(frame.part.defects)
            truth_defective += defective
            caught += defective and verdict == "fail"
            false_alarms += (not defective) and verdict == "fail"
            found = ", ".join(f"{m.classes[c]} {s:.2f}"
                              for c, s in zip(dets.class_ids, dets.scores, strict=True))
            truth = ", ".join(d.class_name for d in frame.part.defects) or "-"
            print(f"part {frame.part_id:5d}  {verdict.upper():4s}  found [{found}]  "
                  f"truth [{truth}]")
    n = len(frames)
    print(f"\n{n} parts: {counts['pass']} pass, {counts['fail']} fail; "
          f"defective parts caught {caught}/{truth_defective}, "
          f"false rejects {false_alarms}/{n - truth_defective}; "
          f"inference {1000 * infer_s / max(n, 1):.1f} ms/part "
          f"(batch {args.batch}, {np.ceil(n / args.batch):.0f} batches)")
    return 0

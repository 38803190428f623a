"""Thresholds chosen on one linesim split, checked on an independent one (issue 15).

Exports two linesim validation sets of the same size from different seeds, chooses
the demo bundle's thresholds for a target miss rate on the first (one threshold for
every class, then one per class), and measures miss and false-reject rates of those
thresholds on the second. Optionally (``--neu-det``) reports NEU-DET's per-class
thresholds from the shared yolo11n model and dataset. Prints the CPU and threads.

    PYTHONPATH=. python bench/calibration_thresholds.py --parts 700 --work /tmp/lg-thr
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.machine import machine_header
from calibration.errors import ThresholdError
from calibration.threshold_run import choose_all, score_parts
from calibration.thresholds import evaluate_threshold, required_defects
from linesim.config import LineConfig
from linesim.dataset import export_yolo
from models.bundle import load_bundle
from models.evaluate import load_data_yaml

DEMO = Path(__file__).resolve().parent.parent / "models" / "demo" / "bundle"
NEU_DATA = Path("/work/shared/datasets/neu-det/data.yaml")
NEU_ONNX = Path("/work/shared/models/neu-det-yolo11n/model.onnx")


def _dataset(root: Path, seed: int, parts: int) -> Path:
    data = root / f"seed{seed}" / "data.yaml"
    if not data.exists():
        export_yolo(root / f"seed{seed}", LineConfig(seed=seed), n_train=0, n_val=parts)
    return data


def holdout(work: Path, parts: int, target: float) -> None:
    bundle = load_bundle(DEMO)
    a = load_data_yaml(_dataset(work, 1, parts))
    b = load_data_yaml(_dataset(work, 2, parts))
    for per_class in (False, True):
        t0 = time.perf_counter()
        scores_a = score_parts(bundle, a, "val", per_class)
        scores_b = score_parts(bundle, b, "val", per_class)
        mode = "per class" if per_class else "one for all classes"
        print(f"\n== {mode}: target miss rate {target:g}, {parts} parts per split "
              f"(needs {required_defects(target)} defective parts per class)")
        try:
            chosen = choose_all(scores_a, target)
        except ThresholdError as exc:
            print(f"refused: {exc}")
            continue
        for t, part_b in zip(chosen, scores_b, strict=True):
            misses, n_def, fr, n_good = evaluate_threshold(part_b, t.threshold)
            print(f"{t.name:>12}: t={t.threshold:.4f}  split A: missed {t.misses}/{t.defective} "
                  f"({t.miss_rate:.2%}, CI {t.miss_rate_ci[0]:.2%}-{t.miss_rate_ci[1]:.2%}), "
                  f"false rejects {t.false_rejects}/{t.good} ({t.false_reject_rate:.2%})  |  "
                  f"split B: missed {misses}/{n_def} ({misses / max(n_def, 1):.2%}), false "
                  f"rejects {fr}/{n_good} ({fr / max(n_good, 1):.2%})")
        print(f"({time.perf_counter() - t0:.0f} s)")


def neu_det(work: Path, target: float) -> None:
    import cv2

    from models.golden import build_bundle
    from models.manifest import Lineage

    classes = list(load_data_yaml(NEU_DATA).names)
    root = work / "neu-bundle"
    if not root.exists():
        images = sorted((NEU_DATA.parent / "images" / "val").iterdir())[:2]
        build_bundle(root, NEU_ONNX, name="neu-det-yolo11n", version=1, label="reference",
                     classes=classes, input_hw=(224, 224),
                     lineage=Lineage(created_at=datetime(2026, 1, 1, tzinfo=UTC)),
                     golden_images=[cv2.imread(str(p)) for p in images], providers=["cpu"])
    bundle = load_bundle(root)
    scores = score_parts(bundle, load_data_yaml(NEU_DATA), "val", True)
    print(f"\n== NEU-DET val, per class, target miss rate {target:g}")
    for part in scores:
        try:
            [t] = choose_all([part], target)
        except ThresholdError as exc:
            print(f"refused: {exc}")
            continue
        print(f"{t.name:>16}: t={t.threshold:.4f} missed {t.misses}/{t.defective} "
              f"({t.miss_rate:.2%}, CI {t.miss_rate_ci[0]:.2%}-{t.miss_rate_ci[1]:.2%}), "
              f"false alarms {t.false_rejects}/{t.good} ({t.false_reject_rate:.2%})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=700)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lineguard-thresholds"))
    parser.add_argument("--neu-det", action="store_true")
    parser.add_argument("--neu-target", type=float, nargs="*", default=[0.05, 0.01])
    parser.add_argument("--skip-linesim", action="store_true")
    args = parser.parse_args(argv)
    print(machine_header())
    if not args.skip_linesim:
        holdout(args.work, args.parts, args.target)
    if args.neu_det and NEU_DATA.exists():
        for target in args.neu_target:
            neu_det(args.work, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

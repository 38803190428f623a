"""`lineguard eval BUNDLE DATA_YAML`: measure a bundle on a YOLO dataset.

Prints Ultralytics' per-class validation table (images, instances, P, R, mAP50,
mAP50-95) or, with ``--json``, the `Metrics` JSON a manifest stores. Progress and logs
go to stderr. Bad input (missing bundle, bad yaml, unreadable files) is one
``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from models.bundle import open_bundle
from models.errors import ModelError
from models.evaluate import EvalReport, evaluate_report, load_data_yaml
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    comma_list,
    configure_logging_from,
    positive_int,
)

_ROW = "%22s%11s%11s%11s%11s%11s%11s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lineguard eval",
        description="Evaluate a model bundle on a YOLO-format dataset with Ultralytics' "
        "validation metrics (conf 0.001, NMS IoU 0.7, max 300 boxes).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("bundle", type=Path, help="bundle directory or .tar/.tar.gz")
    parser.add_argument("data_yaml", type=Path, help="Ultralytics data.yaml")
    parser.add_argument("--split", default="val", help="dataset split")
    parser.add_argument("--batch", type=positive_int, default=8, help="batch size")
    parser.add_argument(
        "--providers",
        type=comma_list,
        metavar="NAME[,NAME...]",
        help="ONNX Runtime providers, comma-separated in preference order (cpu, cuda, "
        "tensorrt or full names), e.g. cuda,cpu (default: best available)",
    )
    parser.add_argument(
        "--single-label",
        action="store_true",
        help="one class per box, as served (default: multi-label, as Ultralytics val)",
    )
    parser.add_argument("--json", action="store_true", help="print the Metrics JSON only")
    add_logging_arguments(parser, default_level="warning")
    return parser


class _Progress:
    """Progress on a stream: an updating line on a terminal, else ~10 lines in all."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        if self._tty:
            end = "\n" if done >= total else ""
            self._stream.write(f"\reval: {done}/{total} images{end}")
        else:
            decile = done * 10 // max(total, 1)
            if decile == self._last_decile and done < total:
                return
            self._last_decile = decile
            self._stream.write(f"eval: {done}/{total} images\n")
        self._stream.flush()


def format_table(report: EvalReport) -> str:
    """Ultralytics-style table: an `all` row, then one row per class with labels."""
    m = report.metrics
    lines = [_ROW % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")]

    def row(name: str, images: int, instances: int, values: tuple[float, ...]) -> str:
        return _ROW % (name, images, instances, *(f"{v:.3g}" for v in values))

    lines.append(row("all", m.images, m.instances, (m.precision, m.recall, m.map50, m.map50_95)))
    for name, c in m.per_class.items():
        values = (c.precision, c.recall, c.map50, c.map50_95)
        lines.append(row(name, report.images_per_class.get(name, 0), c.instances, values))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of `lineguard eval`; returns the exit status (0 ok, 2 bad input)."""
    args = build_parser().parse_args(argv)
    configure_logging_from(args)
    try:
        dataset = load_data_yaml(args.data_yaml)
        with tempfile.TemporaryDirectory(prefix="lineguard-eval-") as tmp:
            bundle = open_bundle(args.bundle, Path(tmp) / "bundle")
            report = evaluate_report(
                bundle,
                dataset,
                args.split,
                batch_size=args.batch,
                providers=args.providers,
                multi_label=not args.single_label,
                progress=_Progress(sys.stderr),
            )
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(report.metrics.model_dump_json(indent=2))
        return 0
    manifest = bundle.manifest
    providers = ", ".join(report.providers) or "injected detector"
    print(
        f"{manifest.name} v{manifest.version} ({manifest.label}) on "
        f"{report.metrics.dataset} [{providers}]"
    )
    print(format_table(report))
    return 0

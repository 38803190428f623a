"""`lineguard linesim`: preview simulated frames and export labelled datasets.

The simulator itself (`linesim`) imports nothing else of lineguard; its command line
lives here so that it follows the conventions of every other command (help with
defaults, logging flags) from `protocol.cliargs`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from lineguard.cli_linesim_calibration import add_calibration_parser, run_calibration
from linesim.config import ConfigError, Drift, LineConfig
from linesim.dataset import export_yolo
from linesim.line import render
from protocol.cliargs import (
    HelpFormatter,
    add_logging_arguments,
    configure_logging_from,
    nonnegative_int,
    positive_int,
)


def _line_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulated line")
    p.add_argument("--width", type=positive_int, default=640, help="frame width in pixels")
    p.add_argument("--height", type=positive_int, default=480, help="frame height in pixels")
    p.add_argument("--drift", default="",
                   help="drift knobs, comma-separated, e.g. brightness=0.2,blur_sigma_px=2 "
                   "(default: none)")
    p.add_argument("--defect-free-fraction", type=float, default=0.3,
                   help="share of parts without any defect (0..1)")
    add_logging_arguments(p)


def _cfg(a: argparse.Namespace) -> LineConfig:
    return LineConfig(width_px=a.width, height_px=a.height, seed=a.seed,
                      defect_free_fraction=a.defect_free_fraction, drift=Drift.parse(a.drift))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lineguard linesim", formatter_class=HelpFormatter,
                                     description="preview simulated frames and export "
                                     "labelled datasets")
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a YOLO-format dataset",
                        formatter_class=HelpFormatter)
    ex.add_argument("out", type=Path, help="dataset directory to write (data.yaml inside)")
    ex.add_argument("--train", type=nonnegative_int, default=800, help="number of train images")
    ex.add_argument("--val", type=nonnegative_int, default=200, help="number of val images")
    _line_args(ex)
    pv = sub.add_parser("preview", help="write a contact sheet of parts with their boxes",
                        formatter_class=HelpFormatter)
    pv.add_argument("out", type=Path, help="PNG file to write")
    pv.add_argument("--count", type=positive_int, default=8, help="parts on the sheet")
    _line_args(pv)
    add_calibration_parser(sub)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    configure_logging_from(args)
    if args.cmd == "calibration":
        return run_calibration(args)
    try:
        cfg = _cfg(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if args.cmd == "export":
        tty = sys.stdout.isatty()  # redraw in place on a terminal, else one line per split

        def progress(split: str, done: int, total: int) -> None:
            if tty and (done == total or done % 50 == 0):
                print(f"\r{split}: {done}/{total}", end="\n" if done == total else "", flush=True)
            elif done == total:
                print(f"{split}: {done}/{total}", flush=True)

        data_yaml = export_yolo(args.out, cfg, n_train=args.train, n_val=args.val,
                                progress=progress)
        print(data_yaml)
        return 0

    tiles = []
    for k in range(args.count):
        part = render(cfg, k)
        img = part.image_bgr.copy()
        for d in part.defects:
            cv2.rectangle(img, (int(d.x1), int(d.y1)), (int(d.x2), int(d.y2)), (0, 255, 0), 1)
            cv2.putText(img, d.class_name, (int(d.x1), max(10, int(d.y1) - 3)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 0), 1)
        tiles.append(img)
    cols = 4
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    sheet = np.vstack([np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)])
    cv2.imwrite(str(args.out), sheet)
    print(args.out)
    return 0

"""`lineguard linesim calibration DIR`: board views through a known distorted camera,
the board on the conveyor, and truth.json (see `linesim.calibration`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linesim.calibration import BoardSpec, PinholeCamera, ViewsConfig, write_calibration_views
from linesim.config import ConfigError
from protocol.cliargs import HelpFormatter, add_logging_arguments, positive_int

_CAMERA = PinholeCamera()
_BOARD = BoardSpec()
_VIEWS = ViewsConfig()


def add_calibration_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `calibration` subcommand of `lineguard linesim`."""
    p = sub.add_parser("calibration", formatter_class=HelpFormatter,
                       help="render board views through a known camera, with truth.json")
    p.add_argument("out", type=Path, help="folder to write the views and truth.json into")
    for name in ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3"):
        p.add_argument(f"--{name}", type=float, default=getattr(_CAMERA, name),
                       help=f"true {name} of the camera")
    p.add_argument("--width", type=positive_int, default=_CAMERA.width_px, help="image width px")
    p.add_argument("--height", type=positive_int, default=_CAMERA.height_px,
                   help="image height px")
    p.add_argument("--board", choices=("chessboard", "charuco"), default=_BOARD.kind,
                   help="target kind")
    p.add_argument("--cols", type=positive_int, default=_BOARD.cols,
                   help="inner corners across")
    p.add_argument("--rows", type=positive_int, default=_BOARD.rows, help="inner corners down")
    p.add_argument("--square-mm", type=float, default=_BOARD.square_mm, help="square side mm")
    p.add_argument("--marker-mm", type=float, default=_BOARD.marker_mm,
                   help="ChArUco marker side mm")
    p.add_argument("--views", type=positive_int, default=_VIEWS.views, help="board views")
    p.add_argument("--noise", type=float, default=_VIEWS.noise_sigma,
                   help="pixel noise sigma (grey levels)")
    p.add_argument("--conveyor-distance-mm", type=float, default=_VIEWS.conveyor_distance_mm,
                   help="camera to conveyor distance (the scale view)")
    p.add_argument("--seed", type=int, default=_VIEWS.seed, help="random seed")
    add_logging_arguments(p)


def run_calibration(args: argparse.Namespace) -> int:
    """Render the views; 0 ok, 2 bad knob."""
    try:
        camera = PinholeCamera(fx=args.fx, fy=args.fy, cx=args.cx, cy=args.cy, k1=args.k1,
                               k2=args.k2, p1=args.p1, p2=args.p2, k3=args.k3,
                               width_px=args.width, height_px=args.height)
        board = BoardSpec(kind=args.board, cols=args.cols, rows=args.rows,
                          square_mm=args.square_mm, marker_mm=args.marker_mm)
        cfg = ViewsConfig(camera=camera, board=board, views=args.views, seed=args.seed,
                          noise_sigma=args.noise, conveyor_distance_mm=args.conveyor_distance_mm)
        print(write_calibration_views(args.out, cfg))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
